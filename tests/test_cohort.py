import csv
import gzip
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pancreas_mtl.cohort import (
    CohortError,
    Problem,
    check_headers,
    discover_cohort,
    fix_labels,
    ingest_cohort,
    scan_cohort,
    write_label_fix_report,
    write_raw_dataset,
)


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def raw_dir_for(cohort: Path) -> Path:
    return cohort.parent / "nnUNet_raw" / "Dataset501_Pancreas"




def test_discover_finds_cases_with_splits_and_subtypes(make_cohort):
    cohort = make_cohort()
    cases = discover_cohort(cohort)
    assert [(c.case_id, c.split, c.subtype) for c in cases] == [
        ("quiz_000", "train", 0), ("quiz_001", "train", 1), ("quiz_002", "train", 2),
        ("quiz_003", "validation", 0), ("quiz_004", "validation", 1), ("quiz_005", "validation", 2),
        ("quiz_006", "test", None), ("quiz_007", "test", None),
    ]
    first = cases[0]
    assert first.image == cohort.absolute() / "train/subtype0/quiz_000_0000.nii.gz"
    assert first.mask == cohort.absolute() / "train/subtype0/quiz_000.nii.gz"
    assert first.data_dir == cohort.absolute()
    assert cases[-1].mask is None and cases[-1].data_dir == cohort.absolute()


def test_discover_ignores_stray_files_with_warnings(make_cohort):
    cohort = make_cohort()
    for rel in (".DS_Store", "notes.txt", "train/.DS_Store", "train/subtype1/notes.txt",
                "test/Thumbs.db", "validation/subtype2/._quiz_005.nii.gz"):
        (cohort / rel).write_bytes(b"junk")
    scan = scan_cohort(cohort)
    assert scan.problems == []
    assert len(scan.cases) == 8
    ignored = {w.path for w in scan.warnings if "ignored" in w.message}
    assert ignored == {".DS_Store", "notes.txt", "train/.DS_Store", "train/subtype1/notes.txt",
                       "test/Thumbs.db", "validation/subtype2/._quiz_005.nii.gz"}


def test_discover_lists_layout_problems_together(make_cohort):
    cohort = make_cohort()
    shutil.rmtree(cohort / "validation")
    (cohort / "train/subtype0/quiz_000.nii.gz").unlink()
    (cohort / "test/quiz_006_0000.nii.gz").rename(cohort / "test/quiz_006.nii.gz")
    with pytest.raises(CohortError) as info:
        discover_cohort(cohort)
    message = str(info.value)
    assert message.startswith(f"Cohort at {cohort.absolute()} has 3 problems:")
    assert "quiz_000 (train/subtype0/quiz_000_0000.nii.gz): image has no mask" in message
    assert "validation: missing split folder" in message
    assert "quiz_006 (test/quiz_006.nii.gz)" in message


def test_discover_case_ids_ending_in_0000(tmp_path, nifti):
    for name in ("case_0000_0000.nii.gz", "case_0000.nii.gz", "case_0001_0000.nii.gz", "case_0001.nii.gz"):
        nifti.save(tmp_path / "train/subtype0" / name, nifti.mask())
    nifti.save(tmp_path / "validation/subtype1/x_0000.nii.gz", nifti.image(0))
    nifti.save(tmp_path / "validation/subtype1/x.nii.gz", nifti.mask())
    cases = discover_cohort(tmp_path)
    assert [c.case_id for c in cases] == ["case_0000", "case_0001", "x"]
    assert cases[0].mask.name == "case_0000.nii.gz" and cases[0].image.name == "case_0000_0000.nii.gz"


def test_discover_handles_thousands_of_cases(tmp_path):
    for i in range(3000):
        folder = tmp_path / ("train" if i % 5 else "validation") / f"subtype{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"c{i:04d}_0000.nii.gz").touch()
        (folder / f"c{i:04d}.nii.gz").touch()
    cases = discover_cohort(tmp_path)
    assert len(cases) == 3000
    assert len({c.case_id for c in cases}) == 3000


def test_problem_format():
    assert str(Problem("quiz_001", "train/subtype0/quiz_001.nii.gz", "bad")) == \
        "quiz_001 (train/subtype0/quiz_001.nii.gz): bad"
    assert str(Problem("", "validation", "missing")) == "validation: missing"




