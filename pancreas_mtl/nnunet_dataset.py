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
from sklearn.model_selection import StratifiedKFold

from .layout import (
    FILE_ENDING,
    LABELLED_SPLITS,
    NUM_SUBTYPES_KEY,
    read_subtype_table,
    write_text_atomic,
)

logger = logging.getLogger(__name__)

# Region-based training: the network predicts "whole pancreas" (labels 1+2) and "lesion" (label 2) as
# overlapping sigmoid outputs, which is what both reported Dice scores measure.
LABELS = {"background": 0, "pancreas": [1, 2], "lesion": 2}
REGIONS_CLASS_ORDER = [1, 2]


def write_dataset_json(raw_dataset_dir: str | os.PathLike, num_training: int, dataset_name: str,
                       num_subtypes: int) -> Path:
    """Write dataset.json (one CT channel, region-based pancreas/lesion labels, the number of subtype
    classes) with nnU-Net's own generator."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

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
            **{NUM_SUBTYPES_KEY: int(num_subtypes)},
        )
        target = raw_dataset_dir / "dataset.json"
        os.replace(staging / "dataset.json", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


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
    write_text_atomic(path, json.dumps(content, indent=2) + "\n")
    return path


def write_splits_for_table(subtype_table: str | os.PathLike, path: str | os.PathLike, cv_folds: int = 0,
                           seed: int = 12345) -> Path:
    """Read a subtype table, make its splits and write them as splits_final.json."""
    return write_splits(make_splits(read_subtype_table(subtype_table), cv_folds=cv_folds, seed=seed), path)
