"""Statistics of suite results (rliable): IQM and mean with 95 % stratified bootstrap intervals, paired
differences between two arms, and the pre-registered decision rule of docs/grasp.md; and a win rate counted
the way the published GRF / SMAC evaluation loops count it (the first episodes to finish), to compare with them.

Score matrices are [runs, tasks] (runs = seeds), as rliable expects; a stratified bootstrap resamples the
runs of each task independently, so every resample keeps every task.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from rliable import library as rly
from rliable import metrics

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Estimate:
    point: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def as_dict(self) -> dict:
        return asdict(self)


def bootstrap(scores: np.ndarray, statistic: Callable[[np.ndarray], float], reps: int, seed: int) -> Estimate:
    """`statistic` of a [runs, tasks] matrix with its 95 % stratified bootstrap (percentile) interval."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] < 2:
        raise ValueError(f"scores must be [runs >= 2, tasks]; got shape {scores.shape}")
    # rliable's StratifiedBootstrap draws its resamples from numpy's global generator (its random_state
    # argument does not reach them), so the seed goes there, and the caller's generator state is restored.
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        points, intervals = rly.get_interval_estimates(
            {"x": scores}, lambda x: np.array([statistic(x)]), reps=reps, confidence_interval_size=CONFIDENCE)
    finally:
        np.random.set_state(saved)
    return Estimate(float(points["x"][0]), float(intervals["x"][0, 0]), float(intervals["x"][1, 0]))


def iqm(scores: np.ndarray, reps: int = 50_000, seed: int = 0) -> Estimate:
    """Interquartile mean over all runs of all tasks (Agarwal et al. 2021)."""
    return bootstrap(scores, metrics.aggregate_iqm, reps, seed)


def mean_of_task_means(x: np.ndarray) -> float:
    return float(np.mean(np.mean(x, axis=0)))


def mean(scores: np.ndarray, reps: int = 50_000, seed: int = 0) -> Estimate:
    """Mean over tasks of each task's mean over runs."""
    return bootstrap(scores, mean_of_task_means, reps, seed)


@dataclass(frozen=True)
class PairedComparison:
    aggregate: Estimate
    """Mean over tasks of each task's mean paired difference (treatment - control)."""
    per_task: dict[str, Estimate]
    verdict: str
    """"win", "loss" or "no difference detected" (the rule in `decide`)."""

    def as_dict(self) -> dict:
        return {"aggregate": self.aggregate.as_dict(), "per_task": {k: v.as_dict() for k, v in self.per_task.items()},
                "verdict": self.verdict, "half_width": self.aggregate.half_width}


def paired_difference(treatment: np.ndarray, control: np.ndarray, tasks: list[str], reps: int = 50_000,
                      seed: int = 0) -> PairedComparison:
    """Paired comparison of two arms run on the same seeds: [runs, tasks] score matrices, row i of both
    from seed i."""
    diff = np.asarray(treatment, np.float64) - np.asarray(control, np.float64)
    if diff.shape[1] != len(tasks):
        raise ValueError(f"{diff.shape[1]} task columns for {len(tasks)} task names")
    aggregate = mean(diff, reps, seed)
    per_task = {task: mean(diff[:, [i]], reps, seed) for i, task in enumerate(tasks)}
    return PairedComparison(aggregate, per_task, decide(aggregate, list(per_task.values())))


def decide(aggregate: Estimate, per_task: list[Estimate]) -> str:
    """Pre-registered rule: win if the aggregate interval is above 0 and no task's interval is below 0;
    loss if the aggregate interval is below 0; otherwise no difference detected."""
    if aggregate.low > 0 and not any(t.high < 0 for t in per_task):
        return "win"
    if aggregate.high < 0:
        return "loss"
    return "no difference detected"


def completion_order_rate(wins, lengths, envs: int = 50, episodes: int = 100) -> float:
    """The win rate as the on-policy MAPPO / HARL evaluation loops measure it: `envs` env copies play episodes
    back to back in lockstep (copy i plays episodes i, i + envs, ...), the loop stops after the step at which
    at least `episodes` have finished, and the rate is over those. Episodes still running at the stop are
    left out, and those are the long ones, so the rate favours short episodes where a win's length differs
    from a loss's."""
    wins, lengths = np.asarray(wins, np.float64), np.asarray(lengths, np.int64)
    finish = np.empty(len(lengths))
    for copy in range(envs):
        finish[copy::envs] = np.cumsum(lengths[copy::envs])
    stop = np.sort(finish)[episodes - 1]  # the step after which `episodes` have finished
    if min(lengths[copy::envs].sum() for copy in range(envs)) <= stop:  # a copy ran out of episodes
        raise ValueError(f"{len(lengths)} episodes are too few for {envs} copies to still be playing when "
                         f"{episodes} have finished")
    return float(wins[finish <= stop].mean())


def simulated_completion_order_rate(wins, lengths, envs: int = 50, episodes: int = 100, draws: int = 1000,
                                    seed: int = 0) -> Estimate:
    """`completion_order_rate` of evaluation loops whose copies play episodes drawn (with replacement) from
    one measured set of (win, length) pairs: the mean over `draws` loops, with the 2.5-97.5 % range of
    single loops (one published evaluation is one loop)."""
    wins, lengths = np.asarray(wins, np.float64), np.asarray(lengths, np.int64)
    rng = np.random.default_rng(seed)
    rates = []
    for _ in range(draws):
        picked = rng.integers(len(wins), size=envs * episodes)  # no copy finishes more than `episodes` first
        rates.append(completion_order_rate(wins[picked], lengths[picked], envs, episodes))
    return Estimate(float(np.mean(rates)), float(np.percentile(rates, 2.5)), float(np.percentile(rates, 97.5)))
