"""vLLM's own async engine (`vllm.v1.engine.async_llm.AsyncLLM`) vs our hand-written continuous-batching
loop (`flexmarl/llm/engines/vllm.py`, `VLLMEngine`): generated tokens/s on the same tiny model, in one
process, arms alternating, several repetitions, medians -> benchmarks/results/engines_async.json.

`AsyncVLLMEngine` is the candidate, kept here as the measured arm (docs/llm.md says why it did not replace
the loop). It keeps the engine contract the same way: a call carries the version it needs and is refused on
another one; a push while any call is in flight is refused; pushes reload in place (`collective_rpc` to the
same worker function as `VLLMEngine`); each call carries its seed (and its adapter's LoRARequest). AsyncLLM
always runs vLLM's EngineCore in a child process (`make_async_mp_client`; there is no in-process asyncio
mode in vLLM 0.32), so a push crosses a process boundary (the tensors are serialised, and the worker
function needs VLLM_ALLOW_INSECURE_SERIALIZATION=1 to travel by cloudpickle).

    PYTHONPATH=$PWD python -m benchmarks.engines_async [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.llm import generation_throughput
from flexmarl.llm.engines.base import Generation, InferenceEngine, VersionMismatchError, WeightSyncError

# Before vLLM reads its environment (it caches it once an engine is up): the AsyncLLM arm's pushes send a
# function to the EngineCore process, and its answers come back pickled.
os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
CALL_TIMEOUT_S = 300.0


class AsyncVLLMEngine(InferenceEngine):
    """The engine contract over vLLM's AsyncLLM: an asyncio loop on a background thread runs AsyncLLM;
    `generate` (from any thread) hands it a coroutine and waits for the answer."""

    def __init__(self, model_dir: str, version: int = 0, seed: int = 0, max_model_len: int = 256,
                 omp_threads_bind: str = "nobind", kv_cache_gib: float = 0.25, engine_name: str = "vllm-async",
                 max_batch: int = 64):
        from flexmarl.llm import weights as weight_io

        self.model_dir, self.engine_name, self.max_model_len = str(model_dir), engine_name, max_model_len
        self._version, self._tied = version, weight_io.ties_embeddings(self.model_dir)
        self._lock = threading.Lock()  # guards _in_flight, _version; held across a push
        self._in_flight = 0
        self._generated_tokens = self._calls = 0
        self._ids = itertools.count()
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = omp_threads_bind  # the EngineCore process binds itself
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"engine-{engine_name}", daemon=True)
        self._thread.start()
        kwargs = dict(model=self.model_dir, dtype="float32", enforce_eager=True, seed=seed,
                      max_model_len=max_model_len, max_num_seqs=max_batch, disable_log_stats=True,
                      kv_cache_memory_bytes=int(kv_cache_gib * 2**30))
        self._run(self._build(kwargs))

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(CALL_TIMEOUT_S)

    async def _build(self, kwargs: dict) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        await self._generate([0, 0, 0, 0], 2, 1.0, 0)  # the first logprob step compiles (seconds)

    async def _generate(self, prompt_ids, max_tokens, temperature, seed) -> tuple[list[int], list[float], str]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed, logprobs=0,
                                detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY)
        final = None
        async for out in self.llm.generate({"prompt_token_ids": prompt_ids}, params,
                                           f"{self.engine_name}-{next(self._ids)}"):
            final = out
        completion = final.outputs[0]
        tokens = list(completion.token_ids)
        return tokens, [p[t].logprob for p, t in zip(completion.logprobs, tokens)], completion.finish_reason

    # -- contract ---------------------------------------------------------------------------------
    def generate(self, prompt_ids, max_tokens, temperature, seed, version=None, adapter=None) -> Generation:
        if adapter is not None:
            raise ValueError("the measured arm serves no adapters")
        prompt_ids = list(map(int, prompt_ids))
        if not prompt_ids or max_tokens < 1 or len(prompt_ids) + max_tokens > self.max_model_len:
            raise ValueError(f"engine {self.engine_name}: prompt + max_tokens must fit max_model_len")
        with self._lock:  # waits for a push in progress: the call then runs on the new version
            if version is not None and version != self._version:
                raise VersionMismatchError(f"engine {self.engine_name} holds version {self._version}, "
                                           f"call asked for {version}")
            self._in_flight += 1
            held = self._version
        try:
            tokens, logprobs, reason = self._run(self._generate(prompt_ids, int(max_tokens), float(temperature),
                                                                int(seed)))
        finally:
            with self._lock:
                self._in_flight -= 1
        self._generated_tokens += len(tokens)
        self._calls += 1
        return Generation(tokens, logprobs, held, reason)

    def load_weights(self, weights, version, adapter=None) -> float:
        from flexmarl.llm import weights as weight_io

        return self._push(weight_io.drop_tied_aliases(weights, self._tied), None, int(version))

    def load_weights_from_dir(self, path, version) -> float:
        return self._push(None, str(path), int(version))

    def _push(self, weights, path, version) -> float:
        with self._lock:
            if version < self._version:
                raise VersionMismatchError(f"engine {self.engine_name} holds version {self._version}; "
                                           f"refusing to load older version {version}")
            if self._in_flight:
                raise WeightSyncError(f"engine {self.engine_name}: refusing the push of version {version}: "
                                      f"{self._in_flight} calls in flight")
            start = time.perf_counter()
            # vLLM's msgpack turns tensors nested in collective_rpc's kwargs into lists: send one blob
            payload = None if weights is None else safetensors_save(weights)
            self._run(self._reload(payload, path))
            self._version = version
            return time.perf_counter() - start

    async def _reload(self, payload, path) -> None:
        await self.llm.collective_rpc(_reload_from_blob, kwargs={"payload": payload, "path": path})
        if not await self.llm.reset_prefix_cache():
            raise RuntimeError("the prefix cache could not be reset after the reload")

    def version(self, adapter=None) -> int:
        return self._version

    def load(self) -> dict:
        return {"in_flight": self._in_flight, "waiting": 0, "generated_tokens": self._generated_tokens,
                "calls": self._calls}

    def close(self) -> None:
        self.llm.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()


def safetensors_save(weights: dict) -> bytes:
    from safetensors.torch import save

    return save({name: tensor.contiguous() for name, tensor in weights.items()})


def _reload_from_blob(worker, payload: bytes | None, path: str | None) -> None:
    """Runs in the EngineCore process: the same in-place reload as VLLMEngine's."""
    from safetensors.torch import load

    from flexmarl.llm.engines.vllm import _reload_worker_weights

    _reload_worker_weights(worker, None if payload is None else load(payload), path)


