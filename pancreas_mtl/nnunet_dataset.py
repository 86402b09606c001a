"""nnU-Net v2 dataset metadata: dataset.json, the per-case subtype table and splits_final.json."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pandas as pd
from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
from sklearn.model_selection import StratifiedKFold

from pancreas_mtl.cohort import LABELLED_SPLITS, Case

logger = logging.getLogger(__name__)

# Region-based training: the network predicts "whole pancreas" (labels 1+2) and "lesion" (label 2) as
# overlapping sigmoid outputs, which is what both reported Dice scores measure.
LABELS = {"background": 0, "pancreas": [1, 2], "lesion": 2}
REGIONS_CLASS_ORDER = [1, 2]
FILE_ENDING = ".nii.gz"
SUBTYPE_COLUMNS = ["case_id", "split", "subtype"]


def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_dataset_json(raw_dataset_dir: str | os.PathLike, num_training: int, dataset_name: str) -> Path:
    """Write dataset.json (one CT channel, region-based pancreas/lesion labels) with nnU-Net's own generator."""
    raw_dataset_dir = Path(raw_dataset_dir)
    raw_dataset_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".dataset_json.", dir=raw_dataset_dir))
    try:
        generate_dataset_json(
            str(staging),
            channel_names={"0": "CT"},
            labels={k: list(v) if isinstance(v, list) else v for k, v in LABELS.items()},
            num_training_cases=int(num_training),
            file_ending=FILE_ENDING,
            regions_class_order=list(REGIONS_CLASS_ORDER),
            dataset_name=dataset_name,
            description="Pancreas (1) and pancreatic lesion (2) segmentation on CT; lesion subtype per case "
                        "is kept in a separate subtype table.",
            license="see the source cohort",
            converted_by="pancreas_mtl",
        )
        target = raw_dataset_dir / "dataset.json"
        os.replace(staging / "dataset.json", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def write_subtype_table(cases: list[Case], path: str | os.PathLike) -> Path:
    """CSV case_id,split,subtype (subtype empty for test cases), sorted by case_id."""
    table = pd.DataFrame(
        [(c.case_id, c.split, c.subtype) for c in cases], columns=SUBTYPE_COLUMNS
    ).astype({"subtype": "Int64"}).sort_values("case_id", kind="stable")
    path = Path(path)
    _write_text_atomic(path, table.to_csv(index=False))
    return path


def read_subtype_table(path: str | os.PathLike) -> pd.DataFrame:
    """The subtype table with string case ids and a nullable integer subtype column."""
    return pd.read_csv(path, dtype={"case_id": str, "split": str, "subtype": "Int64"},
                       keep_default_na=False, na_values={"subtype": [""]})


def make_splits(subtype_table: pd.DataFrame | str | os.PathLike, cv_folds: int = 0,
                seed: int = 12345) -> list[dict[str, list[str]]]:
    """nnU-Net splits: fold 0 is the cohort's own train/validation split; with ``cv_folds`` >= 2, that many
    subtype-stratified folds over train+validation follow (folds 1..cv_folds).

    ``subtype_table`` is a table as returned by ``read_subtype_table`` or the path of one.
    """
    if not isinstance(subtype_table, pd.DataFrame):
        subtype_table = read_subtype_table(subtype_table)
    if cv_folds == 1 or cv_folds < 0:
        raise ValueError(f"cv_folds must be 0 (given split only) or >= 2, got {cv_folds}")
    table = subtype_table[subtype_table["split"].isin(LABELLED_SPLITS)].sort_values("case_id", kind="stable")
    splits = [{
        "train": sorted(table.loc[table["split"] == "train", "case_id"]),
        "val": sorted(table.loc[table["split"] == "validation", "case_id"]),
    }]
    if cv_folds >= 2:
        ids = table["case_id"].to_numpy()
        subtypes = table["subtype"].astype(int).to_numpy()
        if cv_folds > len(ids):
            raise ValueError(f"cv_folds={cv_folds} exceeds the {len(ids)} labelled cases")
        kfold = StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            folds = list(kfold.split(ids, subtypes))
        for w in caught:
            logger.warning("Cross-validation folds: %s", w.message)
        splits += [{"train": sorted(ids[tr]), "val": sorted(ids[va])} for tr, va in folds]
    return [{"train": [str(i) for i in s["train"]], "val": [str(i) for i in s["val"]]} for s in splits]


def write_splits(splits: list[dict[str, list[str]]], path: str | os.PathLike) -> Path:
    """Write splits_final.json in nnU-Net's format (a list of {"train": [...], "val": [...]})."""
    content = [{"train": sorted(map(str, s["train"])), "val": sorted(map(str, s["val"]))} for s in splits]
    path = Path(path)
    _write_text_atomic(path, json.dumps(content, indent=2) + "\n")
    return path


def write_splits_for_table(subtype_table: str | os.PathLike, path: str | os.PathLike, cv_folds: int = 0,
                           seed: int = 12345) -> Path:
    """Read a subtype table, make its splits and write them as splits_final.json."""
    return write_splits(make_splits(read_subtype_table(subtype_table), cv_folds=cv_folds, seed=seed), path)
