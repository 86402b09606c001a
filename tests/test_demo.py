"""Tests for the synthetic cohort: layout, determinism, file quirks, and a subtype signal that lives in the lesion only."""

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pancreas_mtl.demo import (
    DEFAULT_CLASS_FRACTIONS,
    FLOAT_LABEL_ONE,
    draw_case,
    make_demo_cohort,
    plan_cases,
    subtype_counts,
)

SMALL_COHORT = {"n_train": 6, "n_validation": 3, "n_test": 2}
STRAY_FILES = {"train/.DS_Store", "train/subtype1/notes.txt", "test/notes.txt"}


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("small") / "cohort"
    return out_dir, make_demo_cohort(out_dir, seed=0, **SMALL_COHORT)


@pytest.fixture(scope="module")
def thirty_case_cohort(tmp_path_factory):
    """Thirty labelled cases: enough for class means, small enough to stay a unit test."""
    out_dir = tmp_path_factory.mktemp("thirty") / "cohort"
    return out_dir, make_demo_cohort(
        out_dir, n_train=20, n_validation=10, n_test=1, seed=0
    )


def relative_files(root):
    return {
        path.relative_to(root).as_posix()
        for path in Path(root).rglob("*")
        if path.is_file()
    }


def labelled_cases(out_dir, summary):
    """(record, image HU, labels as integers) for every case with a mask."""
    for record in summary["cases"]:
        if record["mask"] is None:
            continue
        image = np.asanyarray(nib.load(out_dir / record["image"]).dataobj).astype(
            np.float64
        )
        labels = np.rint(
            np.asanyarray(nib.load(out_dir / record["mask"]).dataobj)
        ).astype(np.uint8)
        yield record, image, labels


def between_class_share(values, classes):
    """Eta squared: the share of the variance explained by the class means."""
    values, classes = np.asarray(values), np.asarray(classes)
    between = sum(
        (classes == c).sum() * (values[classes == c].mean() - values.mean()) ** 2
        for c in set(classes.tolist())
    )
    return between / ((values - values.mean()) ** 2).sum()


def test_subtype_counts_use_largest_remainder_and_keep_every_class():
    assert subtype_counts(30, DEFAULT_CLASS_FRACTIONS, at_least_one=True) == [7, 13, 10]
    assert subtype_counts(15, DEFAULT_CLASS_FRACTIONS, at_least_one=True) == [4, 6, 5]
    assert subtype_counts(10, DEFAULT_CLASS_FRACTIONS, at_least_one=False) == [3, 4, 3]
    assert subtype_counts(3, DEFAULT_CLASS_FRACTIONS, at_least_one=True) == [1, 1, 1]
    assert subtype_counts(4, (0.9, 0.05, 0.05), at_least_one=True) == [2, 1, 1]
    assert subtype_counts(2, (0.9, 0.05, 0.05), at_least_one=False) == [2, 0, 0]


def test_default_cohort_plan_has_expected_counts_and_unique_ids():
    specs = plan_cases(30, 15, 10, 0, DEFAULT_CLASS_FRACTIONS)
    counts = {
        split: np.bincount(
            [s.subtype for s in specs if s.split == split], minlength=3
        ).tolist()
        for split in ("train", "validation", "test")
    }
    assert counts == {"train": [7, 13, 10], "validation": [4, 6, 5], "test": [3, 4, 3]}
    assert [s.case_id for s in specs] == [f"demo_{i:03d}" for i in range(55)]
    train_subtypes = [s.subtype for s in specs if s.split == "train"]
    assert train_subtypes != sorted(
        train_subtypes
    ), "subtypes must not follow the case ids"


