"""The streamed update plan shared by every trainer (MARL group trainer, LLM group trainer).

One global batch of policy version k arrives as micro-batches, in any order. Epoch 0 trains each
micro-batch as soon as its minibatch's turn has come (gradients accumulate; one optimizer step per
minibatch); epochs 1.. run on the complete batch, shuffled by (seed, version, epoch); then version k+1.
A micro-batch's minibatch is fixed by its slot (its index in the batch in sample_id order), so a
streamed update equals the synchronous one: only the summation order inside a minibatch can differ.

A subclass supplies the model-specific hooks:
- `micro_batch_tensors(payload)`: a payload (as the rollout side wrote it) -> what `train_micro_batch` takes;
- `train_micro_batch(mb, first_epoch)`: forward/backward of one micro-batch, gradients added to the
  accumulated ones; returns its share of the minibatch's loss denominator (samples, tokens, sequences);
- `step(denominator)`: divide the accumulated gradient by the minibatch's denominator and apply it;
- `batch_complete(ordered)` (optional): the whole batch in sample_id order, after epoch 0 and before
  epoch 1 (whole-batch statistics, e.g. the value normaliser);
- `update_metrics()` (optional): metrics of the update beyond the means of `record_stat` values.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch


class StreamingTrainer(ABC):
    def __init__(self, name: str, seed: int, epochs: int, num_minibatches: int):
        self.name, self.seed = name, seed
        self.epochs, self.num_minibatches = epochs, num_minibatches
        self.version = 0
        self._stats: dict[str, list[float]] = {}
        self._compute_s, self._spans = 0.0, []

    # -- hooks --------------------------------------------------------------------------------------
    @abstractmethod
    def micro_batch_tensors(self, payload: Any) -> Any:
        """A micro-batch payload -> the tensors `train_micro_batch` takes (kept for later epochs)."""

    @abstractmethod
    def train_micro_batch(self, mb: Any, first_epoch: bool) -> float:
        """Forward/backward on one micro-batch, adding to the accumulated gradient; its denominator share."""

    @abstractmethod
    def step(self, denominator: float) -> None:
        """Apply the gradient accumulated over a minibatch, averaged over its `denominator`."""

    def batch_complete(self, ordered: list) -> None:
        """The complete batch (micro-batch tensors in sample_id order), before epochs 1..; default: nothing."""

    def update_metrics(self) -> dict:
        """Metrics of the finished update besides the recorded statistics' means; default: none."""
        return {}

    def record_stat(self, name: str, value: float) -> None:
        """A statistic of this update; `finish_update` reports the mean of its values."""
        self._stats.setdefault(name, []).append(value)

    # -- one iteration, streamed ------------------------------------------------------------------
    def begin_update(self, num_micro_batches: int) -> None:
        """Start global batch `self.version`, which arrives as `num_micro_batches` micro-batches."""
        if num_micro_batches % self.num_minibatches:
            raise ValueError(f"{num_micro_batches} micro-batches do not split into {self.num_minibatches} minibatches")
        self._batch: list[tuple[str, Any]] = []
        self._lags: list[int] = []
        self._per_minibatch = num_micro_batches // self.num_minibatches
        self._minibatch = 0  # epoch-0 minibatch being accumulated
        self._waiting: dict[int, list] = {}  # micro-batches of later minibatches, held until their turn
        self._held_back = 0  # micro-batches that arrived before their minibatch's turn
        self._done_in_minibatch = 0
        self._pending_denominator = 0.0
        self._stats, self._compute_s, self._spans = {}, 0.0, []

    def consume(self, sample_id: str, version: int, micro_batch: Any, slot: int | None = None) -> None:
        """Epoch 0: forward/backward on a micro-batch as soon as it arrives.

        `slot` (its index in the batch; default: arrival order) fixes its minibatch, slot // per_minibatch,
        so streaming and sync use the same partition. A micro-batch of a later minibatch waits until the
        earlier minibatches have stepped: only arrival order inside a minibatch can differ from sync.
        """
        t0 = time.time()
        slot = len(self._batch) if slot is None else slot
        mb = self.micro_batch_tensors(micro_batch)
        self._batch.append((sample_id, mb))
        self._lags.append(self.version - version)
        self._held_back += int(slot // self._per_minibatch > self._minibatch)
        self._waiting.setdefault(slot // self._per_minibatch, []).append(mb)
        while self._waiting.get(self._minibatch):
            mb = self._waiting[self._minibatch].pop(0)
            self._pending_denominator += self.train_micro_batch(mb, first_epoch=True)
            self._done_in_minibatch += 1
            if self._done_in_minibatch == self._per_minibatch:
                self.step(self._pending_denominator)
                self._pending_denominator, self._done_in_minibatch = 0.0, 0
                self._minibatch += 1
        self._record("consume", t0)

    def finish_update(self) -> dict:
        """Epochs 1.. on the complete batch, then version += 1.

        Later epochs order the micro-batches by sample_id and shuffle them with a generator seeded by
        (seed, version, epoch): the same partition whatever order they arrived in, and on resume.
        """
        t0 = time.time()
        expected = self._per_minibatch * self.num_minibatches
        if len(self._batch) != expected:
            raise RuntimeError(f"trainer {self.name!r}: {len(self._batch)} of {expected} micro-batches consumed")
        tensors = [mb for _, mb in sorted(self._batch, key=lambda item: item[0])]
        self.batch_complete(tensors)
        for epoch in range(1, self.epochs):
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.version * 101 + epoch)
            order = torch.randperm(len(tensors), generator=gen).tolist()
            for m in range(self.num_minibatches):
                chosen = order[m * self._per_minibatch : (m + 1) * self._per_minibatch]
                self.step(sum(self.train_micro_batch(tensors[i], first_epoch=False) for i in chosen))
        self.version += 1
        self._batch = []
        self._record("finish", t0)
        metrics = {name: float(np.mean(values)) for name, values in self._stats.items()}
        metrics.update(self.update_metrics())
        metrics.update({
            "perf/train_s": self._compute_s,
            "perf/policy_lag_min": float(min(self._lags)),
            "perf/policy_lag_mean": float(np.mean(self._lags)),
            "perf/policy_lag_max": float(max(self._lags)),
            "perf/held_back": float(self._held_back),
        })
        return metrics

    def _record(self, kind: str, t0: float) -> None:
        t1 = time.time()
        self._compute_s += t1 - t0
        self._spans.append((kind, t0, t1))

    def spans(self) -> list[tuple[str, float, float]]:
        """(kind, start, end) wall-clock spans of the last update's compute, for timelines."""
        return list(self._spans)

    def update(self, sample_ids: list[str], versions: list[int], *micro_batches: Any) -> dict:
        """The whole batch at once (sync pipeline): the same calls as streaming, in sample_id order."""
        self.begin_update(len(micro_batches))
        ordered = sorted(zip(sample_ids, versions, micro_batches), key=lambda x: x[0])
        for slot, (sample_id, version, mb) in enumerate(ordered):
            self.consume(sample_id, version, mb, slot)
        return self.finish_update()
