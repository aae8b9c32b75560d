"""Running a suite: every (task, algorithm, seed) trained (resumed where it stopped), the final evaluations,
the random rows, then the report (definitions in benchmarks/suite.py, report in benchmarks/suite_report.py).

A finished run's small files (config, metrics, evaluations: no checkpoints) are archived beside the report
(`<output>/archive/<task>/<algorithm>/seed<N>/`, committed with the results), and a run directory that lacks a
finished run is restored from there: a suite spanning several machines or sessions continues where the
committed results stopped, and every run's raw numbers stay with the report."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from benchmarks.suite import (FINAL_EVAL, FINAL_EVAL_SEED, Suite, SuiteError, is_complete, plan_runs, run_config,
                              run_directory)
from benchmarks.suite_report import write_report
from flexmarl.config import Config
from orchestrator.run_dir import latest_checkpoint, save_run_config
from orchestrator.train import evaluate_checkpoint, random_policy_baseline, train


def run_suite(suite: Suite, runs_dir: Path, output: Path, mode: str | None = None, tasks=None,
              algorithms=None, seeds=None, report_only: bool = False) -> dict:
    tasks = tasks or list(suite.tasks)
    algorithms = algorithms or list(suite.algorithms)
    for name, known, kind in ((tasks, suite.tasks, "task"), (algorithms, suite.algorithms, "algorithm")):
        unknown = [n for n in name if n not in known]
        if unknown:
            raise SuiteError(f"suite {suite.path}: unknown {kind} {unknown[0]!r}; defined: {', '.join(known)}")
    plan = plan_runs(suite, tasks, algorithms, seeds)
    configs = {key: run_config(suite, *key, runs_dir, mode) for key in plan}  # validate everything first
    if not report_only:
        for i, key in enumerate(plan, 1):
            cfg, run_dir = configs[key], run_directory(runs_dir, *key)
            label = f"[{i}/{len(plan)}] {' / '.join(map(str, key[:2]))} / seed {key[2]}"
            archive = run_directory(output / "archive", *key)
            if not is_complete(run_dir, cfg) and is_complete(archive, cfg):
                _copy_run_files(archive, run_dir)
                print(f"{label}: restored from {archive}", flush=True)
            if is_complete(run_dir, cfg):
                print(f"{label}: done already, skipped", flush=True)
            else:
                run_dir.mkdir(parents=True, exist_ok=True)
                save_run_config(run_dir, cfg)
                checkpoint = latest_checkpoint(run_dir)
                print(f"{label}: {'resuming from ' + checkpoint.name if checkpoint else 'starting'} "
                      f"({cfg.run.iterations} iterations)", flush=True)
                start = time.perf_counter()
                train(cfg, run_dir, resume=True)
                print(f"{label}: trained in {time.perf_counter() - start:.0f} s", flush=True)
            if final_evaluation(suite, run_dir, cfg) is not None or not suite.final_eval_episodes:
                _copy_run_files(run_dir, archive)
        if suite.random_baseline:
            for task in tasks:
                archive = output / "archive" / task / "random"
                if (archive / FINAL_EVAL).exists() and not (runs_dir / task / "random" / FINAL_EVAL).exists():
                    _copy_run_files(archive, runs_dir / task / "random")
                random_baseline(suite, runs_dir, task, configs[next(k for k in plan if k[0] == task)])
                _copy_run_files(runs_dir / task / "random", archive)
    return write_report(suite, runs_dir, output, tasks, algorithms, seeds, configs)


def final_evaluation(suite: Suite, run_dir: Path, cfg: Config) -> dict | None:
    """The final checkpoint on the suite's final episodes (cached in the run directory), once it is complete."""
    if not suite.final_eval_episodes or not is_complete(run_dir, cfg):
        return None
    return _cached_evaluation(run_dir / FINAL_EVAL, suite.final_eval_episodes,
                              lambda: evaluate_checkpoint(latest_checkpoint(run_dir), suite.final_eval_episodes,
                                                          FINAL_EVAL_SEED))


def random_baseline(suite: Suite, runs_dir: Path, task: str, cfg: Config) -> dict:
    """A uniform random policy on the same final episodes as the trained runs (cached per task)."""
    episodes = suite.final_eval_episodes or cfg.run.eval_episodes
    return _cached_evaluation(runs_dir / task / "random" / FINAL_EVAL, episodes,
                              lambda: random_policy_baseline(cfg, episodes, FINAL_EVAL_SEED))


RUN_FILES = ("config.yaml", "metrics.csv", "eval_episodes.jsonl", FINAL_EVAL)
"""What the report reads of a run: archived with the results (checkpoints and TensorBoard events are not)."""


def _copy_run_files(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, target / name)


def _cached_evaluation(path: Path, episodes: int, evaluate) -> dict:
    """`evaluate()` on the final episodes, kept in `path`; a cached result of other episodes is redone."""
    cached = json.loads(path.read_text()) if path.exists() else None
    if cached and cached.get("episodes") == episodes and cached.get("seed") == FINAL_EVAL_SEED:
        return cached
    result = evaluate()
    result.update(episodes=episodes, seed=FINAL_EVAL_SEED)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result) + "\n")
    return result
