"""Rollout worker: steps `envs_per_worker` env copies together and returns one row per agent group.

A request is a pure function of (weights version, request seed): every request resets its envs with
seeds derived from the request seed and samples actions from a generator seeded by it. That makes a
request that was lost with a dead worker reproducible anywhere, and makes resumed runs exact.
"""

from __future__ import annotations

import os
import time

import torch

from envs import EnvSpec, describe_env, make_env
from envs.batched import is_batched
from envs.registry import resolve_factory
from flexmarl.algorithms import ADVANTAGE_ESTIMATORS
from flexmarl.config import Config
from flexmarl.groups import GroupLayout, build_groups, critic_uses_state
from flexmarl.rollout.backend import make_backend
from flexmarl.rollout.evaluate import evaluate_policy
from flexmarl.rollout.request import RolloutRequest, RolloutResult
from flexmarl.rollout.sampler import Sampler


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
        result = Sampler(self, request).run()
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
