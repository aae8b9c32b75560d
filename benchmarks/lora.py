"""`flexmarl bench lora`: N full-model agents against N LoRA adapter agents over one base (issue 18).

For each N in `agents` (default 2, 4, 8) and each arm (`full`: every agent its own copy of the base,
trained whole; `lora`: every agent a rank-`rank` LoRA adapter over that base), one fresh child process
(`python -m benchmarks.lora --child ...`) runs `iterations` timed iterations after a warm-up one, so that
each arm's peak resident memory is its own (`ru_maxrss` of the child: the serial runtime runs driver,
engines and trainers in that one process). Same task, batch, seeds and optimizer settings in both arms;
both time-share one trainer slot (`resources.trainer_slots: 1`), so every iteration swaps each agent's
training state in and out.

The task: built-in tasks have two agents (speaker_listener, its skewed variant) or one per recommendation
scenario, so N agents are N/2 independent speaker-listener teams (`SpeakerListenerTeams` below, a
`module:Class` task): every team plays each query at once, agent `speaker_i` / `listener_i` rewarded by its
own team's result, the trajectory's success the teams' mean.

The base: the speaker-listener build's `shared-base` (hidden 128, 2 layers), widened to ~25 M parameters
by giving each MLP `intermediate` neurons instead of 512: the new neurons' gate/up rows random, their
down-projection columns zero, so the widened model computes exactly what the warm-started one did (a
warm start of a 25 M model from scratch does not fit on two CPU cores) while weights, pushes, swaps and
every matmul have the large model's size. `--quick` (or `intermediate: 0`) keeps the tiny base.

Measured per N and arm: peak_rss_gib, step_s (median iteration), push_bytes (bytes of weights handed to
the engines per step: every group's payload times its pool's engines), push_s (median
perf/weight_push_s), swap_s_per_agent (seconds per trainer-slot bind that moved an agent's state),
tokens_per_s (median), success (mean charts/success_rate of the last two iterations), success_first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from flexmarl.llm.tasks.base import Call, Outcome
from flexmarl.llm.tasks.speaker_listener import SpeakerListener

RESULT = Path("benchmarks/results/lora.json")
MODEL_ROOT = Path("runs/llm-models/bench-lora")
INTERMEDIATE = 32768
"""MLP width of the widened base: 2 layers x 3 x 128 x 32768 + the rest = ~25.3 M parameters."""
LORA = {"adapter": "lora", "rank": 8, "alpha": 16.0}
BUILD = {"warm_start_steps": 400, "eval_queries": 64}
"""The speaker-listener build the base comes from (the learning test's: RL visibly improves it)."""

BASE_CONFIG = {
    "run": {"name": "bench-lora", "workload": "llm", "mode": "serial", "seed": 0, "progress": False},
    "llm": {"task": "benchmarks.lora:SpeakerListenerTeams", "backend": "hf", "group_size": 4,
            "queries_per_request": 2, "queries_per_iteration": 4, "concurrent_requests": 2,
            "max_concurrent_calls": 64, "max_new_tokens": 4, "engine_max_batch": 64, "lr": 3e-4,
            "load_balancing": False, "engines_per_agent": 1},
    "pipeline": {"mode": "sync"},
    "rollout": {"num_workers": 1},
    "resources": {"trainer_slots": 1},
}


class SpeakerListenerTeams(SpeakerListener):
    """`teams` independent speaker-listener teams (2 x teams agents) playing every query at once."""

    name = "speaker_listener_teams"

    def __init__(self, format_penalty: float = -1.0, teams: int = 1, **kwargs):
        super().__init__(format_penalty, **kwargs)
        if teams < 1:
            raise ValueError(f"teams must be >= 1, got {teams}")
        self.teams = int(teams)
        self.agents = tuple(f"{role}_{t}" for t in range(self.teams) for role in ("speaker", "listener"))

    async def run(self, query: dict, call: Call) -> Outcome:
        def team_call(t: int) -> Call:
            return lambda agent, prompt: call(f"{agent}_{t}", prompt)

        outcomes = await asyncio.gather(*(SpeakerListener.run(self, query, team_call(t)) for t in range(self.teams)))
        rewards = {f"{a}_{t}": r for t, o in enumerate(outcomes) for a, r in o.rewards.items()}
        errors = {f"{a}_{t}": e for t, o in enumerate(outcomes) for a, e in o.format_errors.items()}
        return Outcome(rewards=rewards, format_errors=errors, success=float(np.mean([o.success for o in outcomes])))

    def sft_examples(self, rng: np.random.Generator, n: int) -> dict[str, list[tuple[str, str]]]:
        pair = super().sft_examples(rng, n)
        return {f"{role}_{t}": pair[role] for t in range(self.teams) for role in ("speaker", "listener")}


# -- the base ------------------------------------------------------------------------------------
def widen_mlp(src: Path, dst: Path, intermediate: int, seed: int = 0) -> Path:
    """`src` (a Qwen2/Llama checkpoint) with every MLP widened to `intermediate` neurons, computing the
    same function: new gate/up rows drawn as the model's init draws them, new down columns zero."""
    import torch
    from transformers import AutoTokenizer

    from flexmarl.llm.models import load_causal_lm, save_model

    if (dst / "widened.json").exists() and json.loads((dst / "widened.json").read_text()) == {
            "src": str(src), "intermediate": intermediate, "seed": seed}:
        return dst
    model = load_causal_lm(src)
    cfg = model.config
    old = cfg.intermediate_size
    if intermediate <= old:
        raise ValueError(f"intermediate {intermediate} must exceed the model's {old}")
    generator = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for name in list(state):
        if name.endswith(("gate_proj.weight", "up_proj.weight")):
            extra = torch.randn(intermediate - old, cfg.hidden_size, generator=generator) * cfg.initializer_range
            state[name] = torch.cat([state[name], extra])
        elif name.endswith("down_proj.weight"):
            state[name] = torch.cat([state[name], torch.zeros(cfg.hidden_size, intermediate - old)], dim=1)
    cfg.intermediate_size = intermediate
    wide = type(model)(cfg).to(torch.float32)
    wide.load_state_dict(state)
    save_model(wide, AutoTokenizer.from_pretrained(src), dst)
    (dst / "widened.json").write_text(json.dumps({"src": str(src), "intermediate": intermediate, "seed": seed}))
    return dst


def prepare_base(model_dir: Path | None, intermediate: int) -> tuple[Path, dict]:
    """The base checkpoint and what it is: the speaker-listener build's shared-base (built into
    `model_dir` if missing), widened when `intermediate` > 0."""
    from flexmarl.llm.build import build_task_models
    from flexmarl.llm.groups import SHARED_BASE

    model_dir = Path(model_dir or MODEL_ROOT / "speaker_listener")
    base = model_dir / SHARED_BASE
    if not (base / "config.json").exists():  # a given folder's build is used as it is
        build_task_models("speaker_listener", model_dir, **BUILD)
    old = json.loads((base / "config.json").read_text())["intermediate_size"]
    if intermediate:
        base = widen_mlp(base, model_dir.parent / f"shared-base-mlp{intermediate}", intermediate)
    from safetensors import safe_open

    with safe_open(str(base / "model.safetensors"), "pt") as f:
        params = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    config = json.loads((base / "config.json").read_text())
    what = {"path": str(base), "parameters": params, "hidden": config["hidden_size"],
            "layers": config["num_hidden_layers"], "intermediate": config["intermediate_size"],
            "built_by": "flexmarl.llm.build.build_task_models('speaker_listener') shared-base" + (
                f", MLP widened {old}->{intermediate} function-preservingly (benchmarks.lora.widen_mlp)"
                if intermediate else "")}
    return base, what


def arm_config(arm: str, n: int, base: Path, iterations: int, overrides: list[str] | None = None):
    from flexmarl.config import config_from_dict

    if n < 2 or n % 2:
        raise ValueError(f"agents must be even and >= 2 (speaker-listener teams), got {n}")
    task = SpeakerListenerTeams(teams=n // 2)
    llm = dict(BASE_CONFIG["llm"], task_kwargs={"teams": n // 2}, model_dir=str(base.parent))
    if arm == "full":
        llm["models"] = {a: str(base) for a in task.agents}
    else:
        llm.update(models={a: dict(LORA) for a in task.agents}, base_model=str(base))
    raw = {**BASE_CONFIG, "llm": llm, "run": {**BASE_CONFIG["run"], "name": f"bench-lora-{arm}-{n}"}}
    return config_from_dict(raw, overrides or [])


def _nbytes(obj) -> int:
    if hasattr(obj, "element_size") and hasattr(obj, "nelement"):
        return obj.element_size() * obj.nelement()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return getattr(obj, "nbytes", 0)


# -- one arm, in its own process -----------------------------------------------------------------
def run_arm(arm: str, n: int, base: Path, iterations: int, overrides: list[str] | None = None) -> dict:
    """Build the orchestrator, run 1 warm-up + `iterations` iterations; the numbers of this arm."""
    import torch

    from orchestrator.core import make_orchestrator
    from orchestrator.runtime import SerialRuntime

    torch.set_num_threads(1)
    cfg = arm_config(arm, n, base, iterations, overrides)
    orch = make_orchestrator(cfg, SerialRuntime())
    fleet = orch.workload.fleet
    pushed: list[int] = []
    load = fleet.load

    def counting_load(weights: dict, version: int) -> list:
        pushed.append(sum(_nbytes(orch.runtime.get(weights[g.name])) * len(fleet.engines[g.pool]) for g in fleet.groups))
        return load(weights, version)

    fleet.load = counting_load
    history = []
    try:
        for _ in range(iterations + 1):
            history.append({k: v for k, v in orch.step().items() if isinstance(v, (int, float))})
    finally:
        orch.shutdown()
    timed = history[1:]
    swaps = sum(h.get("perf/trainer_swaps", 0) for h in timed)
    return {
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB on Linux
        "step_s": float(np.median([h["perf/iteration_s"] for h in timed])),
        "push_bytes": int(np.median(pushed[1:] or pushed)),
        "push_s": float(np.median([h["perf/weight_push_s"] for h in timed])),
        "swap_s_per_agent": sum(h.get("perf/swap_s", 0.0) for h in timed) / swaps if swaps else 0.0,
        "swaps_per_step": swaps / len(timed),
        "tokens_per_s": float(np.median([h["perf/tokens_per_s"] for h in timed])),
        "success": float(np.mean([h["charts/success_rate"] for h in history[-2:]])),
        "success_first": history[0]["charts/success_rate"],
        "history": [{k: h[k] for k in ("perf/iteration_s", "perf/weight_push_s", "perf/tokens_per_s",
                                      "charts/success_rate", "charts/reward_mean") if k in h} for h in history],
    }


def _child(arm: str, n: int, base: Path, iterations: int, overrides: list[str], log) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.lora", "--child", arm, "--n", str(n), "--base", str(base),
           "--iterations", str(iterations), *(x for o in overrides for x in ("--set", o))]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    if done.returncode:
        raise RuntimeError(f"bench lora: {arm} arm with {n} agents failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if log:
        log(f"{arm} N={n}: {time.perf_counter() - started:.0f} s, step {result['step_s']:.2f} s, "
            f"peak {result['peak_rss_gib']:.2f} GiB, push {result['push_bytes']} B, success {result['success']:.2f}")
    return result


def run_lora_bench(agents=(2, 4, 8), iterations: int = 4, out: Path | None = None, quick: bool = False,
                   model_dir: Path | None = None, overrides: list[str] | None = None, log=print) -> dict:
    """Both arms for every N, each in its own process; writes `out` (default benchmarks/results/lora.json)."""
    overrides = list(overrides or [])
    base, base_info = prepare_base(model_dir, 0 if quick else INTERMEDIATE)
    if quick:
        overrides = ["llm.group_size=2", "llm.queries_per_iteration=2", "llm.queries_per_request=1",
                     "llm.max_new_tokens=3", *overrides]
    per_n: dict[str, dict] = {}
    history: dict[str, dict] = {}
    out = Path(out or RESULT)
    out.parent.mkdir(parents=True, exist_ok=True)
    for n in agents:
        row: dict = {}
        for arm in ("full", "lora"):  # the full arm first: a LoRA arm cannot profit from a warmer cache
            result = _child(arm, n, base, iterations, overrides, log)
            history[f"{arm}_{n}"] = result.pop("history")
            row.update({f"{k}_{arm}": v for k, v in result.items()})
        row["peak_rss_ratio_lora_over_full"] = row["peak_rss_gib_lora"] / row["peak_rss_gib_full"]
        row["push_bytes_ratio_lora_over_full"] = row["push_bytes_lora"] / row["push_bytes_full"]
        row["step_s_ratio_lora_over_full"] = row["step_s_lora"] / row["step_s_full"]
        row["success_gap_full_minus_lora"] = row["success_full"] - row["success_lora"]
        per_n[str(n)] = row
        result = {"agents": per_n, "targets": targets(per_n), "base": base_info,
                  "settings": {"iterations_timed": iterations, "warmup_iterations": 1, "quick": quick,
                               "config": arm_config("lora", agents[0], base, iterations, overrides).to_dict()["llm"],
                               "overrides": overrides, "lora": LORA, "runtime": "serial (one process per arm and N)",
                               "trainer_slots": 1,
                               "task": "N/2 independent speaker-listener teams per query (SpeakerListenerTeams)",
                               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                           "load_avg_at_end": os.getloadavg()},
                               "date": time.strftime("%Y-%m-%d")},
                  "history": history}
        out.write_text(json.dumps(result, indent=1))  # after every N: an interrupted run keeps what it measured
    return result


def targets(per_n: dict) -> dict:
    """The issue's targets, for the N measured: memory and push bytes at the largest N (8 in a full
    run), step time at the smallest, learning parity at every N."""
    big, small = per_n[max(per_n, key=int)], per_n[min(per_n, key=int)]
    return {
        "at_agents": {"memory_and_push": int(max(per_n, key=int)), "step_time": int(min(per_n, key=int))},
        "peak_rss_lora_le_third_of_full": big["peak_rss_ratio_lora_over_full"] <= 1 / 3,
        "push_bytes_lora_le_5pct_of_full": big["push_bytes_ratio_lora_over_full"] <= 0.05,
        "step_s_lora_le_full": small["step_s_ratio_lora_over_full"] <= 1.0,
        "success_within_0.05": {n: abs(r["success_gap_full_minus_lora"]) <= 0.05 for n, r in per_n.items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["full", "lora"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--agents", default="2,4,8")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model-dir")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_arm(args.child, args.n, Path(args.base), args.iterations, args.set)))
        return
    result = run_lora_bench([int(x) for x in args.agents.split(",")], args.iterations, args.out and Path(args.out),
                            args.quick, args.model_dir and Path(args.model_dir), args.set)
    print(json.dumps({k: result[k] for k in ("agents", "targets", "base")}, indent=1))


if __name__ == "__main__":
    main()
