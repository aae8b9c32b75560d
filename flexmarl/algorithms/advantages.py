"""Advantage estimators, one registry (`registry.ADVANTAGE_ESTIMATORS`), keyword hyper-parameters.

- gae: temporal, for policies with a critic; time-major arrays [T, C] (C = independent trajectory columns).
- group_norm: group-relative, for generated outputs without a critic (GRPO, SA-GCPO, GBPO): each request's
  G outputs are compared with one another.
"""

from __future__ import annotations

import numpy as np
import torch


def gae(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    episode_end: np.ndarray,
    *,
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


def group_norm(rewards: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """[..., G] rewards -> advantages normalised within each group: (R - mean) / (std + eps)."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, unbiased=False, keepdim=True)
    return (rewards - mean) / (std + eps)


def group_clip(advantages: torch.Tensor, rewards: torch.Tensor, target_reward: torch.Tensor) -> torch.Tensor:
    """SA-GCPO's group clip: a positive advantage is zeroed when the output's reward is below the reward
    of the item the user actually engaged with (`target_reward`, one per group)."""
    return torch.where((advantages > 0) & (rewards < target_reward[..., None]), torch.zeros_like(advantages), advantages)
