"""Running normalisation of value targets (MAPPO's ValueNorm: debiased exponential moving moments)."""

from __future__ import annotations

import numpy as np


class ValueNorm:
    def __init__(self, beta: float = 0.99999, epsilon: float = 1e-5, enabled: bool = True):
        self.beta, self.epsilon, self.enabled = beta, epsilon, enabled
        self.running_mean = 0.0
        self.running_mean_sq = 0.0
        self.debiasing_term = 0.0

    def update(self, targets: np.ndarray) -> None:
        if not self.enabled or targets.size == 0:
            return
        w = self.beta
        self.running_mean = w * self.running_mean + (1 - w) * float(np.mean(targets))
        self.running_mean_sq = w * self.running_mean_sq + (1 - w) * float(np.mean(np.square(targets)))
        self.debiasing_term = w * self.debiasing_term + (1 - w)

    def updated(self, targets: np.ndarray) -> "ValueNorm":
        """A copy with `targets` folded in (this one is unchanged)."""
        twin = ValueNorm(self.beta, self.epsilon, self.enabled)
        twin.set_state(self.get_state())
        twin.update(targets)
        return twin

    def mean_var(self) -> tuple[float, float]:
        denom = max(self.debiasing_term, self.epsilon)
        mean = self.running_mean / denom
        var = max(self.running_mean_sq / denom - mean**2, 1e-2)
        return mean, var

    def normalize(self, x):
        if not self.enabled:
            return x
        mean, var = self.mean_var()
        return (x - mean) / np.sqrt(var)

    def denormalize(self, x):
        if not self.enabled:
            return x
        mean, var = self.mean_var()
        return x * np.sqrt(var) + mean

    def get_state(self) -> dict:
        return {"running_mean": self.running_mean, "running_mean_sq": self.running_mean_sq, "debiasing_term": self.debiasing_term}

    def set_state(self, state: dict) -> None:
        self.running_mean = float(state["running_mean"])
        self.running_mean_sq = float(state["running_mean_sq"])
        self.debiasing_term = float(state["debiasing_term"])
