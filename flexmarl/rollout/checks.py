"""Checks on what an env returns; errors name the agent, the step and the problem."""

from __future__ import annotations

import numpy as np


class EnvStepError(RuntimeError):
    """The env raised, or returned something that breaks the ParallelEnv contract."""


class EnvOutputError(ValueError):
    """The env returned a bad value (NaN/inf reward or observation, wrong observation shape)."""


def where(agent: str, step: int, env_index: int, sample_id: str) -> str:
    return f"agent {agent!r} at step {step} (env copy {env_index}, request {sample_id})"


def check_observation(obs: np.ndarray, expected_dim: int, agent: str, step: int, env_index: int, sample_id: str) -> None:
    if obs.size != expected_dim:
        raise EnvOutputError(
            f"{where(agent, step, env_index, sample_id)}: observation has {obs.size} values "
            f"(shape {obs.shape}), the observation space declares {expected_dim}"
        )
    if not np.all(np.isfinite(obs)):
        raise EnvOutputError(f"{where(agent, step, env_index, sample_id)}: observation contains NaN or inf: {obs}")


def check_reward(reward, agent: str, step: int, env_index: int, sample_id: str) -> float:
    try:
        value = float(reward)
    except (TypeError, ValueError) as exc:
        raise EnvOutputError(f"{where(agent, step, env_index, sample_id)}: reward {reward!r} is not a number") from exc
    if not np.isfinite(value):
        raise EnvOutputError(f"{where(agent, step, env_index, sample_id)}: reward is {value}")
    return value


def check_actions(actions: np.ndarray, action, agents, step: int, sample_id: str) -> None:
    """actions [C] (discrete), [C, K] (multi_discrete) or [C, A] (box) for the columns of one group, env-major;
    `action` is the group's `envs.ActionSpec`."""
    if action.kind == "discrete":
        bad = np.flatnonzero((actions < 0) | (actions >= action.n))
        space = f"Discrete({action.n})"
    elif action.kind == "multi_discrete":
        bad = np.flatnonzero(np.any((actions < 0) | (actions >= np.asarray(action.nvec)), axis=-1))
        space = f"MultiDiscrete({list(action.nvec)})"
    else:
        bad = np.flatnonzero(~np.all(np.isfinite(actions), axis=-1))
        space = f"Box({action.low}, {action.high})"
    if bad.size:
        col = int(bad[0])
        agent = agents[col % len(agents)]
        raise EnvOutputError(
            f"{where(agent, step, col // len(agents), sample_id)}: action {actions[col]!r} is outside the action space {space}"
        )
