"""One request's sampling state, shared by both env drivers: per-group [T, C] buffers (C = env copies x
group agents), the policy outputs recorded at each step, and the rows (advantages and returns) built
from them. The env drivers fill the buffers: `per_copy.PerCopyEnvs` steps PettingZoo env copies one by
one (variable agent sets, env restarts, whole-episode requests); `batched.sample_batched` steps a
batched env (SMAX) in one call per step."""

from __future__ import annotations

import numpy as np
import torch

from flexmarl.groups import GroupLayout
from flexmarl.rollout.backend import ActOutput
from flexmarl.rollout.batched import sample_batched
from flexmarl.rollout.checks import check_actions
from flexmarl.rollout.per_copy import sample_per_copy
from flexmarl.rollout.request import RolloutRequest, RolloutResult

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


def _chunked(row: dict, h_actor: np.ndarray, h_critic: np.ndarray, length: int) -> dict:
    """A recurrent policy's [T, C] row as [length, C * ceil(T / length)] chunks (chunk-major columns), each
    starting from the hidden state the rollout had at its first step (`h_*`: [T, C, H], each step's input
    state): training backpropagates through `length` steps instead of the whole fragment. The last chunk
    is padded with inactive steps."""
    T, C = row["active"].shape
    n = -(-T // length)

    def chunk(v: np.ndarray) -> np.ndarray:
        if n * length > T:
            v = np.concatenate([v, np.zeros((n * length - T, *v.shape[1:]), v.dtype)])
        return np.ascontiguousarray(v.reshape(n, length, *v.shape[1:]).swapaxes(0, 1).reshape(length, n * C, *v.shape[2:]))

    chunks = {k: (chunk(v) if k in _TIME_MAJOR or k in ("advantages", "returns") else v) for k, v in row.items()}
    chunks["h0_actor"] = h_actor[:T:length].reshape(n * C, -1)
    chunks["h0_critic"] = h_critic[:T:length].reshape(n * C, -1)
    return chunks


class Sampler:
    """The state of one request: per-group [T, C] buffers and the policy outputs at each step."""

    def __init__(self, worker, request: RolloutRequest):
        self.w, self.req = worker, request
        self.T, self.E = request.num_steps, worker.num_envs
        self.generator = torch.Generator().manual_seed(request.seed)
        self.env_seeds = np.random.default_rng(request.seed)
        self.buffers = {g.name: self._allocate(g) for g in worker.groups}
        self.t_used = 0
        """Time steps filled (a request of whole episodes may stop early)."""
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
        if self.w.cfg.model.use_gru and self.w.cfg.model.gru_chunk_length:  # each step's input hidden state
            buf["h_actor_steps"] = np.zeros((T, *h_actor.shape), np.float32)
            buf["h_critic_steps"] = np.zeros((T, *h_critic.shape), np.float32)
        # Current step's inputs, refreshed after every env step.
        buf["cur_obs"] = np.zeros((C, g.obs_dim), np.float32)
        buf["cur_critic"] = np.zeros((C, g.critic_dim), np.float32)
        buf["cur_mask"] = np.ones((C, g.action.dim), bool) if g.has_action_mask else None
        buf["cur_active"] = np.zeros(C, np.float32)
        buf["cur_start"] = np.ones(C, np.float32)
        buf["h_actor"], buf["h_critic"] = h_actor.copy(), h_critic.copy()
        return buf

    def run(self) -> RolloutResult:
        """Fill the buffers with the worker's env driver, then turn them into rows."""
        drive = sample_batched if self.w.batched_env is not None else sample_per_copy
        drive(self)
        self._finish()
        return self.result

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
        if "h_actor_steps" in buf:
            buf["h_actor_steps"][t], buf["h_critic_steps"][t] = buf["h_actor"], buf["h_critic"]
        buf["h_actor"], buf["h_critic"] = out.h_actor, out.h_critic

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
            elif "h_actor_steps" in buf:
                row = _chunked(row, buf["h_actor_steps"], buf["h_critic_steps"], self.w.cfg.model.gru_chunk_length)
            self.result.rows[g.name] = row
            self.result.num_active[g.name] = int(buf["active"].sum())
