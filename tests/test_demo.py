"""Tests for the synthetic cohort: layout, determinism, file quirks, a subtype signal that lives in the
lesion only (quick mode), any number of subtypes, test labels outside the cohort, and the hard mode."""

import csv
import math
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pancreas_mtl.demo import (
    DEFAULT_CLASS_FRACTIONS,
    FLOAT_LABEL_ONE,
    MAX_SUBTYPES,
    SMALL_LESION_DIAMETER_MM,
    case_rngs,
    default_class_fractions,
    draw_case,
    draw_hard_appearance,
    is_small_lesion,
    make_demo_cohort,
    plan_cases,
    subtype_counts,
)

SMALL_COHORT = {"n_train": 6, "n_validation": 3, "n_test": 2}
STRAY_FILES = {"train/.DS_Store", "train/subtype1/notes.txt", "test/notes.txt"}


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    """The small quick cohort, its test labels written beside it (the cohort must not change)."""
    root = tmp_path_factory.mktemp("small")
    return root / "cohort", make_demo_cohort(
        root / "cohort", seed=0, test_labels_dir=root / "test_labels", **SMALL_COHORT
    )


@pytest.fixture(scope="module")
def hard_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard")
    return root / "cohort", make_demo_cohort(
        root / "cohort",
        seed=0,
        difficulty="hard",
        test_labels_dir=root / "test_labels",
        **SMALL_COHORT,
    )


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


def test_mask_quirks_mix_float_and_integer_masks(
    small_cohort, thirty_case_cohort, hard_cohort
):
    for out_dir, summary in (small_cohort, thirty_case_cohort, hard_cohort):
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


@pytest.mark.parametrize("cohort", ["small_cohort", "hard_cohort"])
def test_images_mix_int16_and_float32(cohort, request):
    out_dir, summary = request.getfixturevalue(cohort)
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


@pytest.mark.parametrize("cohort", ["small_cohort", "hard_cohort"])
def test_geometry_is_anisotropic_and_shared_by_image_and_mask(cohort, request):
    out_dir, summary = request.getfixturevalue(cohort)
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


def test_rejects_bad_subtype_counts_difficulty_and_label_folders(tmp_path):
    for n_subtypes in (1, MAX_SUBTYPES + 1, 2.5):
        with pytest.raises(ValueError, match="n_subtypes"):
            make_demo_cohort(tmp_path / "a", n_subtypes=n_subtypes)
    with pytest.raises(ValueError, match="n_train"):
        make_demo_cohort(tmp_path / "a", n_train=3, n_subtypes=4)
    with pytest.raises(ValueError, match="class_fractions"):
        make_demo_cohort(tmp_path / "a", n_subtypes=4, class_fractions=DEFAULT_CLASS_FRACTIONS)
    with pytest.raises(ValueError, match="difficulty"):
        make_demo_cohort(tmp_path / "a", difficulty="medium")
    with pytest.raises(ValueError, match="outside"):
        make_demo_cohort(tmp_path / "a", test_labels_dir=tmp_path / "a" / "labels")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "subtypes.csv").write_text("Names,Subtype\n")
    with pytest.raises(FileExistsError, match="not empty"):
        make_demo_cohort(tmp_path / "a", test_labels_dir=tmp_path / "labels")
    assert not (tmp_path / "a").exists()


def test_default_class_fractions_are_the_real_mix_for_three_and_uniform_otherwise():
    assert default_class_fractions(3) == DEFAULT_CLASS_FRACTIONS
    assert np.allclose(DEFAULT_CLASS_FRACTIONS, (0.25, 0.42, 0.33), atol=0.01)
    assert default_class_fractions(2) == (0.5, 0.5)
    assert default_class_fractions(4) == (0.25,) * 4
    assert subtype_counts(10, default_class_fractions(4), at_least_one=True) == [3, 3, 2, 2]
    assert subtype_counts(3, default_class_fractions(2), at_least_one=False) == [2, 1]


@pytest.mark.parametrize(
    "n_subtypes,sizes,train_counts",
    [(2, {"n_train": 4, "n_validation": 2, "n_test": 1}, [2, 2]),
     (4, {"n_train": 8, "n_validation": 4, "n_test": 2}, [2, 2, 2, 2])],
)
def test_any_number_of_subtypes_gives_one_folder_each(tmp_path, n_subtypes, sizes, train_counts):
    summary = make_demo_cohort(tmp_path / "cohort", seed=2, n_subtypes=n_subtypes, **sizes)
    assert summary["n_subtypes"] == n_subtypes
    folders = [f"subtype{k}" for k in range(n_subtypes)]
    for split in ("train", "validation"):
        assert sorted(p.name for p in (tmp_path / "cohort" / split).iterdir() if p.is_dir()) == folders
        for k, folder in enumerate(folders):
            names = [p.name for p in (tmp_path / "cohort" / split / folder).iterdir()]
            images = [n for n in names if re.fullmatch(r"demo_\d{3}_0000\.nii\.gz", n)]
            masks = [n for n in names if re.fullmatch(r"demo_\d{3}\.nii\.gz", n)]
            assert len(masks) == len(images) == summary["counts"][split][k] >= 1
    assert [summary["counts"]["train"][k] for k in range(n_subtypes)] == train_counts
    assert {r["subtype"] for r in summary["cases"]} <= set(range(n_subtypes))
    assert len(list((tmp_path / "cohort" / "test").glob("*_0000.nii.gz"))) == sizes["n_test"]


