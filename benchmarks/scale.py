"""`flexmarl bench scale`: hierarchical load balancing and training-state swapping, measured twice.

1. The discrete-event simulator at 1,000 engine instances (`benchmarks/scale_sim.py`, the same
   policy code as the real engines): makespan / lower bound for ours, round-robin and static equal
   allocation (reused from benchmarks/results/scale_sim.json when its settings are the defaults).
2. Real engines here, on the skewed workload (`speaker_listener_skewed`: the listener is asked
   `listener_calls` times per trajectory, the speaker once): one orchestrator, one set of engines and
   trainers, iterations alternating between three set-ups, so all are timed on the same machine state:
   - full: microbatch pipeline + inter-agent balancing (engines follow the last iteration's calls),
   - no_load_balancing: microbatch pipeline, engines split equally between the agents,
   - no_pipeline: synchronous pipeline (rollout, then training) + balancing.
   Step time is the iteration's wall time; moving instances between iterations (`perf/rebalance_s`,
   an in-place weight load) is reported beside it. Engines' outstanding calls are sampled during the
   iterations for the load-over-time figure.
3. Swapping: seconds per MiB of a device -> host -> device round trip against a plain copy
   (`measure_swap`), and a short run with both model groups on one trainer slot
   (`resources.trainer_slots: 1`): swaps per iteration and the share of swap time hidden behind rollout.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from flexmarl.config import config_from_dict

log = logging.getLogger(__name__)

BENCH_CONFIG = {
    "run": {"name": "bench-scale", "workload": "llm", "mode": "ray", "seed": 0, "progress": False},
    "llm": {"task": "speaker_listener_skewed", "task_kwargs": {"listener_calls": 8},
            "model_dir": "runs/llm-models/speaker_listener", "backend": "hf", "engines_per_agent": 2,
            "group_size": 4, "queries_per_request": 1, "queries_per_iteration": 8, "concurrent_requests": 4,
            "max_concurrent_calls": 32, "max_new_tokens": 4, "engine_max_batch": 4, "loss": "grpo", "lr": 3e-4},
    "pipeline": {"mode": "microbatch"},
    "rollout": {"num_workers": 1},
    "resources": {"rollout_cpus": 1, "trainer_cpus": 1},
}
MODES = {"full": ("microbatch", True), "no_load_balancing": ("microbatch", False), "no_pipeline": ("sync", True)}
"""set-up -> (pipeline mode, inter-agent balancing)."""


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


class LoadSampler:
    """Samples every engine's outstanding calls (in flight + waiting) from a thread while an iteration
    runs: per model group, outstanding calls per instance over time."""

    def __init__(self, orch, every_s: float = 0.1):
        self.orch, self.every_s = orch, every_s
        self.samples: list[dict] = []
        self._stop = threading.Event()

    def __enter__(self):
        self._engines = {g: list(e) for g, e in self.orch.workload.engines.items()}
        self._start = time.time()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        rt = self.orch.runtime
        while not self._stop.wait(self.every_s):
            refs = {g: [rt.call(e, "load") for e in es] for g, es in self._engines.items()}
            per_group = {}
            for g, group_refs in refs.items():
                loads = rt.get(group_refs)
                outstanding = [x["in_flight"] + x["waiting"] for x in loads]
                per_group[g] = {"outstanding": int(sum(outstanding)), "instances": len(outstanding),
                                "per_instance": float(np.mean(outstanding))}
            self.samples.append({"t": time.time() - self._start, "groups": per_group})


def simulator_keys(results_dir: Path) -> dict:
    """The simulator's makespan ratios at its default settings (1,000 instances)."""
    from benchmarks.scale_sim import ScaleSimSettings, run_scale_simulation

    saved = results_dir / "scale_sim.json"
    if saved.exists() and json.loads(saved.read_text()).get("settings") == asdict(ScaleSimSettings()):
        sim = json.loads(saved.read_text())
        source = str(saved)
    else:
        sim = run_scale_simulation(results_dir / "scale_sim.json")
        source = "run now"
    keys = ("lb_makespan_over_lower_bound", "lb_makespan_round_robin", "lb_makespan_static",
            "lb_makespan_without_rebalancing")
    return {**{k: sim[k] for k in keys}, "simulator_settings": sim["settings"], "simulator_source": source}


