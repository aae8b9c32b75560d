"""Joint orchestrator: rollout -> experience store -> trainers -> weight sync -> rollout.

Rollout workers and group trainers live on separate resource pools (see `runtime.py`). Three pipelines
(`pipeline.mode`, timelines in docs/pipeline.md):
- sync: collect the whole global batch k, then every group trainer updates on it;
- microbatch: each trainer consumes a request's rows as soon as they are complete (forward/backward on
  the current parameters, gradients accumulated, one step per minibatch as in sync), while the rest of
  batch k is still being sampled. Every row of batch k comes from version k: zero policy lag;
- stale: workers never wait for training; rows at most `max_staleness` versions old are admitted.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import numpy as np

from envs import EnvSpec
from flexmarl.config import Config
from flexmarl.env_probe import probe_env
from flexmarl.groups import GroupLayout
from flexmarl.rollout import RolloutRequest, RolloutResult, RolloutWorker
from flexmarl.trainer import GroupTrainer
from orchestrator.placement import marl_actors, plan_placement
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
    slot: int | None = None
    """Position of the request in its global batch (fixes its minibatch); None: arrival order."""
    sent_at: float = 0.0
    """When it was dispatched (its worker's deadline for `rollout.request_timeout_s`)."""


def request_seed(seed: int, *index: int) -> int:
    return int(np.random.SeedSequence([seed, *index]).generate_state(1)[0])


class JointOrchestrator:
    def __init__(self, cfg: Config, runtime: Runtime):
        self.cfg, self.runtime = cfg, runtime
        self.spec: EnvSpec
        self.groups: list[GroupLayout]
        self.spec, self.groups = probe_env(cfg)  # env problems surface as ConfigError naming the key
        self.store = ExperienceStore([g.name for g in self.groups])
        runtime.place(plan_placement(cfg, marl_actors([g.name for g in self.groups], cfg.rollout.num_workers)))
        self.workers = [self._make_worker(i) for i in range(cfg.rollout.num_workers)]
        self.trainers = {
            g.name: runtime.create(GroupTrainer, cfg, g, cfg.run.seed * 1000 + i, self._trainer_device(g.name),
                                   actor=f"trainer/{g.name}")
            for i, g in enumerate(self.groups)
        }
        self._init_progress()
        self.sync_weights()

    def _init_progress(self) -> None:
        """Counters and in-flight bookkeeping of a fresh run (every workload starts from these)."""
        self.iteration = 0
        self.env_steps = 0
        self.worker_restarts = 0
        self.worker_timeouts = 0
        self._last_done: dict[int, float] = {}  # worker -> when it last finished a request
        self.timeline: dict = {}
        """Wall-clock spans of the last iteration: rollout per worker, train per group, weight sync."""
        self._weights_refs: dict = {}
        """Per group, a reference to the current version's weights (kept for replaced workers)."""
        self._stale_in_flight: dict[int, _InFlight] = {}
        self._stale_requests = 0

    def _trainer_device(self, group: str) -> str:
        """`trainer.device`; auto = cuda when the trainer's bundle asks for a GPU, else cpu: the same answer
        serial and on Ray (small MLP policies are not moved to a GPU nobody asked for)."""
        if self.cfg.trainer.device != "auto":
            return self.cfg.trainer.device
        return "cuda" if self.runtime.plan.locate(f"trainer/{group}")[2].gpus > 0 else "cpu"

    def _make_worker(self, index: int):
        return self.runtime.create(RolloutWorker, self.cfg, index, actor=f"worker/{index}")

    # -- weights ----------------------------------------------------------------------------------
    def sync_weights(self, workers: list[int] | None = None, wait: bool = True) -> None:
        """Push the trainers' current weights (policy version = iteration) to workers. Each group's weights
        travel trainer -> object store -> workers by reference (one argument per group, so Ray resolves
        them in the worker); they never pass through the driver."""
        if workers is None:
            self._weights_refs = {n: self.runtime.call(t, "get_weights") for n, t in self.trainers.items()}
            workers = list(range(len(self.workers)))
        names, refs = list(self._weights_refs), list(self._weights_refs.values())
        acks = [self.runtime.call(self.workers[i], "load_group_weights", self.iteration, names, *refs) for i in workers]
        if wait:
            for index, ack in zip(workers, acks):
                try:
                    self.runtime.get(ack)
                except WorkerDiedError as exc:  # e.g. its node died: replaced like a worker lost mid-request
                    self._replace_worker(index, str(exc))

    # -- rollout ----------------------------------------------------------------------------------
    def _row_id(self, request: RolloutRequest, group: str) -> str:
        return f"{request.request_id}-{group}"

    def _dispatch(self, request: RolloutRequest, worker: int, slot: int | None = None) -> _InFlight:
        refs = self.runtime.call(self.workers[worker], "sample_rows", request, num_returns=1 + len(self.groups))
        for g, ref in zip(self.groups, refs[1:]):
            version = -1 if request.version is None else request.version
            self.store.begin(g.name, self._row_id(request, g.name), version, meta={"worker": worker})
            self.store.write(g.name, self._row_id(request, g.name), "payload", ref, ready=False)
        return _InFlight(request, worker, refs[0], refs[1:], slot, time.time())

    def dispatch(self) -> list[_InFlight]:
        """Send this iteration's requests round-robin over the workers (each worker runs its queue in order)."""
        cfg = self.cfg
        requests = [
            RolloutRequest(f"it{self.iteration:06d}-req{r:04d}", self.iteration,
                           request_seed(cfg.run.seed, self.iteration, r), cfg.rollout.fragment_length)
            for r in range(cfg.requests_per_iteration)
        ]
        return [self._dispatch(req, r % len(self.workers), slot=r) for r, req in enumerate(requests)]

    def _replace_worker(self, index: int, reason: str) -> None:
        self.worker_restarts += 1
        if self.worker_restarts > self.cfg.rollout.max_worker_restarts:
            raise WorkerFailure(
                f"rollout worker {index} died ({reason}); {self.worker_restarts - 1} restarts already used, "
                f"rollout.max_worker_restarts = {self.cfg.rollout.max_worker_restarts}"
            )
        log.warning("rollout worker %d died (%s); starting a replacement", index, reason)
        self.runtime.kill(self.workers[index])
        self.workers[index] = self._make_worker(index)
        self.sync_weights(workers=[index])

    def _next_result(self, pending: dict) -> tuple[_InFlight, RolloutResult] | None:
        """Wait for one in-flight request. A dead worker's requests, or a hung one's (no request finished
        within `rollout.request_timeout_s`), are aborted and sent again (same ids, same versions) to its
        replacement; returns None in that case."""
        ready, _ = self.runtime.wait([f.meta_ref for f in pending.values()], timeout=self._wait_s(pending))
        if not ready:
            now, limit = time.time(), self.cfg.rollout.request_timeout_s
            for worker, deadline in self._deadlines(pending).items():
                if deadline <= now:
                    self.worker_timeouts += 1
                    self._recover(worker, pending, f"no request finished for {limit:g} s (rollout.request_timeout_s)")
            return None
        flight = pending.pop(id(ready[0]))
        try:
            result = self.runtime.get(flight.meta_ref)
        except WorkerDiedError as exc:
            pending[id(flight.meta_ref)] = flight
            self._recover(flight.worker, pending, str(exc))
            return None
        except Exception as exc:
            if not self._repair(exc):
                raise
            self._retrieve_failed_rows(flight)
            self._resend([flight], pending)
            return None
        self._last_done[flight.worker] = time.time()
        return flight, result

    def _retrieve_failed_rows(self, flight: _InFlight) -> None:
        """Read a failed request's row references (they hold the error it reported): Ray prints a whole
        traceback for every error reference dropped unread."""
        for ref in flight.row_refs:
            with contextlib.suppress(Exception):
                self.runtime.get(ref)

    def _repair(self, exc: Exception) -> bool:
        """A request failed with `exc` while its worker lives: repair the cause and return True to send
        the request again, or False (the error is fatal). Workloads with more actors extend this."""
        return False

    def _deadlines(self, pending: dict) -> dict[int, float]:
        """Per busy worker: when it must have finished its current request (it runs its queue in order)."""
        limit, out = self.cfg.rollout.request_timeout_s, {}
        for f in pending.values():
            start = max(f.sent_at, self._last_done.get(f.worker, 0.0))
            out[f.worker] = min(out.get(f.worker, float("inf")), start + limit)
        return out

    def _wait_s(self, pending: dict) -> float | None:
        if not self.cfg.rollout.request_timeout_s:
            return None
        return max(0.0, min(self._deadlines(pending).values()) - time.time())

    def _resend(self, lost: list[_InFlight], pending: dict) -> None:
        """Abort lost requests' unfinished rows and send them again (same ids, versions, seeds)."""
        for f in lost:
            pending.pop(id(f.meta_ref), None)
            for g in self.groups:
                self.store.abort(g.name, self._row_id(f.request, g.name))
        for f in sorted(lost, key=lambda f: f.sent_at):  # a worker's queue, in the order it was sent
            new = self._dispatch(f.request, f.worker, f.slot)
            pending[id(new.meta_ref)] = new

    def _recover(self, worker: int, pending: dict, reason: str) -> None:
        """Replace a lost (dead or hung) worker and send its requests again."""
        lost = [f for f in pending.values() if f.worker == worker]
        for f in lost:
            pending.pop(id(f.meta_ref), None)
        self._replace_worker(worker, reason)
        self._last_done[worker] = time.time()
        self._resend(lost, pending)

    def _publish(self, flight: _InFlight, result: RolloutResult) -> None:
        for g in self.groups:
            self.store.mark_ready(g.name, self._row_id(flight.request, g.name), "payload", policy_version=result.version,
                                  meta={"num_active": result.num_active[g.name], "env_steps": result.env_steps})

    def collect(self, in_flight: list[_InFlight], on_publish=None) -> list[RolloutResult]:
        """Publish rows as requests complete (calling `on_publish(flight, result)`); regenerate the rows
        of requests whose worker died."""
        results: list[RolloutResult] = []
        pending = {id(f.meta_ref): f for f in in_flight}
        while pending:
            done = self._next_result(pending)
            if done is None:
                continue
            flight, result = done
            self._publish(flight, result)
            results.append(result)
            if on_publish is not None:
                on_publish(flight, result)
        return results

    # -- training ---------------------------------------------------------------------------------
    def _feed(self, flight: _InFlight, result: RolloutResult) -> None:
        """Hand a request's freshly published rows to the trainers (they queue in arrival order)."""
        for g in self.groups:
            sid = self._row_id(flight.request, g.name)
            row = self.store.tables[g.name].visible[sid]
            self._consume_refs.append(
                self.runtime.call(self.trainers[g.name], "consume", sid, row.policy_version, row.fields["payload"],
                                  flight.slot))
            self.store.consume(g.name, [sid])

    def _begin_updates(self) -> None:
        self._consume_refs: list = []
        self.runtime.get([self.runtime.call(t, "begin_update", self.cfg.requests_per_iteration)
                          for t in self.trainers.values()])

    def _finish_updates(self) -> dict:
        self.runtime.get(self._consume_refs)  # surfaces a failed consume with its own error
        names = list(self.trainers)
        finished = self.runtime.get([self.runtime.call(self.trainers[n], "finish_update") for n in names])
        return self._group_metrics(dict(zip(names, finished)))

    def _group_metrics(self, per_group: dict) -> dict:
        """Per-group trainer metrics as `prefix/<group>/name`, plus pool-wide lag and busy time; records
        the trainers' compute spans for the timeline."""
        names = list(per_group)
        spans = self.runtime.get([self.runtime.call(self.trainers[n], "spans") for n in names])
        self.timeline["train"] = dict(zip(names, spans))
        metrics: dict = {}
        for name, group_metrics in per_group.items():
            for key, value in group_metrics.items():
                prefix, _, rest = key.partition("/")
                metrics[f"{prefix}/{name}/{rest}"] = value
        for stat, reduce in (("policy_lag_min", min), ("policy_lag_mean", max), ("policy_lag_max", max), ("train_s", max)):
            metrics[f"perf/{stat}"] = reduce(metrics[f"perf/{g.name}/{stat}"] for g in self.groups)
        metrics["perf/trainer_busy_s"] = sum(metrics[f"perf/{g.name}/train_s"] for g in self.groups)
        return metrics

    def train(self) -> dict:
        """Sync pipeline: every group trainer gets all of its complete version-k rows at once."""
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
        finished = {}
        for name, (rows, ref) in calls.items():
            finished[name] = self.runtime.get(ref)
            self.store.consume(name, [r.sample_id for r in rows])
        return self._group_metrics(finished)

    # -- one iteration per pipeline -------------------------------------------------------------
    def _iteration_sync(self) -> tuple[list[RolloutResult], dict]:
        results = self.collect(self.dispatch())
        return results, self.train()

    def _iteration_microbatch(self) -> tuple[list[RolloutResult], dict]:
        self._begin_updates()
        results = self.collect(self.dispatch(), on_publish=self._feed)
        return results, self._finish_updates()

    def _top_up_stale(self, pending: dict) -> None:
        """Give every idle worker a request that runs on whatever weights it holds."""
        cfg, busy = self.cfg, {f.worker for f in pending.values()}
        for w in range(len(self.workers)):
            if w not in busy:
                n, self._stale_requests = self._stale_requests, self._stale_requests + 1
                per_batch = cfg.requests_per_iteration  # same seeds as sync when nothing is refused
                seed = request_seed(cfg.run.seed, n // per_batch, n % per_batch)
                flight = self._dispatch(RolloutRequest(f"st{n:08d}", None, seed, cfg.rollout.fragment_length), w)
                pending[id(flight.meta_ref)] = flight

    def _iteration_stale(self) -> tuple[list[RolloutResult], dict]:
        """Workers never idle: one request in flight per worker at all times, also while the trainers
        finish the update; rows more than `max_staleness` versions old are refused."""
        cfg, s = self.cfg, self.cfg.pipeline.max_staleness
        self._begin_updates()
        results: list[RolloutResult] = []
        pending = self._stale_in_flight
        while len(results) < cfg.requests_per_iteration:
            self._top_up_stale(pending)
            done = self._next_result(pending)
            if done is None:
                continue
            flight, result = done
            admitted = [self.store.admit(g.name, self._row_id(flight.request, g.name), result.version, self.iteration, s)
                        for g in self.groups]
            if all(admitted):
                self._publish(flight, result)
                self._feed(flight, result)
                results.append(result)
        self._top_up_stale(pending)
        return results, self._finish_updates()

    def step(self) -> dict:
        start = time.time()
        run_iteration = {"sync": self._iteration_sync, "microbatch": self._iteration_microbatch,
                         "stale": self._iteration_stale}[self.cfg.pipeline.mode]
        results, metrics = run_iteration()
        self.iteration += 1
        sync_start = time.time()
        self.sync_weights(wait=self.cfg.pipeline.mode != "stale")
        end = time.time()
        elapsed = end - start
        self.timeline.update({
            "start": start, "end": end, "sync": (sync_start, end),
            "rollout": [(r.worker, r.request_id, r.started_at, r.finished_at) for r in results],
        })
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
            "perf/rollout_s": max(r.finished_at for r in results) - start,  # until the last request ended
            "perf/sample_s": sum(r.sample_s for r in results),
            "perf/rollout_busy": min(1.0, sum(r.sample_s for r in results) / (elapsed * len(self.workers))),
            "perf/trainer_busy": min(1.0, metrics["perf/trainer_busy_s"] / (elapsed * len(self.trainers))),
            "perf/worker_restarts": self.worker_restarts,
            "rollout/worker_timeouts": self.worker_timeouts,
            "rollout/env_restarts": sum(r.env_restarts for r in results),
            "rollout/discarded_steps": sum(r.discarded_steps for r in results),
            "store/aborted_rows": sum(t.aborted for t in self.store.tables.values()),
            "store/stale_rows_refused": sum(t.refused_stale for t in self.store.tables.values()),
        })
        if wins:
            metrics["charts/train_win_rate"] = float(np.mean(wins))
        for r in results:
            for key, value in r.counters.items():
                metrics[key] = metrics.get(key, 0) + value
        per_agent: dict[str, list[float]] = {}
        for r in results:
            for agent, values in r.agent_returns.items():
                per_agent.setdefault(agent, []).extend(values)
        for agent, values in per_agent.items():  # recommendation: each scenario's return
            metrics[f"charts/return/{agent}"] = float(np.mean(values))
        self.store.evict(older_than_version=self.iteration)
        return metrics

    def use_config(self, cfg: Config) -> None:
        """Run the next iterations under `cfg` (a fresh config, not this one edited), which may differ only
        in the pipeline (sync <-> microbatch) and `llm.load_balancing`: benchmarks alternate such arms on
        one set of actors. The stale pipeline keeps requests in flight across iterations: never switched."""
        old, new = self.cfg.to_dict(), cfg.to_dict()
        for d in (old, new):
            d["pipeline"].pop("mode"), d["llm"].pop("load_balancing")
        if old != new or "stale" in (self.cfg.pipeline.mode, cfg.pipeline.mode):
            raise ValueError("use_config switches only pipeline.mode (sync, microbatch) and llm.load_balancing")
        self.cfg = cfg

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
