"""The orchestrator core: rollout -> experience store -> trainers -> weight sync -> rollout, for any workload.

Rollout workers and group trainers live on separate resource pools (runtime.py, placement.py). The core
knows no workload: a `Workload` (flexmarl/workload.py; MARL in flexmarl/marl, LLM agents in flexmarl/llm)
brings its groups, actors, rows, weight destinations, repairs and units. The core keeps what they share:
placement, the experience store, requests with fault recovery (dispatch.py), the pipelines
(pipelines.py), weight-sync timing, common metrics and checkpoint state. `make_orchestrator` picks the
workload by `run.workload`.
"""

from __future__ import annotations

import time

import numpy as np

from flexmarl.config import Config
from flexmarl.marl.workload import MARLWorkload
from flexmarl.rollout import RolloutRequest
from flexmarl.workload import Workload
from orchestrator.dispatch import Dispatcher, InFlight, request_seed
from orchestrator.pipelines import PIPELINES, Training
from orchestrator.placement import plan_placement
from orchestrator.runtime import Runtime
from orchestrator.store import ExperienceStore


def make_workload(cfg: Config) -> Workload:
    if cfg.run.workload == "llm":
        from flexmarl.llm.workload import LLMWorkload  # transformers and the LLM stack: only for LLM runs

        return LLMWorkload(cfg)
    return MARLWorkload(cfg)


def make_orchestrator(cfg: Config, runtime: Runtime) -> Orchestrator:
    return Orchestrator(cfg, runtime, make_workload(cfg))