def real_engine_ablation(cfg, rounds: int) -> dict:
    from orchestrator.core import make_orchestrator
    from orchestrator.runtime import RayRuntime

    # one config per set-up; balancing off in all: the moves are made here, before each iteration
    arms = {mode: config_from_dict(cfg.to_dict(), [f"pipeline.mode={pipeline}", "llm.load_balancing=false"])
            for mode, (pipeline, _) in MODES.items()}
    orch = make_orchestrator(cfg, RayRuntime(cfg))
    history, traces = [], {}
    equal = {g.name: cfg.llm.engines_per_agent for g in orch.groups}
    loads = None
    try:
        for round_ in range(rounds + 1):  # round 0 warms every set-up up
            for mode, (_, balancing) in MODES.items():
                start = time.time()
                if balancing:  # engines follow the calls of the last iteration (any set-up: same workload)
                    moved = orch.workload.fleet.rebalance(loads) if loads else []
                else:
                    moved = orch.workload.fleet.apply_allocation(equal)
                move_s = time.time() - start
                orch.use_config(arms[mode])
                allocation = {g: len(e) for g, e in orch.workload.engines.items()}
                with LoadSampler(orch) as sampler:
                    metrics = orch.step()
                loads = orch.workload.pool_loads(metrics)
                metrics.update({"mode": mode, "warmup": round_ == 0, "move_s": move_s, "moves": len(moved),
                                "allocation": allocation})
                history.append(metrics)
                traces[mode] = {"allocation": allocation, "samples": sampler.samples}
                log.info("%s round %d: %.2f s (engines %s, moved %d in %.2f s)", mode, round_,
                         metrics["perf/iteration_s"], allocation, len(moved), move_s)
    finally:
        orch.shutdown()
    timed = {m: [h for h in history if h["mode"] == m and not h["warmup"]] for m in MODES}
    result = {f"step_s_{m}": _median([h["perf/iteration_s"] for h in timed[m]]) for m in MODES}
    for m in MODES:
        result[f"rollout_s_{m}"] = _median([h["perf/rollout_s"] for h in timed[m]])
        result[f"allocation_{m}"] = timed[m][-1]["allocation"]
    result["rebalance_s"] = _median([h["move_s"] for h in history if h["moves"]])
    result["calls_per_iteration"] = {k.split("/")[-1]: v for k, v in history[-1].items() if k.startswith("llm/load/")}
    result["history"] = [{k: v for k, v in h.items() if isinstance(v, (int, float, str, bool, dict))} for h in history]
    return result, traces