def test_fix_labels_rounds_float_one():
    mask = np.array([0.0, 1.0000152587890625, 1.0000152587890625, 2.0, 1.0, 0.0009], dtype=np.float32)
    fixed, fix = fix_labels(mask)
    assert fixed.dtype == np.uint8
    assert fixed.tolist() == [0, 1, 1, 2, 1, 0]
    assert fix.voxels_rounded == 3
    assert fix.max_abs_deviation == pytest.approx(0.0009, rel=1e-3)
    assert fix.source_dtype == "float32"
    assert fix.label_counts == {0: 2, 1: 3, 2: 1}
    assert (fix.pancreas_voxels, fix.lesion_voxels) == (3, 1)


def test_fix_labels_accepts_integer_masks_unchanged():
    mask = np.array([[0, 1], [2, 2]], dtype=np.int16)
    fixed, fix = fix_labels(mask)
    assert fixed.dtype == np.uint8
    np.testing.assert_array_equal(fixed, mask)
    assert fix.voxels_rounded == 0 and fix.max_abs_deviation == 0.0
    assert fix.label_counts == {0: 1, 1: 1, 2: 2}


@pytest.mark.parametrize("bad, named", [
    (np.array([0, 1, 3, 3], dtype=np.uint8), "3 (2 voxels)"),
    (np.array([0, 1.4, 1], dtype=np.float32), "1.4 (1 voxel)"),
    (np.array([0, -1, 2], dtype=np.int16), "-1 (1 voxel)"),
    (np.array([0, 2.002, 1], dtype=np.float64), "2.002 (1 voxel)"),
])
def test_fix_labels_rejects_values_naming_them(bad, named):
    with pytest.raises(ValueError) as info:
        fix_labels(bad, tolerance=1e-3)
    assert named in str(info.value)


def test_fix_labels_lists_at_most_five_values():
    mask = np.array([0, 3, 4, 4, 5, 6, 7, 8, 9], dtype=np.int32)
    with pytest.raises(ValueError) as info:
        fix_labels(mask)
    message = str(info.value)
    assert message.startswith("8 mask voxels")
    assert "4 (2 voxels)" in message and "and 2 more distinct values" in message


def test_fix_labels_rejects_nan():
    with pytest.raises(ValueError, match="1 non-finite voxel"):
        fix_labels(np.array([0, np.nan, 1], dtype=np.float32))


def test_fix_labels_tolerance_is_configurable():
    mask = np.array([0, 1.01, 2], dtype=np.float32)
    with pytest.raises(ValueError):
        fix_labels(mask, tolerance=1e-3)
    fixed, fix = fix_labels(mask, tolerance=0.05)
    assert fixed.tolist() == [0, 1, 2] and fix.voxels_rounded == 1




def test_check_headers_accepts_valid_cohort(make_cohort):
    assert check_headers(discover_cohort(make_cohort())) == []


def test_affine_tolerance_allows_float32_header_rounding(make_cohort, nifti):
    cohort = make_cohort()
    mask_path = cohort / "train/subtype0/quiz_000.nii.gz"
    nifti.save(mask_path, nifti.mask(), nifti.affine + 1e-4)
    assert check_headers(discover_cohort(cohort)) == []




def _missing_mask(cohort, nifti):
    (cohort / "train/subtype1/quiz_001.nii.gz").unlink()
    return "quiz_001", "train/subtype1/quiz_001_0000.nii.gz"


def _mask_without_image(cohort, nifti):
    (cohort / "validation/subtype0/quiz_003_0000.nii.gz").unlink()
    return "quiz_003", "validation/subtype0/quiz_003.nii.gz"


def _shape_mismatch(cohort, nifti):
    nifti.save(cohort / "train/subtype2/quiz_002.nii.gz", nifti.mask()[:, :, :4])
    return "quiz_002", "train/subtype2/quiz_002.nii.gz"


def _affine_mismatch(cohort, nifti):
    shifted = nifti.affine.copy()
    shifted[2, 3] += 5.0
    nifti.save(cohort / "train/subtype0/quiz_000.nii.gz", nifti.mask(), shifted)
    return "quiz_000", "train/subtype0/quiz_000.nii.gz"


