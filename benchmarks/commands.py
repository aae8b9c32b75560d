"""What `flexmarl bench WHAT` runs: one function per benchmark, taking the command's options and returning
the summary the command prints (bulky entries such as histories and settings stay in the result file only).

orchestrator/cli.py parses the command line and calls these; it is the only importer of `benchmarks`
outside this package (tests/test_layering.py). Results go to benchmarks/results/ unless `out` says otherwise.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.aggregators import run_aggregator_bench
from benchmarks.llm import run_llm_bench
from benchmarks.lora import run_lora_bench
from benchmarks.lora_alpha import ITERATIONS as ALPHA_ITERATIONS, run_alpha_bench
from benchmarks.pipeline import run_pipeline_bench
from benchmarks.scale import run_scale_bench
from benchmarks.suite import SuiteError, load_suite  # noqa: F401 (SuiteError: for the CLI)
from benchmarks.throughput import run_throughput_bench
from benchmarks.vs_benchmarl import MissingSetupError, run_vs_benchmarl  # noqa: F401 (the error: for the CLI)

RESULTS_DIR = Path("benchmarks/results")
SUITE_RUNS_DIR = Path("runs/suites")


def _without(result: dict, *keys: str) -> dict:
    return {k: v for k, v in result.items() if k not in keys}


def throughput(duration_s: float, out: Path | None = None) -> dict:
    return _without(run_throughput_bench(duration_s=duration_s, out=out), "settings")


def pipeline(iterations: int, out: Path | None = None) -> dict:
    return {k: v for k, v in run_pipeline_bench(iterations=iterations, out=out).items() if not k.startswith("workload")}


def aggregators(out: Path | None = None) -> dict:
    return _without(run_aggregator_bench(out=out), "settings")


def llm(iterations: int, out: Path | None = None, overrides: list[str] | None = None) -> dict:
    return _without(run_llm_bench(iterations=iterations, out=out, overrides=overrides), "settings", "history")


def lora(agents: list[int] | None, iterations: int, quick: bool = False, out: Path | None = None,
         overrides: list[str] | None = None) -> dict:
    """Full-model vs LoRA agents for N in `agents` (default 2, 4, 8): memory, step, push, swap, learning."""
    result = run_lora_bench(agents or (2, 4, 8), iterations, out=out, quick=quick, overrides=overrides)
    return _without(result, "settings", "history")


def lora_alpha(iterations: int | None, out: Path | None = None) -> dict:
    """LoRA alpha = c * sqrt(rank) against alpha = rank, 2 * rank and 16 on speaker-listener (resumable)."""
    result = run_alpha_bench(out=out, iterations=iterations or ALPHA_ITERATIONS)
    return {"summary": result["summary"], "cells": len(result["cells"])}


def benchmarl(seeds: list[int] | None, out: Path | None = None) -> dict:
    """Our MAPPO vs BenchMARL's on simple_spread, each seed side by side (needs `make benchmarl`)."""
    return run_vs_benchmarl(seeds or [0, 1], out=out)


def scale(rounds: int, out: Path | None = None) -> dict:
    return _without(run_scale_bench(rounds=rounds, out=out),
                    "settings", "history", "load_traces", "simulator_settings", "swap_sizes")


def suite(name: str, out: Path | None = None, runs_dir: Path | None = None, budget: int | None = None,
          seeds: list[int] | None = None, tasks: list[str] | None = None, algorithms: list[str] | None = None,
          mode: str | None = None, rows: list[str] | None = None, report_only: bool = False) -> tuple[dict, Path]:
    """A built-in suite (configs/suites/<name>.yaml) or a suite YAML: its runs (resumed where an earlier
    call stopped) and report; returns (summary, report directory). `budget` replaces the suite's env-step
    budget, the others select a subset; `rows`: the recsys suite's row families to re-run."""
    # Imported here: the suites' statistics (rliable) load numba's llvmlite, and vLLM's CPU start-up then fails
    # on llvmlite's objects while scanning every loaded module (`bench llm` starts a vLLM engine in this process).
    from benchmarks.recsys import run_recsys_suite
    from benchmarks.suite_run import run_suite

    loaded = load_suite(name)
    if budget:
        loaded = loaded.with_budget(budget)
    output = out or RESULTS_DIR / loaded.name
    runs_dir = runs_dir or SUITE_RUNS_DIR / loaded.name
    select = {"mode": mode, "tasks": tasks, "algorithms": algorithms, "seeds": seeds, "report_only": report_only}
    if loaded.kind == "recsys":
        return run_recsys_suite(loaded, runs_dir, output, rows=rows, **select), output
    return run_suite(loaded, runs_dir, output, **select), output
