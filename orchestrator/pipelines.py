"""The three pipelines (`pipeline.mode`, timelines in docs/pipeline.md), as strategies over rows; each
runs one iteration of the core and returns (request results, trainer metrics):
- sync: collect the whole global batch k, then every group trainer updates on it;
- microbatch: each trainer consumes a request's rows as soon as they are complete (forward/backward on
  the current parameters, gradients accumulated, one step per minibatch as in sync), while the rest of
  batch k is still being sampled. Every row of batch k comes from version k: zero policy lag;
- stale: workers never wait for training; rows at most `max_staleness` versions old are admitted.
They know no workload: rows are rows, whoever produced them. A row whose payload was lost with its node
before a trainer read it is produced again (same request, same slot) before the update completes.
"""

from __future__ import annotations

from flexmarl.rollout import RolloutRequest
from orchestrator.dispatch import InFlight, request_seed, row_id
from orchestrator.runtime import DataLostError, Runtime
from orchestrator.store import ExperienceStore


class Training:
    """The group trainers as the pipelines drive them: a whole batch at once, or streamed row by row."""

    def __init__(self, runtime: Runtime, trainers: dict, store: ExperienceStore, batch_requests: int):
        self.runtime, self.trainers, self.store, self.batch_requests = runtime, trainers, store, batch_requests
        self.spans: dict = {}
        """Per group, the trainer's compute spans of the last update (for the timeline)."""
        self.lost: list[tuple[str, str]] = []
        """(group, sample_id) of rows whose payload was lost with its node before the trainer read it: the
        trainer never saw them; they are to be produced again and handed to it."""
        self._consume_refs: list[tuple[str, str, object]] = []  # (group, sample_id, reference of its consume call)
        self._trained: dict = {}  # sync: the groups whose update of this version is done, with its metrics

    def train_batch(self, version: int) -> dict | None:
        """Sync: every group trainer gets all of its complete version-k rows at once. None when a group's
        update could not start because a row's payload was lost (recorded in `lost`): call again once it is
        produced again; a group that has trained is not trained twice."""
        calls = {}
        for name, trainer in self.trainers.items():
            if name in self._trained:
                continue
            rows = self.store.ready_rows(name, policy_version=version)
            if len(rows) != self.batch_requests:
                raise RuntimeError(f"group {name!r}: {len(rows)} complete rows for version {version}, "
                                   f"expected {self.batch_requests}")
            calls[name] = (rows, self.runtime.call(trainer, "update", [r.sample_id for r in rows],
                                                   [r.policy_version for r in rows], *[r.fields["payload"] for r in rows]))
        for name, (rows, ref) in calls.items():
            try:
                self._trained[name] = self.runtime.get(ref)
            except DataLostError as exc:  # Ray names one lost argument; another one, if any, on the next try
                lost = [(name, r.sample_id) for r in rows if exc.names(r.fields["payload"])]
                if not lost:
                    raise
                self.lost.extend(lost)
                continue
            self.store.consume(name, [r.sample_id for r in rows])
        if self.lost:
            return None
        finished, self._trained = self._trained, {}
        return self._group_metrics(finished)

    def begin(self) -> None:
        """Streamed: the trainers expect one global batch of `batch_requests` micro-batches."""
        self._consume_refs = []
        self.runtime.get([self.runtime.call(t, "begin_update", self.batch_requests) for t in self.trainers.values()])

    def feed(self, flight: InFlight) -> None:
        """Hand a request's freshly published rows to the trainers (they queue in arrival order)."""
        for name in flight.groups:
            sid = row_id(flight.request, name)
            row = self.store.tables[name].visible[sid]
            ref = self.runtime.call(self.trainers[name], "consume", sid, row.policy_version, row.fields["payload"],
                                    flight.slot)
            self._consume_refs.append((name, sid, ref))
            self.store.consume(name, [sid])

    def find_lost_rows(self) -> bool:
        """Streamed: wait until the trainers have read every row fed so far; those whose payload was lost
        with its node go to `lost`. Returns whether any was lost."""
        reading, self._consume_refs = self._consume_refs, []
        for name, sid, ref in reading:
            try:
                self.runtime.get(ref)  # surfaces a failed consume with its own error
            except DataLostError:
                self.lost.append((name, sid))
        return bool(self.lost)

    def finish(self) -> dict:
        self.runtime.get([ref for _, _, ref in self._consume_refs])  # surfaces a failed consume with its own error
        names = list(self.trainers)
        finished = self.runtime.get([self.runtime.call(self.trainers[n], "finish_update") for n in names])
        return self._group_metrics(dict(zip(names, finished)))

    def _group_metrics(self, per_group: dict) -> dict:
        """Per-group trainer metrics as `prefix/<group>/name`, plus pool-wide lag and busy time."""
        names = list(per_group)
        self.spans = dict(zip(names, self.runtime.get([self.runtime.call(self.trainers[n], "spans") for n in names])))
        metrics: dict = {}
        for name, group_metrics in per_group.items():
            for key, value in group_metrics.items():
                prefix, _, rest = key.partition("/")
                metrics[f"{prefix}/{name}/{rest}"] = value
        for stat, reduce in (("policy_lag_min", min), ("policy_lag_mean", max), ("policy_lag_max", max), ("train_s", max)):
            metrics[f"perf/{stat}"] = reduce(metrics[f"perf/{n}/{stat}"] for n in names)
        metrics["perf/trainer_busy_s"] = sum(metrics[f"perf/{n}/train_s"] for n in names)
        return metrics


