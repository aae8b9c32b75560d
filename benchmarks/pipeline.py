"""`flexmarl bench pipeline`: the same config under sync, microbatch and stale(1) pipelines, side by side.

Workloads (2 CPUs: one for the rollout pool, one for the training pool):
- simple_spread: the real env with fixed-length requests (the primary workload: sampling and training
  take comparable time here);
- long_tail: simple_spread under `wrappers/heavy_tail` (Pareto episode lengths), one episode per env
  copy per request, so requests have long-tailed durations; one PPO epoch (the GRPO-like single pass),
  networks wide enough that training a batch costs about as much as sampling it;
- long_tail_4_epochs: long_tail with 4 PPO epochs: only the first epoch can overlap rollout.
Modes run interleaved in rounds; each run has one warm-up iteration, then `iterations` timed ones. The
timeline of the last timed iteration per mode of the first workload is drawn to docs/pipeline_timeline.png.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import numpy as np

from flexmarl.config import config_from_dict
from orchestrator.core import make_orchestrator
from orchestrator.runtime import RayRuntime

log = logging.getLogger(__name__)

_BASE = {
    "run": {"mode": "ray", "batch_env_steps": 3200, "progress": False, "seed": 0},
    "env": {"name": "mpe/simple_spread", "kwargs": {"N": 3, "max_cycles": 25}, "global_state": "concat_obs"},
    "model": {"hidden_sizes": [1024, 1024]},
    "algo": {"name": "mappo"},
    "trainer": {"epochs": 1, "num_minibatches": 1},
    "rollout": {"num_workers": 1, "envs_per_worker": 16, "fragment_length": 25},
    "resources": {"rollout_cpus": 1, "trainer_cpus": 1},
}
_LONG_TAIL_ENV = {
    "name": "wrappers/heavy_tail", "global_state": "concat_obs",
    "kwargs": {"env": "mpe/simple_spread", "env_kwargs": {"N": 3, "max_cycles": 400},
               "min_length": 10, "alpha": 1.2, "max_length": 400},
}


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


WORKLOADS = {
    "simple_spread": _merge(_BASE, {"run": {"batch_env_steps": 16 * 25 * 8}}),
    "long_tail": {**_merge(_BASE, {"run": {"batch_env_steps": 16 * 400 * 8},
                                   "rollout": {"request_unit": "episodes", "fragment_length": 400}}),
                  "env": _LONG_TAIL_ENV},
    "long_tail_4_epochs": {**_merge(_BASE, {"run": {"batch_env_steps": 16 * 400 * 8},
                                            "rollout": {"request_unit": "episodes", "fragment_length": 400},
                                            "trainer": {"epochs": 4}}),
                           "env": _LONG_TAIL_ENV},
}
MODES = {"sync": {"mode": "sync"}, "microbatch": {"mode": "microbatch"}, "stale1": {"mode": "stale", "max_staleness": 1}}


def _run(config: dict, pipeline: dict, iterations: int) -> tuple[list[dict], dict]:
    cfg = config_from_dict(_merge(config, {"pipeline": pipeline}))
    orch = make_orchestrator(cfg, RayRuntime(cfg))
    try:
        orch.step()  # warm-up
        rows = [orch.step() for _ in range(iterations)]
        return rows, copy.deepcopy(orch.timeline)
    finally:
        orch.shutdown()


def summarize(rows: list[dict], timeline: dict, refused: int) -> dict:
    mean = lambda key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    return {
        "iteration_s": mean("perf/iteration_s"), "rollout_busy": mean("perf/rollout_busy"),
        "trainer_busy": mean("perf/trainer_busy"), "train_s": mean("perf/train_s"),
        "sample_s": mean("perf/sample_s"), "env_steps_per_s": mean("env_steps_per_s"),
        "policy_lag_max": max(r["perf/policy_lag_max"] for r in rows),
        "policy_lag_mean": mean("perf/policy_lag_mean"),
        "stale_rows_refused": refused, "iterations": len(rows),
        "timeline": timeline,
    }


def draw_timelines(timelines: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(timelines), 1, figsize=(11, 1.6 * len(timelines) + 0.8), sharex=False)
    for ax, (mode, tl) in zip(np.atleast_1d(axes), timelines.items()):
        t0 = tl["start"]
        for worker, request_id, start, end in tl["rollout"]:
            ax.barh(1, end - start, left=start - t0, height=0.6, color="tab:blue", edgecolor="white")
        for group, spans in tl["train"].items():
            for kind, start, end in spans:
                ax.barh(0, end - start, left=start - t0, height=0.6,
                        color="tab:orange" if kind == "consume" else "tab:red", edgecolor="white")
        sync_start, sync_end = tl["sync"]
        ax.barh(0.5, sync_end - sync_start, left=sync_start - t0, height=0.3, color="tab:green")
        ax.set_yticks([0, 0.5, 1], ["train", "weights", "rollout"])
        ax.set_xlim(0, tl["end"] - t0)
        ax.set_title(f"{mode}: one iteration, {tl['end'] - t0:.2f} s", fontsize=10, loc="left")
    np.atleast_1d(axes)[-1].set_xlabel("seconds since the iteration started (blue: rollout requests; "
                                       "orange: epoch-0 micro-batches; red: later epochs; green: weight sync)")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_pipeline_bench(iterations: int = 4, out: Path | None = None, workloads: list[str] | None = None,
                       timeline_png: Path | None = None, rounds: int = 3) -> dict:
    """Modes are interleaved (sync, microbatch, stale1, sync, ...) over `rounds` rounds of `iterations`
    timed iterations each, so slow phases of a shared machine hit every mode alike."""
    import ray

    out = out or Path("benchmarks/results/pipeline.json")
    timeline_png = timeline_png or Path("docs/pipeline_timeline.png")
    names = workloads or list(WORKLOADS)
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=400 * 1024 * 1024)
    results: dict = {}
    try:
        for name in names:
            modes = {m: p for m, p in MODES.items() if not (name.endswith("epochs") and m == "stale1")}
            collected: dict = {m: ([], None, 0) for m in modes}
            for _ in range(1 if name.endswith("epochs") else rounds):  # the slow one: one round
                for mode, pipeline in modes.items():
                    rows, timeline = _run(WORKLOADS[name], pipeline, iterations)
                    before, _, refused = collected[mode]
                    collected[mode] = (before + rows, timeline, refused + rows[-1]["store/stale_rows_refused"])
            results[name] = {m: summarize(*collected[m]) for m in modes}
            for mode, r in results[name].items():
                log.info("%s / %s: %.2f s per iteration", name, mode, r["iteration_s"])
    finally:
        ray.shutdown()
    primary = results[names[0]]
    draw_timelines({m: r["timeline"] for m, r in primary.items()}, timeline_png,
                   f"workload {names[0]}: rollout pool (1 CPU) and training pool (1 CPU)")
    summary = {
        "iteration_s_sync": primary["sync"]["iteration_s"],
        "iteration_s_microbatch": primary["microbatch"]["iteration_s"],
        "iteration_s_stale1": primary["stale1"]["iteration_s"],
        "speedup_microbatch_vs_sync": primary["sync"]["iteration_s"] / primary["microbatch"]["iteration_s"],
        "speedup_stale1_vs_sync": primary["sync"]["iteration_s"] / primary["stale1"]["iteration_s"],
        "policy_lag_max_microbatch": primary["microbatch"]["policy_lag_max"],
        **{f"rollout_busy_{m}": r["rollout_busy"] for m, r in primary.items()},
        **{f"trainer_busy_{m}": r["trainer_busy"] for m, r in primary.items()},
        "workload": names[0],
        "workload_settings": {n: WORKLOADS[n] for n in names},
        "workloads": {n: {m: {k: v for k, v in r.items() if k != "timeline"} for m, r in modes.items()}
                      for n, modes in results.items()},
        "speedups_microbatch_vs_sync": {n: modes["sync"]["iteration_s"] / modes["microbatch"]["iteration_s"]
                                        for n, modes in results.items()},
        "timeline_png": str(timeline_png),
        "rounds": rounds, "iterations_per_round": iterations,
        "machine": "2 CPU cores (1 rollout pool, 1 training pool), no GPU",
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary
