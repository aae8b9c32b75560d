"""The MARL workload: rollout workers step env copies with the policies they hold; one PPO trainer per
agent group; weights go trainer -> object store -> workers. Counted in env steps and episodes."""

from __future__ import annotations

import numpy as np

from envs import EnvSpec
from flexmarl.actors import ActorSpec, marl_actors
from flexmarl.config import Config
from flexmarl.env_probe import probe_env
from flexmarl.groups import GroupLayout
from flexmarl.rollout import RolloutResult, RolloutWorker
from flexmarl.trainer import GroupTrainer
from flexmarl.workload import ProgressUnit, Runtime


class MARLWorkload:
    inference_starts_synced = False  # workers build their policies empty: they need the trainers' weights
    weights_apply_between_requests = True  # a worker actor runs its calls in order: the load waits its turn

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.spec: EnvSpec
        self.groups: list[GroupLayout]
        self.spec, self.groups = probe_env(cfg)  # env problems surface as ConfigError naming the key
        self.progress = ProgressUnit("env_steps", "step", cfg.run.batch_env_steps, "episode_return_mean")

    # -- actors -----------------------------------------------------------------------------------
    def actors(self) -> list[ActorSpec]:
        return marl_actors([g.name for g in self.groups], self.cfg.rollout.num_workers)

    def create_actors(self, runtime: Runtime, workers: list) -> dict:
        self.runtime = runtime
        workers.extend(self.make_worker(i) for i in range(self.cfg.rollout.num_workers))
        return {g.name: runtime.create(GroupTrainer, self.cfg, g, self.cfg.run.seed * 1000 + i,
                                       runtime.device_for(f"trainer/{g.name}", self.cfg.trainer.device),
                                       actor=f"trainer/{g.name}")
                for i, g in enumerate(self.groups)}

    def make_worker(self, index: int):
        return self.runtime.create(RolloutWorker, self.cfg, index, actor=f"worker/{index}")

    # -- weights: the workers hold the policies -----------------------------------------------------
    def push_weights(self, weights: dict, version: int) -> list:
        return []

    def load_worker_weights(self, worker, weights: dict, version: int):
        # one argument per group, so Ray resolves the references in the worker, never in the driver
        return self.runtime.call(worker, "load_group_weights", version, list(weights), *weights.values())

    # -- results ----------------------------------------------------------------------------------
    def row_meta(self, result: RolloutResult, group: str) -> dict:
        return {"num_active": result.num_active[group], "env_steps": result.env_steps}

    def check_result(self, result: RolloutResult) -> None:
        """Env failures stop a request inside the worker (EnvStepError, EnvOutputError): nothing to add."""

    def repair(self, exc: BaseException) -> bool:
        return False  # a failed request whose worker lives is an env or policy error: fatal

    def count(self, results: list[RolloutResult]) -> int:
        return sum(r.env_steps for r in results)

    def metrics(self, results: list[RolloutResult]) -> dict:
        returns = [x for r in results for x in r.episode_returns]
        lengths = [x for r in results for x in r.episode_lengths]
        wins = [x for r in results for x in r.wins]
        metrics = {
            "episodes": len(returns),
            "episode_return_mean": float(np.mean(returns)) if returns else float("nan"),
            "episode_length_mean": float(np.mean(lengths)) if lengths else float("nan"),
            "rollout/env_restarts": sum(r.env_restarts for r in results),
            "rollout/discarded_steps": sum(r.discarded_steps for r in results),
        }
        if wins:
            metrics["charts/train_win_rate"] = float(np.mean(wins))
        return metrics

    def after_iteration(self, metrics: dict, timeline: dict) -> None:
        """Nothing to rearrange between iterations."""