class SyncPipeline:
    def run(self, core) -> tuple[list, dict]:
        results = core.collect(core.dispatch())
        while (metrics := core.training.train_batch(core.iteration)) is None:  # a row was lost with its node
            results = core.produce_lost_rows_again(results)
        return results, metrics


class MicrobatchPipeline:
    def run(self, core) -> tuple[list, dict]:
        core.training.begin()
        results = core.collect(core.dispatch(), on_publish=core.training.feed)
        while core.training.find_lost_rows():
            results = core.produce_lost_rows_again(results, on_publish=core.training.feed)
        return results, core.training.finish()


class StalePipeline:
    """Workers never idle: one request in flight per worker at all times, also while the trainers finish
    the update; rows more than `max_staleness` versions old are refused (and counted by the store).

    Requests carry no version: each runs on whatever weights its worker (or its engines) holds. Where the
    inference side takes weights only when idle (`Workload.weights_apply_between_requests` False: LLM
    engines), the requests still in flight when the update ends are finished before the push and carried
    over to the next iteration, where they are admitted or refused like any other row."""

    def __init__(self):
        self.in_flight: dict = {}
        self.carried: list = []
        self.sent = 0

    def run(self, core) -> tuple[list, dict]:
        cfg, requests, max_staleness = core.cfg, core.requests, core.cfg.pipeline.max_staleness
        core.training.begin()
        results: list = []
        carried, self.carried = self.carried, []
        while len(results) < cfg.requests_per_iteration:
            if carried:
                done = carried.pop(0)
            else:
                self._top_up(core)
                done = requests.next_result(self.in_flight)
                if done is None:
                    continue
            flight, result = done
            admitted = [core.store.admit(g, row_id(flight.request, g), result.version, core.iteration, max_staleness)
                        for g in requests.groups]
            if all(admitted):
                requests.publish(flight, result)
                core.training.feed(flight)
                results.append(result)
        self._top_up(core)
        while core.training.find_lost_rows():  # produced again on a worker's current weights: admitted
            results = core.produce_lost_rows_again(results, on_publish=core.training.feed)
        metrics = core.training.finish()
        self.carried = carried + ([] if core.workload.weights_apply_between_requests else self._finish_in_flight(core))
        return results, metrics

    def _top_up(self, core) -> None:
        """Give every idle worker a request that runs on whatever weights it holds."""
        cfg, busy = core.cfg, {f.worker for f in self.in_flight.values()}
        for w in range(len(core.workers)):
            if w not in busy:
                n, self.sent = self.sent, self.sent + 1
                per_batch = cfg.requests_per_iteration  # same seeds as sync when nothing is refused
                seed = request_seed(cfg.run.seed, n // per_batch, n % per_batch)
                flight = core.requests.send(RolloutRequest(f"st{n:08d}", None, seed, cfg.rollout.fragment_length), w)
                self.in_flight[id(flight.meta_ref)] = flight

    def _finish_in_flight(self, core) -> list:
        done = []
        while self.in_flight:
            item = core.requests.next_result(self.in_flight)
            if item is not None:
                done.append(item)
        return done


PIPELINES = {"sync": SyncPipeline, "microbatch": MicrobatchPipeline, "stale": StalePipeline}
