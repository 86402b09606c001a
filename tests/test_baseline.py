import json
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pancreas_mtl.evaluation.baseline import (
    FEATURES,
    cohort_features,
    fit_and_evaluate,
    lesion_features,
    run_baseline,
)

SPACING = (0.8, 0.8, 2.5)
AFFINE = np.diag([*SPACING, 1.0])
# Raw cohort masks store label 1 like this.
FLOAT_ONE = 1.0000152587890625


def save_nifti(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


def lesion_in_parenchyma(lesion_hu=100.0, parenchyma_hu=40.0):
    """10x10x10 image: parenchyma block of 40 HU, 2x2x2 lesion of 100 HU inside, air around."""
    image = np.full((10, 10, 10), -1000.0)
    labels = np.zeros((10, 10, 10), dtype=np.int16)
    image[2:8, 2:8, 2:8] = parenchyma_hu
    labels[2:8, 2:8, 2:8] = 1
    image[4:6, 4:6, 4:6] = lesion_hu
    labels[4:6, 4:6, 4:6] = 2
    return image, labels


def test_lesion_features_known_values():
    image, labels = lesion_in_parenchyma()
    features = lesion_features(image, labels, SPACING)
    assert list(features) == list(FEATURES)
    assert features["lesion_mean_hu"] == pytest.approx(100.0)
    assert features["lesion_std_hu"] == pytest.approx(0.0)
    assert features["lesion_volume_ml"] == pytest.approx(8 * 0.8 * 0.8 * 2.5 / 1000)
    assert features["parenchyma_mean_hu"] == pytest.approx(40.0)
    assert features["lesion_contrast_hu"] == pytest.approx(60.0)
    # The shell is parenchyma only: 40 - 100.
    assert features["edge_contrast_hu"] == pytest.approx(-60.0)
    # A 2x2x2 lesion erodes to nothing.
    assert features["core_contrast_hu"] == 0.0
    assert features["lesion_bbox_fill"] == pytest.approx(1.0)
    assert features["lesion_components"] == 1


def test_edge_contrast_counts_every_voxel_of_the_shell():
    image, labels = lesion_in_parenchyma()
    # Lesion touching the air on one face: shell = 4 air voxels + 20 parenchyma voxels.
    labels[:, :, :] = 0
    labels[2:8, 2:8, 2:8] = 1
    image[2:8, 2:8, 2:8] = 40.0
    image[4:6, 4:6, 2:4] = 100.0
    labels[4:6, 4:6, 2:4] = 2
    features = lesion_features(image, labels, SPACING)
    assert features["edge_contrast_hu"] == pytest.approx((4 * -1000 + 20 * 40) / 24 - 100)


def test_core_contrast_of_a_bright_core():
    image = np.zeros((8, 8, 8))
    labels = np.ones((8, 8, 8), dtype=np.int16)
    labels[2:6, 2:6, 2:6] = 2
    image[2:6, 2:6, 2:6] = 100.0
    image[3:5, 3:5, 3:5] = 130.0
    features = lesion_features(image, labels, SPACING)
    # 6-connected erosion of a 4^3 cube leaves the 2^3 core; the other 56 voxels are the boundary.
    assert features["core_contrast_hu"] == pytest.approx(30.0)
    assert features["lesion_mean_hu"] == pytest.approx((8 * 130 + 56 * 100) / 64)
    assert features["lesion_std_hu"] == pytest.approx(np.std([130] * 8 + [100] * 56))


def test_two_lesions_are_two_components_with_half_box_fill():
    image, labels = lesion_in_parenchyma()
    labels[4:6, 4:6, 4:6] = 1
    labels[2:4, 2:4, 2:4] = 2
    labels[6:8, 6:8, 6:8] = 2
    image[labels == 2] = 100.0
    features = lesion_features(image, labels, SPACING)
    assert features["lesion_components"] == 2
    assert features["lesion_bbox_fill"] == pytest.approx(16 / 6**3)
    assert features["lesion_volume_ml"] == pytest.approx(16 * 0.8 * 0.8 * 2.5 / 1000)


def test_lesion_at_the_image_border():
    image = np.full((4, 4, 4), 40.0)
    labels = np.ones((4, 4, 4), dtype=np.int16)
    labels[:2, :2, :2] = 2
    image[:2, :2, :2] = 100.0
    features = lesion_features(image, labels, SPACING)
    assert features["edge_contrast_hu"] == pytest.approx(-60.0)
    assert features["lesion_components"] == 1


def test_empty_lesion_gives_finite_parenchyma_based_values():
    image, labels = lesion_in_parenchyma()
    labels[labels == 2] = 1
    image[labels == 1] = 40.0
    features = lesion_features(image, labels, SPACING)
    assert all(math.isfinite(v) for v in features.values())
    assert features["lesion_mean_hu"] == features["parenchyma_mean_hu"] == pytest.approx(40.0)
    for name in FEATURES[4:]:
        assert features[name] == 0.0
    assert features["lesion_volume_ml"] == features["lesion_std_hu"] == 0.0


def test_empty_parenchyma_and_empty_mask():
    image, labels = lesion_in_parenchyma()
    labels[labels == 1] = 0
    features = lesion_features(image, labels, SPACING)
    assert features["parenchyma_mean_hu"] == pytest.approx(100.0)
    assert features["lesion_contrast_hu"] == 0.0
    assert lesion_features(image, np.zeros_like(labels), SPACING) == dict.fromkeys(FEATURES, 0.0)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        lesion_features(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)), SPACING)


