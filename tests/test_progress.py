import math

import pytest

from pancreas_mtl.progress import case_line, epoch_line, eta_seconds, format_duration


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0s"), (44.6, "45s"), (185, "3m 05s"), (3600, "1h 00m"), (7440, "2h 04m"), (None, "?"),
     (math.nan, "?"), (-1, "?")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_eta_uses_the_recent_mean_duration():
    assert eta_seconds([100.0, 10.0, 12.0], remaining=3, window=2) == pytest.approx(33.0)
    assert eta_seconds([10.0, 20.0], remaining=2) == pytest.approx(30.0)
    assert eta_seconds([10.0], remaining=0) == 0.0
    assert eta_seconds([], remaining=4) is None


def test_epoch_line_holds_every_number():
    line = epoch_line(2, 10, -0.41234, -0.39, 0.98, [0.8123, 0.4051], 0.81, 0.4, 0.6667, 12.3, 86.0)
    assert line == (
        "epoch 3/10 | loss train -0.4123 val -0.3900 cls 0.9800 | pseudo Dice 0.8123 0.4051 | "
        "case DSC whole 0.8100 lesion 0.4000 | macro-F1 0.6667 | 12s/epoch | ETA 1m 26s"
    )
    assert "\n" not in line


def test_epoch_line_without_case_validation_says_na():
    line = epoch_line(0, 5, 0.5, 0.4, None, None, None, None, math.nan, None, None)
    assert "cls n/a" in line and "pseudo Dice n/a" in line and "whole n/a lesion n/a" in line
    assert "macro-F1 n/a" in line and line.endswith("?/epoch | ETA ?")


def test_case_line():
    assert case_line(0, 4, "quiz_037", 2, [0.1, 0.2, 0.7], 5.2, 15.6) == (
        "case 1/4 quiz_037: subtype 2 (probabilities 0.100 0.200 0.700) | 5s | ETA 16s"
    )
