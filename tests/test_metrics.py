import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pancreas_mtl.evaluation.metrics import (
    bootstrap_ci,
    brier_score,
    calibration_bins,
    case_dice,
    classification_metrics,
    dice,
    evaluate_split,
    expected_calibration_error,
    macro_f1,
)


def test_dice_half_overlap():
    pred = np.array([1, 1, 0, 0], dtype=bool)
    ref = np.array([0, 1, 1, 0], dtype=bool)
    assert dice(pred, ref) == pytest.approx(0.5)


def test_dice_two_of_four_voxels():
    pred = np.zeros((2, 2, 2), dtype=bool)
    pred[0] = True
    ref = np.zeros((2, 2, 2), dtype=bool)
    ref[0, 0] = True
    # |pred| = 4, |ref| = 2, overlap 2: 2*2 / 6
    assert dice(pred, ref) == pytest.approx(2 / 3)


def test_dice_both_empty_is_one():
    empty = np.zeros((3, 3), dtype=bool)
    assert dice(empty, empty) == 1.0


def test_dice_one_empty_is_zero():
    empty = np.zeros((3, 3), dtype=bool)
    full = np.ones((3, 3), dtype=bool)
    assert dice(empty, full) == 0.0
    assert dice(full, empty) == 0.0


def test_case_dice_label_confusion_does_not_hurt_whole_pancreas():
    ref = np.array([0, 1, 1, 2, 2, 0])
    pred = np.array([0, 2, 2, 1, 1, 0])
    scores = case_dice(pred, ref)
    assert scores["whole_pancreas_dsc"] == 1.0
    assert scores["lesion_dsc"] == 0.0


def test_case_dice_known_values():
    ref = np.array([0, 1, 1, 1, 2, 2, 0, 0])
    pred = np.array([0, 0, 1, 1, 2, 1, 2, 0])
    scores = case_dice(pred, ref)
    # whole: pred 5 voxels, ref 5, overlap 4; lesion: pred 2, ref 2, overlap 1.
    assert scores["whole_pancreas_dsc"] == pytest.approx(0.8)
    assert scores["lesion_dsc"] == pytest.approx(0.5)


def test_case_dice_no_lesion_anywhere_scores_one():
    ref = np.array([0, 1, 1, 0])
    assert case_dice(ref.copy(), ref)["lesion_dsc"] == 1.0


def test_case_dice_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        case_dice(np.zeros((2, 3), int), np.zeros((3, 2), int))


def test_classification_metrics_known_confusion():
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    result = classification_metrics(y_true, y_pred, [0, 1, 2])
    # class 0: P 1/2 R 1/2 F1 1/2; class 1: P 2/3 R 1 F1 4/5; class 2: P 1 R 1/2 F1 2/3
    assert result["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    expected = {0: (0.5, 0.5, 0.5), 1: (2 / 3, 1.0, 0.8), 2: (1.0, 0.5, 2 / 3)}
    for label, (precision, recall, f1) in expected.items():
        assert result["per_class"][label] == pytest.approx(
            {"precision": precision, "recall": recall, "f1": f1, "support": 2}
        )
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_classification_metrics_collapsed_predictor():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0] * 6
    result = classification_metrics(y_true, y_pred, [0, 1, 2])
    majority_f1 = 2 * 0.5 * 1.0 / (0.5 + 1.0)
    assert result["per_class"][0]["f1"] == pytest.approx(majority_f1)
    assert result["per_class"][1] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert result["macro_f1"] == pytest.approx(majority_f1 / 3)
    assert result["balanced_accuracy"] == pytest.approx(1 / 3)
    assert result["accuracy"] == pytest.approx(0.5)
    assert result["confusion_matrix"] == [[3, 0, 0], [2, 0, 0], [1, 0, 0]]


def test_macro_f1_counts_absent_classes_as_zero():
    assert macro_f1([0, 0], [0, 0], [0, 1, 2]) == pytest.approx(1 / 3)


def test_bootstrap_ci_brackets_mean_and_is_deterministic():
    values = np.linspace(0.2, 0.9, 15)
    low, high = bootstrap_ci(values, np.mean, n=500, seed=3)
    assert low < values.mean() < high
    assert (low, high) == bootstrap_ci(values, np.mean, n=500, seed=3)
    assert (low, high) != bootstrap_ci(values, np.mean, n=500, seed=4)


