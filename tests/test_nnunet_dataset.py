import json

import pandas as pd
import pytest

from pancreas_mtl.cohort import discover_cohort
from pancreas_mtl.layout import Case, read_num_subtypes, read_subtype_table, write_subtype_table
from pancreas_mtl.nnunet_dataset import (
    make_splits,
    write_dataset_json,
    write_splits,
    write_splits_for_table,
)


def synthetic_table(n_train=(5, 4, 3), n_val=(2, 2, 1), n_test=2) -> pd.DataFrame:
    rows, n = [], 0
    for split, counts in (("train", n_train), ("validation", n_val)):
        for subtype, count in enumerate(counts):
            for _ in range(count):
                rows.append((f"case_{n:03d}", split, subtype))
                n += 1
    rows += [(f"case_{n + i:03d}", "test", None) for i in range(n_test)]
    return pd.DataFrame(rows, columns=["case_id", "split", "subtype"]).astype({"subtype": "Int64"})


def test_dataset_json_region_labels(tmp_path):
    raw = tmp_path / "Dataset501_Pancreas"
    path = write_dataset_json(raw, num_training=6, dataset_name="Dataset501_Pancreas", num_subtypes=3)
    content = json.loads(path.read_text())
    assert content["channel_names"] == {"0": "CT"}
    assert content["labels"] == {"background": 0, "pancreas": [1, 2], "lesion": 2}
    assert content["regions_class_order"] == [1, 2]
    assert content["numTraining"] == 6
    assert content["file_ending"] == ".nii.gz"
    assert content["name"] == "Dataset501_Pancreas"
    assert content["num_subtypes"] == 3
    assert sorted(p.name for p in raw.iterdir()) == ["dataset.json"]


def test_dataset_json_is_understood_by_nnunet(tmp_path):
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    content = json.loads(write_dataset_json(tmp_path, 3, "Dataset501_Pancreas", 4).read_text())
    manager = LabelManager(content["labels"], content["regions_class_order"])
    assert manager.has_regions
    assert manager.all_regions == [(1, 2), 2]
    assert manager.num_segmentation_heads == 2
    assert read_num_subtypes(tmp_path) == 4


def test_subtype_table_roundtrip(make_cohort, tmp_path):
    cases = discover_cohort(make_cohort())
    path = write_subtype_table(list(reversed(cases)), tmp_path / "tables" / "subtypes.csv")
    assert path.read_text().splitlines()[:2] == ["case_id,split,subtype", "quiz_000,train,0"]
    assert path.read_text().splitlines()[-1] == "quiz_007,test,"
    table = read_subtype_table(path)
    assert list(table.columns) == ["case_id", "split", "subtype"]
    assert table["case_id"].tolist() == [f"quiz_{i:03d}" for i in range(8)]
    assert table["subtype"].tolist()[:6] == [0, 1, 2, 0, 1, 2]
    assert table["subtype"].isna().tolist() == [False] * 6 + [True] * 2
    assert list(tmp_path.joinpath("tables").iterdir()) == [path]


def test_subtype_table_keeps_odd_case_ids(tmp_path):
    cases = [Case("NA", "train", 1, tmp_path / "train/subtype1/NA_0000.nii.gz", tmp_path / "x.nii.gz"),
             Case("007", "test", None, tmp_path / "test/007_0000.nii.gz", None)]
    table = read_subtype_table(write_subtype_table(cases, tmp_path / "s.csv"))
    assert table["case_id"].tolist() == ["007", "NA"]


def test_fold0_is_given_split():
    table = synthetic_table()
    splits = make_splits(table)
    assert len(splits) == 1
    assert splits[0]["train"] == sorted(table.loc[table.split == "train", "case_id"])
    assert splits[0]["val"] == sorted(table.loc[table.split == "validation", "case_id"])


def test_splits_from_table_file(make_cohort, tmp_path):
    path = write_subtype_table(discover_cohort(make_cohort()), tmp_path / "subtypes.csv")
    assert make_splits(path) == [{"train": ["quiz_000", "quiz_001", "quiz_002"],
                                  "val": ["quiz_003", "quiz_004", "quiz_005"]}]


def test_cv_folds_are_stratified_and_disjoint():
    table = synthetic_table()
    labelled = table[table.split != "test"]
    subtype_of = dict(zip(labelled.case_id, labelled.subtype))
    splits = make_splits(table, cv_folds=3)
    assert len(splits) == 4
    all_val = []
    for fold in splits:
        assert not set(fold["train"]) & set(fold["val"])
        assert set(fold["train"]) | set(fold["val"]) == set(labelled.case_id)
        assert fold["train"] == sorted(fold["train"]) and fold["val"] == sorted(fold["val"])
        assert {subtype_of[c] for c in fold["val"]} == {0, 1, 2}
    for fold in splits[1:]:
        all_val += fold["val"]
    assert sorted(all_val) == sorted(labelled.case_id)


def test_splits_deterministic_and_seeded():
    table = synthetic_table()
    assert make_splits(table, cv_folds=3, seed=7) == make_splits(table.sample(frac=1, random_state=1), 3, 7)
    assert make_splits(table, cv_folds=3, seed=7) != make_splits(table, cv_folds=3, seed=8)


@pytest.mark.parametrize("folds", [1, -2, 100])
def test_bad_fold_count_rejected(folds):
    with pytest.raises(ValueError, match="cv_folds"):
        make_splits(synthetic_table(), cv_folds=folds)


def test_write_splits_nnunet_format(tmp_path):
    splits = [{"train": ["b", "a"], "val": ["d", "c"]}]
    path = write_splits(splits, tmp_path / "pre" / "splits_final.json")
    assert json.loads(path.read_text()) == [{"train": ["a", "b"], "val": ["c", "d"]}]
    assert [p.name for p in path.parent.iterdir()] == ["splits_final.json"]


def test_write_splits_for_table(make_cohort, tmp_path):
    table = write_subtype_table(discover_cohort(make_cohort(train_per_subtype=2)), tmp_path / "subtypes.csv")
    path = write_splits_for_table(table, tmp_path / "splits_final.json", cv_folds=3, seed=1)
    assert json.loads(path.read_text()) == make_splits(table, cv_folds=3, seed=1)