def _label_three(cohort, nifti):
    mask = nifti.mask()
    mask[0, 0, 0] = 3
    nifti.save(cohort / "validation/subtype1/quiz_004.nii.gz", mask)
    return "quiz_004", "validation/subtype1/quiz_004.nii.gz"


def _label_far_from_integer(cohort, nifti):
    mask = nifti.mask()
    mask[0, 0, 0] = 1.4
    nifti.save(cohort / "validation/subtype2/quiz_005.nii.gz", mask)
    return "quiz_005", "validation/subtype2/quiz_005.nii.gz"


def _nan_in_image(cohort, nifti):
    image = nifti.image(1)
    image[1, 1, 1] = np.nan
    nifti.save(cohort / "train/subtype1/quiz_001_0000.nii.gz", image)
    return "quiz_001", "train/subtype1/quiz_001_0000.nii.gz"


def _nan_in_test_image(cohort, nifti):
    image = nifti.image(6)
    image[0, 0, 0] = np.inf
    nifti.save(cohort / "test/quiz_006_0000.nii.gz", image)
    return "quiz_006", "test/quiz_006_0000.nii.gz"


def _nan_in_mask(cohort, nifti):
    mask = nifti.mask()
    mask[0, 0, 0] = np.nan
    nifti.save(cohort / "train/subtype0/quiz_000.nii.gz", mask)
    return "quiz_000", "train/subtype0/quiz_000.nii.gz"


def _unreadable_image(cohort, nifti):
    (cohort / "train/subtype2/quiz_002_0000.nii.gz").write_bytes(os.urandom(2000))
    return "quiz_002", "train/subtype2/quiz_002_0000.nii.gz"


def _truncated_image(cohort, nifti):
    path = cohort / "validation/subtype0/quiz_003_0000.nii.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    return "quiz_003", "validation/subtype0/quiz_003_0000.nii.gz"


def _four_d_image(cohort, nifti):
    nifti.save(cohort / "train/subtype0/quiz_000_0000.nii.gz", nifti.image(0)[..., None])
    return "quiz_000", "train/subtype0/quiz_000_0000.nii.gz"


def _same_case_in_train_and_validation(cohort, nifti):
    for name in ("quiz_001_0000.nii.gz", "quiz_001.nii.gz"):
        shutil.copy(cohort / "train/subtype1" / name, cohort / "validation/subtype1" / name)
    return "quiz_001", "validation/subtype1/quiz_001_0000.nii.gz"


def _same_case_in_two_subtypes(cohort, nifti):
    for name in ("quiz_002_0000.nii.gz", "quiz_002.nii.gz"):
        shutil.copy(cohort / "train/subtype2" / name, cohort / "train/subtype0" / name)
    return "quiz_002", "train/subtype0/quiz_002_0000.nii.gz"


def _subtype_gap(cohort, nifti):
    # classes 0, 1, 2 and 4: no subtype3
    nifti.save(cohort / "train/subtype4/quiz_099_0000.nii.gz", nifti.image(99))
    nifti.save(cohort / "train/subtype4/quiz_099.nii.gz", nifti.mask())
    return "", "train/subtype4"


def _nifti_in_unknown_folder(cohort, nifti):
    nifti.save(cohort / "train/subtype_x/quiz_099_0000.nii.gz", nifti.image(99))
    return "quiz_099", "train/subtype_x/quiz_099_0000.nii.gz"


def _mask_in_test(cohort, nifti):
    nifti.save(cohort / "test/quiz_006.nii.gz", nifti.mask())
    return "quiz_006", "test/quiz_006.nii.gz"


BAD_INPUTS = [
    _missing_mask, _mask_without_image, _shape_mismatch, _affine_mismatch, _label_three,
    _label_far_from_integer, _nan_in_image, _nan_in_test_image, _nan_in_mask, _unreadable_image,
    _truncated_image, _four_d_image, _same_case_in_train_and_validation, _same_case_in_two_subtypes,
    _subtype_gap, _nifti_in_unknown_folder, _mask_in_test,
]


