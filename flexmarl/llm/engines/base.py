"""Inference engines for LLM agents: the contract every engine implements, and the loop both share.
Two implementations (by name: flexmarl/llm/engines/registry.py):

- `VLLMEngine` (flexmarl/llm/engines/vllm.py): vLLM in-process, continuous batching.
- `HFEngine` (flexmarl/llm/engines/hf.py): transformers, concurrent calls batched statically (all of a batch
  start together).

Both run the model on one background thread that owns it (`BatchingEngine`): `generate` may be called
from many threads at once (a Ray actor with max_concurrency, or a thread pool in one process); each call
is queued, admitted by the loop, batched with the others in flight, and answered through a future.
Weight pushes travel through the same queue, so they happen between model steps, never during one.

Versions. The engine holds the weights of one policy version. `generate(..., version=k)` runs only on
version k: it is refused (VersionMismatchError) when the engine holds another one at call time or when
the call is admitted. A push is applied only into an idle engine: if any call is in flight or queued when
`load_weights` is called, or still in flight when the loop reaches the push, the push is refused
(WeightSyncError) and the old version keeps serving. Calls queued after the push are admitted after it,
on the new version. The orchestrator therefore pushes only
after every call of the old version has returned, which zero-lag pipelines do anyway; an engine never
mixes two versions inside one generation.

Sampling. Every call has its own seed (vLLM: `SamplingParams(seed=...)`; HF: a `torch.Generator` per
call), so a call's tokens do not depend on what it was batched with. Logprobs are the raw model's
log-softmax at each sampled token (before the temperature: vLLM's default `logprobs_mode`), what the
trainer recomputes; temperature 0 is greedy.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from flexmarl.llm import weights as weight_io
from flexmarl.llm.adapters import adapter_layout


class VersionMismatchError(RuntimeError):
    """generate asked for version k while the engine holds j, or a push tried to go back in versions."""


class WeightSyncError(RuntimeError):
    """A weight push failed (bad tensors, calls still in flight, or the engine failed midway); the
    message names the engine and the cause."""


@dataclass
class Generation:
    token_ids: list[int]
    """Completion token ids (the eos token included when sampled)."""
    logprobs: list[float]
    """Raw-model log-probability of each sampled token (before the temperature)."""
    version: int
    """Policy version of the weights that generated every token."""
    finish_reason: str
    """'stop' (eos sampled) or 'length' (max_tokens reached)."""


class InferenceEngine(ABC):
    """The contract every engine implements (in-process or as a Ray actor)."""

    @abstractmethod
    def generate(self, prompt_ids: list[int], max_tokens: int, temperature: float, seed: int,
                 version: int | None = None, adapter: str | None = None) -> Generation:
        """Sample a completion of `prompt_ids` (with LoRA adapter `adapter` over the base, when named);
        `version` None accepts whatever version is held (of that adapter)."""

    @abstractmethod
    def load_weights(self, weights: dict[str, torch.Tensor], version: int, adapter: str | None = None) -> float:
        """Replace the weights in memory (HF names, as the checkpoint's; an adapter's: PEFT file names);
        returns the seconds it took."""

    @abstractmethod
    def load_weights_from_dir(self, path: str, version: int) -> float:
        """Replace the weights with the safetensors files in `path`; returns the seconds it took."""

    @abstractmethod
    def version(self) -> int: ...

    @abstractmethod
    def load(self) -> dict:
        """{'in_flight', 'waiting', 'generated_tokens', 'calls'}: calls being generated, calls queued and
        not yet admitted, and the totals since start (tokens generated, calls answered)."""

    def close(self) -> None:
        """Stop the engine and free its memory."""


@dataclass
class _Call:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    seed: int
    version: int | None
    request_id: str
    adapter: str | None = None
    """The LoRA adapter the call runs with (None: the model itself)."""
    future: Future = field(default_factory=Future)


@dataclass
class _Push:
    weights: dict | None
    """In-memory weights, or None for a reload from `path`."""
    path: str | None
    version: int
    adapter: str | None = None
    """The adapter these weights are (None: the whole model's)."""
    future: Future = field(default_factory=Future)


_STOP = object()


class BatchingEngine(InferenceEngine):
    """The loop shared by both engines: one thread owns the model; subclasses supply the model steps.

    Hooks (all run on the loop thread): `_build()` loads the model; `_admit(call)` takes a call into the
    batch (raising refuses only that call); `_step()` advances the batch and returns the calls that
    finished as (call, token_ids, logprobs, finish_reason); `_apply(weights, path)` replaces the
    weights; `_shutdown()` frees the model.
    """

    def __init__(self, model_dir: str, version: int, engine_name: str, max_model_len: int,
                 adapters: dict | None = None):
        self.model_dir, self.engine_name, self.max_model_len = str(model_dir), engine_name, max_model_len
        self._version = version
        self._layout = weight_io.checkpoint_layout(self.model_dir)
        self.adapters = dict(adapters or {})
        """{name: LoraAdapter} served over the base, each with its own version and layout (flexmarl/llm/lora.py)."""
        self._adapter_versions = {name: version for name in self.adapters}
        self._adapter_layouts = {name: adapter_layout(self.model_dir, spec) for name, spec in self.adapters.items()}
        self._tied = weight_io.ties_embeddings(self.model_dir)
        self._queue: queue.Queue = queue.Queue()
        self._running: dict[str, _Call] = {}
        self._ids = itertools.count()
        self._waiting = 0
        self._closed = False
        self._lock = threading.Lock()  # guards _waiting and _closed
        self._generated_tokens = 0
        self._calls = 0
        self._broken: str | None = None
        started = Future()
        self._thread = threading.Thread(target=self._loop, args=(started,), name=f"engine-{engine_name}", daemon=True)
        self._thread.start()
        started.result()  # re-raises a failed start here, in the constructor

    # -- contract ---------------------------------------------------------------------------------
    def generate(self, prompt_ids, max_tokens, temperature, seed, version=None, adapter=None) -> Generation:
        return self._submit(prompt_ids, max_tokens, temperature, seed, version, adapter).result()

    def generate_many(self, calls: list[dict]) -> list[Generation]:
        """Several `generate` calls (keyword dicts) in one round trip: a client that has many calls ready
        at once pays one actor call instead of one per call; they batch inside the engine as usual."""
        futures = [self._submit(**call) for call in calls]
        return [f.result() for f in futures]

    def _submit(self, prompt_ids, max_tokens, temperature, seed, version=None, adapter=None) -> Future:
        self._check_usable()
        held = self.version(adapter)
        if version is not None and version != held:
            raise VersionMismatchError(
                f"engine {self.engine_name} holds version {held}{_of(adapter)}, call asked for {version}")
        call = _Call(list(map(int, prompt_ids)), int(max_tokens), float(temperature), int(seed), version,
                     f"{self.engine_name}-{next(self._ids)}", adapter)
        # Refused rather than cut short (vLLM would end it early), the same way on every engine.
        if not call.prompt_ids or call.max_tokens < 1 or len(call.prompt_ids) + call.max_tokens > self.max_model_len:
            raise ValueError(f"engine {self.engine_name}: prompt of {len(call.prompt_ids)} tokens + max_tokens "
                             f"{call.max_tokens} must be within 1..max_model_len ({self.max_model_len})")
        with self._lock:
            if self._closed:
                raise RuntimeError(f"engine {self.engine_name} is closed")
            self._waiting += 1
            self._queue.put(call)
        return call.future

    def load_weights(self, weights, version, adapter=None) -> float:
        if adapter is None:
            weights = weight_io.drop_tied_aliases(weights, self._tied)
        return self._push(_Push(weights, None, int(version), self._known(adapter)))

    def load_weights_from_dir(self, path, version) -> float:
        return self._push(_Push(None, str(path), int(version)))

    def version(self, adapter: str | None = None) -> int:
        """The version held (of adapter `adapter`, when named)."""
        return self._version if adapter is None else self._adapter_versions[self._known(adapter)]

    def _known(self, adapter: str | None) -> str | None:
        if adapter is not None and adapter not in self.adapters:
            raise ValueError(f"engine {self.engine_name} serves no adapter {adapter!r} (it has: "
                             f"{', '.join(self.adapters) or 'none'})")
        return adapter

    def load(self) -> dict:
        return {"in_flight": len(self._running), "waiting": self._waiting,
                "generated_tokens": self._generated_tokens, "calls": self._calls}

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    # -- loop -------------------------------------------------------------------------------------
    def _push(self, push: _Push) -> float:
        self._check_usable()
        held = self.version(push.adapter)
        if push.version < held:
            raise VersionMismatchError(f"engine {self.engine_name} holds version {held}{_of(push.adapter)}; refusing "
                                       f"to load older version {push.version}")
        if self._running or self._waiting:  # checked here too: HF's step holds the loop for a whole batch
            raise self._busy_error(push.version, len(self._running) + self._waiting)
        self._queue.put(push)
        return push.future.result()

    def _check_usable(self) -> None:
        if self._broken:
            raise WeightSyncError(f"engine {self.engine_name} is unusable: {self._broken}; replace it")

    def _loop(self, started: Future) -> None:
        try:
            self._build()
        except BaseException as exc:  # noqa: BLE001 - handed to the constructor
            started.set_exception(exc)
            return
        started.set_result(None)
        while True:
            # Block only when nothing is in flight; otherwise take what arrived and step again.
            items = [self._queue.get()] if not self._running else []
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for i, item in enumerate(items):
                if item is _STOP:
                    self._close_loop(items[i + 1:])
                    return
                if isinstance(item, _Push):
                    self._apply_push(item)
                else:
                    self._admit_call(item)
            if self._running:
                try:
                    finished = self._step()
                except Exception as exc:  # noqa: BLE001 - every caller in flight gets the error
                    self._broken = f"model step failed: {exc!r}"
                    self._fail_running(exc)
                    continue
                for call, token_ids, logprobs, reason in finished:
                    del self._running[call.request_id]
                    self._generated_tokens += len(token_ids)
                    self._calls += 1
                    call.future.set_result(Generation(list(token_ids), list(logprobs), self._version, reason))

    def _admit_call(self, call: _Call) -> None:
        with self._lock:
            self._waiting -= 1
        if self._broken:
            call.future.set_exception(WeightSyncError(f"engine {self.engine_name} is unusable: {self._broken}"))
        elif call.version is not None and call.version != self.version(call.adapter):
            call.future.set_exception(VersionMismatchError(f"engine {self.engine_name} holds version "
                                                           f"{self.version(call.adapter)}{_of(call.adapter)}, call "
                                                           f"asked for {call.version}"))
        else:
            try:
                self._admit(call)
            except Exception as exc:  # noqa: BLE001 - vLLM refused the request: fail this call only
                call.future.set_exception(exc)
                return
            self._running[call.request_id] = call

    def _apply_push(self, push: _Push) -> None:
        name = self.engine_name
        if self._running:
            push.future.set_exception(self._busy_error(push.version, len(self._running)))
            return
        held = self.version(push.adapter)
        if push.version < held:
            push.future.set_exception(VersionMismatchError(
                f"engine {name} holds version {held}{_of(push.adapter)}; refusing to load older version {push.version}"))
            return
        start = time.perf_counter()
        # Checked before anything is touched: a bad push leaves the old weights serving.
        if push.path:
            layout = weight_io.drop_tied_aliases(weight_io.checkpoint_layout(push.path), self._tied)
        else:
            layout = {n: tuple(t.shape) for n, t in push.weights.items()}
        expected = self._layout if push.adapter is None else self._adapter_layouts[push.adapter]
        problems = weight_io.layout_problems(layout, expected)
        if push.weights is not None:
            problems += weight_io.value_problems(push.weights)
        if problems:
            push.future.set_exception(WeightSyncError(
                f"engine {name}: push of version {push.version}{_of(push.adapter)} refused, old version {held} kept: "
                + "; ".join(problems)))
            return
        try:
            if push.adapter is None:
                self._apply(push.weights, push.path)
            else:
                self._apply_adapter(push.adapter, push.weights, push.version)
        except Exception as exc:  # noqa: BLE001 - the model may be half-written now
            self._broken = f"push of version {push.version}{_of(push.adapter)} failed midway ({exc!r})"
            push.future.set_exception(WeightSyncError(f"engine {name}: {self._broken}"))
            return
        if push.adapter is None:
            self._version = push.version
        else:
            self._adapter_versions[push.adapter] = push.version
        push.future.set_result(time.perf_counter() - start)

    def _busy_error(self, version: int, calls: int) -> WeightSyncError:
        return WeightSyncError(f"engine {self.engine_name}: refusing the push of version {version}: {calls} calls of "
                               f"version {self._version} are still in flight (push only into an idle engine)")

    def _close_loop(self, unprocessed: list) -> None:
        closed = RuntimeError(f"engine {self.engine_name} closed")
        with self._lock:  # nothing can be queued after this
            self._closed = True
        while True:
            try:
                unprocessed.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for item in unprocessed:
            if item is not _STOP:
                item.future.set_exception(closed)
        self._fail_running(closed)
        self._shutdown()

    def _fail_running(self, exc: BaseException) -> None:
        for call in self._running.values():
            call.future.set_exception(exc)
        self._running.clear()

    # -- hooks ------------------------------------------------------------------------------------
    @abstractmethod
    def _build(self) -> None: ...

    @abstractmethod
    def _admit(self, call: _Call) -> None: ...

    @abstractmethod
    def _step(self) -> list[tuple[_Call, list[int], list[float], str]]: ...

    @abstractmethod
    def _apply(self, weights: dict | None, path: str | None) -> None: ...

    def _apply_adapter(self, adapter: str, weights: dict, version: int) -> None:
        """Replace adapter `adapter`'s weights (checked: its layout, finite values)."""
        raise NotImplementedError(f"{type(self).__name__} serves no adapters")

    def _shutdown(self) -> None: ...


def _of(adapter: str | None) -> str:
    return "" if adapter is None else f" of adapter {adapter!r}"
