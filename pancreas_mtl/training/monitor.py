"""Per-epoch classification monitor: is the head collapsing onto one class?"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from ..evaluation.metrics import classification_metrics

MONITOR_JSON = "classification_monitor.json"
MONITOR_CSV = "classification_monitor.csv"
MONITOR_PNG = "classification_monitor.png"


def classification_summary(y_true: Sequence[int], logits: np.ndarray, num_classes: int) -> dict:
    """Macro-F1, confusion matrix, prediction counts and mean logits of one evaluation."""
    y_true = np.asarray(y_true, dtype=int)
    logits = np.asarray(logits, dtype=float).reshape(len(y_true), num_classes)
    labels = list(range(num_classes))
    if not len(y_true):
        return {
            "macro_f1": float("nan"),
            "confusion": np.zeros((num_classes, num_classes), dtype=int).tolist(),
            "pred_counts": [0] * num_classes,
            "never_predicted": labels,
            "mean_logits": [float("nan")] * num_classes,
        }
    y_pred = logits.argmax(1)
    counts = np.bincount(y_pred, minlength=num_classes)
    metrics = classification_metrics(y_true, y_pred, labels)
    return {
        "macro_f1": metrics["macro_f1"],
        "confusion": metrics["confusion_matrix"],
        "pred_counts": counts.tolist(),
        "never_predicted": [c for c in labels if counts[c] == 0],
        "mean_logits": logits.mean(0).tolist(),
    }


def unpredicted_streaks(history: list[dict], num_classes: int) -> dict[int, int]:
    """For each class, how many of the latest case-validated epochs in a row never predicted it."""
    validated = [row for row in history if "never_predicted" in row]
    streaks = {}
    for c in range(num_classes):
        n = 0
        for row in reversed(validated):
            if c not in row["never_predicted"]:
                break
            n += 1
        streaks[c] = n
    return streaks


def write_monitor(history: list[dict], folder: str | os.PathLike) -> None:
    """JSON (full rows) and CSV (flat columns) beside nnU-Net's progress.png."""
    import pandas as pd

    folder = Path(folder)
    tmp = folder / (MONITOR_JSON + ".tmp")
    tmp.write_text(json.dumps(history, indent=1))
    os.replace(tmp, folder / MONITOR_JSON)
    rows = []
    for row in history:
        flat = {k: v for k, v in row.items() if not isinstance(v, list)}
        for c, n in enumerate(row.get("pred_counts", [])):
            flat[f"val_pred_count_{c}"] = n
        for c, n in enumerate(row.get("train_pred_counts", [])):
            flat[f"train_pred_count_{c}"] = n
        for c, v in enumerate(row.get("mean_logits", [])):
            flat[f"mean_logit_{c}"] = v
        flat["never_predicted"] = " ".join(map(str, row.get("never_predicted", [])))
        rows.append(flat)
    pd.DataFrame(rows).to_csv(folder / MONITOR_CSV, index=False)


def plot_monitor(history: list[dict], path: str | os.PathLike, num_classes: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(3, 1, figsize=(8, 10), sharex=True)
    ax = axes[0]
    for key, label in (
        ("macro_f1", "val macro-F1"),
        ("whole_dsc", "val whole DSC"),
        ("lesion_dsc", "val lesion DSC"),
        ("score", "early-stopping score"),
    ):
        ax.plot(epochs, [r.get(key, np.nan) for r in history], label=label)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.legend(loc="lower right", fontsize=8)
    ax = axes[1]
    validated = [r for r in history if "pred_counts" in r]
    for c in range(num_classes):
        ax.plot([r["epoch"] for r in validated], [r["pred_counts"][c] for r in validated],
                label=f"subtype {c}")
    ax.set_ylabel("val predictions per class")
    ax.legend(loc="upper right", fontsize=8)
    ax = axes[2]
    ax.plot(epochs, [r.get("cls_loss", np.nan) for r in history], label="train cls loss")
    ax.plot(epochs, [r.get("cls_weight", np.nan) for r in history], label="cls loss weight")
    ax.set_xlabel("epoch")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
