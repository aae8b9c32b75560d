"""Rollout requests in flight on the workers, with fault recovery: the same for every workload.

A request opens one pending row per group in the store; its rows become visible (published) when the
request completes. A worker that dies, or hangs (no request finished within `rollout.request_timeout_s`),
is replaced and its requests are sent again under the same ids, versions and seeds, so nothing is lost
or doubled. A request that fails while its worker lives goes to the workload's `repair` (an LLM engine
died: replaced) and is sent again, or the error stops the run. Rows published but lost with their node
before a trainer read them are produced again the same way, for the groups that lost them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import numpy as np

from flexmarl.config import Config
from flexmarl.rollout import RolloutRequest
from flexmarl.workload import RequestResult, Workload
from orchestrator.runtime import DataLostError, Runtime, WorkerDiedError
from orchestrator.store import ExperienceStore

log = logging.getLogger(__name__)


class WorkerFailure(RuntimeError):
    """A rollout worker died more often than `rollout.max_worker_restarts` allows."""


@dataclass
class InFlight:
    request: RolloutRequest
    worker: int
    meta_ref: object
    row_refs: list
    slot: int | None = None
    """Position of the request in its global batch (fixes its minibatch); None: arrival order."""
    sent_at: float = 0.0
    """When it was dispatched (its worker's deadline for `rollout.request_timeout_s`)."""
    groups: tuple[str, ...] = ()
    """The groups whose rows it produces: all, or those whose rows were lost after they were published."""


def request_seed(seed: int, *index: int) -> int:
    return int(np.random.SeedSequence([seed, *index]).generate_state(1)[0])


def row_id(request: RolloutRequest, group: str) -> str:
    return f"{request.request_id}-{group}"


class Dispatcher:
    def __init__(self, cfg: Config, runtime: Runtime, workload: Workload, store: ExperienceStore, workers: list):
        """`workers`: the run's rollout worker handles; a dead one is replaced in place."""
        self.cfg, self.runtime, self.workload, self.store, self.workers = cfg, runtime, workload, store, workers
        self.groups = [g.name for g in workload.groups]
        self.worker_restarts = 0
        self.worker_timeouts = 0
        self._times_lost: dict[str, int] = {}  # sample id -> how often its published row was lost
        self._last_done: dict[int, float] = {}  # worker -> when it last finished a request
        self._weights: dict = {}
        self._version = 0
        """The weights (references by group) and version the workers hold: a replacement gets them too."""

    # -- weights ----------------------------------------------------------------------------------
    def load_weights(self, weights: dict, version: int, workers: list[int] | None = None, wait: bool = True) -> None:
        """Give workers (all by default) these weights; a worker that died meanwhile is replaced."""
        self._weights, self._version = weights, version
        indices = range(len(self.workers)) if workers is None else workers
        acks = [(i, self.workload.load_worker_weights(self.workers[i], weights, version)) for i in indices]
        if not wait:
            return
        for index, ack in acks:
            if ack is None:
                continue
            try:
                self.runtime.get(ack)
            except WorkerDiedError as exc:  # e.g. its node died: replaced like a worker lost mid-request
                self.replace_worker(index, str(exc))

    def replace_worker(self, index: int, reason: str) -> None:
        self.worker_restarts += 1
        if self.worker_restarts > self.cfg.rollout.max_worker_restarts:
            raise WorkerFailure(
                f"rollout worker {index} died ({reason}); {self.worker_restarts - 1} restarts already used, "
                f"rollout.max_worker_restarts = {self.cfg.rollout.max_worker_restarts}"
            )
        log.warning("rollout worker %d died (%s); starting a replacement", index, reason)
        self.runtime.kill(self.workers[index])
        self.workers[index] = self.workload.make_worker(index)
        self.load_weights(self._weights, self._version, workers=[index])

    # -- requests ---------------------------------------------------------------------------------
    def send(self, request: RolloutRequest, worker: int, slot: int | None = None,
             groups: tuple[str, ...] | None = None) -> InFlight:
        """Open the request's pending rows (of `groups`, default all) and send it to `worker`."""
        groups = tuple(self.groups) if groups is None else groups
        refs = self.runtime.call(self.workers[worker], "sample_rows", request, num_returns=1 + len(self.groups))
        version = -1 if request.version is None else request.version
        for group, ref in zip(self.groups, refs[1:]):
            if group in groups:
                meta = {"worker": worker, "request": request, "slot": slot}
                self.store.begin(group, row_id(request, group), version, meta=meta)
                self.store.write(group, row_id(request, group), "payload", ref, ready=False)
        return InFlight(request, worker, refs[0], refs[1:], slot, time.time(), groups)

    def send_lost_rows_again(self, lost: list[tuple[str, str]]) -> list[InFlight]:
        """Rows published, then lost with their node before a trainer read them ((group, sample_id) pairs):
        withdraw them and send their requests again, each for the groups that lost its rows. A row lost more
        often than `rollout.max_worker_restarts` stops the run."""
        again: dict[str, tuple[dict, list[str]]] = {}
        for group, sample_id in lost:
            times = self._times_lost[sample_id] = self._times_lost.get(sample_id, 0) + 1
            if times > self.cfg.rollout.max_worker_restarts:
                raise DataLostError(f"row {sample_id!r} of group {group!r} was lost {times} times "
                                    f"(rollout.max_worker_restarts = {self.cfg.rollout.max_worker_restarts})")
            meta = self.store.withdraw(group, sample_id).meta
            again.setdefault(meta["request"].request_id, (meta, []))[1].append(group)
        log.warning("%d published rows were lost with their node before a trainer read them; producing them again",
                    len(lost))
        return [self.send(meta["request"], meta["worker"], meta["slot"], tuple(groups))
                for meta, groups in again.values()]

    def next_result(self, pending: dict) -> tuple[InFlight, RequestResult] | None:
        """Wait for one of `pending` ({id(meta_ref): InFlight}). A dead worker's requests, or a hung one's,
        are aborted and sent again to its replacement; a failed request that the workload repairs is sent
        again; returns None in those cases."""
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
            if not self.workload.repair(exc):
                raise
            self._retrieve_failed_rows(flight)
            self._resend([flight], pending)
            return None
        self._last_done[flight.worker] = time.time()
        return flight, result

    def publish(self, flight: InFlight, result: RequestResult) -> None:
        """Make a completed request's rows visible (after the workload's own checks of its result)."""
        self.workload.check_result(result)
        for group in flight.groups:
            self.store.mark_ready(group, row_id(flight.request, group), "payload", policy_version=result.version,
                                  meta=self.workload.row_meta(result, group))

    def collect(self, in_flight: list[InFlight], on_publish=None) -> list[RequestResult]:
        """Publish rows as requests complete (calling `on_publish(flight)`), recovering lost requests."""
        results = []
        pending = {id(f.meta_ref): f for f in in_flight}
        while pending:
            done = self.next_result(pending)
            if done is None:
                continue
            flight, result = done
            self.publish(flight, result)
            results.append(result)
            if on_publish is not None:
                on_publish(flight)
        return results

    # -- recovery ---------------------------------------------------------------------------------
    def _retrieve_failed_rows(self, flight: InFlight) -> None:
        """Read a failed request's row references (they hold the error it reported): Ray prints a whole
        traceback for every error reference dropped unread."""
        for ref in flight.row_refs:
            with contextlib.suppress(Exception):
                self.runtime.get(ref)

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

    def _resend(self, lost: list[InFlight], pending: dict) -> None:
        """Abort lost requests' unfinished rows and send them again (same ids, versions, seeds)."""
        for f in lost:
            pending.pop(id(f.meta_ref), None)
            for group in f.groups:
                self.store.abort(group, row_id(f.request, group))
        for f in sorted(lost, key=lambda f: f.sent_at):  # a worker's queue, in the order it was sent
            new = self.send(f.request, f.worker, f.slot, f.groups)
            pending[id(new.meta_ref)] = new

    def _recover(self, worker: int, pending: dict, reason: str) -> None:
        """Replace a lost (dead or hung) worker and send its requests again."""
        lost = [f for f in pending.values() if f.worker == worker]
        for f in lost:
            pending.pop(id(f.meta_ref), None)
        self.replace_worker(worker, reason)
        self._last_done[worker] = time.time()
        self._resend(lost, pending)
