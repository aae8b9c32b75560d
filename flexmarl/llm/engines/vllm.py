"""vLLM behind the engine contract (flexmarl/llm/engines/base.py): one in-process vLLM engine per instance.

The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), owned by the loop thread of
`BatchingEngine`: the thread builds it, `add_request`s each admitted call (prompt token ids,
`SamplingParams(seed=..., logprobs=0)`) and calls `step()` while anything is unfinished, so calls that
arrive while others run join the running batch (continuous batching). Weight pushes run on the same
thread between two steps: `collective_rpc` hands the tensors (no copy, same process) to a worker-side
function that calls the worker's `reload_weights(weights_iterator=...)`.

Things vLLM 0.32 (CPU build) does that this class works around, each checked by a test:
- On CPU the linear layers run on packed copies of their weights. `reload_weights` repacks the layers it
  loads, but a tied `lm_head` is not loaded (its weight is the input embedding's) and keeps packing the
  OLD embedding: `_repack_cpu_copies` packs such layers again after every reload.
- A reload that raises halfway leaves layers on the meta device: pushes are checked before (base.py).
- The prefix cache keeps KV blocks computed with the old weights: it is reset after every push.
- `reload_weights(weights_path=...)` repoints the model config at that folder for good: restored after.
- In-process, vLLM ignores VLLM_CPU_OMP_THREADS_BIND (only its worker processes are bound); a CPU list in
  `omp_threads_bind` is applied here instead: the loop thread's affinity (inherited by the OpenMP threads
  it starts) and torch's thread count (process-wide: give the engine its own process, e.g. a Ray actor).
- VLLM_CPU_KVCACHE_SPACE takes whole GiB only and overrides the argument: the KV cache size is passed as
  `kv_cache_memory_bytes` instead and that variable is removed.
- Building the engine seeds the global RNGs (random, numpy, torch) and makes `torch.set_num_threads` a
  no-op for the whole process: both are restored afterwards.
- The first step that returns logprobs torch.compiles vLLM's rank counting (seconds): a warm-up request
  pays it during start-up (with adapters, one per adapter: a first LoRA step takes ~20 s on CPU).

LoRA (`adapters`): the engine runs with `enable_lora` (the max rank rounded up to one vLLM accepts) and
serves every adapter from the same instance, each call carrying its adapter's `LoRARequest`, so calls of
different agents batch together. vLLM loads an adapter only from a PEFT folder: a push writes the adapter
(versioned, a few hundred KiB) to the engine's scratch folder, re-registers it under the same LoRA id
and resets the prefix cache (KV blocks of the old adapter must not be reused).

Not vLLM's AsyncLLM: measured slower here, and it always puts the EngineCore in a child process (pushes
then copy the weights across); docs/llm.md, benchmarks/engines_async.py.
"""

from __future__ import annotations

import gc
import os
import random
import shutil
import tempfile

import numpy as np
import torch

from flexmarl.llm.cpus import bind_this_thread, parse_cpu_list
from flexmarl.llm.engines.base import BatchingEngine