def tiny_model(out_dir) -> str:
    """A tiny Qwen2 with tied embeddings (2 layers, hidden 128), the model the engine tests use."""
    from flexmarl.llm.models import build_tiny_model, build_tokenizer

    corpus = [f"speaker says {c} {s} ." for c in ("red", "blue", "green") for s in ("box", "ball", "cone")] * 4
    return str(build_tiny_model(out_dir, build_tokenizer(corpus, vocab_size=300), intermediate=256, tied=True))


def run_engines_async_bench(repeats: int = 5, batch: int = 32, max_tokens: int = 16, calls: int = 64,
                            bind: str = "1", out: Path | None = None) -> dict:
    """Both engines up at once (same process, same model, same settings); `repeats` rounds, each timing
    one arm then the other (the order alternates per round); medians of generated tokens/s. `bind`: the
core both arms' model threads are pinned to (the loop's engine thread; AsyncLLM's EngineCore process),
so each gets the same CPU whatever else runs on the node. Also checks
    that both sample the same tokens for the same seeds, and times one in-memory push on each."""
    from flexmarl.llm.engines.vllm import VLLMEngine
    from flexmarl.llm.models import load_causal_lm
    from flexmarl.llm.weights import engine_weights

    out = out or Path("benchmarks/results/engines_async.json")
    model_dir = tiny_model(Path(tempfile.mkdtemp(prefix="engines-async-")) / "model")
    load_before = os.getloadavg()[0]
    settings = dict(seed=0, max_model_len=64, omp_threads_bind=bind, kv_cache_gib=0.25)
    arms = {}
    started = {}
    for name, build in (("loop", lambda: VLLMEngine(model_dir, engine_name="loop", **settings)),
                        ("async_llm", lambda: AsyncVLLMEngine(model_dir, engine_name="async", **settings))):
        t = time.perf_counter()
        arms[name] = build()
        started[name] = time.perf_counter() - t
    try:
        prompts = [[1 + (i % 7), 2, 3 + (i % 5)] for i in range(calls)]
        same = [arms[a].generate(p, 8, 1.0, s).token_ids for a in arms for s, p in enumerate(prompts[:8])]
        samples_equal = same[:8] == same[8:]
        print("same tokens for the same seeds:", samples_equal, flush=True)
        for engine in arms.values():  # warm-up round, not timed
            generation_throughput(engine, prompts, max_tokens, batch)
        runs = {name: [] for name in arms}
        order = list(arms)
        for r in range(repeats):
            for name in (order if r % 2 == 0 else order[::-1]):
                runs[name].append(generation_throughput(arms[name], prompts, max_tokens, batch)["tokens_per_s"])
                print(f"round {r} {name}: {runs[name][-1]:.0f} tokens/s", flush=True)
        model = load_causal_lm(model_dir, "cpu")
        weights = engine_weights({k: v.detach().clone() for k, v in model.state_dict().items()}, model_dir)
        push_s = {name: float(np.median([engine.load_weights(weights, i + 1) for i in range(3)]))
                  for name, engine in arms.items()}
        after_push = [arms[a].generate(prompts[0], 8, 1.0, 0, version=3).token_ids for a in arms]
    finally:
        for engine in arms.values():
            engine.close()
    medians = {name: float(np.median(v)) for name, v in runs.items()}
    result = {
        "tokens_per_s_loop": medians["loop"], "tokens_per_s_async_llm": medians["async_llm"],
        "speedup_async_llm_vs_loop": medians["async_llm"] / medians["loop"],
        "tokens_per_s_runs": runs, "start_s": started, "push_in_memory_s": push_s,
        "same_tokens_for_same_seeds": samples_equal, "same_tokens_after_push": after_push[0] == after_push[1],
        "repeats": repeats, "omp_threads_bind": bind, "callers": batch, "calls": calls, "new_tokens": max_tokens,
        "model": "tiny Qwen2 (2 layers, hidden 128, tied embeddings), float32",
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_1min_before": load_before},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    cores = sorted(os.sched_getaffinity(0))
    key = f"bind_{bind}" + ("" if len(cores) == os.cpu_count() else f"_process_on_{','.join(map(str, cores))}")
    result["process_cores"] = cores
    results[key] = result  # one entry per pinning (and process affinity, e.g. under taskset): they differ most
    out.write_text(json.dumps(results, indent=2) + "\n")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bind", default="1", help="core both arms run on ('nobind': no pinning)")
    args = parser.parse_args()
    print(json.dumps(run_engines_async_bench(args.repeats, bind=args.bind), indent=2))
