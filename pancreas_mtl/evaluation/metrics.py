"""Segmentation and subtype metrics of one prediction folder against the reference masks."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from ..layout import PREDICTION_TABLE, mask_file_name, probability_columns, read_prediction_table

SUMMARY_JSON = "summary.json"
PER_CASE_CSV = "per_case.csv"
CALIBRATION_BINS = 10


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice similarity coefficient of two boolean masks.

    Convention: both masks empty gives 1.0 (nothing to find, nothing found); exactly one empty gives 0.0.
    """
    pred, ref = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    denominator = int(pred.sum()) + int(ref.sum())
    if denominator == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / denominator


def case_dice(pred_labels: np.ndarray, ref_labels: np.ndarray) -> dict[str, float]:
    """Whole-pancreas (labels 1+2 vs 1+2) and lesion (label 2 vs 2) Dice of two integer label maps."""
    pred_labels, ref_labels = np.asarray(pred_labels), np.asarray(ref_labels)
    if pred_labels.shape != ref_labels.shape:
        raise ValueError(
            f"prediction shape {pred_labels.shape} differs from reference shape {ref_labels.shape}"
        )
    return {
        "whole_pancreas_dsc": dice(pred_labels > 0, ref_labels > 0),
        "lesion_dsc": dice(pred_labels == 2, ref_labels == 2),
    }


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int]) -> float:
    """Unweighted mean F1 over `labels`; a class never predicted and never present scores 0."""
    return float(f1_score(y_true, y_pred, labels=list(labels), average="macro", zero_division=0))


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[int]) -> dict:
    """Macro-F1, per-class precision/recall/F1/support, balanced and plain accuracy, confusion matrix.

    The confusion matrix is a list of lists with rows = true class and columns = predicted class.
    """
    labels = list(labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    with warnings.catch_warnings():
        # sklearn warns when a predicted class is absent from the truth; the score is still defined.
        warnings.simplefilter("ignore", UserWarning)
        balanced_accuracy = balanced_accuracy_score(y_true, y_pred)
    return {
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "balanced_accuracy": float(balanced_accuracy),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def _checked_probabilities(y_true: Sequence[int], probabilities) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.ndim != 2 or len(probabilities) != len(y_true):
        raise ValueError(f"expected one probability row per case: {len(y_true)} cases, "
                         f"probabilities of shape {probabilities.shape}")
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= probabilities.shape[1]):
        raise ValueError(f"true classes {sorted(set(y_true.tolist()))} outside 0..{probabilities.shape[1] - 1}")
    return y_true, probabilities


def brier_score(y_true: Sequence[int], probabilities) -> float:
    """Multi-class Brier score: mean over cases of the squared distance between the predicted
    probability vector and the one-hot truth (0 is perfect, 2 the worst possible)."""
    y_true, probabilities = _checked_probabilities(y_true, probabilities)
    if not len(y_true):
        return math.nan
    one_hot = np.eye(probabilities.shape[1])[y_true]
    return float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=1)))


def calibration_bins(y_true: Sequence[int], probabilities, n_bins: int = CALIBRATION_BINS) -> list[dict]:
    """Reliability of the top-class probability in `n_bins` equal-width bins of (0, 1].

    Each bin: ``lower``, ``upper``, ``count`` and, for a non-empty bin, the mean ``confidence``
    (top-class probability) and the ``accuracy`` (fraction of its cases whose top class is right).
    """
    y_true, probabilities = _checked_probabilities(y_true, probabilities)
    confidence = probabilities.max(axis=1) if len(y_true) else np.zeros(0)
    correct = probabilities.argmax(axis=1) == y_true if len(y_true) else np.zeros(0, bool)
    # bins are closed on the right, so a confidence of exactly 1 falls in the last one
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        bins.append({
            "lower": b / n_bins,
            "upper": (b + 1) / n_bins,
            "count": count,
            "confidence": float(confidence[members].mean()) if count else None,
            "accuracy": float(correct[members].mean()) if count else None,
        })
    return bins


def expected_calibration_error(y_true: Sequence[int], probabilities, n_bins: int = CALIBRATION_BINS) -> float:
    """ECE of the top-class probability: the case-weighted mean of |accuracy - confidence| over
    equal-width bins (Guo et al. 2017)."""
    bins = calibration_bins(y_true, probabilities, n_bins)
    total = sum(b["count"] for b in bins)
    if not total:
        return math.nan
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]) / total)


