"""The `evaluate` step: validation metrics against the label-fixed reference masks, and plots."""

from __future__ import annotations

import os
from pathlib import Path

from ..nnunet_dataset import read_subtype_table
from .metrics import evaluate_split
from .plots import (
    plot_confusion_matrix,
    plot_dsc_distributions,
    plot_prediction_counts,
    plot_training_curves,
)


def validation_references(raw_dataset_dir: str | os.PathLike, subtype_table: str | os.PathLike):
    """(case_id, reference mask, subtype) of every validation case."""
    table = read_subtype_table(subtype_table)
    table = table[table["split"] == "validation"].sort_values("case_id")
    labels = Path(raw_dataset_dir) / "labelsTr"
    return [(c, labels / f"{c}.nii.gz", int(s)) for c, s in zip(table["case_id"], table["subtype"])]


def evaluate_validation(
    prediction_dir: str | os.PathLike,
    raw_dataset_dir: str | os.PathLike,
    subtype_table: str | os.PathLike,
    output_dir: str | os.PathLike,
    confusion_png: str | os.PathLike,
    dsc_png: str | os.PathLike,
    n_bootstrap: int = 1000,
) -> dict:
    summary = evaluate_split(
        prediction_dir,
        validation_references(raw_dataset_dir, subtype_table),
        output_dir,
        n_bootstrap=n_bootstrap,
    )
    plot_confusion_matrix(summary["confusion_matrix"], confusion_png)
    plot_dsc_distributions(Path(output_dir) / "per_case.csv", dsc_png)
    return summary


def plot_training(monitors: dict, curves_png: str | os.PathLike, counts_png: str | os.PathLike) -> None:
    """Training curves and per-class prediction counts of every fold's classification monitor."""
    plot_training_curves(monitors, curves_png)
    plot_prediction_counts(monitors, counts_png)
