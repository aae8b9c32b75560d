"""Advantage estimators over time-major arrays [T, C] (C = independent trajectory columns)."""

from __future__ import annotations

import numpy as np


def gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    episode_end: np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised Advantage Estimation (Schulman et al. 2016).

    `next_values[t]` is V(s_{t+1}) of the same episode (for a time-limit truncation: the value of the
    final observation; at the fragment's end: the value of the next observation). `terminated[t]` zeroes
    the bootstrap; `episode_end[t]` (terminated or truncated) stops the recursion. Returns
    (advantages, returns = advantages + values).
    """
    T = rewards.shape[0]
    advantages = np.zeros_like(rewards, dtype=np.float32)
    last = np.zeros(rewards.shape[1:], dtype=np.float32)
    for t in reversed(range(T)):
        delta = rewards[t] + gamma * (1.0 - terminated[t]) * next_values[t] - values[t]
        last = delta + gamma * lam * (1.0 - episode_end[t]) * last
        advantages[t] = last
    return advantages, advantages + values
