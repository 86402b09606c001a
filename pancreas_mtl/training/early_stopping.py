"""Early stopping decided from the logged score history alone, so a resumed run agrees."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class StoppingState:
    best_epoch: int | None
    best_score: float
    is_best: bool
    should_stop: bool


def stopping_state(
    scores: Sequence[float | None], patience: int, min_delta: float, min_epochs: int = 0
) -> StoppingState:
    """Best epoch so far and whether to stop after the last epoch.

    An epoch improves on the best only by more than `min_delta`; training stops once `patience`
    epochs have passed without improvement, never before `min_epochs` epochs. Epochs without a
    score (None or NaN) neither improve nor reset anything.
    """
    best_epoch, best = None, -math.inf
    for epoch, score in enumerate(scores):
        if score is None or math.isnan(score):
            continue
        if score > best + min_delta:
            best_epoch, best = epoch, score
    last = len(scores) - 1
    is_best = best_epoch is not None and best_epoch == last
    since = last - (best_epoch if best_epoch is not None else -1)
    should_stop = patience > 0 and len(scores) >= min_epochs and since >= patience
    return StoppingState(best_epoch, best, is_best, should_stop)
