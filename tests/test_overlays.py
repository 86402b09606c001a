import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from pancreas_mtl.evaluation.overlays import (
    PREDICTION_COLOUR,
    REFERENCE_COLOUR,
    OverlayCase,
    crop_bounds,
    gallery_order,
    lesion_centre,
    load_canonical,
    overlay_title,
    plot_case_overlay,
    plot_overlays,
)
from pancreas_mtl.layout import overlay_labels, overlay_name

SHAPE = (20, 16, 8)
SPACING = (0.8, 0.8, 2.5)


def labels_with_lesion(centre, half=1):
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[4:17, 3:13, 2:7] = 1
    x, y, z = centre
    labels[x - half:x + half + 1, y - half:y + half + 1, z - 1:z + 2] = 2
    return labels


def image_volume(seed=0):
    return np.random.default_rng(seed).normal(40, 80, SHAPE).astype(np.float32)


def contour_colours(ax):
    return {tuple(np.round(c.get_edgecolor()[0], 3)) for c in ax.collections}


def test_panels_cut_through_the_reference_lesion_centre_with_both_contours():
    image = image_volume()
    reference = labels_with_lesion((10, 8, 4))
    prediction = labels_with_lesion((11, 7, 4))
    fig = plot_case_overlay(image, SPACING, prediction, reference, "quiz_001 | lesion DSC 0.300")
    axial, coronal, sagittal = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["axial z=4", "coronal y=8", "sagittal x=10"]
    # the 30 mm margin covers this small volume: each panel is the whole slice
    np.testing.assert_array_equal(axial.images[0].get_array(), image[:, :, 4].T)
    np.testing.assert_array_equal(coronal.images[0].get_array(), image[:, 8, :].T)
    np.testing.assert_array_equal(sagittal.images[0].get_array(), image[10, :, :].T)
    for ax in fig.axes:
        assert ax.images[0].get_clim() == (-160, 240)  # W400/L40
        assert contour_colours(ax) == {tuple(np.round(to_rgba(REFERENCE_COLOUR), 3)),
                                       tuple(np.round(to_rgba(PREDICTION_COLOUR), 3))}
    # extents in mm: anisotropic voxels keep their true aspect
    left, right, bottom, top = coronal.images[0].get_extent()
    assert (abs(right - left), top - bottom) == pytest.approx((20 * 0.8, 8 * 2.5))
    assert fig._suptitle.get_text() == "quiz_001 | lesion DSC 0.300"


