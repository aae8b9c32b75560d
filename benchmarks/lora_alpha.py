"""`flexmarl bench lora-alpha`: which LoRA alpha LoRA agents should get (issue 18): alpha = c * sqrt(rank)
(`alpha: auto`) against the common alpha = rank, alpha = 2 * rank and the fixed default 16.

Protocol, fixed before the first run (docs/llm.md#lora-alpha):
- task and model: the built-in speaker-listener task, both agents LoRA adapters (attention projections)
  over the speaker-listener build's shared base (the learning test's build, `benchmarks.lora.BUILD`);
- settings: the learning test's (16 queries x 16 trajectories per iteration, 6 new tokens, lr 3e-4, one
  minibatch, sync pipeline, HF engine, serial), `ITERATIONS` GRPO iterations per run;
- cells: ranks `RANKS` x alpha rules `RULES` x seeds `SEEDS` (run.seed: warm start of the adapters, sampling);
- metric: `final_reward`, the mean of charts/reward_mean over the last 10 iterations (`first_reward`: the
  first 5, beside it);
- decision: auto's coefficient c is the `c*` rule with the highest final_reward averaged over ranks and
  seeds; the default alpha becomes `auto` if that rule's average is above those of `rank`, `2rank` and
  `16`, else the best of those stays the default.
Resumable: each finished cell goes into the result file at once and is skipped when the bench runs again.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

RESULT = Path("benchmarks/results/lora_alpha.json")
RANKS = (2, 8, 32)
RULES = ("rank", "2rank", "16", "c2", "c8", "c32")
SEEDS = (0, 1)
ITERATIONS = 40
SETTINGS = {"task": "speaker_listener", "backend": "hf", "group_size": 16, "queries_per_request": 1,
            "queries_per_iteration": 16, "max_new_tokens": 6, "lr": 3e-4, "concurrent_requests": 1,
            "engine_max_batch": 64}


def alpha_of(rule: str, rank: int) -> float:
    """The alpha a rule gives at `rank`: 'rank', '2rank', a number, or 'c<k>' = k * sqrt(rank)."""
    if rule == "rank":
        return float(rank)
    if rule == "2rank":
        return 2.0 * rank
    if rule.startswith("c"):
        return float(rule[1:]) * math.sqrt(rank)
    return float(rule)


def cell_config(base: Path, rank: int, rule: str, seed: int):
    from flexmarl.config import config_from_dict

    adapter = {"adapter": "lora", "rank": rank, "alpha": alpha_of(rule, rank)}
    return config_from_dict({
        "run": {"name": f"lora-alpha-r{rank}-{rule}-s{seed}", "workload": "llm", "mode": "serial", "seed": seed,
                "progress": False},
        "llm": {**SETTINGS, "models": {"speaker": adapter, "listener": adapter}, "base_model": str(base),
                "model_dir": str(base.parent)},
        "trainer": {"num_minibatches": 1},
        "pipeline": {"mode": "sync"},
    })


def run_cell(base: Path, rank: int, rule: str, seed: int, iterations: int) -> dict:
    from orchestrator.core import make_orchestrator
    from orchestrator.runtime import SerialRuntime

    orch = make_orchestrator(cell_config(base, rank, rule, seed), SerialRuntime())
    start = time.perf_counter()
    try:
        rewards = [float(orch.step()["charts/reward_mean"]) for _ in range(iterations)]
    finally:
        orch.shutdown()
    return {"rank": rank, "rule": rule, "alpha": alpha_of(rule, rank), "seed": seed, "rewards": rewards,
            "first_reward": float(np.mean(rewards[:5])), "final_reward": float(np.mean(rewards[-10:])),
            "seconds": round(time.perf_counter() - start, 1)}


def summarise(cells: list[dict], grid: int = len(RANKS) * len(RULES) * len(SEEDS)) -> dict:
    """Per rule: final_reward averaged over ranks and seeds (and per rank); once all `grid` cells are in,
    the decision of the protocol."""
    by_rule = {rule: [c for c in cells if c["rule"] == rule] for rule in dict.fromkeys(c["rule"] for c in cells)}
    table = {rule: {"mean_final_reward": float(np.mean([c["final_reward"] for c in cs])),
                    "per_rank": {str(r): float(np.mean([c["final_reward"] for c in cs if c["rank"] == r]))
                                 for r in sorted({c["rank"] for c in cs})}}
             for rule, cs in by_rule.items() if cs}
    if len(cells) < grid:
        return {"rules": table, "complete": False}
    best_c = max((r for r in table if r.startswith("c")), key=lambda r: table[r]["mean_final_reward"])
    others = {r: table[r]["mean_final_reward"] for r in table if not r.startswith("c")}
    default = "auto" if table[best_c]["mean_final_reward"] > max(others.values(), default=-math.inf) else max(
        others, key=others.get)
    return {"rules": table, "complete": True, "auto_coefficient": float(best_c[1:]), "default_alpha": default}


def run_alpha_bench(out: Path | None = None, iterations: int = ITERATIONS, log=print, model_dir: Path | None = None,
                    ranks=RANKS, rules=RULES, seeds=SEEDS) -> dict:
    """Run the missing cells (`model_dir`: a speaker-listener build to use instead of the bench's own)."""
    from benchmarks.lora import prepare_base

    out = Path(out or RESULT)
    base, what = prepare_base(model_dir, 0)
    result = json.loads(out.read_text()) if out.exists() else {}
    if result.get("iterations", iterations) != iterations:
        raise ValueError(f"{out} holds runs of {result['iterations']} iterations; pass --iterations "
                         f"{result['iterations']} or another --out")
    result.update(base=what, settings=SETTINGS, iterations=iterations, ranks=list(ranks), rules=list(rules),
                  seeds=list(seeds), protocol=__doc__.split("Protocol, fixed before the first run")[1].strip())
    cells = result.setdefault("cells", [])
    for seed in seeds:
        for rank in ranks:
            for rule in rules:
                if any((c["rank"], c["rule"], c["seed"]) == (rank, rule, seed) for c in cells):
                    continue
                cells.append(run_cell(base, rank, rule, seed, iterations))
                c = cells[-1]
                log(f"rank {rank} alpha {c['alpha']:g} ({rule}) seed {seed}: reward {c['first_reward']:.3f} -> "
                    f"{c['final_reward']:.3f} ({c['seconds']:.0f} s)")
                result["summary"] = summarise(cells, len(ranks) * len(rules) * len(seeds))
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(result, indent=1) + "\n")
    return result
