"""Early stopping from the score history alone."""

from __future__ import annotations

import math

import pytest

from pancreas_mtl.training.early_stopping import stopping_state


def test_best_epoch_and_score():
    state = stopping_state([0.1, 0.3, 0.2], patience=5, min_delta=0.0)
    assert state.best_epoch == 1
    assert state.best_score == 0.3
    assert not state.is_best
    assert not state.should_stop


def test_is_best_when_the_last_epoch_improves():
    state = stopping_state([0.1, 0.2, 0.4], patience=5, min_delta=0.0)
    assert state.best_epoch == 2 and state.is_best and not state.should_stop


def test_stops_after_patience_epochs_without_improvement():
    assert not stopping_state([0.5, 0.4], patience=2, min_delta=0.0).should_stop
    state = stopping_state([0.5, 0.4, 0.3], patience=2, min_delta=0.0)
    assert state.should_stop and state.best_epoch == 0
    # an improvement resets the count
    assert not stopping_state([0.5, 0.4, 0.6, 0.1], patience=2, min_delta=0.0).should_stop
    assert stopping_state([0.5, 0.4, 0.6, 0.1, 0.1], patience=2, min_delta=0.0).should_stop


def test_equal_score_is_not_an_improvement():
    state = stopping_state([0.5, 0.5], patience=1, min_delta=0.0)
    assert state.best_epoch == 0 and not state.is_best and state.should_stop


def test_min_delta_is_measured_from_the_best_score():
    state = stopping_state([0.5, 0.55, 0.59], patience=5, min_delta=0.1)
    assert state.best_epoch == 0 and state.best_score == 0.5
    # 0.62 beats the best (0.5) by more than 0.1, though the previous epoch by less
    state = stopping_state([0.5, 0.55, 0.59, 0.62], patience=5, min_delta=0.1)
    assert state.best_epoch == 3 and state.is_best and state.best_score == 0.62
    assert stopping_state([0.5, 0.55, 0.59], patience=2, min_delta=0.1).should_stop


@pytest.mark.parametrize("missing", [None, float("nan")])
def test_epochs_without_a_score_neither_improve_nor_reset(missing):
    state = stopping_state([0.5, missing], patience=5, min_delta=0.0)
    assert state.best_epoch == 0 and state.best_score == 0.5 and not state.is_best
    # they still count as epochs without improvement
    assert stopping_state([0.5, missing, missing], patience=2, min_delta=0.0).should_stop
    state = stopping_state([missing, 0.2, missing, 0.3], patience=2, min_delta=0.0)
    assert state.best_epoch == 3 and state.is_best and not state.should_stop


def test_no_score_at_all():
    state = stopping_state([None, None], patience=5, min_delta=0.0)
    assert state.best_epoch is None
    assert state.best_score == -math.inf
    assert not state.is_best and not state.should_stop
    empty = stopping_state([], patience=1, min_delta=0.0)
    assert empty.best_epoch is None and not empty.is_best and not empty.should_stop


def test_never_stops_before_min_epochs():
    scores = [0.5, 0.4, 0.3, 0.2]
    assert stopping_state(scores, patience=1, min_delta=0.0, min_epochs=0).should_stop
    assert not stopping_state(scores, patience=1, min_delta=0.0, min_epochs=5).should_stop
    assert stopping_state([*scores, 0.1], patience=1, min_delta=0.0, min_epochs=5).should_stop


def test_patience_zero_disables_stopping():
    state = stopping_state([0.9] + [0.1] * 50, patience=0, min_delta=0.0)
    assert state.best_epoch == 0 and not state.should_stop