def test_prediction_alone_is_centred_on_the_predicted_lesion_in_one_colour(tmp_path):
    prediction = labels_with_lesion((6, 10, 3))
    fig = plot_case_overlay(image_volume(), SPACING, prediction, None, "quiz_009", tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert [ax.get_title() for ax in fig.axes] == ["axial z=3", "coronal y=10", "sagittal x=6"]
    for ax in fig.axes:
        assert contour_colours(ax) == {tuple(np.round(to_rgba(PREDICTION_COLOUR), 3))}


def test_lesion_centre_stays_inside_the_mask_and_falls_back():
    crescent = np.zeros((9, 9, 3), bool)
    crescent[1:8, 1, 1] = crescent[1, 1:8, 1] = True  # an L: its centre of mass lies outside it
    centre = lesion_centre(crescent)
    assert crescent[centre]
    pancreas = np.zeros((9, 9, 3), bool)
    pancreas[6:9, 6:9, 0:3] = True
    assert lesion_centre(np.zeros_like(pancreas), pancreas) == (7, 7, 1)
    assert lesion_centre(np.zeros((9, 9, 3), bool)) == (4, 4, 1)


def test_crop_bounds_add_the_margin_in_millimetres():
    mask = np.zeros((100, 100, 20), bool)
    mask[40:50, 30:35, 10] = True
    assert crop_bounds([mask, None], (1.0, 2.0, 5.0), margin_mm=10) == [(30, 60), (25, 40), (8, 13)]
    assert crop_bounds([np.zeros((4, 5, 6), bool)], (1, 1, 1)) == [(0, 4), (0, 5), (0, 6)]


def test_load_canonical_turns_a_flipped_axis_to_ras(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    path = tmp_path / "flipped.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([-0.8, 0.8, 2.5, 1])), path)
    canonical, spacing = load_canonical(path, labels=True)
    np.testing.assert_array_equal(canonical, data[::-1])
    assert spacing == pytest.approx((0.8, 0.8, 2.5))


def test_overlay_title_names_dice_and_subtypes():
    assert overlay_title("quiz_001", 0.4567, 1, 2, 0.6) == (
        "quiz_001 | lesion DSC 0.457 | subtype true 1, predicted 2 (MISCLASSIFIED)")
    assert overlay_title("quiz_002", 1.0, 0, 0, 0.9).endswith("subtype true 0, predicted 0 (right)")
    assert overlay_title("quiz_003", None, None, 2, 0.87) == "quiz_003 | predicted subtype 2 (p=0.87)"


def test_gallery_order_worst_lesion_dice_first_then_unscored_by_id():
    rows = [{"case_id": c, "lesion_dsc": d} for c, d in (("b", 0.9), ("a", 0.9), ("c", 0.1), ("d", None))]
    assert [r["case_id"] for r in gallery_order(rows)] == ["c", "a", "b", "d"]


def save(path, data):
    nib.save(nib.Nifti1Image(data, np.diag([*SPACING, 1])), path)
    return path


def write_split(tmp_path, cases):
    """cases: case id -> (reference lesion centre, predicted lesion centre, true subtype, predicted)."""
    images, references, predictions = (tmp_path / n for n in ("images", "references", "predictions"))
    for folder in (images, references, predictions):
        folder.mkdir()
    overlay_cases, rows = [], []
    for n, (case_id, (ref_centre, pred_centre, subtype, predicted)) in enumerate(cases.items()):
        save(images / f"{case_id}_0000.nii.gz", image_volume(n))
        save(references / f"{case_id}.nii.gz", labels_with_lesion(ref_centre).astype(np.float32))
        save(predictions / f"{case_id}.nii.gz", labels_with_lesion(pred_centre))
        overlay_cases.append(OverlayCase(case_id, images / f"{case_id}_0000.nii.gz",
                                         references / f"{case_id}.nii.gz", subtype))
        probabilities = np.full(3, 0.1)
        probabilities[predicted] = 0.8
        rows.append({"Names": f"{case_id}.nii.gz", "Subtype": predicted,
                     **{f"prob_subtype{k}": p for k, p in enumerate(probabilities)}})
    pd.DataFrame(rows).to_csv(predictions / "subtype_results.csv", index=False)
    return overlay_cases, predictions


def test_plot_overlays_every_case_in_gallery_order_with_misclassified_flagged(tmp_path):
    cases = {
        "quiz_000": ((10, 8, 4), (10, 8, 4), 0, 0),   # lesion DSC 1
        "quiz_001": ((10, 8, 4), (12, 8, 4), 1, 2),   # lesion DSC 1/3, misclassified
        "quiz_002": ((10, 8, 4), (14, 4, 4), 2, 2),   # lesion DSC 0
    }
    overlay_cases, predictions = write_split(tmp_path, cases)
    out = tmp_path / "overlays"
    rows = plot_overlays(overlay_cases, predictions, out)
    assert [r["case_id"] for r in rows] == ["quiz_002", "quiz_001", "quiz_000"]
    assert [r["lesion_dsc"] for r in rows] == pytest.approx([0.0, 1 / 3, 1.0])
    assert sorted(p.name for p in out.glob("*.png")) == ["001_quiz_002.png", "002_quiz_001.png",
                                                           "003_quiz_000.png"]
    assert not list(out.glob(".*"))
    gallery = pd.read_csv(out / "gallery.csv")
    assert gallery["misclassified"].tolist() == [False, True, False]
    # the report's labels: first the rank, whose text order is the gallery order
    labels = [overlay_labels(out, name) for name in sorted(p.stem for p in out.glob("*.png"))]
    assert [lab["case"] for lab in labels] == ["quiz_002", "quiz_001", "quiz_000"]
    assert [float(lab["lesion DSC"]) for lab in labels] == sorted(float(lab["lesion DSC"]) for lab in labels)
    assert labels[1]["subtype true/predicted"] == "1/2 MISCLASSIFIED"
    assert labels[0]["subtype true/predicted"] == "2/2 right"
    assert all(isinstance(v, str) for lab in labels for v in lab.values())


def test_plot_overlays_of_test_cases_without_reference_are_in_case_order(tmp_path):
    cases = {"quiz_010": ((10, 8, 4), (10, 8, 4), None, 1), "quiz_009": ((10, 8, 4), (6, 6, 4), None, 0)}
    overlay_cases, predictions = write_split(tmp_path, cases)
    overlay_cases = [OverlayCase(c.case_id, c.image) for c in overlay_cases]
    rows = plot_overlays(overlay_cases, predictions, tmp_path / "test")
    assert [r["name"] for r in rows] == ["001_quiz_009", "002_quiz_010"]
    assert overlay_labels(tmp_path / "test", "001_quiz_009") == {
        "rank": "001", "case": "quiz_009", "predicted subtype": "0 (p=0.80)"}


def test_plot_overlays_names_a_missing_mask(tmp_path):
    overlay_cases, predictions = write_split(tmp_path, {"quiz_000": ((10, 8, 4), (10, 8, 4), 0, 0)})
    (predictions / "quiz_000.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"quiz_000.*quiz_000\.nii\.gz"):
        plot_overlays(overlay_cases, predictions, tmp_path / "out")


def test_overlay_name_pads_the_rank_to_the_case_count():
    assert overlay_name(7, "quiz_1", 12) == "007_quiz_1"
    assert overlay_name(7, "quiz_1", 1200) == "0007_quiz_1"
