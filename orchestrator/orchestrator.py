"""Joint orchestrator: rollout -> experience store -> trainers -> weight sync -> rollout.

Rollout workers and group trainers live on separate resource pools (see `runtime.py`). Each iteration k
dispatches `requests_per_iteration` rollout requests to the workers (all holding policy version k), opens
a pending store row per (request, group), publishes rows as their payload references complete, hands each
group's complete version-k rows to its trainer as micro-batches, and pushes the new weights to every worker.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from envs import EnvSpec, describe_env, make_env
from flexmarl.config import Config
from flexmarl.groups import GroupLayout, build_groups
from flexmarl.rollout import RolloutRequest, RolloutResult, RolloutWorker
from flexmarl.trainer import GroupTrainer
from orchestrator.runtime import Runtime, WorkerDiedError
from orchestrator.store import ExperienceStore

log = logging.getLogger(__name__)


class WorkerFailure(RuntimeError):
    """A rollout worker died more often than `rollout.max_worker_restarts` allows."""


@dataclass
class _InFlight:
    request: RolloutRequest
    worker: int
    meta_ref: object
    row_refs: list


def request_seed(seed: int, iteration: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, iteration, index]).generate_state(1)[0])


class JointOrchestrator:
    def __init__(self, cfg: Config, runtime: Runtime):
        self.cfg, self.runtime = cfg, runtime
        probe = make_env(cfg.env.name, **cfg.env.kwargs)
        self.spec: EnvSpec = describe_env(probe, seed=cfg.run.seed)
        if hasattr(probe, "close"):
            probe.close()
        self.groups: list[GroupLayout] = build_groups(cfg, self.spec)
        self.store = ExperienceStore([g.name for g in self.groups])
        n_workers = cfg.rollout.num_workers
        self.workers = [runtime.create(RolloutWorker, cfg, i, pool="rollout", share=1 / n_workers) for i in range(n_workers)]
        self.trainers = {
            g.name: runtime.create(GroupTrainer, cfg, g, cfg.run.seed * 1000 + i, pool="trainer", share=1 / len(self.groups))
            for i, g in enumerate(self.groups)
        }
        self.iteration = 0
        self.env_steps = 0
        self.worker_restarts = 0
        self._weights_ref = None
        self.sync_weights()

    # -- weights ----------------------------------------------------------------------------------
    def sync_weights(self, workers: list[int] | None = None) -> None:
        """Push the trainers' current weights (policy version = iteration) to workers; waits for them."""
        if workers is None:
            names = list(self.trainers)
            weights = self.runtime.get([self.runtime.call(self.trainers[n], "get_weights") for n in names])
            self._weights_ref = self.runtime.put(dict(zip(names, weights)))
            workers = list(range(len(self.workers)))
        acks = [self.runtime.call(self.workers[i], "set_weights", self._weights_ref, self.iteration) for i in workers]
        self.runtime.get(acks)

    # -- rollout ----------------------------------------------------------------------------------
    def _dispatch(self, request: RolloutRequest, worker: int) -> _InFlight:
        refs = self.runtime.call(self.workers[worker], "sample_rows", request, num_returns=1 + len(self.groups))
        for g, ref in zip(self.groups, refs[1:]):
            self.store.begin(g.name, f"{request.request_id}-{g.name}", request.version, meta={"worker": worker})
            self.store.write(g.name, f"{request.request_id}-{g.name}", "payload", ref, ready=False)
        return _InFlight(request, worker, refs[0], refs[1:])

    def dispatch(self) -> list[_InFlight]:
        """Send this iteration's requests round-robin over the workers (each worker runs its queue in order)."""
        cfg = self.cfg
        requests = [
            RolloutRequest(f"it{self.iteration:06d}-req{r:04d}", self.iteration,
                           request_seed(cfg.run.seed, self.iteration, r), cfg.rollout.fragment_length)
            for r in range(cfg.requests_per_iteration)
        ]
        return [self._dispatch(req, r % len(self.workers)) for r, req in enumerate(requests)]

    def _replace_worker(self, index: int, reason: str) -> None:
        self.worker_restarts += 1
        if self.worker_restarts > self.cfg.rollout.max_worker_restarts:
            raise WorkerFailure(
                f"rollout worker {index} died ({reason}); {self.worker_restarts - 1} restarts already used, "
                f"rollout.max_worker_restarts = {self.cfg.rollout.max_worker_restarts}"
            )
        log.warning("rollout worker %d died (%s); starting a replacement", index, reason)
        self.runtime.kill(self.workers[index])
        self.workers[index] = self.runtime.create(
            RolloutWorker, self.cfg, index, pool="rollout", share=1 / len(self.workers)
        )
        self.sync_weights(workers=[index])

    def collect(self, in_flight: list[_InFlight]) -> list[RolloutResult]:
        """Publish rows as requests complete; regenerate the rows of requests whose worker died."""
        results: list[RolloutResult] = []
        pending = {id(f.meta_ref): f for f in in_flight}
        while pending:
            ready, _ = self.runtime.wait([f.meta_ref for f in pending.values()])
            for ref in ready:
                flight = pending.pop(id(ref))
                try:
                    result: RolloutResult = self.runtime.get(ref)
                except WorkerDiedError as exc:
                    dead = [f for f in [flight, *pending.values()] if f.worker == flight.worker]
                    for f in dead:
                        pending.pop(id(f.meta_ref), None)
                        for g in self.groups:
                            self.store.abort(g.name, f"{f.request.request_id}-{g.name}")
                    self._replace_worker(flight.worker, str(exc))
                    for f in dead:
                        new = self._dispatch(f.request, f.worker)
                        pending[id(new.meta_ref)] = new
                    continue
                for g in self.groups:
                    self.store.mark_ready(g.name, f"{flight.request.request_id}-{g.name}", "payload",
                                          meta={"num_active": result.num_active[g.name], "env_steps": result.env_steps})
                results.append(result)
        return results

    # -- training ---------------------------------------------------------------------------------
    def train(self) -> dict:
        """Every group trainer consumes its complete version-k rows as micro-batches (in parallel)."""
        calls = {}
        for g in self.groups:
            rows = self.store.ready_rows(g.name, policy_version=self.iteration)
            if len(rows) != self.cfg.requests_per_iteration:
                raise RuntimeError(f"group {g.name!r}: {len(rows)} complete rows for version {self.iteration}, "
                                   f"expected {self.cfg.requests_per_iteration}")
            calls[g.name] = (rows, self.runtime.call(
                self.trainers[g.name], "update", [r.sample_id for r in rows], [r.policy_version for r in rows],
                *[r.fields["payload"] for r in rows],
            ))
        metrics: dict = {}
        for name, (rows, ref) in calls.items():
            group_metrics = self.runtime.get(ref)
            self.store.consume(name, [r.sample_id for r in rows])
            for key, value in group_metrics.items():
                prefix, _, rest = key.partition("/")
                metrics[f"{prefix}/{name}/{rest}"] = value
        for stat in ("policy_lag_max", "train_s"):
            metrics[f"perf/{stat}"] = max(metrics[f"perf/{g.name}/{stat}"] for g in self.groups)
        self.store.evict(older_than_version=self.iteration + 1)
        return metrics

    # -- one iteration ----------------------------------------------------------------------------
    def step(self) -> dict:
        start = time.perf_counter()
        results = self.collect(self.dispatch())
        rollout_s = time.perf_counter() - start
        metrics = self.train()
        self.iteration += 1
        self.sync_weights()
        elapsed = time.perf_counter() - start
        steps = sum(r.env_steps for r in results)
        self.env_steps += steps
        returns = [x for r in results for x in r.episode_returns]
        lengths = [x for r in results for x in r.episode_lengths]
        wins = [x for r in results for x in r.wins]
        metrics.update({
            "iteration": self.iteration,
            "env_steps": self.env_steps,
            "episodes": len(returns),
            "episode_return_mean": float(np.mean(returns)) if returns else float("nan"),
            "episode_length_mean": float(np.mean(lengths)) if lengths else float("nan"),
            "env_steps_per_s": steps / elapsed,
            "perf/iteration_s": elapsed,
            "perf/rollout_s": rollout_s,
            "perf/sample_s": sum(r.sample_s for r in results),
            "perf/worker_restarts": self.worker_restarts,
            "store/aborted_rows": sum(t.aborted for t in self.store.tables.values()),
        })
        if wins:
            metrics["charts/train_win_rate"] = float(np.mean(wins))
        return metrics

    def evaluate(self, episodes: int) -> dict:
        return self.runtime.get(self.runtime.call(self.workers[0], "evaluate", episodes, self.cfg.run.seed + 10_000))

    # -- checkpoint state -------------------------------------------------------------------------
    def get_state(self) -> dict:
        names = list(self.trainers)
        states = self.runtime.get([self.runtime.call(self.trainers[n], "get_state") for n in names])
        return {"iteration": self.iteration, "env_steps": self.env_steps, "trainers": dict(zip(names, states))}

    def set_state(self, state: dict) -> None:
        self.runtime.get([self.runtime.call(self.trainers[n], "set_state", s) for n, s in state["trainers"].items()])
        self.iteration, self.env_steps = int(state["iteration"]), int(state["env_steps"])
        self.sync_weights()

    def shutdown(self) -> None:
        self.runtime.shutdown()
