"""`flexmarl bench llm`: LLM agents (workload 1, speaker -> listener) in sync and microbatch pipelines,
side by side in one run, plus the engine-level numbers (weight push in memory vs through safetensors on
disk, vLLM vs HF generate tokens/s, logprob agreement after a push).

One orchestrator, one set of engines and trainers: iterations alternate between the two pipelines
(sync, microbatch, sync, ...), so both modes are timed on the same machine state, the same models
and the same load; the run keeps learning throughout, so reward_first / reward_last show the policy
improving under the mixed schedule (each mode's update is the same synchronous update by construction).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from flexmarl.config import config_from_dict

log = logging.getLogger(__name__)

BENCH_CONFIG = {
    "run": {"name": "bench-llm", "workload": "llm", "mode": "ray", "seed": 0, "progress": False},
    # 16 micro-batches of one query x 16 trajectories, one request in flight: on 2 cores one request
    # already fills the engine, and more in flight only bunch micro-batches into waves (less overlap).
    "llm": {"task": "speaker_listener", "model_dir": "runs/llm-models/speaker_listener", "backend": "vllm",
            "group_size": 16, "queries_per_request": 1, "queries_per_iteration": 16, "concurrent_requests": 1,
            "max_concurrent_calls": 16, "max_new_tokens": 6, "loss": "grpo", "lr": 3e-4},
    "pipeline": {"mode": "sync"},
    "rollout": {"num_workers": 1},
    "resources": {"rollout_cpus": 1, "trainer_cpus": 1},
}


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def generation_throughput(engine, prompts: list[list[int]], max_tokens: int, batch: int,
                          temperature: float = 1.0, seed: int = 0) -> dict:
    """Generated tokens per second of `engine` (an InferenceEngine) with `batch` callers at once (threads
    calling `generate`, as the workflow workers do), over all `prompts`."""
    def one(i_prompt):
        i, prompt = i_prompt
        return engine.generate(prompt, max_tokens=max_tokens, temperature=temperature, seed=seed + i)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=batch) as pool:
        results = list(pool.map(one, enumerate(prompts)))
    seconds = time.perf_counter() - start
    tokens = sum(len(r.token_ids) for r in results)
    return {"tokens_per_s": tokens / seconds, "tokens": tokens, "seconds": seconds, "calls": len(results),
            "batch": batch}


def measure_weight_push(engine, weights: dict) -> dict:
    """Times one push of `weights` into a running, idle engine, in memory and through disk (safetensors
    saved to a temporary folder + the engine's reload from it). Both keep the engine's version."""
    from flexmarl.llm.weights import drop_tied_aliases, save_weights, ties_embeddings

    weights = drop_tied_aliases(weights, ties_embeddings(engine.model_dir))  # safetensors refuses shared storage
    version = engine.version()
    in_memory = engine.load_weights(weights, version)
    with tempfile.TemporaryDirectory(prefix="flexmarl-weights-") as tmp:
        start = time.perf_counter()
        save_weights(weights, tmp)
        engine.load_weights_from_dir(tmp, version)
        disk = time.perf_counter() - start
    return {"weight_push_s": in_memory, "weight_push_disk_s": disk,
            "weight_bytes": sum(t.numel() * t.element_size() for t in weights.values())}


def engine_measurements(model_dir: str, batch: int = 32, max_tokens: int = 8) -> dict:
    """In this process: weight push in memory vs through disk, and vLLM vs HF generate tokens/s at the
    same batch, on one agent's model."""
    from flexmarl.llm.engines.hf import HFEngine
    from flexmarl.llm.engines.vllm import VLLMEngine
    from flexmarl.llm.models import load_causal_lm
    from flexmarl.llm.weights import engine_weights

    model = load_causal_lm(model_dir, "cpu")
    weights = engine_weights({k: v.detach().clone() for k, v in model.state_dict().items()}, model_dir)
    prompts = [[1 + (i % 7), 2, 3 + (i % 5)] for i in range(batch)]
    settings = dict(model_dir=model_dir, seed=0, max_model_len=64, omp_threads_bind="0", device="cpu")
    vllm = VLLMEngine(engine_name="bench-vllm", kv_cache_gib=0.5, **settings)
    try:
        push = measure_weight_push(vllm, weights)
        vllm_tps = generation_throughput(vllm, prompts, max_tokens, batch)["tokens_per_s"]
    finally:
        vllm.close()
    hf = HFEngine(engine_name="bench-hf", **settings)
    try:
        hf_tps = generation_throughput(hf, prompts, max_tokens, batch)["tokens_per_s"]
    finally:
        hf.close()
    return {**push, "vllm_tokens_per_s": vllm_tps, "hf_generate_tokens_per_s": hf_tps,
            "throughput_batch": batch, "throughput_new_tokens": max_tokens}


def run_llm_bench(iterations: int = 6, out: Path | None = None, overrides: list[str] | None = None,
                  engine_numbers: bool = True) -> dict:
    """`iterations` timed rounds (one sync and one microbatch iteration each) after a warm-up round;
    `engine_numbers`: also measure weight push and tokens/s on an in-process engine."""
    from flexmarl.llm.workload import logprob_agreement
    from orchestrator.core import make_orchestrator
    from orchestrator.runtime import RayRuntime

    arms = {mode: config_from_dict(BENCH_CONFIG, [*(overrides or []), f"pipeline.mode={mode}"])
            for mode in ("sync", "microbatch")}
    cfg = arms["sync"]
    out = out or Path("benchmarks/results/llm.json")
    orch = make_orchestrator(cfg, RayRuntime(cfg))
    history: list[dict] = []
    try:
        for round_ in range(iterations + 1):  # round 0 warms both modes up (first calls, allocations)
            for mode in ("sync", "microbatch"):
                orch.use_config(arms[mode])
                metrics = orch.step()
                metrics.update({"mode": mode, "warmup": round_ == 0})
                history.append(metrics)
                log.info("%s iteration %d: %.2f s, reward %.3f", mode, orch.iteration, metrics["perf/iteration_s"],
                         metrics["charts/reward_mean"])
        diff = logprob_agreement(orch.workload)
        calls = orch.workload.engine_calls()
    finally:
        orch.shutdown()
    timed = {m: [h for h in history if h["mode"] == m and not h["warmup"]] for m in ("sync", "microbatch")}
    engine = engine_measurements(orch.groups[0].model_dir) if engine_numbers else {}
    rewards = [h["charts/reward_mean"] for h in history]
    result = {
        "step_s_sync": _median([h["perf/iteration_s"] for h in timed["sync"]]),
        "step_s_microbatch": _median([h["perf/iteration_s"] for h in timed["microbatch"]]),
        "policy_lag_max_microbatch": max(h["perf/policy_lag_max"] for h in timed["microbatch"]),
        "tokens_per_s": float(np.mean([h["perf/tokens_per_s"] for h in history if not h["warmup"]])),
        # the orchestrator's whole sync: trainers' get_weights + push to every engine (by reference)
        "sync_weights_s": _median([h["perf/weight_push_s"] for h in history if not h["warmup"]]),
        "logprob_max_abs_diff": diff,
        "reward_first": rewards[0],
        "reward_last": float(np.mean(rewards[-3:])),
        "requests_per_agent": {g: int(sum(c)) for g, c in calls.items()},
        "engine_calls_per_instance": calls,
    }
    result["speedup_microbatch_vs_sync"] = result["step_s_sync"] / result["step_s_microbatch"]
    for mode in ("sync", "microbatch"):
        for kind in ("rollout", "trainer"):
            result[f"{kind}_busy_{mode}"] = float(np.mean([h[f"perf/{kind}_busy"] for h in timed[mode]]))
        result[f"rollout_s_{mode}"] = _median([h["perf/rollout_s"] for h in timed[mode]])
        result[f"train_s_{mode}"] = _median([h["perf/train_s"] for h in timed[mode]])
    result.update(engine)
    result["settings"] = {
        "config": cfg.to_dict()["llm"], "timed_iterations_per_mode": iterations, "schedule": "alternating sync/microbatch",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
    }
    result["history"] = [{k: v for k, v in h.items() if isinstance(v, (int, float, str, bool))} for h in history]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result