def measure_swap(nbytes_list: list[int], repeats: int = 3) -> dict:
    """Seconds per MiB (median over repeats, total over sizes) of a round trip device -> host -> device,
    of device -> remote -> device (when Ray is initialized), and of one torch clone of the same bytes, on
    this machine's accelerator when it has one, else the CPU."""
    import ray
    import torch

    from flexmarl.state_swap import swap_in, swap_out

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def timed(work) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    totals = {"swap": 0.0, "remote_swap": 0.0, "memcpy": 0.0}
    sizes = []
    for nbytes in nbytes_list:
        module = torch.nn.Module()
        module.weight = torch.nn.Parameter(torch.randn(max(nbytes // 4, 1), device=device))
        round_trip = {where: (lambda where=where: swap_in(swap_out(module, None, None, where), module, None))
                      for where in ("host", "remote")}
        times = {key: [] for key in totals}
        for _ in range(repeats):
            times["memcpy"].append(timed(lambda: module.weight.detach().clone()))
            times["swap"].append(timed(round_trip["host"]))
            if ray.is_initialized():
                times["remote_swap"].append(timed(round_trip["remote"]))
        medians = {key: float(np.median(t)) if t else 0.0 for key, t in times.items()}
        for key in totals:
            totals[key] += medians[key]
        sizes.append({"nbytes": nbytes, **{f"{key}_s": value for key, value in medians.items()}})
    mib = sum(nbytes_list) / 2**20
    result = {f"{key}_s_per_mb": value / mib for key, value in totals.items()}
    if not ray.is_initialized():
        result["remote_swap_s_per_mb"] = None
    return {**result, "device": str(device), "sizes": sizes}


def swap_measurements(cfg, iterations: int = 3) -> dict:
    """measure_swap at the tiny trainers' state size and larger, and a run on one shared trainer slot."""
    import ray

    from orchestrator.core import make_orchestrator
    from orchestrator.runtime import RayRuntime

    # the micro-batch pipeline: swaps then happen while rollout still runs, and can hide behind it
    base = cfg.to_dict()
    slot_cfg = config_from_dict({**base, "resources": {**base["resources"], "trainer_slots": 1},
                                 "llm": {**base["llm"], "load_balancing": False},
                                 "pipeline": {**base["pipeline"], "mode": "microbatch"}})
    orch = make_orchestrator(slot_cfg, RayRuntime(slot_cfg))
    try:
        history = [orch.step() for _ in range(iterations + 1)][1:]
        swap = measure_swap([4 << 20, 16 << 20, 64 << 20], repeats=3)  # Ray is up: remote swaps too
    finally:
        orch.shutdown()
    if ray.is_initialized():
        ray.shutdown()
    return {
        "swap_s_per_mb": swap["swap_s_per_mb"], "memcpy_s_per_mb": swap["memcpy_s_per_mb"],
        "remote_swap_s_per_mb": swap["remote_swap_s_per_mb"], "swap_device": swap["device"], "swap_sizes": swap["sizes"],
        "slots_trainer_swaps_per_iteration": _median([h["perf/trainer_swaps"] for h in history]),
        "slots_swap_s_per_iteration": _median([h["perf/swap_s"] for h in history]),
        "slots_swap_hidden_share": _median([h["perf/swap_hidden_share"] for h in history]),
        "slots_step_s": _median([h["perf/iteration_s"] for h in history]),
    }


def plot_load(traces: dict, sim_trace: Path, out: Path) -> None:
    """Per-agent outstanding calls per engine instance over one iteration, with and without balancing
    (real engines, top), and over a simulated step (bottom, scale_sim_trace.json)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim = json.loads(sim_trace.read_text()) if sim_trace.exists() else None
    fig, axes = plt.subplots(2 if sim else 1, 2, figsize=(11, 7 if sim else 3.6), squeeze=False)
    for ax, mode in zip(axes[0], ("full", "no_load_balancing")):
        trace = traces[mode]
        for group in trace["allocation"]:
            t = [s["t"] for s in trace["samples"]]
            ax.plot(t, [s["groups"][group]["per_instance"] for s in trace["samples"]],
                    label=f"{group} ({trace['allocation'][group]} engines)")
        ax.set_title(f"real engines, skewed workload: {'balanced' if mode == 'full' else 'equal split'}")
        ax.set_xlabel("seconds into the iteration")
        ax.set_ylabel("outstanding calls per instance")
        ax.legend()
    if sim:
        for ax, policy in zip(axes[1], ("ours", "static")):
            trace = sim[policy]["trace"]
            for agent in trace[0]["agents"]:
                ax.plot([p["t"] for p in trace],
                        [p["agents"][agent]["outstanding_calls"] / max(p["agents"][agent]["instances"], 1) for p in trace],
                        label=f"agent {agent}")
            ax.set_title(f"simulator, {sim['settings']['instances']} instances: "
                         f"{'balanced' if policy == 'ours' else 'static equal split'} "
                         f"(makespan {sim[policy]['makespan_s']:.0f} s)")
            ax.set_xlabel("simulated seconds")
            ax.set_ylabel("outstanding calls per instance")
            ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def run_scale_bench(rounds: int = 3, out: Path | None = None, overrides: list[str] | None = None) -> dict:
    out = out or Path("benchmarks/results/scale.json")
    cfg = config_from_dict(BENCH_CONFIG, overrides)
    started = time.time()
    result = simulator_keys(out.parent)
    ablation, traces = real_engine_ablation(cfg, rounds)
    result.update({k: v for k, v in ablation.items() if k != "history"})
    result["speedup_load_balancing"] = result["step_s_no_load_balancing"] / result["step_s_full"]
    result["speedup_pipeline"] = result["step_s_no_pipeline"] / result["step_s_full"]
    result.update(swap_measurements(cfg))
    figure = out.parent / "scale_load.png"
    plot_load(traces, out.parent / "scale_sim_trace.json", figure)
    result["load_figure"] = str(figure)
    result["settings"] = {
        "config": cfg.to_dict()["llm"], "timed_rounds_per_setup": rounds, "setups": {m: list(v) for m, v in MODES.items()},
        "schedule": "alternating full / no_load_balancing / no_pipeline", "bench_s": round(time.time() - started, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
    }
    result["history"] = ablation["history"]
    result["load_traces"] = traces
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result