@pytest.mark.parametrize("damage", BAD_INPUTS, ids=[f.__name__.strip("_") for f in BAD_INPUTS])
def test_bad_input_stops_ingestion(make_cohort, nifti, damage):
    cohort = make_cohort()
    case_id, rel_path = damage(cohort, nifti)
    before = tree_digest(cohort)
    raw = raw_dir_for(cohort)
    with pytest.raises(CohortError) as info:
        ingest_cohort(cohort, raw)
    assert (f"{case_id} ({rel_path}): " if case_id else f"{rel_path}: ") in str(info.value)
    assert tree_digest(cohort) == before
    assert not raw.exists()
    assert not raw.parent.exists() or os.listdir(raw.parent) == []


def test_failed_run_keeps_previous_dataset(make_cohort, nifti):
    cohort = make_cohort()
    raw = raw_dir_for(cohort)
    ingest_cohort(cohort, raw)
    previous = tree_digest(raw)
    _label_three(cohort, nifti)
    with pytest.raises(CohortError):
        ingest_cohort(cohort, raw, workers=2)
    assert tree_digest(raw) == previous
    assert os.listdir(raw.parent) == [raw.name]


def test_all_problems_listed_in_one_error(make_cohort, nifti):
    cohort = make_cohort()
    _missing_mask(cohort, nifti)
    _shape_mismatch(cohort, nifti)
    _subtype_gap(cohort, nifti)
    with pytest.raises(CohortError) as info:
        ingest_cohort(cohort, raw_dir_for(cohort))
    assert len(info.value.problems) == 3
    lines = str(info.value).splitlines()
    assert lines[0].endswith("has 3 problems:")
    assert {line.split()[0] for line in lines[1:]} == {"quiz_001", "quiz_002", "train/subtype4:"}
    assert "no subtype3" in str(info.value)


def test_voxel_problems_of_all_cases_listed_together(make_cohort, nifti):
    cohort = make_cohort()
    _label_three(cohort, nifti)
    _nan_in_image(cohort, nifti)
    _nan_in_mask(cohort, nifti)
    with pytest.raises(CohortError) as info:
        ingest_cohort(cohort, raw_dir_for(cohort), workers=2)
    assert sorted(p.case_id for p in info.value.problems) == ["quiz_000", "quiz_001", "quiz_004"]


def test_refuses_to_write_inside_data_dir(make_cohort):
    cohort = make_cohort()
    before = tree_digest(cohort)
    for target in (cohort / "nnUNet_raw" / "Dataset501_Pancreas", cohort, cohort.parent):
        with pytest.raises(ValueError, match="outside data_dir"):
            ingest_cohort(cohort, target)
    assert tree_digest(cohort) == before




def _check_written_dataset(cohort: Path, raw: Path, ext: str = ".nii.gz"):
    cases = discover_cohort(cohort)
    labelled = [c for c in cases if c.mask is not None]
    assert sorted(p.name for p in (raw / "imagesTr").iterdir()) == sorted(f"{c.case_id}_0000.nii.gz" for c in labelled)
    assert sorted(p.name for p in (raw / "labelsTr").iterdir()) == sorted(f"{c.case_id}.nii.gz" for c in labelled)
    assert sorted(p.name for p in (raw / "imagesTs").iterdir()) == \
        sorted(f"{c.case_id}_0000.nii.gz" for c in cases if c.mask is None)
    for case in cases:
        folder = "imagesTs" if case.mask is None else "imagesTr"
        written = (raw / folder / f"{case.case_id}_0000.nii.gz").read_bytes()
        source = case.image.read_bytes()
        assert (written if ext == ".nii.gz" else gzip.decompress(written)) == source
        if case.mask is None:
            continue
        image = nib.load(case.image)
        label = nib.load(raw / "labelsTr" / f"{case.case_id}.nii.gz")
        values = np.asanyarray(label.dataobj)
        assert label.get_data_dtype() == np.uint8 and values.dtype == np.uint8
        assert set(np.unique(values)) <= {0, 1, 2}
        np.testing.assert_array_equal(values, np.rint(np.asanyarray(nib.load(case.mask).dataobj)))
        np.testing.assert_array_equal(label.affine, image.affine)
        np.testing.assert_array_equal(label.header.get_qform(), image.header.get_qform())
        np.testing.assert_array_equal(label.header.get_sform(), image.header.get_sform())
        assert int(label.header["qform_code"]) == int(image.header["qform_code"])
        assert int(label.header["sform_code"]) == int(image.header["sform_code"])