def write_case(root, case_id, image, labels):
    """Image and float mask with label 1 stored as FLOAT_ONE, in the nnU-Net raw layout."""
    mask = labels.astype(np.float32)
    mask[labels == 1] = FLOAT_ONE
    image_path = save_nifti(root / "imagesTr" / f"{case_id}_0000.nii.gz", image.astype(np.float32))
    return image_path, save_nifti(root / "labelsTr" / f"{case_id}.nii.gz", mask)


def test_cohort_features_reads_spacing_and_float_masks(tmp_path):
    image, labels = lesion_in_parenchyma()
    image_path, mask_path = write_case(tmp_path, "case_a", image, labels)
    table = cohort_features([("case_a", image_path, mask_path)])
    assert list(table.index) == ["case_a"]
    assert list(table.columns) == list(FEATURES)
    row = table.loc["case_a"]
    # Label 1 stored as 1.0000152587890625 still counts as parenchyma.
    assert row["parenchyma_mean_hu"] == pytest.approx(40.0)
    assert row["lesion_contrast_hu"] == pytest.approx(60.0)
    assert row["lesion_volume_ml"] == pytest.approx(8 * 0.8 * 0.8 * 2.5 / 1000)


def separable_features(n_per_class, seed):
    """Three classes far apart in the first two features, plus a noise feature."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1, 2], n_per_class)
    centers = np.array([[-50.0, 0.0], [0.0, 20.0], [80.0, -10.0]])
    values = centers[labels] + rng.normal(0, 2.0, (labels.size, 2))
    features = pd.DataFrame(
        np.column_stack([values, rng.normal(size=labels.size)]),
        index=[f"c{i:02d}" for i in range(labels.size)],
        columns=["a", "b", "noise"],
    )
    return features, labels


def test_fit_and_evaluate_separates_separable_classes():
    train, y_train = separable_features(10, seed=1)
    test, y_test = separable_features(4, seed=2)
    results = fit_and_evaluate(train, y_train, test, y_test, 3, seed=0)
    for name in ("logistic_regression", "random_forest"):
        assert results[name]["macro_f1"] == pytest.approx(1.0)
        assert results[name]["balanced_accuracy"] == pytest.approx(1.0)
        assert results[name]["confusion_matrix"] == [[4, 0, 0], [0, 4, 0], [0, 0, 4]]
        assert results[name]["predictions"] == dict(zip(test.index, y_test.tolist()))


def test_fit_and_evaluate_on_shuffled_labels_is_worse_and_deterministic():
    train, y_train = separable_features(10, seed=1)
    test, y_test = separable_features(4, seed=2)
    shuffled = np.random.default_rng(3).permutation(y_train)
    first = fit_and_evaluate(train, shuffled, test, y_test, 3, seed=0)
    assert first == fit_and_evaluate(train, shuffled, test, y_test, 3, seed=0)
    for name in ("logistic_regression", "random_forest"):
        assert first[name]["macro_f1"] < 0.9


def subtype_case(subtype, rng):
    """Subtype 0: small bright lesion, 1: large dark lesion, 2: large bright lesion; noisy HU."""
    image, labels = lesion_in_parenchyma(lesion_hu=(150.0, -10.0, 150.0)[subtype])
    if subtype > 0:
        labels[3:7, 3:7, 3:7] = 2
        image[3:7, 3:7, 3:7] = image[4, 4, 4]
    return image + rng.normal(0, 3.0, image.shape), labels


def write_cohort(root, n_train, n_validation, n_test, seed, miss_lesion=lambda split, subtype: False):
    """Raw dataset, predicted masks per split, test labels and subtype table of a small cohort;
    `miss_lesion(split, subtype)` makes the predicted mask miss that case's lesion."""
    raw, predictions, test_labels = root / "raw", root / "predictions", root / "test_labels"
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n_train + n_validation + n_test):
        subtype = index % 3
        split = "train" if index < n_train else "validation" if index < n_train + n_validation else "test"
        case_id = f"case_{index:02d}"
        image, labels = subtype_case(subtype, rng)
        if split == "test":
            save_nifti(raw / "imagesTs" / f"{case_id}_0000.nii.gz", image.astype(np.float32))
            save_nifti(test_labels / f"subtype{subtype}" / f"{case_id}.nii.gz", labels.astype(np.uint8))
        else:
            write_case(raw, case_id, image, labels)
        predicted = labels.copy()
        if miss_lesion(split, subtype):
            predicted[predicted == 2] = 1
        save_nifti(predictions / split / f"{case_id}.nii.gz", predicted.astype(np.uint8))
        rows.append((case_id, split, None if split == "test" else subtype))
    table = root / "subtypes.csv"
    pd.DataFrame(rows, columns=["case_id", "split", "subtype"]).astype({"subtype": "Int64"}).to_csv(
        table, index=False
    )
    return raw, predictions, test_labels, table