def test_bootstrap_ci_resamples_pairs_together():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    # A perfect predictor stays perfect in every resample only if truth and prediction move together.
    assert bootstrap_ci((y, y.copy()), lambda t, p: float(np.mean(t == p)), n=200) == (1.0, 1.0)


def test_bootstrap_ci_constant_values_collapse():
    assert bootstrap_ci(np.full(5, 0.7), np.mean, n=100) == pytest.approx((0.7, 0.7))


def test_brier_score_known_value():
    probabilities = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]
    # (0.09 + 0.04 + 0.01) + (0.01 + 0.04 + 0.01) + (0.09 + 0.09 + 0.36), over 3 cases
    assert brier_score([0, 1, 2], probabilities) == pytest.approx((0.14 + 0.06 + 0.54) / 3)


def test_brier_score_agrees_with_sklearn_and_bounds():
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(4), size=20)
    y_true = rng.integers(0, 4, 20)
    expected = brier_score_loss(y_true, probabilities, labels=[0, 1, 2, 3], scale_by_half=False)
    assert brier_score(y_true, probabilities) == pytest.approx(expected)
    assert brier_score([0, 1], [[1.0, 0.0], [0.0, 1.0]]) == 0.0
    assert brier_score([0, 1], [[0.0, 1.0], [1.0, 0.0]]) == 2.0


def test_brier_score_rejects_a_class_outside_the_columns():
    with pytest.raises(ValueError, match="outside 0..1"):
        brier_score([0, 2], [[0.5, 0.5], [0.5, 0.5]])


def test_calibration_bins_and_ece_known_values():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 1.0 (right)
    probabilities = [[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.0, 1.0]]
    y_true = [0, 1, 1, 1]
    bins = calibration_bins(y_true, probabilities, n_bins=5)
    assert [b["count"] for b in bins] == [0, 0, 1, 0, 3]
    assert bins[2] == pytest.approx({"lower": 0.4, "upper": 0.6, "count": 1, "confidence": 0.6, "accuracy": 1.0})
    assert bins[4]["confidence"] == pytest.approx((0.9 + 0.9 + 1.0) / 3)
    assert bins[4]["accuracy"] == pytest.approx(2 / 3)
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None
    # |1 - 0.6| * 1/4 + |2/3 - 2.8/3| * 3/4
    assert expected_calibration_error(y_true, probabilities, n_bins=5) == pytest.approx(0.1 + 0.2)


def test_ece_of_a_perfectly_calibrated_predictor_is_zero():
    # half right at confidence 0.5, all right at confidence 1
    probabilities = [[0.5, 0.5], [0.5, 0.5], [1.0, 0.0]]
    assert expected_calibration_error([0, 1, 0], probabilities) == pytest.approx(0.0)


def test_ece_without_cases_is_nan():
    assert np.isnan(expected_calibration_error([], np.zeros((0, 3))))


@pytest.mark.parametrize("values", [[], [0.4]])
def test_bootstrap_ci_too_few_cases_is_nan(values):
    low, high = bootstrap_ci(np.array(values), np.mean)
    assert np.isnan(low) and np.isnan(high)


def _save_mask(path, labels, dtype=np.uint8):
    nib.save(nib.Nifti1Image(np.asarray(labels, dtype=dtype), np.eye(4)), path)


def _tiny_split(tmp_path):
    """Three 1x1x8 cases with hand-countable overlaps; case c misclassified."""
    reference_dir, prediction_dir = tmp_path / "ref", tmp_path / "pred"
    reference_dir.mkdir()
    prediction_dir.mkdir()
    cases = {
        # (reference, prediction, true subtype, predicted subtype)
        "case_a": ([0, 1, 1, 1, 2, 2, 0, 0], [0, 1, 1, 1, 2, 2, 0, 0], 0, 0),  # whole 1, lesion 1
        "case_b": ([0, 1, 1, 1, 2, 2, 0, 0], [0, 0, 1, 1, 2, 1, 2, 0], 1, 1),  # whole 0.8, lesion 0.5
        "case_c": ([0, 1, 1, 0, 0, 0, 0, 0], [0, 2, 2, 0, 0, 0, 0, 0], 2, 1),  # whole 1, lesion 0
    }
    references = []
    for case_id, (ref, pred, subtype, _) in cases.items():
        # Reference stored as float with label 1 slightly off, as in the raw cohort.
        ref_labels = np.where(np.array(ref) == 1, 1.0000152587890625, ref).reshape(1, 1, 8)
        _save_mask(reference_dir / f"{case_id}.nii.gz", ref_labels, np.float32)
        _save_mask(prediction_dir / f"{case_id}.nii.gz", np.reshape(pred, (1, 1, 8)))
        references.append((case_id, reference_dir / f"{case_id}.nii.gz", subtype))
    probabilities = {"case_a": [0.8, 0.1, 0.1], "case_b": [0.2, 0.7, 0.1], "case_c": [0.1, 0.5, 0.4]}
    pd.DataFrame(
        {
            "Names": [f"{c}.nii.gz" for c in cases],
            "Subtype": [cases[c][3] for c in cases],
            **{f"prob_subtype{k}": [probabilities[c][k] for c in cases] for k in range(3)},
        }
    ).to_csv(prediction_dir / "subtype_results.csv", index=False)
    return prediction_dir, references


