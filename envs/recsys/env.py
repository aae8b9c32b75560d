"""Multi-scenario recommendation as cooperating agents, on a MovieLens-1M user model (a `BatchedEnv`).

Each env copy is one user session. Each scenario (home feed, a genre channel, a "more like this" rail,
or a plug-in) is an agent. At every step the user is in one scenario; that scenario's agent picks one of
its candidates (Discrete(K), unused slots masked), the user responds, and may move to another scenario or
leave. Agents of the scenarios the user is not in are inactive for that step (left out of the loss).

User model (fitted on MovieLens-1M training ratings; `data.py`): predicted rating
`a = mean + p_u . q_i`. Click ~ Bernoulli(sigmoid(1.5 (a - 3.5) + 0.5 novel - fatigue + 0.5 (sat - 1)));
the watch fraction grows with `a` (duration-aware watch reward); a like is a click on an item with
`a >= 4`; diversity is 1 when the item brings a genre new to the session. Satisfaction and fatigue are
shared by all scenarios: a scenario that recommends badly shortens the session for every other one, so
cooperation pays. The user leaves with probability sigmoid(-4 + 3 fatigue - 2 sat), or at
`session_length` steps.

Rewards: each scenario maps the signals onto one scale with its weights (`reward_weights`), and only the
acting scenario is rewarded; the team reward is the sum of the agents' mapped rewards.
"""

from __future__ import annotations

import numpy as np

from envs.batched import BatchedEnv, BatchedObs, BatchedStep
from envs.recsys.data import fit_embeddings, load_movielens
from envs.recsys.scenarios import BASE_SIGNALS, DEFAULT_SCENARIOS, Scenario, ScenarioError, UserContext, build_scenario

_DATA_CACHE: dict = {}


