"""Rollout worker: steps `envs_per_worker` env copies together and returns one row per agent group.

A request is a pure function of (weights version, request seed): every request resets its envs with
seeds derived from the request seed and samples actions from a generator seeded by it. That makes a
request that was lost with a dead worker reproducible anywhere, and makes resumed runs exact.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from envs import EnvSpec, describe_env, make_env, split_observation
from envs.batched import is_batched
from envs.registry import resolve_factory
from flexmarl.algorithms import ADVANTAGE_ESTIMATORS
from flexmarl.config import Config
from flexmarl.groups import GroupLayout, build_groups, critic_uses_state
from flexmarl.rollout.backend import ActOutput, make_backend
from flexmarl.rollout.batched import sample_batched
from flexmarl.rollout.checks import EnvStepError, check_actions, check_observation, check_reward
from flexmarl.rollout.env_io import critic_input, group_critic_rows, team_step_reward, win_flag
from flexmarl.rollout.evaluate import evaluate_policy


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


class RolloutWorker:
    """Contract: make env, set weights (versioned), sample, metrics, health."""

    def __init__(self, cfg: Config, worker_index: int = 0):
        torch.set_num_threads(1)
        self.cfg, self.worker_index = cfg, worker_index
        self.num_envs = cfg.rollout.envs_per_worker
        if is_batched(resolve_factory(cfg.env.name)):
            self.envs, self.batched_env = [], make_env(cfg.env.name, num_envs=self.num_envs, **cfg.env.kwargs)
            self.spec: EnvSpec = describe_env(self.batched_env, seed=cfg.run.seed)
        else:
            self.envs, self.batched_env = [make_env(cfg.env.name, **cfg.env.kwargs) for _ in range(self.num_envs)], None
            self.spec = describe_env(self.envs[0], seed=cfg.run.seed)
        self._eval_envs: dict[int, object] = {}
        self.groups: list[GroupLayout] = build_groups(cfg, self.spec)
        self.backend = make_backend(cfg, self.groups)
        self.estimator = ADVANTAGE_ESTIMATORS[cfg.algo.advantage_estimator]
        self.use_state = critic_uses_state(cfg)
        self.requests_served = 0
        self.total_env_steps = 0

    # -- contract -------------------------------------------------------------------------------
    def set_weights(self, weights: dict, version: int) -> int:
        self.backend.set_weights(weights, version)
        return version

    def load_group_weights(self, version: int, groups: list[str], *weights: dict) -> int:
        """`set_weights` with one argument per group: each group's weights arrive straight from its
        trainer through the object store."""
        return self.set_weights(dict(zip(groups, weights)), version)

    def health(self) -> dict:
        return {"worker": self.worker_index, "pid": os.getpid(), "version": self.backend.version,
                "requests_served": self.requests_served, "env_steps": self.total_env_steps}

    def metrics(self) -> dict:
        return {"requests_served": self.requests_served, "env_steps": self.total_env_steps}

    def sample(self, request: RolloutRequest) -> RolloutResult:
        if request.version is not None and request.version != self.backend.version:
            raise RuntimeError(
                f"worker {self.worker_index} holds policy version {self.backend.version}, "
                f"request {request.request_id} needs {request.version}"
            )
        started_at, start = time.time(), time.perf_counter()
        result = _Sampler(self, request).run()
        result.sample_s = time.perf_counter() - start
        result.started_at, result.finished_at, result.worker = started_at, time.time(), self.worker_index
        self.requests_served += 1
        self.total_env_steps += result.env_steps
        return result


    def sample_rows(self, request: RolloutRequest) -> tuple:
        """`sample`, split as (result without rows, row of group 0, row of group 1, ...) so that each row
        travels as its own reference, owned by the caller (it outlives this worker)."""
        result = self.sample(request)
        rows = [result.rows.pop(g.name) for g in self.groups]
        return (result, *rows)

    def evaluate(self, episodes: int, seed: int) -> dict:
        """Greedy episodes with the current weights: team return mean and, where defined, win rate."""
        if self.batched_env is None:
            env = self.envs[0]
        else:  # one copy per episode; compiled once per episode count
            env = self._eval_envs.get(episodes) or self._eval_envs.setdefault(episodes, make_eval_env(self.cfg, episodes))
        return evaluate_policy(env, self.spec, self.groups, self.backend, self.use_state,
                               self.cfg.env.global_state, episodes, seed)


def make_eval_env(cfg: Config, episodes: int):
    """The env greedy evaluation runs on: a plain env, or a batched one with one copy per episode."""
    if is_batched(resolve_factory(cfg.env.name)):
        return make_env(cfg.env.name, num_envs=episodes, **cfg.env.kwargs)
    return make_env(cfg.env.name, **cfg.env.kwargs)


_TIME_MAJOR = ("agent_index", "obs", "critic_in", "actions", "logp", "values_norm", "values", "rewards", "terminated",
               "episode_end", "truncation_values", "active", "episode_start", "action_mask")


def _pack_active(row: dict) -> dict:
    """Feed-forward policies need no time structure: keep only active samples, as one [1, N] sequence,
    so training cost follows the steps actually played (not the padded length of a long-tail request)."""
    keep = row["active"] > 0
    # Every sample active (the common case): a reshape gives the same [1, N] order without copying
    # (large image observations make that copy the slowest part of a request).
    pick = (lambda v: v.reshape(1, -1, *v.shape[2:])) if keep.all() else (lambda v: v[keep][None])
    packed = {k: (pick(v) if k in _TIME_MAJOR or k in ("advantages", "returns") else v) for k, v in row.items()}
    packed["h0_actor"] = np.zeros((int(keep.sum()), row["h0_actor"].shape[1]), np.float32)
    packed["h0_critic"] = np.zeros((int(keep.sum()), row["h0_critic"].shape[1]), np.float32)
    return packed


class _Sampler:
    """The state of one request: per-group [T, C] buffers, current observations, episode tallies."""

    def __init__(self, worker: RolloutWorker, request: RolloutRequest):
        self.w, self.req = worker, request
        self.T, self.E = request.num_steps, worker.num_envs
        self.generator = torch.Generator().manual_seed(request.seed)
        self.env_seeds = np.random.default_rng(request.seed)
        self.buffers = {g.name: self._allocate(g) for g in worker.groups}
        self.episode_returns = np.zeros(self.E)
        self.agent_returns: list[dict[str, float]] = [{} for _ in range(self.E)]
        self.episode_lengths = np.zeros(self.E, dtype=int)
        self.episode_start_t = np.zeros(self.E, dtype=int)
        self.one_episode = worker.cfg.rollout.request_unit == "episodes"
        self.finished = np.zeros(self.E, dtype=bool)  # episodes mode: env copies whose episode is over
        self.t_used = 0
        self.result = RolloutResult(request.request_id, worker.backend.version, env_steps=0)

    def _allocate(self, g: GroupLayout) -> dict:
        T, C = self.T, self.E * len(g.agents)
        a_shape = {"discrete": (T, C), "multi_discrete": (T, C, len(g.action.nvec))}.get(g.action.kind, (T, C, g.action.dim))
        h_actor, h_critic = self.w.backend.initial_state(g.name, C)
        buf = {
            # The agent behind each column (its index in the group): per-agent gradients need it.
            "agent_index": np.tile(np.arange(len(g.agents)), (T, self.E)),
            "obs": np.zeros((T, C, g.obs_dim), np.float32),
            "critic_in": np.zeros((T, C, g.critic_dim), np.float32),
            "actions": np.zeros(a_shape, np.float32 if g.action.kind == "box" else np.int64),
            "logp": np.zeros((T, C), np.float32),
            "values_norm": np.zeros((T, C), np.float32),
            "values": np.zeros((T, C), np.float32),
            "rewards": np.zeros((T, C), np.float32),
            "terminated": np.zeros((T, C), np.float32),
            "episode_end": np.zeros((T, C), np.float32),
            "truncation_values": np.zeros((T, C), np.float32),
            "active": np.zeros((T, C), np.float32),
            "episode_start": np.zeros((T, C), np.float32),
            "h0_actor": h_actor, "h0_critic": h_critic,
        }
        if g.has_action_mask:
            buf["action_mask"] = np.ones((T, C, g.action.dim), bool)
        # Current step's inputs, refreshed after every env step.
        buf["cur_obs"] = np.zeros((C, g.obs_dim), np.float32)
        buf["cur_critic"] = np.zeros((C, g.critic_dim), np.float32)
        buf["cur_mask"] = np.ones((C, g.action.dim), bool) if g.has_action_mask else None
        buf["cur_active"] = np.zeros(C, np.float32)
        buf["cur_start"] = np.ones(C, np.float32)
        buf["h_actor"], buf["h_critic"] = h_actor.copy(), h_critic.copy()
        return buf

    # -- env bookkeeping ------------------------------------------------------------------------
    def _critic_rows(self, env, obs_by_agent: dict):
        return critic_input(env, self.w.spec, obs_by_agent, self.w.use_state, self.w.cfg.env.global_state)

    def _load_obs(self, e: int, raw_obs: dict, step: int) -> dict:
        """Write env e's observations into each group's current-step arrays; returns flat obs by agent."""
        flat = {}
        for agent, obs in raw_obs.items():
            spec = self.w.spec.per_agent.get(agent)
            if spec is None:
                raise EnvStepError(f"env copy {e} at step {step}: observation for unknown agent {agent!r}")
            vec, mask = split_observation(obs, spec)
            check_observation(vec, spec.obs_dim, agent, step, e, self.req.request_id)
            flat[agent] = (vec, mask)
        for g in self.w.groups:
            buf, k = self.buffers[g.name], len(g.agents)
            for j, agent in enumerate(g.agents):
                col = e * k + j
                if agent in flat:
                    buf["cur_obs"][col], mask = flat[agent]
                    buf["cur_active"][col] = 1.0
                    if mask is not None:
                        buf["cur_mask"][col] = mask
                else:
                    buf["cur_obs"][col] = 0.0
                    buf["cur_active"][col] = 0.0
        return {a: v for a, (v, _) in flat.items()}

    def _set_critic(self, e: int, state_row) -> None:
        for g in self.w.groups:
            buf, k = self.buffers[g.name], len(g.agents)
            cols = slice(e * k, (e + 1) * k)
            buf["cur_critic"][cols] = group_critic_rows(g, state_row, buf["cur_obs"][cols])

    def _reset(self, e: int, step: int) -> None:
        env = self.w.envs[e]
        try:
            raw_obs, _ = env.reset(seed=int(self.env_seeds.integers(2**31 - 1)))
        except Exception as exc:
            raise EnvStepError(f"env copy {e} raised in reset at step {step} (request {self.req.request_id}): {exc!r}") from exc
        flat = self._load_obs(e, raw_obs, step)
        self._set_critic(e, self._critic_rows(env, flat))
        for g in self.w.groups:
            k = len(g.agents)
            self.buffers[g.name]["cur_start"][e * k : (e + 1) * k] = 1.0
        self.episode_returns[e], self.episode_lengths[e] = 0.0, 0
        self.agent_returns[e] = {}
        self.episode_start_t[e] = step

    # -- main loop ------------------------------------------------------------------------------
    def run(self) -> RolloutResult:
        if self.w.batched_env is not None:
            sample_batched(self)
            self._finish()
            return self.result
        for e in range(self.E):
            self._reset(e, 0)
        steps_taken = 0
        for t in range(self.T):
            live = np.flatnonzero(~self.finished)
            if live.size == 0:
                break
            env_actions = [dict() for _ in range(self.E)]
            for g in self.w.groups:
                self._act(g, t, env_actions)
            for e in live:
                self._step_env(int(e), t, env_actions[e])
            steps_taken, self.t_used = steps_taken + live.size, t + 1
        self.result.env_steps = steps_taken
        self._finish()
        return self.result

    def _act(self, g: GroupLayout, t: int, env_actions: list[dict]) -> None:
        buf = self.buffers[g.name]
        live = np.flatnonzero(buf["cur_active"])
        if live.size == 0:
            buf["active"][t] = 0.0
            return
        out = self._act_live(g.name, buf, live)
        self.record(g, t, out)
        buf["cur_start"][:] = 0.0
        k = len(g.agents)
        env_action = out.actions
        if g.action.kind == "box":
            env_action = np.clip(env_action, g.action.low, g.action.high).reshape(-1, *g.action.shape)
        for col in live:
            e, j = divmod(int(col), k)
            env_actions[e][g.agents[j]] = env_action[col]

    def record(self, g: GroupLayout, t: int, out: ActOutput) -> None:
        """Check a group's actions and write step t (current inputs and the policy's outputs) to its buffers."""
        check_actions(out.actions, g.action, g.agents, t, self.req.request_id)
        buf = self.buffers[g.name]
        buf["obs"][t], buf["critic_in"][t] = buf["cur_obs"], buf["cur_critic"]
        buf["actions"][t], buf["logp"][t] = out.actions, out.logp
        buf["values_norm"][t], buf["values"][t] = out.values_norm, out.values
        buf["active"][t], buf["episode_start"][t] = buf["cur_active"], buf["cur_start"]
        if buf["cur_mask"] is not None:
            buf["action_mask"][t] = buf["cur_mask"]
        buf["h_actor"], buf["h_critic"] = out.h_actor, out.h_critic

    def _act_live(self, group: str, buf: dict, live: np.ndarray):
        """Policy call on the live columns only (long-tail requests end with few live env copies);
        finished columns keep their recurrent state and get zeros, which the active mask hides."""
        args = [buf["cur_obs"], buf["cur_critic"], buf["cur_mask"], buf["h_actor"], buf["h_critic"], buf["cur_start"]]
        if live.size == len(buf["cur_active"]):
            return self.w.backend.act(group, *args, deterministic=False, generator=self.generator)
        out = self.w.backend.act(group, *[None if a is None else a[live] for a in args],
                                 deterministic=False, generator=self.generator)
        full = {}
        for name, like in (("actions", out.actions), ("logp", out.logp), ("values_norm", out.values_norm), ("values", out.values)):
            full[name] = np.zeros((len(buf["cur_active"]), *like.shape[1:]), like.dtype)
            full[name][live] = like
        h_actor, h_critic = buf["h_actor"].copy(), buf["h_critic"].copy()
        h_actor[live], h_critic[live] = out.h_actor, out.h_critic
        return ActOutput(h_actor=h_actor, h_critic=h_critic, **full)

    def _step_env(self, e: int, t: int, actions: dict) -> None:
        env = self.w.envs[e]
        try:
            raw_obs, rewards, terms, truncs, infos = env.step(actions)
        except Exception as exc:
            if self.result.env_restarts >= self.w.cfg.rollout.max_env_restarts:
                raise EnvStepError(
                    f"env copy {e} raised at step {t} (episode step {self.episode_lengths[e]}, "
                    f"request {self.req.request_id}), agents {sorted(actions)}, after "
                    f"{self.result.env_restarts} env restarts in this request "
                    f"(rollout.max_env_restarts = {self.w.cfg.rollout.max_env_restarts}): {exc!r}"
                ) from exc
            self._restart_env(e, t)
            return
        self.episode_lengths[e] += 1
        step_rewards: list[float] = []
        trunc_rows: dict[str, list[int]] = {}
        for g in self.w.groups:
            buf, k = self.buffers[g.name], len(g.agents)
            for j, agent in enumerate(g.agents):
                col = e * k + j
                if agent not in actions:
                    buf["episode_end"][t, col] = 1.0
                    continue
                reward = check_reward(rewards.get(agent, 0.0), agent, t, e, self.req.request_id)
                buf["rewards"][t, col] = reward
                step_rewards.append(reward)
                self.agent_returns[e][agent] = self.agent_returns[e].get(agent, 0.0) + reward
                term, trunc = bool(terms.get(agent, False)), bool(truncs.get(agent, False))
                if term or trunc:
                    buf["episode_end"][t, col] = 1.0
                    buf["terminated"][t, col] = float(term)
                    if trunc and not term:
                        trunc_rows.setdefault(g.name, []).append(j)
        self.episode_returns[e] += team_step_reward(step_rewards, self.w.spec.shared_reward)
        live_obs = {a: o for a, o in raw_obs.items() if not (terms.get(a, False) or truncs.get(a, False))}
        if trunc_rows:
            self._truncation_values(e, t, raw_obs, trunc_rows)
        if not env.agents or not live_obs:
            self.result.episode_returns.append(float(self.episode_returns[e]))
            self.result.episode_lengths.append(int(self.episode_lengths[e]))
            for agent, value in self.agent_returns[e].items():
                self.result.agent_returns.setdefault(agent, []).append(float(value))
            win = win_flag(infos)
            if win is not None:
                self.result.wins.append(win)
            if self.one_episode:
                self._stop(e)
            else:
                self._reset(e, t + 1)
        else:
            flat = self._load_obs(e, live_obs, t + 1)
            self._set_critic(e, self._critic_rows(env, flat))

    def _restart_env(self, e: int, t: int) -> None:
        """Env copy e raised mid-episode: rebuild it and drop its unfinished episode from the loss."""
        start = self.episode_start_t[e]
        for g in self.w.groups:
            buf, k = self.buffers[g.name], len(g.agents)
            cols = slice(e * k, (e + 1) * k)
            self.result.discarded_steps += int(buf["active"][start : t + 1, cols].sum())
            buf["active"][start : t + 1, cols] = 0.0
            buf["episode_end"][t, cols] = 1.0  # nothing flows across the cut in GAE
        self.result.env_restarts += 1
        try:
            close = getattr(self.w.envs[e], "close", None)
            if close is not None:
                close()
        except Exception:  # a crashed engine may not close cleanly; it is being replaced anyway
            pass
        self.w.envs[e] = make_env(self.w.cfg.env.name, **self.w.cfg.env.kwargs)
        if self.one_episode:
            self._stop(e)
        else:
            self._reset(e, t + 1)

    def _stop(self, e: int) -> None:
        """Episodes mode: env copy e played its episode; its columns stay inactive for the rest."""
        self.finished[e] = True
        for g in self.w.groups:
            k = len(g.agents)
            self.buffers[g.name]["cur_active"][e * k : (e + 1) * k] = 0.0

    def _truncation_values(self, e: int, t: int, raw_obs: dict, trunc_rows: dict) -> None:
        """V(final observation) of agents cut by a time limit: they bootstrap instead of ending at 0."""
        final = {a: split_observation(o, self.w.spec.per_agent[a])[0] for a, o in raw_obs.items()}
        state_row = self._critic_rows(self.w.envs[e], final)
        for g in self.w.groups:
            if g.name not in trunc_rows:
                continue
            buf, k = self.buffers[g.name], len(g.agents)
            cols = [e * k + j for j in trunc_rows[g.name]]
            own_obs = np.stack([final.get(a, np.zeros(g.obs_dim, np.float32)) for a in g.agents])
            critic_in = group_critic_rows(g, state_row, own_obs)[trunc_rows[g.name]]
            values = self.w.backend.value(g.name, critic_in, buf["h_critic"][cols], np.zeros(len(cols), np.float32))
            buf["truncation_values"][t, cols] = values

    def _finish(self) -> None:
        cfg = self.w.cfg.algo
        for g in self.w.groups:
            buf = {k: (v[: self.t_used] if k in _TIME_MAJOR else v) for k, v in self.buffers[g.name].items()}
            # Bootstrap at the fragment's end from the next observation.
            last_values = self.w.backend.value(g.name, buf["cur_critic"], buf["h_critic"], buf["cur_start"])
            next_values = np.empty_like(buf["values"])
            next_values[:-1] = buf["values"][1:]
            next_values[-1] = last_values * buf["cur_active"]
            ended = buf["episode_end"] > 0
            next_values[ended] = buf["truncation_values"][ended]
            advantages, returns = self.w.estimator(
                buf["rewards"], buf["values"], next_values, buf["terminated"], buf["episode_end"],
                gamma=cfg.gamma, lam=cfg.gae_lambda,
            )
            row = {k: buf[k] for k in ("agent_index", "obs", "critic_in", "actions", "logp", "values_norm", "active",
                                       "episode_start", "h0_actor", "h0_critic")}
            row["advantages"], row["returns"] = advantages.astype(np.float32), returns.astype(np.float32)
            if "action_mask" in buf:
                row["action_mask"] = buf["action_mask"]
            if not self.w.cfg.model.use_gru:
                row = _pack_active(row)
            self.result.rows[g.name] = row
            self.result.num_active[g.name] = int(buf["active"].sum())