def test_ingest_writes_nnunet_raw_dataset(make_cohort):
    cohort = make_cohort()
    before = tree_digest(cohort)
    raw = raw_dir_for(cohort)
    result = ingest_cohort(cohort, raw)
    assert result.raw_dataset_dir == raw.absolute()
    assert result.num_training == 6 and len(result.cases) == 8
    _check_written_dataset(cohort, raw)
    assert tree_digest(cohort) == before
    assert os.listdir(raw.parent) == [raw.name]
    fixes = result.label_fixes
    assert sorted(fixes) == [f"quiz_{i:03d}" for i in range(6)]
    assert fixes["quiz_000"].voxels_rounded == 44 and fixes["quiz_001"].voxels_rounded == 0
    assert fixes["quiz_000"].label_counts == {0: 162, 1: 44, 2: 4}


def test_ingest_parallel_matches_serial(make_cohort, tmp_path):
    cohort = make_cohort()
    serial = ingest_cohort(cohort, tmp_path / "serial" / "Dataset501_Pancreas", workers=1)
    parallel = ingest_cohort(cohort, tmp_path / "parallel" / "Dataset501_Pancreas", workers=3)
    assert tree_digest(serial.raw_dataset_dir) == tree_digest(parallel.raw_dataset_dir)
    assert serial.records == parallel.records


def test_ingest_replaces_existing_dataset(make_cohort):
    cohort = make_cohort()
    raw = raw_dir_for(cohort)
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "imagesTr" / "stale_0000.nii.gz").write_bytes(b"old")
    ingest_cohort(cohort, raw)
    assert not (raw / "imagesTr" / "stale_0000.nii.gz").exists()
    assert os.listdir(raw.parent) == [raw.name]


def test_stray_files_accepted_with_warning(make_cohort, caplog):
    cohort = make_cohort()
    (cohort / ".DS_Store").write_bytes(b"\x00\x00")
    (cohort / "train/subtype0/notes.txt").write_text("scanned on a Tuesday")
    with caplog.at_level(logging.WARNING, logger="pancreas_mtl.cohort"):
        result = ingest_cohort(cohort, raw_dir_for(cohort))
    assert {w.path for w in result.warnings} == {".DS_Store", "train/subtype0/notes.txt"}
    assert "train/subtype0/notes.txt" in caplog.text
    _check_written_dataset(cohort, raw_dir_for(cohort))


def test_case_without_lesion_accepted_with_warning(make_cohort, nifti, caplog):
    cohort = make_cohort()
    nifti.save(cohort / "train/subtype1/quiz_001.nii.gz", nifti.mask(lesion=False))
    with caplog.at_level(logging.WARNING, logger="pancreas_mtl.cohort"):
        result = ingest_cohort(cohort, raw_dir_for(cohort))
    assert [str(w) for w in result.warnings] == \
        ["quiz_001 (train/subtype1/quiz_001.nii.gz): no lesion voxels (label 2); accepted"]
    assert "quiz_001" in caplog.text
    assert result.label_fixes["quiz_001"].lesion_voxels == 0


@pytest.mark.parametrize("options", [
    {"mask_dtype": np.uint8},
    {"image_dtype": np.int16},
    {"image_dtype": np.float32, "mask_dtype": np.float64},
    {"ext": ".nii"},
], ids=["uint8-masks", "int16-images", "float64-masks", "uncompressed-nii"])
def test_benign_variants_accepted(make_cohort, options, caplog):
    cohort = make_cohort(**options)
    with caplog.at_level(logging.WARNING, logger="pancreas_mtl.cohort"):
        result = ingest_cohort(cohort, raw_dir_for(cohort))
    assert result.warnings == [] and caplog.text == ""
    _check_written_dataset(cohort, raw_dir_for(cohort), ext=options.get("ext", ".nii.gz"))
    if options.get("mask_dtype") == np.uint8:
        assert all(fix.voxels_rounded == 0 for fix in result.label_fixes.values())