class Orchestrator:
    def __init__(self, cfg: Config, runtime: Runtime, workload: Workload):
        self.cfg, self.runtime, self.workload = cfg, runtime, workload
        self.groups = workload.groups
        self.store = ExperienceStore([g.name for g in self.groups])
        runtime.place(plan_placement(cfg, workload.actors()))
        self.workers: list = []
        self.trainers = workload.create_actors(runtime, self.workers)
        self.requests = Dispatcher(cfg, runtime, workload, self.store, self.workers)
        self.training = Training(runtime, self.trainers, self.store, cfg.requests_per_iteration)
        self._pipelines: dict = {}  # by mode; the stale one keeps requests in flight across iterations
        self.iteration = 0
        self.progress = 0
        """Running total in the workload's unit (`workload.progress.name`: env steps, trajectories)."""
        self.timeline: dict = {}
        """Wall-clock spans of the last iteration: rollout per worker, train per group, weight sync."""
        if not workload.inference_starts_synced:
            self.sync_weights()

    # -- weights ----------------------------------------------------------------------------------
    def sync_weights(self, wait: bool = True) -> None:
        """Push the trainers' current weights (policy version = iteration) to the workload's inference
        side. Each group's weights travel trainer -> object store -> workers or engines by reference; they
        never pass through the driver. A failed push to the workload's own actors stops the run; workers
        that died meanwhile are replaced. `wait` False (stale): workers load the weights when their current
        request is done, and nobody waits for them."""
        weights = {name: self.runtime.call(t, "get_weights") for name, t in self.trainers.items()}
        acks = self.workload.push_weights(weights, self.iteration)
        self.requests.load_weights(weights, self.iteration, wait=wait)
        self.runtime.get(acks)  # e.g. WeightSyncError naming the engine

    # -- rollout ----------------------------------------------------------------------------------
    def dispatch(self) -> list[InFlight]:
        """Send this iteration's requests round-robin over the workers (each worker runs its queue in order)."""
        cfg = self.cfg
        requests = [
            RolloutRequest(f"it{self.iteration:06d}-req{r:04d}", self.iteration,
                           request_seed(cfg.run.seed, self.iteration, r), cfg.rollout.fragment_length)
            for r in range(cfg.requests_per_iteration)
        ]
        return [self.requests.send(req, r % len(self.workers), slot=r) for r, req in enumerate(requests)]

    def collect(self, in_flight: list[InFlight], on_publish=None) -> list:
        return self.requests.collect(in_flight, on_publish)

    def produce_lost_rows_again(self, results: list, on_publish=None) -> list:
        """The rows the trainers lost (`training.lost`: their node died before they were read), produced again
        from the same requests (same ids, seeds and slots: the same rows) and published; returns `results`
        with each redone request's result in place of its first one."""
        lost, self.training.lost = self.training.lost, []
        redone = {r.request_id: r for r in self.collect(self.requests.send_lost_rows_again(lost), on_publish)}
        return [redone.pop(r.request_id, r) for r in results]

    # -- one iteration ----------------------------------------------------------------------------
    def step(self) -> dict:
        start = time.time()
        mode = self.cfg.pipeline.mode
        pipeline = self._pipelines.get(mode) or self._pipelines.setdefault(mode, PIPELINES[mode]())
        results, metrics = pipeline.run(self)
        self.iteration += 1
        sync_start = time.time()
        self.sync_weights(wait=mode != "stale")
        end = time.time()
        self.timeline.update({
            "start": start, "end": end, "sync": (sync_start, end), "train": self.training.spans,
            "rollout": [(r.worker, r.request_id, r.started_at, r.finished_at) for r in results],
        })
        metrics.update(self._common_metrics(results, metrics["perf/trainer_busy_s"], start, end))
        metrics["perf/weight_push_s"] = end - sync_start
        metrics.update(self.workload.metrics(results))
        for r in results:
            for key, value in r.counters.items():
                metrics[key] = metrics.get(key, 0) + value
        per_agent: dict[str, list[float]] = {}
        for r in results:
            for agent, values in r.agent_returns.items():
                per_agent.setdefault(agent, []).extend(values)
        for agent, values in per_agent.items():  # each agent's own return (recommendation: each scenario's)
            metrics[f"charts/return/{agent}"] = float(np.mean(values))
        self.workload.after_iteration(metrics, self.timeline)
        self.store.evict(older_than_version=self.iteration)
        return metrics

    def _common_metrics(self, results: list, trainer_busy_s: float, start: float, end: float) -> dict:
        elapsed, unit = end - start, self.workload.progress.name
        added = self.workload.count(results)
        self.progress += added
        sample_s = sum(r.sample_s for r in results)
        return {
            "iteration": self.iteration,
            unit: self.progress,
            f"{unit}_per_s": added / elapsed,
            "perf/iteration_s": elapsed,
            "perf/rollout_s": max(r.finished_at for r in results) - start,  # until the last request ended
            "perf/sample_s": sample_s,
            "perf/rollout_busy": min(1.0, sample_s / (elapsed * len(self.workers))),
            "perf/trainer_busy": min(1.0, trainer_busy_s / (elapsed * len(self.trainers))),
            "perf/worker_restarts": self.requests.worker_restarts,
            "rollout/worker_timeouts": self.requests.worker_timeouts,
            "store/aborted_rows": sum(t.aborted for t in self.store.tables.values()),
            "store/lost_rows": sum(t.lost for t in self.store.tables.values()),
            "store/stale_rows_refused": sum(t.refused_stale for t in self.store.tables.values()),
        }

    def use_config(self, cfg: Config) -> None:
        """Run the next iterations under `cfg` (a fresh config, not this one edited), which may differ only
        in the pipeline (sync <-> microbatch) and `llm.load_balancing`: benchmarks alternate such arms on
        one set of actors. The stale pipeline keeps requests in flight across iterations: never switched."""
        old, new = self.cfg.to_dict(), cfg.to_dict()
        for d in (old, new):
            d["pipeline"].pop("mode"), d["llm"].pop("load_balancing")
        if old != new or "stale" in (self.cfg.pipeline.mode, cfg.pipeline.mode):
            raise ValueError("use_config switches only pipeline.mode (sync, microbatch) and llm.load_balancing")
        self.cfg = self.requests.cfg = self.workload.cfg = cfg

    def evaluate(self, episodes: int) -> dict:
        return self.runtime.get(self.runtime.call(self.workers[0], "evaluate", episodes, self.cfg.run.seed + 10_000))

    # -- checkpoint state -------------------------------------------------------------------------
    def get_state(self) -> dict:
        names = list(self.trainers)
        states = self.runtime.get([self.runtime.call(self.trainers[n], "get_state") for n in names])
        return {"iteration": self.iteration, self.workload.progress.name: self.progress,
                "trainers": dict(zip(names, states))}

    def set_state(self, state: dict) -> None:
        self.runtime.get([self.runtime.call(self.trainers[n], "set_state", s) for n, s in state["trainers"].items()])
        self.iteration = int(state["iteration"])
        # LLM checkpoints written before the workload seam counted trajectories under "env_steps"
        self.progress = int(state.get(self.workload.progress.name, state.get("env_steps", 0)))
        self.sync_weights()

    def shutdown(self) -> None:
        self.runtime.shutdown()