def bootstrap_ci(
    data,
    statistic: Callable = np.mean,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic`, resampling cases with replacement.

    `data` is either one per-case array, giving ``statistic(values)``, or a tuple of equally long
    per-case arrays resampled together, giving ``statistic(*arrays)`` (e.g. ``(y_true, y_pred)``).
    Fewer than two cases give ``(nan, nan)``.
    """
    paired = isinstance(data, tuple) and all(np.ndim(a) >= 1 for a in data)
    arrays = [np.asarray(a) for a in data] if paired else [np.asarray(data)]
    n_cases = len(arrays[0])
    if any(len(a) != n_cases for a in arrays):
        raise ValueError(f"bootstrap arrays differ in length: {[len(a) for a in arrays]}")
    if n_cases <= 1:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, n_cases, size=(n, n_cases))
    values = np.array([float(statistic(*(a[idx] for a in arrays))) for idx in indices])
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def load_label_map(path: str | os.PathLike) -> np.ndarray:
    """Integer label map of a NIfTI mask."""
    import nibabel as nib

    data = np.asarray(nib.load(os.fspath(path)).dataobj)
    # Raw cohort masks may store label 1 as 1.0000152587890625.
    return np.rint(data).astype(np.int16)


def finite_or_none(value):
    """JSON has no NaN; an undefined number is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def evaluate_split(
    prediction_dir: str | os.PathLike,
    references: Iterable[tuple[str, str | os.PathLike, int | None]],
    output_dir: str | os.PathLike,
    num_subtypes: int,
    split: str = "validation",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Score predicted masks and subtypes of one split; write summary.json and per_case.csv.

    `references` holds ``(case_id, reference_mask_path, subtype)``; a subtype of None (a test case
    whose label is not known) is scored for segmentation only. `prediction_dir` holds
    ``<case_id>.nii.gz`` masks and ``subtype_results.csv``. Mean DSCs and macro-F1 come with
    percentile bootstrap 95% intervals over cases. When the table holds one probability column
    per subtype, the summary adds their calibration: `brier_score`, `ece` and `calibration_bins`.
    """
    import pandas as pd

    prediction_dir, output_dir = Path(prediction_dir), Path(output_dir)
    references = list(references)
    if not references:
        raise ValueError(f"no reference cases to evaluate in the {split} split")
    csv_path = prediction_dir / PREDICTION_TABLE
    predictions = read_prediction_table(csv_path)
    extra_columns = [c for c in predictions.columns if c != "Subtype"]

    rows = []
    for case_id, reference_path, subtype in references:
        mask_name = mask_file_name(case_id)
        mask_path = prediction_dir / mask_name
        if not mask_path.is_file():
            raise ValueError(f"case {case_id}: predicted mask not found: {mask_path}")
        if mask_name not in predictions.index:
            raise ValueError(f"case {case_id}: no row Names={mask_name} in {csv_path}")
        try:
            scores = case_dice(load_label_map(mask_path), load_label_map(reference_path))
        except ValueError as err:
            raise ValueError(f"case {case_id}: {mask_path} vs {reference_path}: {err}") from err
        prediction = predictions.loc[mask_name]
        rows.append(
            {
                "case_id": case_id,
                "subtype": pd.NA if subtype is None else int(subtype),
                "predicted_subtype": int(prediction["Subtype"]),
                **scores,
                **{c: prediction[c] for c in extra_columns},
            }
        )
    per_case = pd.DataFrame(rows).astype({"subtype": "Int64"})

    summary = {"split": split, "n_cases": len(per_case)}
    for key in ("whole_pancreas_dsc", "lesion_dsc"):
        values = per_case[key].to_numpy(dtype=float)
        summary[key] = float(values.mean())
        summary[f"{key}_ci95"] = list(bootstrap_ci(values, np.mean, n_bootstrap, seed))
    labelled = per_case[per_case["subtype"].notna()]
    summary["n_cases_with_subtype"] = len(labelled)
    if len(labelled):
        labels = list(range(int(num_subtypes)))
        y_true = labelled["subtype"].to_numpy(dtype=int)
        y_pred = labelled["predicted_subtype"].to_numpy(dtype=int)
        classification = classification_metrics(y_true, y_pred, labels)
        summary["macro_f1"] = classification["macro_f1"]
        summary["macro_f1_ci95"] = list(
            bootstrap_ci((y_true, y_pred), lambda t, p: macro_f1(t, p, labels), n_bootstrap, seed)
        )
        summary["balanced_accuracy"] = classification["balanced_accuracy"]
        summary["accuracy"] = classification["accuracy"]
        summary["per_class"] = {str(k): v for k, v in classification["per_class"].items()}
        summary["confusion_matrix"] = classification["confusion_matrix"]
        prob_columns = probability_columns(num_subtypes)
        if set(prob_columns) <= set(labelled.columns):
            probabilities = labelled[prob_columns].to_numpy(dtype=float)
            summary["brier_score"] = brier_score(y_true, probabilities)
            summary["ece"] = expected_calibration_error(y_true, probabilities)
            summary["calibration_bins"] = calibration_bins(y_true, probabilities)
    summary["n_bootstrap"] = int(n_bootstrap)
    summary = finite_or_none(summary)

    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    per_case.to_csv(output_dir / PER_CASE_CSV, index=False)
    return summary