def test_a_case_does_not_depend_on_the_number_of_subtypes():
    """K=2 uses the first two archetypes: the same (seed, index, subtype) draws the same case."""
    two = plan_cases(4, 2, 0, 5, default_class_fractions(2))
    case = draw_case(5, two[0].index, two[0].subtype)
    again = draw_case(5, two[0].index, two[0].subtype)
    assert np.array_equal(case.hu, again.hu) and np.array_equal(case.labels, again.labels)


def lesion_statistics(case):
    lesion = case.labels == 2
    return case.hu[lesion], case.hu[case.labels == 1].mean()


def test_further_archetypes_show_calcification_fluid_and_septa():
    cases = {k: draw_case(seed=3, index=7, subtype=k) for k in range(MAX_SUBTYPES)}
    cyst, _ = lesion_statistics(cases[1])
    mixed, pancreas_hu = lesion_statistics(cases[3])
    septated, _ = lesion_statistics(cases[4])
    # Calcified mixed solid-cystic: calcified nodules, a fluid part and a solid part near the gland.
    assert mixed.max() > 250 and (mixed < 25).mean() > 0.15 and (np.abs(mixed - pancreas_hu) < 25).mean() > 0.2
    # Septated cyst: water density like the plain cyst, but septa widen its spread.
    assert np.median(septated) < 30 and np.median(cyst) < 30
    assert np.percentile(septated, 95) > np.percentile(cyst, 95) + 10
    any_lesion = np.any([case.labels == 2 for case in cases.values()], axis=0)
    far = ndimage.distance_transform_edt(~any_lesion, sampling=cases[0].zooms) > 8.0
    for case in cases.values():
        assert np.array_equal(case.hu[far], cases[0].hu[far])


def test_test_labels_are_written_beside_the_cohort(small_cohort, tmp_path):
    out_dir, summary = small_cohort
    labels_dir = out_dir.parent / "test_labels"
    assert summary["test_labels_dir"] == str(labels_dir)
    test_records = [r for r in summary["cases"] if r["split"] == "test"]
    assert relative_files(labels_dir) == {
        "subtypes.csv", *(f"{r['case_id']}.nii.gz" for r in test_records)
    }
    with open(labels_dir / "subtypes.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Names", "Subtype"]
    assert rows[1:] == [[f"{r['case_id']}.nii.gz", str(r["subtype"])] for r in test_records]
    for record in test_records:
        image = nib.load(out_dir / record["image"])
        mask = nib.load(labels_dir / f"{record['case_id']}.nii.gz")
        assert mask.shape == image.shape and np.array_equal(mask.affine, image.affine)
        labels = np.rint(np.asanyarray(mask.dataobj)).astype(np.uint8)
        assert set(np.unique(labels).tolist()) == {0, 1, 2}
        expected = draw_case(0, int(record["case_id"].split("_")[1]), record["subtype"])
        assert np.array_equal(labels, expected.labels)


def test_hard_cohort_is_deterministic_with_any_worker_count(hard_cohort, tmp_path):
    out_dir, summary = hard_cohort
    again = make_demo_cohort(
        tmp_path / "cohort",
        seed=0,
        difficulty="hard",
        workers=2,
        test_labels_dir=tmp_path / "test_labels",
        **SMALL_COHORT,
    )
    assert again["cases"] == summary["cases"]
    for root, other in ((out_dir, tmp_path / "cohort"), (out_dir.parent / "test_labels", tmp_path / "test_labels")):
        files = relative_files(root)
        assert files == relative_files(other)
        for name in files:
            assert (root / name).read_bytes() == (other / name).read_bytes(), name
    assert summary["difficulty"] == "hard"
    # Hard and quick cases of the same seed and index differ.
    record = summary["cases"][0]
    quick = draw_case(0, 0, record["subtype"])
    image = np.asanyarray(nib.load(out_dir / record["image"]).dataobj)
    assert image.shape == quick.hu.shape and not np.allclose(image, quick.hu, atol=1)


def test_hard_mode_keeps_the_layout_and_the_real_class_mix(hard_cohort):
    out_dir, summary = hard_cohort
    counts = summary["counts"]
    assert [counts["train"][k] for k in range(3)] == subtype_counts(6, DEFAULT_CLASS_FRACTIONS, True)
    specs = plan_cases(60, 24, 24, 0, default_class_fractions(3))
    mix = np.bincount([s.subtype for s in specs], minlength=3) / len(specs)
    assert np.allclose(mix, (0.25, 0.42, 0.33), atol=0.02)
    assert sorted(p.name for p in (out_dir / "test").iterdir()) == sorted(
        [f"{r['case_id']}_0000.nii.gz" for r in summary["cases"] if r["split"] == "test"] + ["notes.txt"]
    )
    for record, image, labels in labelled_cases(out_dir, summary):
        assert set(np.unique(labels).tolist()) == {0, 1, 2}, record["case_id"]
        assert np.all(np.isfinite(image))


