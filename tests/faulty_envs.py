"""Test envs: simple_spread with one injected fault at a chosen step (a ParallelEnv like any user env)."""

from __future__ import annotations

import numpy as np

from envs import make_env


class FaultyEnv:
    """fault: 'nan_reward' | 'nan_obs' | 'wrong_obs_shape' | 'raise' | 'die' (exits the process)."""

    def __init__(self, fault: str, at_step: int, agent: str = "agent_1", **kwargs):
        self.env = make_env("mpe/simple_spread", **kwargs)
        self.fault, self.at_step, self.agent = fault, at_step, agent
        self.possible_agents = self.env.possible_agents
        self.t = 0

    @property
    def agents(self):
        return self.env.agents

    def observation_space(self, agent):
        return self.env.observation_space(agent)

    def action_space(self, agent):
        return self.env.action_space(agent)

    def state(self):
        return self.env.state()

    def reset(self, seed=None, options=None):
        return self.env.reset(seed=seed, options=options)

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
        return obs, rewards, terms, truncs, infos


def make(**kwargs):
    return FaultyEnv(**kwargs)