def test_label_fix_report(make_cohort, nifti, tmp_path):
    cohort = make_cohort()
    nifti.save(cohort / "validation/subtype2/quiz_005.nii.gz", nifti.mask(lesion=False))
    result = ingest_cohort(cohort, raw_dir_for(cohort))
    report = tmp_path / "reports" / "label_fix.csv"
    write_label_fix_report(result, report)
    with open(report, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case_id"] for r in rows] == [f"quiz_{i:03d}" for i in range(6)]
    first = rows[0]
    assert first == {
        "case_id": "quiz_000", "split": "train", "subtype": "0", "mask_file": "train/subtype0/quiz_000.nii.gz",
        "mask_dtype": "float32", "image_dtype": "float32", "shape": "6x7x5", "spacing": "0.8x0.8x2.5",
        "voxels_rounded": "44", "max_abs_deviation": "1.52588e-05", "pancreas_voxels": "44",
        "lesion_voxels": "4", "warning": "",
    }
    assert rows[1]["voxels_rounded"] == "0"
    assert rows[5]["lesion_voxels"] == "0" and "no lesion voxels" in rows[5]["warning"]


def test_write_raw_dataset_writes_everything_for_the_dataset_step(make_cohort, tmp_path):
    cohort = make_cohort()
    raw = raw_dir_for(cohort)
    result = write_raw_dataset(cohort, raw, subtype_table=tmp_path / "dataset" / "subtypes.csv",
                               label_fix_report=tmp_path / "dataset" / "label_fix_report.csv",
                               dataset_name="PancreasMTL", workers=2)
    assert sorted(p.name for p in raw.iterdir()) == ["dataset.json", "imagesTr", "imagesTs", "labelsTr"]
    content = json.loads((raw / "dataset.json").read_text())
    assert content["numTraining"] == result.num_training == 6 and content["name"] == "PancreasMTL"
    assert (tmp_path / "dataset" / "subtypes.csv").read_text().splitlines()[1] == "quiz_000,train,0"
    assert len((tmp_path / "dataset" / "label_fix_report.csv").read_text().splitlines()) == 7


def _move_class(cohort, source: int, target: int) -> None:
    for split in ("train", "validation"):
        (cohort / split / f"subtype{source}").rename(cohort / split / f"subtype{target}")


def test_any_number_of_subtypes_from_the_folders(make_cohort, nifti, tmp_path):
    cohort = make_cohort()
    for split in ("train", "validation"):
        case = f"quiz_{'train' if split == 'train' else 'val'}_3"
        nifti.save(cohort / split / "subtype3" / f"{case}_0000.nii.gz", nifti.image(50))
        nifti.save(cohort / split / "subtype3" / f"{case}.nii.gz", nifti.mask())
    result = ingest_cohort(cohort, tmp_path / "raw4", dataset_name="Dataset501_Test")
    assert result.num_subtypes == 4
    assert json.loads((tmp_path / "raw4" / "dataset.json").read_text())["num_subtypes"] == 4
    assert {c.subtype for c in result.cases if c.subtype is not None} == {0, 1, 2, 3}

    two = make_cohort("two")
    for split in ("train", "validation"):
        shutil.rmtree(two / split / "subtype2")
    result = ingest_cohort(two, tmp_path / "raw2", dataset_name="Dataset502_Test")
    assert result.num_subtypes == 2


def test_one_class_or_a_gap_is_refused_naming_the_folders(make_cohort, tmp_path):
    one = make_cohort("one")
    for split in ("train", "validation"):
        for k in (1, 2):
            shutil.rmtree(one / split / f"subtype{k}")
    with pytest.raises(CohortError, match="at least two classes") as info:
        ingest_cohort(one, tmp_path / "raw1")
    assert "train/subtype0" in str(info.value)

    gap = make_cohort("gap")
    for split in ("train", "validation"):
        shutil.rmtree(gap / split / "subtype1")
    with pytest.raises(CohortError, match="no subtype1") as info:
        ingest_cohort(gap, tmp_path / "raw_gap")
    assert "train/subtype2, validation/subtype2" in str(info.value)