def equivalent_diameter_mm(case):
    return (6 * (case.labels == 2).sum() * math.prod(case.zooms) / math.pi) ** (1 / 3)


def test_a_fifth_of_the_hard_lesions_are_under_5_mm():
    for seed in (0, 1, 7):
        small = [is_small_lesion(seed, index) for index in range(100)]
        assert 0.17 <= np.mean(small) <= 0.23
    small_indices = [i for i in range(40) if is_small_lesion(0, i)][:3]
    other_indices = [i for i in range(40) if not is_small_lesion(0, i)][:3]
    for index in small_indices + other_indices:
        case = draw_case(0, index, index % 3, "hard")
        diameter = equivalent_diameter_mm(case)
        assert (diameter < SMALL_LESION_DIAMETER_MM) == (index in small_indices), (index, diameter)
        assert diameter > 2.0 and ndimage.label(case.labels == 2)[1] == 1


def first_case_with(seed, subtype, predicate):
    for index in range(200):
        appearance = draw_hard_appearance(case_rngs(seed, index, subtype)[3], subtype)
        if predicate(appearance) and not is_small_lesion(seed, index):
            return index
    raise AssertionError("no such case")


def dark_duct_volume_mm3(case):
    """Fluid-dark voxels of label 1 (the duct is part of the pancreas label) away from the lesion."""
    smoothed = ndimage.gaussian_filter(case.hu, (1.0, 1.0, 0.3))
    parenchyma_hu = np.median(case.hu[case.labels == 1])
    away = ndimage.distance_transform_edt(case.labels != 2, sampling=case.zooms) > 3.0
    # Deep in the gland: its border is partial volume with fat.
    deep = ndimage.distance_transform_edt(case.labels > 0, sampling=case.zooms) > 1.5
    dark = (case.labels == 1) & away & deep & (smoothed < (parenchyma_hu + 10.0) / 2)
    return dark.sum() * math.prod(case.zooms)


def test_hard_pdac_dilates_the_duct_upstream_and_densities_overlap():
    index = first_case_with(0, 0, lambda a: a.duct_radius_mm > 2.5 and a.atrophy < 1.0)
    pdac = draw_case(0, index, 0, "hard")
    net = draw_case(0, index, 2, "hard")
    assert dark_duct_volume_mm3(pdac) > 2 * dark_duct_volume_mm3(net) + 50
    assert (pdac.labels == 1).sum() < (net.labels == 1).sum()  # the atrophic tail
    # An iso-enhancing neuroendocrine lesion and an isoattenuating PDAC, or a dense mucinous cyst
    # and a strongly hypo-enhancing PDAC, can share their mean density.
    ratios = [draw_hard_appearance(case_rngs(0, i, 0)[3], 0).enhancement_ratio for i in range(60)]
    net_ratios = [draw_hard_appearance(case_rngs(0, i, 2)[3], 2).enhancement_ratio for i in range(60)]
    assert max(ratios) > min(net_ratios)
    cyst_hu = [draw_hard_appearance(case_rngs(0, i, 1)[3], 1).fluid_hu for i in range(60)]
    assert max(cyst_hu) > 40 + min(ratios) * 35 * 0.5


@pytest.mark.parametrize("difficulty", ["quick", "hard"])
def test_real_size_cases_have_the_real_cohorts_size_and_spacing(difficulty):
    from pancreas_mtl.demo import SHAPE_RANGES_XYZ

    case = draw_case(0, 1, 1, difficulty, size="real")
    x, y, z = case.hu.shape
    # the real cohort's median is about 180 x 117 x 59 voxels (X, Y, Z) at 0.73 x 0.73 x 2.0 mm
    for n, (low, high) in zip((x, y, z), SHAPE_RANGES_XYZ["real"]):
        assert low <= n <= high
    assert (160, 104, 52) <= (x, y, z) <= (200, 130, 66)
    assert case.zooms[2] == 2.0 and 0.70 <= case.zooms[0] == case.zooms[1] <= 0.80
    np.testing.assert_allclose(np.diag(case.affine)[:3], case.zooms)
    assert case.labels.shape == case.hu.shape
    assert set(np.unique(case.labels)) == {0, 1, 2}
    if difficulty == "quick":
        # the quick lesion stays about 1-2.5 % of the ROI (hard-mode lesions have sizes in mm)
        assert 0.005 < (case.labels == 2).mean() < 0.04


def test_quick_size_is_the_default_and_unchanged():
    default = draw_case(2, 3, 0)
    quick = draw_case(2, 3, 0, size="quick")
    np.testing.assert_array_equal(default.hu, quick.hu)
    np.testing.assert_array_equal(default.labels, quick.labels)
    assert default.hu.shape < draw_case(2, 3, 0, size="real").hu.shape


def test_unknown_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="size"):
        make_demo_cohort(tmp_path / "c", 3, 3, 1, size="huge")
