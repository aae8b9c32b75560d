"""Test envs: simple_spread with one injected fault at a chosen step (a ParallelEnv like any user env)."""

from __future__ import annotations

import numpy as np

from envs import make_env
from envs.wrappers import ParallelEnvWrapper


class FaultyEnv(ParallelEnvWrapper):
    """fault: 'nan_reward' | 'nan_obs' | 'wrong_obs_shape' | 'raise' | 'die' (exits the process) |
    'die_once' / 'hang_once' (exit / sleep for an hour, only in the first process to get there: `flag` is a
    file path that marks it happened, so the replacement worker runs normally)."""

    def __init__(self, fault: str, at_step: int, agent: str = "agent_1", flag: str = "", **kwargs):
        super().__init__(make_env("mpe/simple_spread", **kwargs))
        self.fault, self.at_step, self.agent, self.flag = fault, at_step, agent, flag
        self.t = 0

    def step(self, actions):
        obs, rewards, terms, truncs, infos = self.env.step(actions)
        self.t += 1
        if self.t == self.at_step:
            if self.fault == "nan_reward":
                rewards[self.agent] = float("nan")
            elif self.fault == "nan_obs":
                obs[self.agent] = np.full_like(obs[self.agent], np.nan)
            elif self.fault == "wrong_obs_shape":
                obs[self.agent] = np.zeros(3, np.float32)
            elif self.fault == "raise":
                raise RuntimeError("physics engine exploded")
            elif self.fault == "die":
                import os

                os._exit(1)
            elif self.fault in ("die_once", "hang_once"):
                import os
                import time

                try:
                    os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL))  # atomic: one process wins
                except FileExistsError:
                    return obs, rewards, terms, truncs, infos
                if self.fault == "die_once":
                    os._exit(1)
                time.sleep(3600)  # a wedged game engine
        return obs, rewards, terms, truncs, infos


def make(**kwargs):
    return FaultyEnv(**kwargs)


class MaskedSpread(FaultyEnv):
    """simple_spread with PettingZoo-style action masks: every agent may not use action `banned`."""

    def __init__(self, banned: int = 0, **kwargs):
        super().__init__(fault="none", at_step=-1, **kwargs)
        from gymnasium import spaces

        self.banned = banned
        self._spaces = {
            a: spaces.Dict({"observation": self.env.observation_space(a),
                            "action_mask": spaces.MultiBinary(int(self.env.action_space(a).n))})
            for a in self.possible_agents
        }

    def observation_space(self, agent):
        return self._spaces[agent]

    def _wrap(self, obs):
        out = {}
        for agent, o in obs.items():
            mask = np.ones(self.env.action_space(agent).n, np.int8)
            mask[self.banned] = 0
            out[agent] = {"observation": o, "action_mask": mask}
        return out

    def reset(self, seed=None, options=None):
        obs, infos = self.env.reset(seed=seed, options=options)
        return self._wrap(obs), infos

    def step(self, actions):
        assert all(int(a) != self.banned for a in actions.values()), "a masked action reached the env"
        obs, rewards, terms, truncs, infos = self.env.step(actions)
        return self._wrap(obs), rewards, terms, truncs, infos


def make_masked(**kwargs):
    return MaskedSpread(**kwargs)
