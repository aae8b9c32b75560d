"""The suite statistics on synthetic numbers whose answer is known."""

import numpy as np
import pytest
from scipy import stats

from benchmarks.statistics import (Estimate, completion_order_rate, decide, iqm, mean, paired_difference,
                                   simulated_completion_order_rate)

REPS = 2000


def _runs(rng, center, spread, shape=(5, 3)):
    return center + spread * rng.standard_normal(shape)


def test_iqm_point_is_the_quartile_trimmed_mean_and_the_interval_covers_it():
    scores = np.random.default_rng(0).random((10, 3))
    est = iqm(scores, reps=REPS)
    assert est.point == pytest.approx(stats.trim_mean(scores.ravel(), 0.25))
    assert est.low < est.point < est.high


def test_mean_interval_shrinks_with_more_runs():
    rng = np.random.default_rng(1)
    few, many = mean(_runs(rng, 0.5, 0.1, (4, 2)), reps=REPS), mean(_runs(rng, 0.5, 0.1, (64, 2)), reps=REPS)
    assert many.half_width < few.half_width / 2


def test_intervals_are_reproducible_from_their_seed():
    scores = np.random.default_rng(2).random((5, 3))
    assert mean(scores, reps=REPS, seed=7) == mean(scores, reps=REPS, seed=7)


@pytest.mark.parametrize("shift, verdict", [(0.2, "win"), (-0.2, "loss")])
def test_paired_difference_finds_a_known_shift(shift, verdict):
    rng = np.random.default_rng(3)
    control = _runs(rng, 0.5, 0.2)
    treatment = control + shift + 0.01 * rng.standard_normal(control.shape)  # paired: seed noise cancels
    result = paired_difference(treatment, control, ["a", "b", "c"], reps=REPS)
    assert result.verdict == verdict
    assert result.aggregate.point == pytest.approx(shift, abs=0.01)


def test_differences_that_cancel_are_no_difference_with_an_interval_around_zero():
    control = _runs(np.random.default_rng(4), 0.5, 0.2)
    diffs = np.array([0.2, -0.2, 0.1, -0.1, 0.0])[:, None] * np.array([1.0, -1.0, 0.5])  # each map's mean is 0
    result = paired_difference(control + diffs, control, ["a", "b", "c"], reps=REPS)
    assert result.verdict == "no difference detected"
    assert result.aggregate.point == pytest.approx(0.0, abs=1e-12)
    assert result.aggregate.low < 0 < result.aggregate.high and result.aggregate.half_width > 0.02


def test_a_task_whose_interval_is_below_zero_blocks_a_win():
    aggregate = Estimate(0.1, 0.05, 0.15)
    assert decide(aggregate, [Estimate(0.2, 0.1, 0.3), Estimate(-0.1, -0.2, -0.01)]) == "no difference detected"
    assert decide(aggregate, [Estimate(0.2, 0.1, 0.3), Estimate(-0.1, -0.2, 0.01)]) == "win"


def test_completion_order_rate_counts_the_episodes_finished_first():
    # 2 copies, 4 episodes each played back to back; wins take 10 steps, losses 100
    wins = np.array([1, 0, 1, 1, 0, 1, 0, 1], float)
    lengths = np.where(wins == 1, 10, 100)
    # copy 0 plays episodes 0, 2, 4, 6 (finishing at 10, 20, 120, 220); copy 1 plays 1, 3, 5, 7 (100, 110, 120, 130)
    # the 4th finish is at step 110: episodes 0, 2, 1, 3 are counted, 3 of them wins
    assert completion_order_rate(wins, lengths, envs=2, episodes=4) == pytest.approx(0.75)
    assert wins.mean() == pytest.approx(0.625)  # the same episodes, all counted
    # equal lengths: no bias, the first episodes of every copy
    assert completion_order_rate(wins, np.full(8, 50), envs=2, episodes=4) == pytest.approx(wins[:4].mean())
    with pytest.raises(ValueError, match="too few"):
        completion_order_rate(wins, lengths, envs=2, episodes=7)


def test_simulated_completion_order_rate_favours_short_wins_and_is_unbiased_at_equal_lengths():
    wins = np.array([1.0] * 30 + [0.0] * 70)
    unbiased = simulated_completion_order_rate(wins, np.full(100, 50), draws=200)
    assert unbiased.point == pytest.approx(0.3, abs=0.02) and unbiased.low < 0.3 < unbiased.high
    short_wins = simulated_completion_order_rate(wins, np.where(wins == 1, 40, 400), draws=200)
    assert short_wins.point > 0.35  # losses still running at the stop are left out (0.378 here)