def test_layout_matches_the_assessment(small_cohort):
    out_dir, summary = small_cohort
    records = summary["cases"]
    assert [r["split"] for r in records].count("train") == 6
    assert [r["split"] for r in records].count("validation") == 3
    assert [r["split"] for r in records].count("test") == 2
    assert len({r["case_id"] for r in records}) == len(records)

    expected = set(STRAY_FILES)
    for record in records:
        case_id, subtype = record["case_id"], record["subtype"]
        if record["split"] == "test":
            assert record["image"] == f"test/{case_id}_0000.nii.gz"
            assert record["mask"] is None
            assert re.fullmatch(r"demo_\d{3}_0000\.nii\.gz", Path(record["image"]).name)
        else:
            folder = f"{record['split']}/subtype{subtype}"
            assert record["image"] == f"{folder}/{case_id}_0000.nii.gz"
            assert record["mask"] == f"{folder}/{case_id}.nii.gz"
            expected.add(record["mask"])
        expected.add(record["image"])
    assert relative_files(out_dir) == expected
    assert sorted(p.name for p in (out_dir / "test").iterdir()) == sorted(
        [f"{r['case_id']}_0000.nii.gz" for r in records if r["split"] == "test"]
        + ["notes.txt"]
    )
    for split in ("train", "validation"):
        assert sorted(p.name for p in (out_dir / split).iterdir() if p.is_dir()) == [
            "subtype0",
            "subtype1",
            "subtype2",
        ]

    for split in ("train", "validation", "test"):
        for subtype in (0, 1, 2):
            n = sum(
                1 for r in records if r["split"] == split and r["subtype"] == subtype
            )
            assert summary["counts"][split][subtype] == n
    for split in ("train", "validation"):
        assert all(summary["counts"][split][subtype] >= 1 for subtype in (0, 1, 2))


def test_same_seed_gives_identical_bytes_with_any_worker_count(small_cohort, tmp_path):
    out_dir, summary = small_cohort
    parallel_summary = make_demo_cohort(
        tmp_path / "parallel", seed=0, workers=2, **SMALL_COHORT
    )
    files = relative_files(out_dir)
    assert relative_files(tmp_path / "parallel") == files
    for name in files:
        assert (out_dir / name).read_bytes() == (
            tmp_path / "parallel" / name
        ).read_bytes(), name
    assert parallel_summary["cases"] == summary["cases"]


def test_different_seed_gives_different_cases(small_cohort, tmp_path):
    out_dir, summary = small_cohort
    other = make_demo_cohort(tmp_path / "other", seed=1, **SMALL_COHORT)
    for record, other_record in zip(summary["cases"], other["cases"]):
        assert record["case_id"] == other_record["case_id"]
        first = (out_dir / record["image"]).read_bytes()
        second = (tmp_path / "other" / other_record["image"]).read_bytes()
        assert first != second


def test_mask_quirks_mix_float_and_integer_masks(small_cohort, thirty_case_cohort):
    for out_dir, summary in (small_cohort, thirty_case_cohort):
        dtypes = []
        for record in summary["cases"]:
            if record["mask"] is None:
                continue
            mask = nib.load(out_dir / record["mask"])
            raw = np.asanyarray(mask.dataobj)
            dtypes.append(str(raw.dtype))
            assert str(raw.dtype) == record["mask_dtype"]
            values = set(np.unique(raw).tolist())
            if raw.dtype == np.float32:
                assert values == {0.0, float(FLOAT_LABEL_ONE), 2.0}
                assert float(FLOAT_LABEL_ONE) == 1.0000152587890625
            else:
                assert raw.dtype == np.uint8
                assert values == {0, 1, 2}
        assert set(dtypes) == {"float32", "uint8"}
        # The real cohort has 214 float masks in 288; even 9 masks come out mixed.
        assert 0.6 <= dtypes.count("float32") / len(dtypes) <= 0.9


def test_images_mix_int16_and_float32(small_cohort):
    out_dir, summary = small_cohort
    dtypes = set()
    for record in summary["cases"]:
        image = nib.load(out_dir / record["image"])
        raw = np.asanyarray(image.dataobj)
        assert str(raw.dtype) == record["image_dtype"]
        assert np.all(np.isfinite(raw))
        assert -1024 <= raw.min() and raw.max() <= 3071
        assert np.all(raw == image.get_fdata()), "no intensity scaling in the header"
        dtypes.add(str(raw.dtype))
    assert dtypes == {"int16", "float32"}


