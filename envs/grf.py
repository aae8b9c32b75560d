"""Google Research Football (gfootball 2.10.2) as a PettingZoo ParallelEnv.

`make_env("grf/academy_3_vs_1_with_keeper")` controls the scenario's left-team players
`player_0 .. player_{K-1}` (K defaults to the count used by the MAPPO GRF benchmarks). Each agent observes
the `simple115v2` vector (115 floats, the whole pitch from its side plus which player it is) and has
Discrete(19) actions; `state()` is the controlled players' observations side by side. Rewards are per
player: `scoring` (+1 / -1 per goal) or `scoring,checkpoints` (plus GRF's shaped approach rewards).
At the end of an episode `infos[agent]` carries `score` (goal difference) and `win` (the left team
scored): academy episodes end at the first goal, so the win rate is the scoring rate.

GRF must be built first (`make grf`: the engine is compiled once and the wheel cached). Measured here:
~310 random-action steps/s for 3_vs_1_with_keeper in one process; several engines can live in one
process (`rollout.envs_per_worker` copies), and `rollout.num_workers` adds processes. The engine's
randomness comes from `game_engine_random_seed`, set from the first `reset(seed=...)` when the engine is
created; later resets continue the engine's own stream.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

SCENARIOS = {
    "academy_3_vs_1_with_keeper": 3,
    "academy_counterattack_easy": 4,
    "academy_counterattack_hard": 4,
    "academy_corner": 10,
    "academy_pass_and_shoot_with_keeper": 2,
    "academy_run_pass_and_shoot_with_keeper": 2,
    "5_vs_5": 4,
}
"""Scenario -> default number of controlled left-team players."""

NUM_ACTIONS = 19
OBS_DIM = 115


class FootballParallelEnv:
    metadata = {"name": "grf", "render_modes": []}

    def __init__(self, scenario: str, num_agents: int | None = None, rewards: str = "scoring,checkpoints",
                 **create_kwargs: Any):
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown GRF scenario {scenario!r}; valid scenarios: {', '.join(SCENARIOS)}")
        if rewards not in ("scoring", "scoring,checkpoints"):
            raise ValueError(f"GRF rewards {rewards!r}; allowed: 'scoring', 'scoring,checkpoints'")
        self.scenario, self.rewards = scenario, rewards
        self.num_controlled = int(num_agents or SCENARIOS[scenario])
        self.create_kwargs = create_kwargs
        self.possible_agents = [f"player_{i}" for i in range(self.num_controlled)]
        self.agents: list[str] = []
        self._env = None
        self._obs = np.zeros((self.num_controlled, OBS_DIM), np.float32)
        self._score = 0.0
        from gymnasium import spaces

        self._obs_space = spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        self._act_space = spaces.Discrete(NUM_ACTIONS)

    def _create(self, seed: int | None) -> None:
        try:
            import gfootball.env as football
        except ImportError as exc:
            raise ImportError("Google Research Football is not installed: run `make grf` (builds gfootball "
                              "2.10.2 once and caches the wheel)") from exc
        logging.getLogger("absl").setLevel(logging.WARNING)  # GRF logs a line per episode at INFO
        options = {"game_engine_random_seed": int(seed)} if seed is not None else {}
        self._env = football.create_environment(
            env_name=self.scenario, representation="simple115v2", rewards=self.rewards, render=False,
            number_of_left_players_agent_controls=self.num_controlled, other_config_options=options,
            **self.create_kwargs)

    def observation_space(self, agent: str):
        return self._obs_space

    def action_space(self, agent: str):
        return self._act_space

    def reset(self, seed: int | None = None, options: dict | None = None):
        if self._env is None:
            self._create(seed)
        self._obs = self._as_rows(self._env.reset())
        self._score = 0.0
        self.agents = list(self.possible_agents)
        return {a: self._obs[i] for i, a in enumerate(self.agents)}, {a: {} for a in self.agents}

    def step(self, actions: dict):
        missing = [a for a in self.agents if a not in actions]
        if missing:
            raise ValueError(f"GRF {self.scenario}: no action for {', '.join(missing)}")
        joint = [int(actions[a]) for a in self.possible_agents]
        obs, reward, done, info = self._env.step(joint)
        self._obs = self._as_rows(obs)
        rewards = np.broadcast_to(np.asarray(reward, np.float32), (self.num_controlled,))
        self._score += float(info.get("score_reward", 0.0))
        agents = self.agents
        done = bool(done)
        infos = {a: {} for a in agents}
        if done:
            infos = {a: {"score": self._score, "win": self._score > 0} for a in agents}
            self.agents = []
        observations = {a: self._obs[i] for i, a in enumerate(agents)}
        return (observations, {a: float(rewards[i]) for i, a in enumerate(agents)},
                {a: done for a in agents}, {a: False for a in agents}, infos)

    def state(self) -> np.ndarray:
        return self._obs.reshape(-1)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def _as_rows(self, obs) -> np.ndarray:
        return np.asarray(obs, np.float32).reshape(self.num_controlled, OBS_DIM)


def _factory(scenario: str):
    def make(**kwargs: Any) -> FootballParallelEnv:
        return FootballParallelEnv(scenario, **kwargs)

    make.__name__ = f"make_grf_{scenario}"
    return make


FACTORIES = {f"grf/{name}": _factory(name) for name in SCENARIOS}
