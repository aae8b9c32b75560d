"""Envs a user might bring (ParallelEnvs with non-Box spaces, an image env, an unreadable observation space).

Real games, small enough for tests: each rewards the agent for reading its observation correctly, so a
policy that cannot see the observation (a broken encoder) cannot score above chance.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces


class MatchGame:
    """Two agents; each sees a random target and is rewarded for echoing it back as its action.

    obs_kind: 'discrete' (Discrete(4) target), 'multi_discrete' (MultiDiscrete([3, 2]) target),
    'multi_binary' (MultiBinary(4), one bit set), 'dict' ({target: Discrete(4), noise: Box(2)}),
    'tuple' ((Discrete(4), Box(2))). action_kind: 'discrete' (Discrete(4)) or 'multi_discrete'
    (MultiDiscrete([3, 2]); obs_kind must then be 'multi_discrete'). `episode_length` steps per episode.
    """

    metadata = {"name": "match_game"}

    def __init__(self, obs_kind: str = "discrete", action_kind: str = "discrete", episode_length: int = 5):
        self.obs_kind, self.action_kind, self.episode_length = obs_kind, action_kind, episode_length
        self.possible_agents = ["a0", "a1"]
        self.agents: list[str] = []
        self._rng = np.random.default_rng(0)
        target = {"discrete": spaces.Discrete(4), "multi_discrete": spaces.MultiDiscrete([3, 2]),
                  "multi_binary": spaces.MultiBinary(4)}
        noise = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._obs_space = {
            **target,
            "dict": spaces.Dict({"target": spaces.Discrete(4), "noise": noise}),
            "tuple": spaces.Tuple((spaces.Discrete(4), noise)),
        }[obs_kind]
        self._act_space = spaces.MultiDiscrete([3, 2]) if action_kind == "multi_discrete" else spaces.Discrete(4)

    def observation_space(self, agent):
        return self._obs_space

    def action_space(self, agent):
        return self._act_space

    def _draw(self):
        self._targets = {a: self._act_space.sample() if self.action_kind == "multi_discrete"
                         else int(self._rng.integers(4)) for a in self.possible_agents}
        obs = {}
        for agent, target in self._targets.items():
            noise = self._rng.uniform(-1, 1, 2).astype(np.float32)
            obs[agent] = {
                "discrete": target, "multi_discrete": np.asarray(target, np.int64),
                "multi_binary": np.eye(4, dtype=np.int8)[target] if self.obs_kind == "multi_binary" else None,
                "dict": {"target": target, "noise": noise}, "tuple": (target, noise),
            }[self.obs_kind]
        return obs

    def reset(self, seed=None, options=None):
        self._rng = np.random.default_rng(seed)
        self._act_space.seed(int(self._rng.integers(2**31)))
        self.agents, self._t = list(self.possible_agents), 0
        return self._draw(), {a: {} for a in self.agents}

    def step(self, actions):
        rewards = {a: float(np.all(np.asarray(actions[a]) == np.asarray(self._targets[a]))) for a in self.agents}
        self._t += 1
        done = self._t >= self.episode_length
        obs = self._draw()
        truncs = {a: done for a in self.agents}
        terms = {a: False for a in self.agents}
        infos = {a: {} for a in self.agents}
        if done:
            self.agents = []
        return obs, rewards, terms, truncs, infos

    def state(self):
        raise NotImplementedError


match_game = MatchGame  # the class is the factory: its signature lists the kwargs


class BrightSide:
    """One agent sees an RGB image (H x W x 3, uint8) whose left or right half is lit; action 0/1 = which
    half. Reward 1 for the right answer; `episode_length` steps."""

    metadata = {"name": "bright_side"}

    def __init__(self, height: int = 24, width: int = 32, episode_length: int = 4, channels_first: bool = False):
        self.h, self.w, self.episode_length, self.channels_first = height, width, episode_length, channels_first
        self.possible_agents = ["eye"]
        self.agents: list[str] = []
        shape = (3, height, width) if channels_first else (height, width, 3)
        self._obs_space = spaces.Box(0, 255, shape, np.uint8)
        self._rng = np.random.default_rng(0)

    def observation_space(self, agent):
        return self._obs_space

    def action_space(self, agent):
        return spaces.Discrete(2)

    def _draw(self):
        self._side = int(self._rng.integers(2))
        img = self._rng.integers(0, 60, (self.h, self.w, 3), dtype=np.uint8)
        half = slice(0, self.w // 2) if self._side == 0 else slice(self.w // 2, self.w)
        img[:, half] += 150
        return {"eye": img.transpose(2, 0, 1).copy() if self.channels_first else img}

    def reset(self, seed=None, options=None):
        self._rng = np.random.default_rng(seed)
        self.agents, self._t = ["eye"], 0
        return self._draw(), {"eye": {}}

    def step(self, actions):
        reward = float(int(actions["eye"]) == self._side)
        self._t += 1
        done = self._t >= self.episode_length
        obs = self._draw()
        if done:
            self.agents = []
        return obs, {"eye": reward}, {"eye": False}, {"eye": done}, {"eye": {}}


bright_side = BrightSide


def text_obs(**kwargs):
    """A ParallelEnv whose observation space (Text) no policy here can read."""
    env = MatchGame(**kwargs)
    env._obs_space = spaces.Text(8)
    return env

