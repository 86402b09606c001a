"""One-line progress reports a person can follow in a log: per training epoch, per predicted case.

Bottom layer: plain formatting, no imports from the package and nothing heavy.
"""

from __future__ import annotations

import math
from typing import Sequence

# epochs (or cases) whose mean duration predicts the rest: recent ones, as the first is slower
ETA_WINDOW = 5


def format_duration(seconds: float | None) -> str:
    """`45s`, `3m 05s`, `2h 04m`; `?` for an unknown duration."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def eta_seconds(durations: Sequence[float], remaining: int, window: int = ETA_WINDOW) -> float | None:
    """Time left for `remaining` steps at the mean duration of the last `window` steps."""
    if remaining <= 0:
        return 0.0
    recent = [d for d in list(durations)[-window:] if d is not None and math.isfinite(d)]
    if not recent:
        return None
    return remaining * sum(recent) / len(recent)


def _number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def epoch_line(
    epoch: int,
    num_epochs: int,
    train_loss: float | None,
    val_loss: float | None,
    cls_loss: float | None,
    pseudo_dice: Sequence[float] | None,
    whole_dsc: float | None,
    lesion_dsc: float | None,
    macro_f1: float | None,
    epoch_seconds: float | None,
    eta: float | None,
) -> str:
    """One training epoch in one line. `epoch` counts from 0 as nnU-Net's does and is shown from 1.

    Whole/lesion DSC and macro-F1 come from the whole-case validation, which may skip epochs;
    those read `n/a`, as does a classification loss before the head's loss is switched on.
    """
    dice = " ".join(_number(d) for d in pseudo_dice) if pseudo_dice is not None else "n/a"
    return (
        f"epoch {epoch + 1}/{num_epochs} | loss train {_number(train_loss)} val {_number(val_loss)} "
        f"cls {_number(cls_loss)} | pseudo Dice {dice} | case DSC whole {_number(whole_dsc)} "
        f"lesion {_number(lesion_dsc)} | macro-F1 {_number(macro_f1)} | "
        f"{format_duration(epoch_seconds)}/epoch | ETA {format_duration(eta)}"
    )


def case_line(
    index: int,
    total: int,
    case_id: str,
    subtype: int,
    probabilities: Sequence[float],
    case_seconds: float | None,
    eta: float | None,
) -> str:
    """One predicted case in one line; `index` counts from 0 and is shown from 1."""
    probs = " ".join(f"{float(p):.3f}" for p in probabilities)
    return (
        f"case {index + 1}/{total} {case_id}: subtype {int(subtype)} (probabilities {probs}) | "
        f"{format_duration(case_seconds)} | ETA {format_duration(eta)}"
    )
