import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from pancreas_mtl.evaluation.plots import (
    plot_confusion_matrix,
    plot_dsc_distributions,
    plot_inference_speed,
    plot_prediction_counts,
    plot_reliability,
    plot_training_curves,
)
from pancreas_mtl.evaluation.metrics import calibration_bins

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_drawn_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = imread(path)
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 1


@pytest.fixture
def monitor_paths(tmp_path):
    fold0 = [
        {"epoch": 0, "whole_dsc": 0.2, "lesion_dsc": 0.0, "macro_f1": 0.17, "score": 0.1, "cls_weight": 0.0,
         "pred_counts": [3, 0, 0], "train_pred_counts": [8, 0, 0], "never_predicted": [1, 2]},
        # a row from before the head was trained: no loss, no counts
        {"epoch": 1, "whole_dsc": 0.5, "lesion_dsc": 0.1, "macro_f1": 0.17},
        {"epoch": 2, "whole_dsc": 0.7, "lesion_dsc": 0.3, "macro_f1": 0.5, "score": 0.45, "cls_loss": 1.1,
         "cls_weight": 0.3, "pred_counts": [1, 1, 1], "never_predicted": []},
    ]
    fold1 = [
        {"epoch": 0, "whole_dsc": 0.3, "cls_loss": 1.2, "pred_counts": [0, 2, 1]},
        {"epoch": 1, "lesion_dsc": 0.2, "macro_f1": 0.4, "cls_loss": 0.9, "pred_counts": [1, 1, 1]},
    ]
    paths = {}
    for fold, rows in ((0, fold0), (1, fold1)):
        paths[fold] = tmp_path / f"fold_{fold}" / "classification_monitor.json"
        paths[fold].parent.mkdir()
        paths[fold].write_text(json.dumps(rows))
    return paths


def cell_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_plot_confusion_matrix(tmp_path):
    path = tmp_path / "confusion.png"
    fig = plot_confusion_matrix([[3, 1, 0], [0, 2, 0], [1, 0, 0]], path)
    assert_drawn_png(path)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.75, 0.25, 0], [0, 1, 0], [1, 0, 0]])
    assert cell_texts(ax) == ["3", "1", "0", "0", "2", "0", "1", "0", "0"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["subtype 0\n(n=4)", "subtype 1\n(n=2)",
                                                            "subtype 2\n(n=1)"]


def test_plot_confusion_matrix_with_an_empty_true_class_and_four_subtypes(tmp_path):
    path = tmp_path / "confusion.png"
    fig = plot_confusion_matrix([[2, 0, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 3]], path)
    assert_drawn_png(path)
    fractions = fig.axes[0].images[0].get_array()
    assert fractions.shape == (4, 4)
    np.testing.assert_allclose(fractions[1], 0)  # no case of subtype 1: a row of zeros, not NaN
    np.testing.assert_allclose(fractions[2], [0.5, 0, 0.5, 0])


def test_plot_dsc_distributions(tmp_path):
    csv_path = tmp_path / "per_case.csv"
    pd.DataFrame(
        {
            "case_id": ["a", "b", "c", "d", "e"],
            "subtype": [0, 0, 1, 2, 2],
            "predicted_subtype": [0, 1, 1, 2, 0],
            "whole_pancreas_dsc": [0.9, 0.85, 0.8, 0.7, 0.95],
            "lesion_dsc": [0.6, 0.0, 1.0, 0.4, 0.5],
        }
    ).to_csv(csv_path, index=False)
    path = tmp_path / "dsc.png"
    fig = plot_dsc_distributions(csv_path, path)
    assert_drawn_png(path)
    for ax, column in zip(fig.axes, ("whole_pancreas_dsc", "lesion_dsc")):
        drawn = sorted(y for c in ax.collections for _, y in c.get_offsets())
        assert drawn == sorted(pd.read_csv(csv_path)[column])
    # wrongly classified cases (b and e) are drawn in the second colour
    wrong = [c for c in fig.axes[1].collections if c.get_label() == "subtype wrong"]
    assert sorted(y for c in fig.axes[1].collections[1::2] for _, y in c.get_offsets()) == [0.0, 0.5]
    assert wrong


def test_plot_training_curves(tmp_path, monitor_paths):
    path = tmp_path / "curves.png"
    fig = plot_training_curves(monitor_paths, path)
    assert_drawn_png(path)
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    assert list(lines["macro-F1, fold 0"].get_xdata()) == [0, 1, 2]
    assert list(lines["macro-F1, fold 0"].get_ydata()) == [0.17, 0.17, 0.5]
    # a fold whose rows lack a value joins the epochs that have it
    assert list(lines["whole DSC, fold 1"].get_xdata()) == [0]
    loss = {line.get_label(): line for line in fig.axes[1].lines}
    assert list(loss["fold 0"].get_ydata()) == [1.1] and list(loss["fold 1"].get_ydata()) == [1.2, 0.9]


def test_plot_prediction_counts(tmp_path, monitor_paths):
    path = tmp_path / "counts.png"
    fig = plot_prediction_counts(monitor_paths, path)
    assert_drawn_png(path)
    assert len(fig.axes) == 2
    fold0 = {line.get_label(): list(line.get_ydata()) for line in fig.axes[0].lines}
    assert fold0 == {"subtype 0": [3, 1], "subtype 1": [0, 1], "subtype 2": [0, 1]}


def test_plot_prediction_counts_single_fold(tmp_path, monitor_paths):
    path = tmp_path / "counts.png"
    plot_prediction_counts({0: monitor_paths[0]}, path)
    assert_drawn_png(path)


def test_plot_prediction_counts_fold_without_counts(tmp_path, monitor_paths):
    no_counts = tmp_path / "no_counts.json"
    no_counts.write_text(json.dumps([{"epoch": 0, "whole_dsc": 0.1}]))
    path = tmp_path / "counts.png"
    plot_prediction_counts({0: monitor_paths[0], 1: no_counts}, path)
    assert_drawn_png(path)


def test_plot_inference_speed(tmp_path):
    benchmark = {"cases": 2, "device": "cpu", "stock_seconds": 10.0, "two_pass_seconds": 14.0,
                 "multitask_seconds": 10.5, "speedup_vs_stock": 10.0 / 10.5,
                 "speedup_vs_two_pass": 14.0 / 10.5, "mask_dice_vs_stock": 0.99}
    json_path = tmp_path / "inference_speed.json"
    json_path.write_text(json.dumps(benchmark))
    path = tmp_path / "speed.png"
    plot_inference_speed(json_path, path)
    assert_drawn_png(path)


def test_plot_reliability_draws_the_bins(tmp_path):
    bins = calibration_bins([0, 1, 1, 1], [[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.0, 1.0]], n_bins=5)
    path = tmp_path / "reliability.png"
    fig = plot_reliability(bins, path, brier=0.4, ece=0.3)
    assert_drawn_png(path)
    ax, count_ax = fig.axes
    # one bar per non-empty bin, at its accuracy; the points at the mean confidence
    assert [p.get_x() for p in ax.patches] == pytest.approx([0.4, 0.8])
    assert [p.get_height() for p in ax.patches] == pytest.approx([1.0, 2 / 3])
    points = [line for line in ax.lines if line.get_label() == "mean confidence"][0]
    assert list(points.get_xdata()) == pytest.approx([0.6, 2.8 / 3])
    assert [p.get_height() for p in count_ax.patches] == [0, 0, 1, 0, 3]
    assert ax.get_title() == "Brier 0.400, ECE 0.300"