def test_evaluate_split_end_to_end(tmp_path):
    prediction_dir, references = _tiny_split(tmp_path)
    summary = evaluate_split(prediction_dir, references, tmp_path / "metrics", 3, n_bootstrap=200, seed=1)

    written = json.loads((tmp_path / "metrics" / "summary.json").read_text())
    assert written == summary
    assert summary["split"] == "validation"
    assert summary["n_cases"] == 3
    assert summary["whole_pancreas_dsc"] == pytest.approx((1 + 0.8 + 1) / 3)
    assert summary["lesion_dsc"] == pytest.approx((1 + 0.5 + 0) / 3)
    # truth 0,1,2 vs prediction 0,1,1: F1 per class 1, 2/3, 0
    assert summary["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert summary["accuracy"] == pytest.approx(2 / 3)
    assert summary["balanced_accuracy"] == pytest.approx(2 / 3)
    assert summary["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]
    assert summary["per_class"]["1"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1}
    )
    for key in ("whole_pancreas_dsc", "lesion_dsc", "macro_f1"):
        low, high = summary[f"{key}_ci95"]
        assert low <= summary[key] <= high

    # top-class confidences 0.8 (right), 0.7 (right), 0.5 (wrong)
    one_hot = np.eye(3)[[0, 1, 2]]
    probabilities = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.5, 0.4]])
    assert summary["brier_score"] == pytest.approx(np.mean(((probabilities - one_hot) ** 2).sum(1)))
    assert summary["ece"] == pytest.approx((0.2 + 0.3 + 0.5) / 3)
    assert sum(b["count"] for b in summary["calibration_bins"]) == 3

    per_case = pd.read_csv(tmp_path / "metrics" / "per_case.csv")
    assert list(per_case.columns[:5]) == ["case_id", "subtype", "predicted_subtype", "whole_pancreas_dsc",
                                          "lesion_dsc"]
    assert {"prob_subtype0", "prob_subtype1", "prob_subtype2"} <= set(per_case.columns)
    assert per_case["lesion_dsc"].tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert per_case["predicted_subtype"].tolist() == [0, 1, 1]


def test_evaluate_split_writes_null_not_nan_for_one_case(tmp_path):
    prediction_dir, references = _tiny_split(tmp_path)
    summary = evaluate_split(prediction_dir, references[:1], tmp_path / "metrics", 3, n_bootstrap=10)
    text = (tmp_path / "metrics" / "summary.json").read_text()
    assert "NaN" not in text
    assert summary["lesion_dsc_ci95"] == [None, None]


def test_evaluate_split_missing_mask_names_case(tmp_path):
    prediction_dir, references = _tiny_split(tmp_path)
    (prediction_dir / "case_b.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"case_b.*case_b\.nii\.gz"):
        evaluate_split(prediction_dir, references, tmp_path / "metrics", 3, n_bootstrap=10)


def test_evaluate_split_missing_csv_row_names_case(tmp_path):
    prediction_dir, references = _tiny_split(tmp_path)
    csv_path = prediction_dir / "subtype_results.csv"
    table = pd.read_csv(csv_path)
    table[table["Names"] != "case_c.nii.gz"].to_csv(csv_path, index=False)
    with pytest.raises(ValueError, match=r"case_c.*subtype_results\.csv"):
        evaluate_split(prediction_dir, references, tmp_path / "metrics", 3, n_bootstrap=10)


def test_evaluate_split_shape_mismatch_names_case(tmp_path):
    prediction_dir, references = _tiny_split(tmp_path)
    _save_mask(prediction_dir / "case_a.nii.gz", np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match=r"case_a.*\(1, 2, 4\)"):
        evaluate_split(prediction_dir, references, tmp_path / "metrics", 3, n_bootstrap=10)
