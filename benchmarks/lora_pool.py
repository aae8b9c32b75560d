"""LoRA agents' shared engine pool against one engine set per agent, on the skewed workload.

`python -m benchmarks.lora_pool [--model-dir DIR] [--iterations N]` -> benchmarks/results/lora_pool.json.

`speaker_listener_skewed` asks the listener 8 times per trajectory and the speaker once. Two set-ups with
the same number of engine instances (2, HF engines, serial runtime) and the same base weights (the build's
`shared-base`):
- per_agent: two full-model groups, one engine each (`llm.load_balancing: false`): the listener's calls
  queue on its engine while the speaker's idles;
- pool: two LoRA adapter groups over the base sharing one pool of 2 engines, every call to the
  least-loaded instance.
Iterations alternate between the set-ups (both orchestrators alive), so both see the same machine state;
the first iteration of each is a warm-up. Reported: median rollout seconds per iteration and calls per
engine instance.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from flexmarl.config import config_from_dict

BASE = {
    "run": {"name": "bench-lora-pool", "workload": "llm", "mode": "serial", "seed": 0, "progress": False},
    "llm": {"task": "speaker_listener_skewed", "task_kwargs": {"listener_calls": 8}, "backend": "hf",
            "group_size": 4, "queries_per_request": 1, "queries_per_iteration": 8, "concurrent_requests": 4,
            "max_concurrent_calls": 32, "max_new_tokens": 4, "engine_max_batch": 8, "lr": 3e-4,
            "load_balancing": False},
    "pipeline": {"mode": "microbatch"},
    "rollout": {"num_workers": 1},
}
LORA = {"adapter": "lora", "rank": 8, "alpha": 16.0}


def arm_configs(model_dir: str) -> dict:
    base = str(Path(model_dir) / "shared-base")
    per_agent = {"models": {"speaker": base, "listener": base}, "engines_per_agent": 1}
    pool = {"models": {"speaker": dict(LORA), "listener": dict(LORA)}, "base_model": base, "engines_per_agent": 2}
    return {name: config_from_dict({**BASE, "llm": {**BASE["llm"], "model_dir": model_dir, **llm}})
            for name, llm in (("per_agent", per_agent), ("pool", pool))}


def measure(model_dir: str, iterations: int) -> dict:
    from flexmarl.llm.build import build_task_models
    from orchestrator.core import make_orchestrator
    from orchestrator.runtime import SerialRuntime

    if not (Path(model_dir) / "shared-base" / "config.json").exists():  # any build of the task will do
        build_task_models("speaker_listener", model_dir)
    orchs = {name: make_orchestrator(cfg, SerialRuntime()) for name, cfg in arm_configs(model_dir).items()}
    rollout = {name: [] for name in orchs}
    for i in range(iterations + 1):
        for name, orch in orchs.items():
            metrics = orch.step()
            if i:  # the first iteration warms up
                rollout[name].append(metrics["perf/rollout_s"])
    calls = {name: orch.workload.engine_calls() for name, orch in orchs.items()}
    result = {name: {"rollout_s_median": float(np.median(r)), "rollout_s": r, "calls_per_instance": calls[name]}
              for name, r in rollout.items()}
    result["speedup_pool_over_per_agent"] = result["per_agent"]["rollout_s_median"] / result["pool"]["rollout_s_median"]
    result["settings"] = {"iterations": iterations, "config": BASE, "lora": LORA, "machine": platform.processor() or
                          platform.machine(), "note": "serial runtime, HF engines, same base weights in both set-ups"}
    for orch in orchs.values():
        orch.shutdown()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="runs/llm-models/speaker_listener")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/lora_pool.json")
    args = parser.parse_args()
    result = measure(args.model_dir, args.iterations)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=1))


if __name__ == "__main__":
    main()
