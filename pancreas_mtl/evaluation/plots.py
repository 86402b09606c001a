"""Report figures: confusion matrix, DSC distributions, reliability, training curves, prediction
counts, speed.

Figures are built with `matplotlib.figure.Figure` and rendered by Agg, so no pyplot state or display
is involved and nothing stays open after a function returns. Each function returns its figure, so
tests can check the data drawn, not only that a PNG exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 100
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v")


def _save(fig: Figure, path: str | os.PathLike) -> Figure:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return fig


def plot_confusion_matrix(
    confusion: Sequence[Sequence[int]],
    path: str | os.PathLike,
    labels: Sequence[str] | None = None,
) -> Figure:
    """Counts in each cell; colour is the fraction of the true class's row (recall on the diagonal)."""
    counts = np.asarray(confusion, dtype=int)
    if labels is None:
        labels = [f"subtype {c}" for c in range(len(counts))]
    row_totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)
    fig = Figure(figsize=(4.5, 4), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    for (row, col), n in np.ndenumerate(counts):
        ax.text(col, row, str(n), ha="center", va="center",
                color="white" if fractions[row, col] > 0.5 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), [f"{name}\n(n={int(t)})" for name, t in zip(labels, row_totals[:, 0])])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, label="fraction of true class")
    return _save(fig, path)