def test_geometry_is_anisotropic_and_shared_by_image_and_mask(small_cohort):
    out_dir, summary = small_cohort
    for record in summary["cases"]:
        image = nib.load(out_dir / record["image"])
        x, y, z = image.shape
        assert 84 <= x <= 112 and 64 <= y <= 88 and 32 <= z <= 44
        assert tuple(record["shape"]) == image.shape
        zooms = image.header.get_zooms()
        assert zooms[0] == zooms[1] and 0.70 <= zooms[0] <= 0.80 and zooms[2] == 2.0
        assert tuple(record["spacing"]) == tuple(float(v) for v in zooms)
        assert np.array_equal(np.diag(image.affine)[:3], np.asarray(zooms))
        assert (
            int(image.header["sform_code"]) == 1
            and int(image.header["qform_code"]) == 1
        )
        if record["mask"] is not None:
            mask = nib.load(out_dir / record["mask"])
            assert mask.shape == image.shape
            assert np.array_equal(mask.affine, image.affine)
            assert np.array_equal(mask.header.get_sform(), image.header.get_sform())
            assert np.array_equal(mask.header.get_qform(), image.header.get_qform())
    origins = {
        tuple(nib.load(out_dir / r["image"]).affine[:3, 3]) for r in summary["cases"]
    }
    assert len(origins) == len(summary["cases"])


def test_every_labelled_case_has_one_lesion_of_realistic_size(thirty_case_cohort):
    out_dir, summary = thirty_case_cohort
    for record, _, labels in labelled_cases(out_dir, summary):
        lesion = labels == 2
        assert 0.003 <= lesion.mean() <= 0.04, record["case_id"]
        assert 0.03 <= (labels > 0).mean() <= 0.12, record["case_id"]
        _, n_components = ndimage.label(lesion)
        assert n_components == 1, record["case_id"]
        # The lesion sits in or at the edge of the gland, so a good part of its border touches pancreas.
        border = ndimage.binary_dilation(lesion) & ~lesion
        assert (labels[border] == 1).mean() > 0.1, record["case_id"]


def test_subtype_shows_in_the_lesion_but_not_in_the_whole_image(thirty_case_cohort):
    out_dir, summary = thirty_case_cohort
    subtypes, lesion_hu, contrast_hu, core_std_hu, image_mean_hu = [], [], [], [], []
    for record, image, labels in labelled_cases(out_dir, summary):
        lesion = labels == 2
        core = ndimage.binary_erosion(lesion, iterations=2)
        subtypes.append(record["subtype"])
        lesion_hu.append(image[lesion].mean())
        contrast_hu.append(image[lesion].mean() - image[labels == 1].mean())
        core_std_hu.append(image[core].std())
        image_mean_hu.append(image.mean())
    subtypes = np.asarray(subtypes)
    assert len(subtypes) == 30

    def class_means(values):
        return [
            np.mean(np.asarray(values)[subtypes == subtype]) for subtype in (0, 1, 2)
        ]

    pdac, cyst, enhancing = class_means(contrast_hu)
    assert cyst < pdac < 0 < enhancing
    assert np.argmin(class_means(lesion_hu)) == 1
    pdac_std, cyst_std, enhancing_std = class_means(core_std_hu)
    assert cyst_std < 0.75 * min(pdac_std, enhancing_std)
    assert between_class_share(contrast_hu, subtypes) > 0.8

    # Under no subtype effect the share for 3 classes and 30 cases exceeds 0.25 about 2% of the time.
    assert between_class_share(image_mean_hu, subtypes) < 0.25


def test_anatomy_away_from_the_lesion_does_not_depend_on_subtype():
    cases = [draw_case(seed=3, index=7, subtype=subtype) for subtype in (0, 1, 2)]
    any_lesion = np.any([case.labels == 2 for case in cases], axis=0)
    far_from_lesion = (
        ndimage.distance_transform_edt(~any_lesion, sampling=cases[0].zooms) > 8.0
    )
    assert far_from_lesion.mean() > 0.5
    for case in cases[1:]:
        assert case.hu.shape == cases[0].hu.shape and case.zooms == cases[0].zooms
        assert np.array_equal(case.affine, cases[0].affine)
        assert np.array_equal(
            case.labels[far_from_lesion], cases[0].labels[far_from_lesion]
        )
        assert np.array_equal(case.hu[far_from_lesion], cases[0].hu[far_from_lesion])


def test_rejects_bad_arguments_and_a_non_empty_directory(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        make_demo_cohort(tmp_path / "a", n_train=2)
    with pytest.raises(ValueError, match="class_fractions"):
        make_demo_cohort(tmp_path / "b", class_fractions=(1.0, 0.0, 1.0))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "old.nii.gz").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not empty"):
        make_demo_cohort(tmp_path / "c")
