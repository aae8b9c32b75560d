"""What a rollout request asks for and what it returns (the MARL workload's request and result)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RolloutRequest:
    request_id: str
    """Prefix of the rows' sample ids: rows are `{request_id}-{group}`."""
    version: int | None
    """Policy version the worker must hold when it samples; None: whatever it holds (stale pipeline)."""
    seed: int
    num_steps: int


@dataclass
class RolloutResult:
    request_id: str
    version: int
    env_steps: int
    episode_returns: list[float] = field(default_factory=list)
    """Team return (sum over agents) of each episode that ended in this request."""
    episode_lengths: list[int] = field(default_factory=list)
    agent_returns: dict[str, list[float]] = field(default_factory=dict)
    """Per agent, its own return of each episode that ended in this request (for recommendation: each
    scenario's return)."""
    wins: list[float] = field(default_factory=list)
    """Per ended episode, where the env reports "win" or "battle_won" in infos."""
    sample_s: float = 0.0
    started_at: float = 0.0
    """Wall-clock start and end of the sampling (for timelines)."""
    finished_at: float = 0.0
    worker: int = 0
    rows: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """Group -> payload arrays, time-major [T, C, ...] for recurrent policies; for feed-forward ones only
    the active samples, as [1, N, ...]. Moved to the store by reference."""
    num_active: dict[str, int] = field(default_factory=dict)
    env_restarts: int = 0
    """Env copies that raised mid-episode and were rebuilt; their unfinished episodes are discarded."""
    discarded_steps: int = 0
    counters: dict[str, float] = field(default_factory=dict)
    """Workload-specific counts (e.g. `llm/generated_tokens`), summed over an iteration's requests."""
    errors: list[str] = field(default_factory=list)
    """User-code failures the request survived, one description each (a text task's `run` that raised:
    its GRPO group was dropped); the orchestrator stops the run past `llm.max_task_errors`."""
