"""Per-epoch classification monitor."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from pancreas_mtl.training.monitor import (
    MONITOR_CSV,
    MONITOR_JSON,
    classification_summary,
    plot_monitor,
    unpredicted_streaks,
    write_monitor,
)


def test_classification_summary_on_hand_made_logits():
    y_true = [0, 1, 2, 2]
    logits = np.array(
        [
            [2.0, 0.0, 0.0],  # 0 -> 0
            [0.0, 3.0, 1.0],  # 1 -> 1
            [0.0, 1.0, 0.5],  # 2 -> 1
            [0.0, 0.0, 4.0],  # 2 -> 2
        ]
    )
    summary = classification_summary(y_true, logits, 3)
    # F1 per class: 1, 2/3 (precision 1/2, recall 1), 2/3 (precision 1, recall 1/2)
    assert summary["macro_f1"] == pytest.approx(7 / 9)
    assert summary["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert summary["pred_counts"] == [1, 2, 1]
    assert summary["never_predicted"] == []
    assert summary["mean_logits"] == pytest.approx([0.5, 1.0, 1.375])
    # plain Python values, so the row goes into nnU-Net's logger and JSON as is
    json.dumps(summary)


def test_classification_summary_of_a_collapsed_predictor():
    logits = np.tile([0.1, 5.0, 0.2], (4, 1))
    summary = classification_summary([0, 1, 2, 1], logits, 3)
    assert summary["pred_counts"] == [0, 4, 0]
    assert summary["never_predicted"] == [0, 2]
    assert summary["confusion"] == [[0, 1, 0], [0, 2, 0], [0, 1, 0]]
    # only class 1 scores: precision 1/2, recall 1
    assert summary["macro_f1"] == pytest.approx((2 / 3) / 3)


def test_classification_summary_accepts_flat_logits():
    summary = classification_summary([2], [0.0, 1.0, 3.0], 3)
    assert summary["pred_counts"] == [0, 0, 1]
    assert summary["macro_f1"] == pytest.approx(1 / 3)


def test_classification_summary_without_cases():
    summary = classification_summary([], np.zeros((0, 3)), 3)
    assert math.isnan(summary["macro_f1"])
    assert summary["confusion"] == [[0, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert summary["pred_counts"] == [0, 0, 0]


def test_unpredicted_streaks_counts_the_latest_epochs_in_a_row():
    history = [
        {"never_predicted": [1]},
        {"never_predicted": [1, 2]},
        {"never_predicted": [2]},
        {"never_predicted": [0, 2]},
    ]
    assert unpredicted_streaks(history, 3) == {0: 1, 1: 0, 2: 3}
    assert unpredicted_streaks([], 3) == {0: 0, 1: 0, 2: 0}


def test_unpredicted_streaks_skips_epochs_without_case_validation():
    history = [
        {"epoch": 0, "never_predicted": [2]},
        {"epoch": 1, "cls_loss": 1.0},
        {"epoch": 2, "never_predicted": [2]},
    ]
    assert unpredicted_streaks(history, 3)[2] == 2


def history_rows() -> list[dict]:
    return [
        {
            "epoch": 0,
            "cls_loss": 1.1,
            "cls_weight": 0.0,
            "train_pred_counts": [3, 1, 0],
            "macro_f1": 0.2,
            "confusion": [[1, 0, 0], [1, 0, 0], [1, 0, 0]],
            "pred_counts": [3, 0, 0],
            "never_predicted": [1, 2],
            "mean_logits": [0.5, -0.1, -0.2],
            "whole_dsc": 0.6,
            "lesion_dsc": 0.3,
            "score": 0.325,
        },
        {
            "epoch": 1,
            "cls_loss": 0.9,
            "cls_weight": 0.1,
            "train_pred_counts": [2, 1, 1],
            "macro_f1": 0.5,
            "confusion": [[1, 0, 0], [0, 1, 0], [0, 1, 0]],
            "pred_counts": [1, 2, 0],
            "never_predicted": [2],
            "mean_logits": [0.1, 0.2, -0.3],
            "whole_dsc": 0.7,
            "lesion_dsc": 0.4,
            "score": 0.525,
        },
    ]


def test_write_monitor_json_round_trip_and_csv_columns(tmp_path):
    history = history_rows()
    write_monitor(history, tmp_path)
    assert json.loads((tmp_path / MONITOR_JSON).read_text()) == history
    assert not list(tmp_path.glob("*.tmp"))
    table = pd.read_csv(tmp_path / MONITOR_CSV, keep_default_na=False)
    expected = {
        "epoch", "cls_loss", "cls_weight", "macro_f1", "whole_dsc", "lesion_dsc", "score",
        "never_predicted",
        *(f"val_pred_count_{c}" for c in range(3)),
        *(f"train_pred_count_{c}" for c in range(3)),
        *(f"mean_logit_{c}" for c in range(3)),
    }
    assert set(table.columns) == expected
    assert table["epoch"].tolist() == [0, 1]
    assert table["val_pred_count_1"].tolist() == [0, 2]
    assert table["train_pred_count_2"].tolist() == [0, 1]
    assert table["mean_logit_2"].tolist() == pytest.approx([-0.2, -0.3])
    assert table["never_predicted"].astype(str).tolist() == ["1 2", "2"]
    assert table["score"].tolist() == pytest.approx([0.325, 0.525])


def test_write_monitor_overwrites_the_previous_files(tmp_path):
    write_monitor(history_rows(), tmp_path)
    write_monitor(history_rows()[:1], tmp_path)
    assert len(json.loads((tmp_path / MONITOR_JSON).read_text())) == 1
    assert len(pd.read_csv(tmp_path / MONITOR_CSV)) == 1


def test_plot_monitor_writes_a_png(tmp_path):
    path = tmp_path / "monitor.png"
    plot_monitor(history_rows(), path, 3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 1000


def test_plot_monitor_with_epochs_without_case_validation(tmp_path):
    rows = history_rows()
    rows.insert(1, {"epoch": 1, "cls_loss": 1.0, "cls_weight": 0.05, "train_pred_counts": [2, 2, 0]})
    rows[2]["epoch"] = 2
    path = tmp_path / "monitor.png"
    plot_monitor(rows, path, 3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
