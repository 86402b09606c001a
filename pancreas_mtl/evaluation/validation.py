"""The `evaluate` step: validation (and, where test labels are given, test) metrics against the
label-fixed reference masks, and plots."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..layout import raw_image, raw_label, read_test_labels, split_cases, table_num_subtypes
from .metrics import SUMMARY_JSON, evaluate_split
from .overlays import OverlayCase, plot_overlays
from .plots import (
    plot_confusion_matrix,
    plot_dsc_distributions,
    plot_prediction_counts,
    plot_reliability,
    plot_training_curves,
)

logger = logging.getLogger(__name__)


def validation_references(raw_dataset_dir: str | os.PathLike, subtype_table: str | os.PathLike):
    """(case_id, reference mask, subtype) of every validation case."""
    return [(c, raw_label(raw_dataset_dir, c), s) for c, s in split_cases(subtype_table, "validation")]


def test_references(test_labels_dir: str | os.PathLike, subtype_table: str | os.PathLike):
    """(case_id, reference mask, subtype or None) of every test case, from a test labels folder."""
    labels = read_test_labels(test_labels_dir)
    cases = [c for c, _ in split_cases(subtype_table, "test")]
    missing = [c for c in cases if c not in labels]
    if missing:
        raise ValueError(f"test labels folder {test_labels_dir} has no mask for test case(s) "
                         f"{', '.join(missing[:10])}")
    return [(c, *labels[c]) for c in cases]


def evaluate_validation(
    prediction_dir: str | os.PathLike,
    raw_dataset_dir: str | os.PathLike,
    subtype_table: str | os.PathLike,
    output_dir: str | os.PathLike,
    confusion_png: str | os.PathLike,
    dsc_png: str | os.PathLike,
    test_prediction_dir: str | os.PathLike | None = None,
    test_labels_dir: str | os.PathLike | None = None,
    n_bootstrap: int = 1000,
    reliability_png: str | os.PathLike | None = None,
) -> dict:
    """Validation metrics and plots in output_dir; with test labels, the test split's metrics in
    output_dir/test and as the `test` entry of the validation summary. The reliability diagram
    needs the prediction table's probability columns; without them it says so."""
    num_subtypes = table_num_subtypes(subtype_table)
    summary = evaluate_split(
        prediction_dir,
        validation_references(raw_dataset_dir, subtype_table),
        output_dir,
        num_subtypes,
        n_bootstrap=n_bootstrap,
    )
    plot_confusion_matrix(summary["confusion_matrix"], confusion_png)
    plot_dsc_distributions(Path(output_dir) / "per_case.csv", dsc_png)
    if reliability_png is not None:
        if "calibration_bins" not in summary:
            raise ValueError(f"{Path(prediction_dir) / 'subtype_results.csv'} has no probability columns "
                             f"prob_subtype0..{num_subtypes - 1}: no reliability diagram")
        plot_reliability(summary["calibration_bins"], reliability_png, summary["brier_score"], summary["ece"])
        logger.info("validation: Brier score %.4f, ECE %.4f", summary["brier_score"], summary["ece"])
    if test_labels_dir is not None:
        test = evaluate_split(
            test_prediction_dir,
            test_references(test_labels_dir, subtype_table),
            Path(output_dir) / "test",
            num_subtypes,
            split="test",
            n_bootstrap=n_bootstrap,
        )
        summary["test"] = test
        (Path(output_dir) / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        logger.info("test: whole DSC %.3f, lesion DSC %.3f, macro-F1 %s", test["whole_pancreas_dsc"],
                    test["lesion_dsc"], test.get("macro_f1"))
    return summary


def plot_split_overlays(
    prediction_dir: str | os.PathLike,
    raw_dataset_dir: str | os.PathLike,
    subtype_table: str | os.PathLike,
    split: str,
    output_dir: str | os.PathLike,
    test_labels_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """Case overlays of one split in output_dir, worst lesion Dice first: validation cases with
    their reference masks; test cases with the prediction alone, or with the reference when a test
    labels folder is given."""
    if split == "validation":
        references = validation_references(raw_dataset_dir, subtype_table)
    elif test_labels_dir is not None:
        references = test_references(test_labels_dir, subtype_table)
    else:
        references = [(c, None, None) for c, _ in split_cases(subtype_table, split)]
    cases = [OverlayCase(c, raw_image(raw_dataset_dir, c, split), None if ref is None else Path(ref), s)
             for c, ref, s in references]
    rows = plot_overlays(cases, prediction_dir, output_dir)
    flagged = [r["case_id"] for r in rows if r["misclassified"]]
    logger.info("%s: %d overlays in %s; misclassified: %s", split, len(rows), output_dir,
                ", ".join(flagged) or "none")
    return rows


def plot_training(monitors: dict, curves_png: str | os.PathLike, counts_png: str | os.PathLike) -> None:
    """Training curves and per-class prediction counts of every fold's classification monitor."""
    plot_training_curves(monitors, curves_png)
    plot_prediction_counts(monitors, counts_png)
