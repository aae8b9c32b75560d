"""Env wrappers usable on any ParallelEnv (registered under `wrappers/...` by envs/registry.py).

`wrappers/aec_to_parallel` runs a PettingZoo AEC env whose agents all act once per cycle (its metadata says
`is_parallelizable`, e.g. rock-paper-scissors) as a ParallelEnv, through PettingZoo's own `aec_to_parallel`;
turn-based games (chess, tic-tac-toe, poker) are refused with that reason.

`wrappers/heavy_tail` gives any env heavy-tailed episode lengths: at every reset it draws a length
L = min(max_length, ceil(min_length * (1 + Pareto(alpha)))) and truncates the episode after L steps
(if the wrapped env has not ended it before). Smaller `alpha` means a heavier tail; with alpha = 1.2,
min_length = 10, max_length = 400 the median is ~20 steps, the mean ~44, and about 1 episode in 50 hits the cap.
This is the long tail of GRF episodes, recommendation sessions and LLM responses, on any env; the
pipeline benchmark uses it with `rollout.request_unit: episodes`. The wrapped env must allow episodes
of `max_length` steps (for MPE: `max_cycles >= max_length`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class ParallelEnvWrapper:
    """Delegates the whole ParallelEnv API to `self.env`; subclasses override what they change."""

    def __init__(self, env: Any):
        self.env = env
        self.possible_agents = env.possible_agents
        self.metadata = getattr(env, "metadata", {})
        self.shared_reward = bool(getattr(env, "shared_reward", False))

    @property
    def agents(self):
        return self.env.agents

    def observation_space(self, agent):
        return self.env.observation_space(agent)

    def action_space(self, agent):
        return self.env.action_space(agent)

    def state(self):
        return self.env.state()

    def reset(self, seed: int | None = None, options: dict | None = None):
        return self.env.reset(seed=seed, options=options)

    def step(self, actions: dict):
        return self.env.step(actions)

    def close(self):
        if hasattr(self.env, "close"):
            self.env.close()


class HeavyTailEpisodes(ParallelEnvWrapper):
    def __init__(self, env: Any, min_length: int = 10, alpha: float = 1.2, max_length: int = 400, seed: int = 0):
        if min_length < 1 or max_length < min_length or alpha <= 0:
            raise ValueError(f"heavy_tail needs 1 <= min_length <= max_length and alpha > 0; got "
                             f"min_length={min_length}, max_length={max_length}, alpha={alpha}")
        super().__init__(env)
        self.min_length, self.alpha, self.max_length = min_length, alpha, max_length
        self._rng = np.random.default_rng(seed)
        self._limit = max_length
        self._t = 0
        self._cut = False

    @property
    def agents(self):
        return [] if self._cut else self.env.agents

    def draw_length(self) -> int:
        return min(self.max_length, math.ceil(self.min_length * (1.0 + self._rng.pareto(self.alpha))))

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._limit, self._t, self._cut = self.draw_length(), 0, False
        return self.env.reset(seed=seed, options=options)

    def step(self, actions: dict):
        obs, rewards, terms, truncs, infos = self.env.step(actions)
        self._t += 1
        if self._t >= self._limit and self.env.agents:
            truncs = {a: True for a in obs}
            self._cut = True
        return obs, rewards, terms, truncs, infos


def turn_based_reason(aec_env: Any) -> str | None:
    """Why an AEC env cannot run as a ParallelEnv (its agents act in turn), or None when it can."""
    if getattr(aec_env, "metadata", {}).get("is_parallelizable", False):
        return None
    return ("its agents act in turn (metadata['is_parallelizable'] is not True): a turn-based game is not a "
            "simultaneous-move ParallelEnv, and PettingZoo's aec_to_parallel refuses it too")
