"""Google Research Football (gfootball 2.10.2) as a PettingZoo ParallelEnv.

`make_env("grf/academy_3_vs_1_with_keeper")` controls the scenario's left-team players
`player_0 .. player_{K-1}` (K defaults to the count used by the MAPPO GRF benchmarks). Each agent observes
the `simple115v2` vector (115 floats, the whole pitch from its side plus which player it is) and has
Discrete(19) actions; `state()` is the controlled players' observations side by side. Rewards
(`rewards`): `scoring` (+1 / -1 per goal) or `scoring,checkpoints` (plus GRF's shaped approach rewards: ten
zones at distances 0.99 .. 0.19 from the opponent goal, 0.1 each, the rest paid at a goal). `team_reward`:
- False (default): per player, as GRF pays them: a player's checkpoints are paid when the player it drives
  carries the ball into a zone, and GRF counts the zones per controlled player;
- True: the team's reward, the same for every agent (the env declares `shared_reward`): the goal once and
  each checkpoint zone once per episode, whoever carries the ball there (any left-team player);
- "sum": every agent gets the sum of the controlled players' GRF rewards (the reference MAPPO code's
  `share_reward`). Each player collects the zones on its own count, so a pass to a player another agent
  drives pays the zones already reached a second time: on pass_and_shoot the attackers start 0.41 from
  goal, a pass pays 0.7 again, and a policy trained on the sum learned to pass instead of shooting (greedy
  return 1.4 per episode, no goal: benchmarks/results/grf/second_settings). True pays at most 1.0 before a goal;
- "first": every agent gets the first controlled player's GRF reward (HARL's football env: `rew[0]`, the
  reward behind the published curves). Which player an agent slot drives is GRF's choice, and it changes:
  on pass_and_shoot slot 0 drives the keeper while slot 1's attacker has the ball, and the receiver once the
  pass arrives, so the receiver's zones (0.7-0.8) pay the pass, while the carrier's dribbling pays nothing.

Time limit (`time_limit`): an episode that runs out of GRF's `game_duration` (400 steps in the academy
scenarios) ends
- "truncation" (default): as a truncation (`truncations[agent] = True`): simple115v2 observations carry no
  clock, so the cut is not part of the state and the sampler bootstraps from the final observation;
- "terminal": as a termination, as the reference MAPPO implementations for GRF treat it (on-policy, HARL:
  `done` with no value after it), and `state()` gains the fraction of game time left as its last entry,
  so the centralised critic sees the clock that ends the episode and a value of 0 after the time-out is
  the true one. Bootstrapping instead values "keep the ball until the clock runs out" as if the game went
  on, while the critic cannot see which checkpoint rewards are already spent.
At the end of an episode `infos[agent]` carries `score` (goal difference, from GRF's `score_reward`)
and `win` (score > 0): academy episodes end at the first goal, so there the win rate is the scoring
rate; in 5_vs_5 (3000 steps, not ended by goals) a draw is not a win.

Which team members the K agents move is GRF's choice: the engine switches control between players
(e.g. in 3_vs_1 agent slot 2 sometimes drives the keeper instead of the third midfielder); the active
one-hot inside each observation (indices 97-107) says which player a slot drives at that step.
`state()` concatenates the K observations (K*115, + 1 with `time_limit="terminal"`): they share the
whole-pitch part and differ only in that one-hot, so the concatenation is the full state plus who is
controlled.

GRF must be built first (`make grf`: the engine is compiled once and the wheel cached).

Seeding: GRF re-seeds its engine at every reset from the config's `game_engine_random_seed` (and
derives `reverse_team_processing` from the seed's parity the first time only). `reset(seed=s)` sets
both for that episode, so an episode is a function of (seed, actions), whatever the env copy played
before; `reset()` without a seed draws the next episode seed from a generator seeded by the last
given seed (or from OS entropy if none was ever given). Checked here: same seed -> identical
trajectories for a fresh copy and for a copy that played other seeds first; different seeds differ.

Measured here (2 shared cores, load 2-3, random actions, resets included): 3_vs_1_with_keeper
240-320 steps/s in one process (210-300 through this adapter; create + first reset 0.3-0.4 s),
counterattack_hard ~140, 5_vs_5 ~205. Several engines live in one process: two 3_vs_1 copies stepped
alternately gave 250-280 steps/s together, and each copy's trajectory was bit-identical to the same seed
and actions played alone (checked for 3_vs_1, counterattack_hard, corner and 5_vs_5), so
`rollout.envs_per_worker` copies are independent; they share the process's one core, so
`rollout.num_workers` (processes) is what adds throughput.
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
    "academy_empty_goal_close": 1,  # a smoke test: one attacker before an empty goal (learned in ~64k env steps)
}
"""Scenario -> default number of controlled left-team players."""

NUM_ACTIONS = 19
OBS_DIM = 115
NUM_CHECKPOINTS, CHECKPOINT_REWARD = 10, 0.1  # GRF's CheckpointRewardWrapper (gfootball 2.10.2)
_SEED_RANGE = 2_000_000_000  # GRF draws its own engine seeds from [0, 2e9]


class FootballParallelEnv:
    metadata = {"name": "grf", "render_modes": []}

    def __init__(self, scenario: str, num_agents: int | None = None, rewards: str = "scoring,checkpoints",
                 team_reward: bool | str = False, time_limit: str = "truncation", **create_kwargs: Any):
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown GRF scenario {scenario!r}; valid scenarios: {', '.join(SCENARIOS)}")
        if rewards not in ("scoring", "scoring,checkpoints"):
            raise ValueError(f"GRF rewards {rewards!r}; allowed: 'scoring', 'scoring,checkpoints'")
        if time_limit not in ("truncation", "terminal"):
            raise ValueError(f"GRF time_limit {time_limit!r}; allowed: 'truncation', 'terminal'")
        if not (isinstance(team_reward, bool) or team_reward in ("sum", "first")):
            raise ValueError(f"GRF team_reward {team_reward!r}; allowed: false, true, 'sum', 'first'")
        self.scenario, self.rewards, self.team_reward = scenario, rewards, team_reward
        self.shared_reward = team_reward is not False
        # team_reward true counts the checkpoint zones here, once per team; GRF then pays only the goals
        self._team_checkpoints = team_reward is True and rewards == "scoring,checkpoints"
        self.time_limit = time_limit
        self.num_controlled = int(num_agents or SCENARIOS[scenario])
        self.create_kwargs = create_kwargs
        self.possible_agents = [f"player_{i}" for i in range(self.num_controlled)]
        self.agents: list[str] = []
        self._env = None
        self._obs = np.zeros((self.num_controlled, OBS_DIM), np.float32)
        self._score, self._checkpoints = 0.0, 0  # goal difference; zones the team reached (team_reward true)
        self._time_left, self._game_steps = 1.0, 1  # share of game time left; the episode's game duration
        self._seeds = np.random.default_rng()  # episode seeds for reset() without a seed
        from gymnasium import spaces

        self._obs_space = spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        self._act_space = spaces.Discrete(NUM_ACTIONS)

    def _create(self) -> None:
        try:
            import gfootball.env as football
        except ImportError as exc:
            raise ImportError("Google Research Football is not installed: run `make grf` (builds gfootball "
                              "2.10.2 once and caches the wheel)") from exc
        logging.getLogger("absl").setLevel(logging.WARNING)  # GRF logs a line per episode at INFO
        self._env = football.create_environment(
            env_name=self.scenario, representation="simple115v2", render=False,
            rewards="scoring" if self._team_checkpoints else self.rewards,
            number_of_left_players_agent_controls=self.num_controlled, **self.create_kwargs)

    def observation_space(self, agent: str):
        return self._obs_space

    def action_space(self, agent: str):
        return self._act_space

    def reset(self, seed: int | None = None, options: dict | None = None):
        if self._env is None:
            self._create()
        if seed is not None:
            episode_seed = int(seed) % _SEED_RANGE
            self._seeds = np.random.default_rng(episode_seed)
        else:
            episode_seed = int(self._seeds.integers(_SEED_RANGE))
        # GRF's FootballEnv reads these from its config at each reset (gfootball 2.10.2 scenario_builder).
        config = self._env.unwrapped._config
        config["game_engine_random_seed"] = episode_seed
        config["reverse_team_processing"] = bool(episode_seed % 2)
        self._obs = self._as_rows(self._env.reset())
        self._score, self._checkpoints = 0.0, 0
        self._time_left, self._game_steps = 1.0, max(1, int(self._env.unwrapped.observation()[0]["steps_left"]))
        self.agents = list(self.possible_agents)
        return {a: self._obs[i] for i, a in enumerate(self.agents)}, {a: {} for a in self.agents}

    def step(self, actions: dict):
        missing = [a for a in self.agents if a not in actions]
        if missing:
            raise ValueError(f"GRF {self.scenario}: no action for {', '.join(missing)}")
        joint = [int(actions[a]) for a in self.possible_agents]
        obs, reward, done, info = self._env.step(joint)
        self._obs = self._as_rows(obs)
        if self.time_limit == "terminal":  # GRF's own clock (its raw observation)
            self._time_left = max(0, self._env.unwrapped.observation()[0]["steps_left"]) / self._game_steps
        rewards = np.broadcast_to(np.asarray(reward, np.float32), (self.num_controlled,))
        if self.team_reward == "sum":
            rewards = np.full(self.num_controlled, rewards.sum(), np.float32)
        elif self.team_reward == "first":
            rewards = np.full(self.num_controlled, rewards[0], np.float32)
        elif self.team_reward is True:  # every controlled player's GRF reward holds the same goal reward
            rewards = np.full(self.num_controlled, rewards[0] + self._team_checkpoint_reward(info), np.float32)
        self._score += float(info.get("score_reward", 0.0))
        agents = self.agents
        done = bool(done)
        # Ran out of game time (GRF's own clock) without a goal on the last step: a truncation (module docstring).
        timed_out = (self.time_limit == "truncation" and done and not info.get("score_reward")
                     and self._env.unwrapped.observation()[0]["steps_left"] <= 0)
        infos = {a: {} for a in agents}
        if done:
            infos = {a: {"score": self._score, "win": self._score > 0} for a in agents}
            self.agents = []
        observations = {a: self._obs[i] for i, a in enumerate(agents)}
        return (observations, {a: float(rewards[i]) for i, a in enumerate(agents)},
                {a: done and not timed_out for a in agents}, {a: timed_out for a in agents}, infos)

    def _team_checkpoint_reward(self, info: dict) -> float:
        if not self._team_checkpoints:
            return 0.0
        before, raw = self._checkpoints, self._env.unwrapped.observation()[0]
        if info.get("score_reward", 0) > 0:  # a goal pays the zones not yet reached, as GRF does
            self._checkpoints = NUM_CHECKPOINTS
        elif raw["ball_owned_team"] == 0:
            self._checkpoints = checkpoints_reached(before, raw["ball"])
        return CHECKPOINT_REWARD * (self._checkpoints - before)

    def state(self) -> np.ndarray:
        if self.time_limit == "terminal":
            return np.append(self._obs.reshape(-1), np.float32(self._time_left))
        return self._obs.reshape(-1)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def _as_rows(self, obs) -> np.ndarray:
        return np.asarray(obs, np.float32).reshape(self.num_controlled, OBS_DIM)


def checkpoints_reached(collected: int, ball) -> int:
    """GRF's checkpoint zones reached, in order, by a ball at `ball` (x, y, ...) after `collected` of them:
    zone k (k = 0 .. 9) is reached within 0.99 - 0.8 / 9 * k of the opponent goal's centre (1, 0)."""
    distance = float(np.hypot(ball[0] - 1.0, ball[1]))
    while collected < NUM_CHECKPOINTS and distance <= 0.99 - 0.8 / (NUM_CHECKPOINTS - 1) * collected:
        collected += 1
    return collected


def _factory(scenario: str):
    def make(**kwargs: Any) -> FootballParallelEnv:
        return FootballParallelEnv(scenario, **kwargs)

    make.__name__ = f"make_grf_{scenario}"
    return make


FACTORIES = {f"grf/{name}": _factory(name) for name in SCENARIOS}