def test_run_baseline_fits_on_predicted_training_masks(tmp_path):
    """Issue 11: the baseline is fitted on the training cases' predicted masks, as the workflow's
    classifier is, scored on validation and (labels given) test, with bootstrap intervals."""
    # the training cases' predicted masks miss every subtype-1 lesion; one validation prediction
    # misses a subtype-0 lesion: features stay finite, the case still gets a subtype
    raw, predictions, test_labels, table = write_cohort(
        tmp_path, 30, 3, 3, seed=0,
        miss_lesion=lambda split, subtype: (split, subtype) in {("train", 1), ("validation", 0)},
    )  # fmt: skip

    output = tmp_path / "metrics" / "baseline.json"
    summary = run_baseline(raw, table, predictions / "train", predictions / "validation", output, seed=0,
                           test_prediction_dir=predictions / "test", test_labels_dir=test_labels)  # fmt: skip
    assert json.loads(output.read_text()) == json.loads(json.dumps(summary))
    assert summary["n_train"] == 30 and summary["n_validation"] == 3 and summary["n_test"] == 3
    assert summary["features"] == list(FEATURES)
    assert summary["fitted_on"] == "predicted masks of the training cases"
    validation = {"case_30", "case_31", "case_32"}
    for name in ("logistic_regression", "random_forest"):
        assert set(summary[name]["predicted_masks"]["predictions"]) == validation
        assert set(summary[name]["test"]["predicted_masks"]["predictions"]) == {"case_33", "case_34", "case_35"}
        for metrics in (summary[name]["predicted_masks"], summary[name]["test"]["reference_masks"]):
            low, high = metrics["macro_f1_ci95"]
            assert 0 <= low <= high <= 1
        assert summary[name]["reference_masks"]["predictions"]["case_32"] == 2


def test_run_baseline_one_test_case_has_no_interval(tmp_path):
    """A split of one case cannot give a bootstrap interval: it is written as null, not NaN."""
    raw, predictions, test_labels, table = write_cohort(tmp_path, 6, 1, 1, seed=1)
    output = tmp_path / "baseline.json"
    summary = run_baseline(raw, table, predictions / "train", predictions / "validation", output,
                           test_prediction_dir=predictions / "test", test_labels_dir=test_labels)  # fmt: skip
    assert summary["logistic_regression"]["test"]["predicted_masks"]["macro_f1_ci95"] == [None, None]
    assert json.loads(output.read_text()) == json.loads(json.dumps(summary))


def test_run_baseline_needs_every_predicted_mask(tmp_path):
    table = tmp_path / "subtypes.csv"
    table.write_text("case_id,split,subtype\na,train,0\nb,train,1\nc,validation,1\n")
    with pytest.raises(ValueError, match="predicted mask"):
        run_baseline(tmp_path, table, tmp_path / "predictions", tmp_path / "predictions", tmp_path / "out.json")
