"""Policy and value losses. Each returns a per-sample loss tensor; the trainer masks and averages."""

from __future__ import annotations

import torch


def ppo_clip(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_eps: float) -> torch.Tensor:
    """PPO clipped surrogate (negated, so lower is better): -min(r A, clip(r, 1-eps, 1+eps) A)."""
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return -torch.min(ratio * advantages, clipped * advantages)


def huber(error: torch.Tensor, delta: float) -> torch.Tensor:
    abs_err = error.abs()
    return torch.where(abs_err <= delta, 0.5 * error**2, delta * (abs_err - 0.5 * delta))


def clipped_huber(
    values: torch.Tensor, old_values: torch.Tensor, targets: torch.Tensor, clip_eps: float, huber_delta: float
) -> torch.Tensor:
    """MAPPO value loss: max of the Huber losses of the clipped and unclipped predictions."""
    clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    return torch.max(huber(targets - values, huber_delta), huber(targets - clipped, huber_delta))


def clipped_mse(
    values: torch.Tensor, old_values: torch.Tensor, targets: torch.Tensor, clip_eps: float, huber_delta: float
) -> torch.Tensor:
    """PPO value loss with squared error: 0.5 * max((V - R)^2, (V_clip - R)^2)."""
    clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    return 0.5 * torch.max((targets - values) ** 2, (targets - clipped) ** 2)