def _movielens(rank: int):
    if rank not in _DATA_CACHE:
        data = load_movielens()
        _DATA_CACHE[rank] = (data, *fit_embeddings(data, rank=rank))
    return _DATA_CACHE[rank]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class MultiScenarioRecEnv(BatchedEnv):
    shared_reward = False
    reports_win = False

    def __init__(self, num_envs: int = 1, scenarios=DEFAULT_SCENARIOS, session_length: int = 30,
                 move_prob: float = 0.2, rank: int = 16):
        self.num_envs, self.session_length, self.move_prob = int(num_envs), int(session_length), float(move_prob)
        self.scenarios: list[Scenario] = [build_scenario(s) for s in scenarios]
        names = [s.name for s in self.scenarios]
        if len(set(names)) != len(names):
            raise ScenarioError(f"scenario names must be unique (they are the agents): {names}")
        self.possible_agents = tuple(names)
        self.data, P, Q, self.mean_rating = _movielens(rank)
        self.user_factors, self.item_factors = P, Q
        scale = float(np.abs(Q).std() * 3)
        self.obs_user, self.obs_items = P / scale, Q / scale
        self.K = max(s.num_candidates for s in self.scenarios)
        self.S, self.I, self.r = len(self.scenarios), self.data.num_items, P.shape[1]
        self.candidate_dim = self.r + 2  # per candidate: embedding, popularity, seen (the obs's last K blocks)
        self.obs_dim = self.r + self.S + 3 + self.K * self.candidate_dim
        self.state_dim = self.r + self.S + 3
        self._rng = np.random.default_rng(0)

    # -- spaces ---------------------------------------------------------------------------------
    def observation_space(self, agent: str):
        from gymnasium import spaces

        return spaces.Dict({"observation": spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32),
                            "action_mask": spaces.MultiBinary(self.K)})

    def action_space(self, agent: str):
        from gymnasium import spaces

        return spaces.Discrete(self.K)

    # -- episode state --------------------------------------------------------------------------
    def reset(self, seed: int, users=None, scenarios=None) -> BatchedObs:
        """Start a session in every env copy. `users` / `scenarios` ([num_envs] indices) pin who the
        users are and where they start (a text task replays one query's session); by default both are
        drawn from the seed. Either way the seed alone drives everything random after that."""
        self._rng = np.random.default_rng(int(seed))
        E = self.num_envs
        self.user = np.zeros(E, int)
        self.scenario = np.zeros(E, int)
        self.sat, self.fatigue, self.t = np.ones(E), np.zeros(E), np.zeros(E, int)
        self.seen = np.zeros((E, self.I), bool)
        self.session_genres = np.zeros((E, self.data.genres.shape[1]), bool)
        self.last_clicked = np.full(E, -1)
        self._start(np.arange(E))
        if users is not None:
            self.user[:] = np.asarray(users, int)
        if scenarios is not None:
            self.scenario[:] = np.asarray(scenarios, int)
        return self._observe()

    def _start(self, copies: np.ndarray) -> None:
        n = len(copies)
        self.user[copies] = self._rng.integers(self.data.num_users, size=n)
        self.scenario[copies] = self._rng.integers(self.S, size=n)
        self.sat[copies], self.fatigue[copies], self.t[copies] = 1.0, 0.0, 0
        self.seen[copies] = False
        self.session_genres[copies] = False
        self.last_clicked[copies] = -1

    def _context(self, copies: np.ndarray) -> UserContext:
        return UserContext(self.user_factors[self.user[copies]], self.seen[copies], self.last_clicked[copies],
                           self.item_factors, self.data.genres, self.data.popularity)

    def _observe(self) -> BatchedObs:
        E, K = self.num_envs, self.K
        self.candidates = np.zeros((E, K), int)
        mask = np.zeros((E, self.S, K), bool)
        mask[:, :, 0] = True  # inactive agents: a single legal no-op slot
        for s, scenario in enumerate(self.scenarios):
            copies = np.flatnonzero(self.scenario == s)
            if copies.size == 0:
                continue
            cands = np.asarray(scenario.candidates(self._context(copies), self._rng))
            k = scenario.num_candidates
            if cands.shape != (copies.size, k) or not np.issubdtype(cands.dtype, np.integer):
                raise ScenarioError(f"scenario {scenario.name!r}: candidates have shape {cands.shape} and dtype "
                                    f"{cands.dtype}, expected integer item indices of shape {(copies.size, k)}")
            if (cands < 0).any() or (cands >= self.I).any():
                bad = cands[(cands < 0) | (cands >= self.I)][0]
                raise ScenarioError(f"scenario {scenario.name!r}: unknown item id {bad} (catalog has {self.I} items)")
            self.candidates[copies, :k] = cands
            mask[copies, s, :] = False
            mask[copies, s, :k] = True
        alive = np.zeros((E, self.S), bool)
        alive[np.arange(E), self.scenario] = True
        obs = np.zeros((E, self.S, self.obs_dim), np.float32)
        seen_flags = self.seen[np.arange(E)[:, None], self.candidates]
        obs[np.arange(E), self.scenario] = self.agent_observation(
            self.user, self.scenario, self.candidates, seen_flags, self.sat, self.fatigue, self.t)
        return BatchedObs(obs=obs, state=self._shared_features(self.user, self.scenario, self.sat, self.fatigue,
                                                               self.t).astype(np.float32),
                          action_mask=mask, alive=alive)

    def _shared_features(self, users, scenarios, sat, fatigue, t) -> np.ndarray:
        return np.concatenate([self.obs_user[users], np.eye(self.S)[scenarios],
                               np.stack([sat, fatigue, t / self.session_length], 1)], 1)

    def agent_observation(self, users, scenarios, candidates, seen_flags, sat=None, fatigue=None, t=None) -> np.ndarray:
        """The acting scenario's observation [B, obs_dim]: user, scenario one-hot, session state, and
        per candidate (embedding, popularity, already seen). Defaults: a fresh session (offline metrics)."""
        B = len(users)
        sat = np.ones(B) if sat is None else sat
        fatigue = np.zeros(B) if fatigue is None else fatigue
        t = np.zeros(B) if t is None else t
        items = np.concatenate([self.obs_items[candidates], self.data.popularity[candidates][..., None],
                                np.asarray(seen_flags, float)[..., None]], 2)
        padded = np.zeros((B, self.K, self.r + 2))
        padded[:, : candidates.shape[1]] = items
        return np.concatenate([self._shared_features(users, scenarios, sat, fatigue, t), padded.reshape(B, -1)],
                              1).astype(np.float32)

    def expected_reward(self, users: np.ndarray, scenarios: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Expected mapped reward of showing `items` to `users` in `scenarios` at a fresh session's start
        (the base signals' expectations under the user model; plug-in signals count as 0). Generative
        policies score many counterfactual items per request with it."""
        affinity = self.mean_rating + (self.user_factors[users] * self.item_factors[items]).sum(-1)
        p_click = _sigmoid(1.5 * (affinity - 3.5) + 0.5)
        expected = {"click": p_click, "watch": p_click * np.clip(_sigmoid(2 * (affinity - 3.5)), 0, 1),
                    "diversity": np.ones_like(p_click), "like": p_click * (affinity >= 4.0)}
        out = np.zeros(np.broadcast(users, items).shape)
        for s, scenario in enumerate(self.scenarios):
            here = np.broadcast_to(scenarios == s, out.shape)
            for name, weight in scenario.reward_weights.items():
                if name in expected:
                    out = np.where(here, out + weight * expected[name], out)
        return out

    # -- one step -------------------------------------------------------------------------------
    def step(self, actions: np.ndarray) -> BatchedStep:
        E = self.num_envs
        actions = np.asarray(actions)
        if actions.shape != (E, self.S):
            raise ValueError(f"recsys: actions have shape {actions.shape}, expected (num_envs, scenarios) = {(E, self.S)}")
        rows = np.arange(E)
        slot = actions[rows, self.scenario]
        limit = np.array([s.num_candidates for s in self.scenarios])[self.scenario]
        if ((slot < 0) | (slot >= limit)).any():
            e = int(np.flatnonzero((slot < 0) | (slot >= limit))[0])
            raise ValueError(f"recsys: scenario {self.possible_agents[self.scenario[e]]!r} chose slot {slot[e]} "
                             f"of {limit[e]} candidates (env copy {e})")
        item = self.candidates[rows, slot]
        signals = self._respond(item)
        self.last_items, self.last_signals = item, signals  # what each user was shown and did (read by text tasks)
        rewards = np.zeros((E, self.S), np.float32)
        for s, scenario in enumerate(self.scenarios):
            copies = np.flatnonzero(self.scenario == s)
            if copies.size == 0:
                continue
            extra = scenario.signals(self._context(copies), item[copies], signals["click"][copies] > 0)
            mapped = np.zeros(copies.size)
            for name, weight in scenario.reward_weights.items():
                value = signals[name][copies] if name in BASE_SIGNALS else self._checked(scenario, name, extra, copies.size)
                mapped += weight * value
            rewards[copies, s] = mapped
        done = self._advance(item, signals)
        if done.any():
            self._start(np.flatnonzero(done))
        return BatchedStep(next=self._observe(), rewards=rewards, done=done, won=np.zeros(E, np.float32))

    def _checked(self, scenario: Scenario, name: str, extra: dict, n: int) -> np.ndarray:
        low, high = scenario.signal_ranges[name]
        value = np.asarray(extra.get(name, np.zeros(n)), np.float64)
        if value.shape != (n,) or not np.isfinite(value).all() or (value < low).any() or (value > high).any():
            raise ScenarioError(f"scenario {scenario.name!r}: signal {name!r} must be {n} finite values in "
                                f"[{low}, {high}], got {value[:5]}")
        return value

    def _respond(self, item: np.ndarray) -> dict[str, np.ndarray]:
        rows = np.arange(self.num_envs)
        affinity = self.mean_rating + (self.user_factors[self.user] * self.item_factors[item]).sum(1)
        genres = self.data.genres[item]
        novel = (genres & ~self.session_genres).any(1).astype(float)
        seen = self.seen[rows, item].astype(float)
        p_click = _sigmoid(1.5 * (affinity - 3.5) + 0.5 * novel - self.fatigue + 0.5 * (self.sat - 1) - 2 * seen)
        click = (self._rng.random(self.num_envs) < p_click).astype(float)
        watch = click * np.clip(_sigmoid(2 * (affinity - 3.5)) + self._rng.normal(0, 0.1, self.num_envs), 0, 1)
        like = click * (affinity >= 4.0)
        return {"click": click, "watch": watch, "diversity": novel, "like": like}

    def _advance(self, item: np.ndarray, signals: dict) -> np.ndarray:
        rows = np.arange(self.num_envs)
        self.seen[rows, item] = True
        self.session_genres |= self.data.genres[item]
        clicked = signals["click"] > 0
        self.last_clicked = np.where(clicked, item, self.last_clicked)
        self.sat = np.clip(self.sat + 0.15 * signals["watch"] + 0.05 * signals["like"] - 0.1 * (1 - signals["click"]), 0, 2)
        self.fatigue = self.fatigue + 0.04 + 0.04 * (1 - signals["diversity"])
        self.t += 1
        leave = self._rng.random(self.num_envs) < _sigmoid(-4 + 3 * self.fatigue - 2 * self.sat)
        move = self._rng.random(self.num_envs) < self.move_prob
        if self.S > 1:
            shift = self._rng.integers(1, self.S, size=self.num_envs)
            self.scenario = np.where(move, (self.scenario + shift) % self.S, self.scenario)
        return leave | (self.t >= self.session_length)