class VLLMEngine(BatchingEngine):
    def __init__(self, model_dir: str, version: int = 0, seed: int = 0, max_model_len: int = 256,
                 omp_threads_bind: str = "nobind", kv_cache_gib: float = 0.25, device: str = "cpu",
                 gpu_memory_utilization: float = 0.3, engine_name: str = "vllm", max_batch: int = 64,
                 dtype: str | None = None, adapters: dict | None = None):
        """model_dir: local HF checkpoint (its weights are `version`). omp_threads_bind: 'nobind' or a CPU
        list ('0', '0-1'). kv_cache_gib: CPU KV cache. device 'cuda' needs a CUDA build of vLLM and uses
        `gpu_memory_utilization`. dtype: default float32 on CPU (bf16 is slower there), the checkpoint's on CUDA."""
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self.seed, self.device = seed, device
        self.omp_threads_bind, self.kv_cache_gib = omp_threads_bind, kv_cache_gib
        self.gpu_memory_utilization, self.max_batch = gpu_memory_utilization, max_batch
        self.dtype = dtype or ("float32" if device == "cpu" else "auto")
        if omp_threads_bind != "nobind":
            parse_cpu_list(omp_threads_bind)  # a bad value fails here, before the engine thread starts
        super().__init__(model_dir, version, engine_name, max_model_len, adapters)

    def _build(self) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = self.omp_threads_bind
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        set_num_threads = torch.set_num_threads
        if self.device == "cpu":
            bind_this_thread(self.omp_threads_bind)
        rng_states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
                      torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
        try:
            from vllm import LLM
            from vllm.platforms import current_platform

            if self.device == "cuda" and current_platform.is_cpu():
                raise RuntimeError(f"engine {self.engine_name}: device='cuda' but the installed vLLM is the CPU build")
            kwargs = dict(model=self.model_dir, dtype=self.dtype, enforce_eager=True, seed=self.seed,
                          max_model_len=self.max_model_len, max_num_seqs=self.max_batch, disable_log_stats=True)
            if self.adapters:
                kwargs.update(enable_lora=True, max_loras=len(self.adapters),
                              max_lora_rank=vllm_lora_rank(max(a.rank for a in self.adapters.values())))
            if self.device == "cpu":
                kwargs["kv_cache_memory_bytes"] = int(self.kv_cache_gib * 2**30)
            else:
                kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
            self.llm = LLM(**kwargs)
        finally:
            torch.set_num_threads = set_num_threads
            random.setstate(rng_states[0])
            np.random.set_state(rng_states[1])
            torch.set_rng_state(rng_states[2])
            if rng_states[3] is not None:
                torch.cuda.set_rng_state_all(rng_states[3])
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self.engine = self.llm.llm_engine
        self._params = lambda call: SamplingParams(
            max_tokens=call.max_tokens, temperature=call.temperature, seed=call.seed, logprobs=0,
            detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY)
        # The first step that computes logprobs takes seconds (vLLM torch.compiles its rank counting then);
        # pay it here, not in the first call.
        self._register_initial_adapters()
        warm_up = SamplingParams(max_tokens=2, seed=0, logprobs=0, detokenize=False)
        for i, adapter in enumerate([None, *self.adapters]):
            self.engine.add_request(f"warm-up-{i}", {"prompt_token_ids": [0, 0, 0, 0]}, warm_up,
                                    lora_request=self._lora.get(adapter))
        while self.engine.has_unfinished_requests():
            self.engine.step()

    def _admit(self, call) -> None:
        self.engine.add_request(call.request_id, {"prompt_token_ids": call.prompt_ids}, self._params(call),
                                lora_request=self._lora.get(call.adapter))

    # -- LoRA adapters ------------------------------------------------------------------------------
    def _register_initial_adapters(self) -> None:
        """Every adapter starts as the base (all-zero LoRA weights) until its first push."""
        self._lora: dict = {}
        if self.adapters:
            self._scratch = tempfile.mkdtemp(prefix=f"flexmarl-lora-{self.engine_name.replace('/', '-')}-")
        for name in self.adapters:
            zeros = {n: torch.zeros(shape) for n, shape in self._adapter_layouts[name].items()}
            self._apply_adapter(name, zeros, self.version(name))

    def _apply_adapter(self, adapter, weights, version) -> None:
        from vllm.lora.request import LoRARequest

        from flexmarl.llm.lora import save_adapter

        lora_id = list(self.adapters).index(adapter) + 1  # vLLM's ids start at 1
        folder = save_adapter(weights, self.adapters[adapter], self.model_dir,
                              os.path.join(self._scratch, f"{adapter}-v{version}"))
        old = self._lora.get(adapter)
        if old is not None:
            self.engine.remove_lora(lora_id)
        self._lora[adapter] = LoRARequest(adapter, lora_id, str(folder))
        if not self.engine.add_lora(self._lora[adapter]):
            raise RuntimeError(f"vLLM did not load adapter {adapter!r} from {folder}")
        if not self.engine.reset_prefix_cache():
            raise RuntimeError("the prefix cache could not be reset after the adapter reload")
        if old is not None and old.lora_path != str(folder):
            shutil.rmtree(old.lora_path, ignore_errors=True)

    def _step(self):
        finished = []
        for out in self.engine.step():
            if not out.finished:
                continue
            completion = out.outputs[0]
            tokens = list(completion.token_ids)
            logprobs = [position[token].logprob for position, token in zip(completion.logprobs, tokens)]
            finished.append((self._running[out.request_id], tokens, logprobs, completion.finish_reason))
        return finished

    def _apply(self, weights, path) -> None:
        self.llm.collective_rpc(_reload_worker_weights, kwargs={"weights": weights, "path": path})
        if not self.engine.reset_prefix_cache():
            raise RuntimeError("the prefix cache could not be reset after the reload")

    def _shutdown(self) -> None:
        del self.engine, self.llm
        if self.adapters:
            shutil.rmtree(self._scratch, ignore_errors=True)
        gc.collect()


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM 0.32 accepts for max_lora_rank."""


def vllm_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds `rank`."""
    return next(r for r in VLLM_LORA_RANKS if r >= rank)


def _reload_worker_weights(worker, weights: dict | None, path: str | None) -> None:
    """Runs on the vLLM worker (`worker` is vLLM's Worker): reload in place, then repack stale copies."""
    model_config = worker.model_runner.vllm_config.model_config
    saved = (model_config.model, model_config.model_weights, model_config.revision)
    try:
        if weights is not None:
            worker.reload_weights(weights_iterator=iter(weights.items()))
        else:
            worker.reload_weights(weights_path=path)
    finally:
        model_config.model, model_config.model_weights, model_config.revision = saved
    _repack_cpu_copies(worker.model_runner.model)


def _repack_cpu_copies(model: torch.nn.Module) -> None:
    """On CPU, layers keeping their weight (embeddings, lm_head) compute the output projection from a packed
    copy made at load time; pack it again from the current weight (a tied lm_head is never reloaded)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (hasattr(module, "cpu_linear") and hasattr(module, "quant_method") and isinstance(weight, torch.Tensor)
                and weight.ndim == 2 and weight.numel() > 0):
            module.quant_method.process_weights_after_loading(module)