def plot_dsc_distributions(per_case_csv: str | os.PathLike, path: str | os.PathLike) -> Figure:
    """Whole-pancreas and lesion DSC per case, box and jittered points, grouped by true subtype."""
    import pandas as pd

    per_case = pd.read_csv(per_case_csv)
    subtypes = sorted(per_case["subtype"].unique())
    correct = (per_case["predicted_subtype"] == per_case["subtype"]
               if "predicted_subtype" in per_case else pd.Series(True, index=per_case.index))
    # Fixed seed so the same table always gives the same picture.
    rng = np.random.default_rng(0)
    fig = Figure(figsize=(8, 3.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, column, title in zip(axes, ("whole_pancreas_dsc", "lesion_dsc"), ("whole pancreas", "lesion")):
        groups = [per_case.loc[per_case["subtype"] == s, column].to_numpy(dtype=float) for s in subtypes]
        ax.boxplot(groups, positions=range(len(subtypes)), widths=0.5, showfliers=False)
        for position, subtype in enumerate(subtypes):
            in_group = per_case["subtype"] == subtype
            for is_correct, colour, label in ((True, "tab:green", "subtype right"),
                                              (False, "tab:red", "subtype wrong")):
                values = per_case.loc[in_group & (correct == is_correct), column].to_numpy(dtype=float)
                ax.scatter(position + rng.uniform(-0.15, 0.15, len(values)), values, s=14, color=colour,
                           alpha=0.8, label=label if position == 0 else None)
        ax.set_xticks(range(len(subtypes)), [f"subtype {s}\n(n={len(g)})" for s, g in zip(subtypes, groups)])
        ax.set_title(f"{title} DSC")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("DSC")
    axes[0].legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_reliability(
    bins: Sequence[Mapping],
    path: str | os.PathLike,
    brier: float | None = None,
    ece: float | None = None,
) -> Figure:
    """Reliability diagram of the top-class subtype probability: per bin, the fraction of cases
    classified right (bars) against the mean confidence (points; the diagonal is perfect
    calibration), and below it the number of cases per bin. `bins` as
    `metrics.calibration_bins` returns them."""
    lower = np.array([b["lower"] for b in bins], dtype=float)
    upper = np.array([b["upper"] for b in bins], dtype=float)
    counts = np.array([b["count"] for b in bins], dtype=int)
    filled = counts > 0
    accuracy = np.array([b["accuracy"] if b["count"] else 0.0 for b in bins], dtype=float)
    confidence = np.array([b["confidence"] if b["count"] else np.nan for b in bins], dtype=float)
    fig = Figure(figsize=(4.8, 5.6), layout="constrained")
    ax, count_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.bar(lower[filled], accuracy[filled], width=(upper - lower)[filled], align="edge", color="tab:blue",
           edgecolor="black", alpha=0.7, label="fraction right")
    ax.plot(confidence[filled], accuracy[filled], "o", color="tab:red", label="mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction classified right")
    ax.legend(loc="upper left", fontsize=8)
    scores = [f"{name} {value:.3f}" for name, value in (("Brier", brier), ("ECE", ece)) if value is not None]
    ax.set_title(", ".join(scores) if scores else "reliability", fontsize=10)
    count_ax.bar(lower, counts, width=upper - lower, align="edge", color="tab:gray", edgecolor="black")
    count_ax.set_ylabel("cases")
    count_ax.set_xlabel("top-class probability (confidence)")
    count_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def _read_monitors(monitor_json_paths: Mapping) -> dict:
    return {fold: json.loads(Path(p).read_text()) for fold, p in monitor_json_paths.items()}


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    """Epochs and values of `key`, skipping rows that lack it so the line joins the epochs that have it."""
    present = [(row.get("epoch", i), row[key]) for i, row in enumerate(rows) if row.get(key) is not None]
    return [e for e, _ in present], [v for _, v in present]


def plot_training_curves(monitor_json_paths: Mapping, path: str | os.PathLike) -> Figure:
    """Validation whole/lesion DSC and macro-F1 per epoch above the train classification loss.

    `monitor_json_paths` maps fold -> classification_monitor.json; each fold has its own line style.
    """
    monitors = _read_monitors(monitor_json_paths)
    fig = Figure(figsize=(8, 6), layout="constrained")
    score_ax, loss_ax = fig.subplots(2, 1, sharex=True)
    metrics = (("whole_dsc", "whole DSC", "tab:blue"), ("lesion_dsc", "lesion DSC", "tab:orange"),
               ("macro_f1", "macro-F1", "tab:green"))
    for i, (fold, rows) in enumerate(monitors.items()):
        style = LINE_STYLES[i % len(LINE_STYLES)]
        marker = MARKERS[i % len(MARKERS)]
        for key, label, colour in metrics:
            score_ax.plot(*_series(rows, key), linestyle=style, marker=marker, markersize=3, color=colour,
                          label=f"{label}, fold {fold}")
        loss_ax.plot(*_series(rows, "cls_loss"), linestyle=style, marker=marker, markersize=3,
                     color="tab:purple", label=f"fold {fold}")
    score_ax.set_ylim(-0.02, 1.02)
    score_ax.set_ylabel("validation score")
    score_ax.legend(loc="lower right", fontsize=7, ncol=max(1, len(monitors)))
    loss_ax.set_ylabel("train classification loss")
    loss_ax.set_xlabel("epoch")
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_ax.legend(loc="upper right", fontsize=7)
    return _save(fig, path)


def plot_prediction_counts(monitor_json_paths: Mapping, path: str | os.PathLike) -> Figure:
    """Validation predictions per subtype per epoch, one panel per fold; a collapsed head shows one line
    at the number of validation cases and the others at zero."""
    monitors = _read_monitors(monitor_json_paths)
    fig = Figure(figsize=(8, 2.6 * len(monitors) + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(monitors), 1, sharex=True, squeeze=False)[:, 0])
    for ax, (fold, rows) in zip(axes, monitors.items()):
        epochs, count_rows = _series(rows, "pred_counts")
        counts = np.full((len(count_rows), max(map(len, count_rows), default=0)), np.nan)
        for r, row_counts in enumerate(count_rows):
            counts[r, :len(row_counts)] = row_counts
        for c in range(counts.shape[1]):
            ax.plot(epochs, counts[:, c], marker=MARKERS[c % len(MARKERS)], markersize=3,
                    label=f"subtype {c}")
        if count_rows:
            ax.legend(loc="upper right", fontsize=7)
        else:
            ax.text(0.5, 0.5, "no prediction counts recorded", transform=ax.transAxes, ha="center")
        ax.set_ylabel(f"fold {fold}\nval predictions")
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("epoch")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def plot_inference_speed(benchmark_json: str | os.PathLike, path: str | os.PathLike) -> Figure:
    """Seconds per command arm with speedups; beside it, when measured, warm seconds per case.

    Command arms: stock nnU-Net (default and in-process), stock plus a classification pass (the
    seed's two-pass route), multi-task. Warm: models already loaded, so start-up is excluded.
    """
    benchmark = json.loads(Path(benchmark_json).read_text())
    arms = (("stock_seconds", "stock\nnnUNetv2_predict", "tab:gray"),
            ("stock_inprocess_seconds", "stock\n-npp 0 -nps 0", "silver"),
            ("two_pass_seconds", "two-pass: stock\n+ classification", "tab:orange"),
            ("multitask_seconds", "multi-task\n(one pass)", "tab:blue"))
    arms = [arm for arm in arms if arm[0] in benchmark]
    warm = benchmark.get("warm_seconds_per_case")
    fig = Figure(figsize=(11, 4.2) if warm else (7, 4.2), layout="constrained")
    ax = fig.add_subplot(1, 2, 1) if warm else fig.add_subplot()
    seconds = [float(benchmark[key]) for key, _, _ in arms]
    bars = ax.bar([label for _, label, _ in arms], seconds, color=[color for _, _, color in arms])
    ax.bar_label(bars, [f"{s:.2f} s" for s in seconds])
    ax.set_ylabel("seconds, all cases (start-up included)")
    ax.tick_params(axis="x", labelsize=8)
    ax.margins(y=0.15)
    speedups = [f"{benchmark[key]:.2f}x vs {name}" for key, name in
                (("speedup_vs_stock", "stock"), ("speedup_vs_stock_inprocess", "in-process"),
                 ("speedup_vs_two_pass", "two-pass")) if key in benchmark]
    context = ", ".join(str(benchmark[key]) + (" cases" if key == "cases" else "")
                        for key in ("cases", "device") if key in benchmark)
    ax.set_title("one command per arm; multi-task: " + ", ".join(speedups) if speedups else "inference time",
                 fontsize=9)
    if context:
        ax.text(0.99, 0.98, context, transform=ax.transAxes, ha="right", va="top", fontsize=8)
    if warm:
        warm_arms = [(key, label, color) for key, label, color in
                     (("stock", "stock\nnnUNetPredictor", "tab:gray"),
                      ("two_pass", "two-pass: stock\n+ classification", "tab:orange"),
                      ("multitask", "multi-task\n(one pass)", "tab:blue")) if key in warm]
        wx = fig.add_subplot(1, 2, 2)
        per_case = [float(warm[key]) for key, _, _ in warm_arms]
        bars = wx.bar([label for _, label, _ in warm_arms], per_case,
                      color=[color for _, _, color in warm_arms])
        wx.bar_label(bars, [f"{s:.2f} s" for s in per_case])
        wx.set_ylabel("seconds per case (models loaded)")
        wx.tick_params(axis="x", labelsize=8)
        wx.margins(y=0.15)
        warm_speedups = [f"{benchmark[key]:.2f}x vs {name}" for key, name in
                         (("warm_speedup_vs_stock", "stock"), ("warm_speedup_vs_two_pass", "two-pass"))
                         if key in benchmark]
        wx.set_title("warm, start-up excluded; multi-task: " + ", ".join(warm_speedups), fontsize=9)
    return _save(fig, path)
