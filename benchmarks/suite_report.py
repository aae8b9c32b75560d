"""A suite's report, rebuilt from its run directories: `table.md`, `summary.json`, `suite.json`,
`curves_<task>.png`, each run's key columns under `runs/`, the raw results in marl-eval's layout
(`marl_eval.json`) and, for a suite with an `analysis`, the paired comparison (`comparison.json`).

Per run: the final value is the final evaluation (`final_eval.json`, the same episodes for every run) where
the suite has one, else the last periodic evaluation; the AUC is the mean of the periodic evaluations
(equally spaced, so the area under the eval curve divided by its span). Across seeds: mean ± std and the IQM
with its 95 % stratified bootstrap interval (benchmarks/statistics.py).
"""

from __future__ import annotations

import csv
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import statistics
from benchmarks.suite import (FINAL_EVAL, METRIC_COLUMNS, Suite, is_complete, plan_runs, read_metrics,
                              run_directory)
from orchestrator.run_dir import read_eval_episodes

KEPT_COLUMNS = ("iteration", "env_steps", "eval/win_rate", "eval/return_mean", "episode_return_mean",
                "charts/train_win_rate", "perf/train_s", "perf/iteration_s", "env_steps_per_s")
EPISODE_KEYS = {"win_rate": "win", "return": "return"}
"""marl-eval metric name -> key of the per-episode lists in eval_episodes.jsonl and final_eval.json."""


@dataclass
class RunRecord:
    """What the report reads of one run directory."""

    rows: list[dict]
    steps: np.ndarray
    """Env steps of the periodic evaluations."""
    values: np.ndarray
    """The suite's metric at each periodic evaluation."""
    final: float | None
    final_eval: dict | None
    complete: bool
    episodes: dict
    """{iteration: per-episode values} of the periodic evaluations (eval_episodes.jsonl)."""

    @property
    def auc(self) -> float | None:
        return float(self.values.mean()) if len(self.values) else None

    def steps_to(self, target: float | None) -> float | None:
        reached = np.flatnonzero(self.values >= target) if target is not None else []
        return float(self.steps[reached[0]]) if len(reached) else None


def read_run(suite: Suite, run_dir: Path, cfg) -> RunRecord | None:
    rows = [r for r in read_metrics(run_dir) if int(r["iteration"]) <= cfg.run.iterations]  # within the budget
    if not rows:
        return None
    column = METRIC_COLUMNS[suite.metric]
    points = [(float(r["env_steps"]), float(r[column])) for r in rows if r.get(column) not in (None, "")]
    steps, values = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    final_path = run_dir / FINAL_EVAL
    final_eval = json.loads(final_path.read_text()) if final_path.exists() else None
    if suite.final_eval_episodes:  # the final evaluation or nothing yet (pending), never a smaller one
        final = final_eval[column] if final_eval else None
    else:
        final = float(values[-1]) if len(values) else None
    return RunRecord(rows, steps, values, final, final_eval, is_complete(run_dir, cfg), read_eval_episodes(run_dir))


def write_report(suite: Suite, runs_dir: Path, output: Path, tasks, algorithms, seeds, configs) -> dict:
    output.mkdir(parents=True, exist_ok=True)
    records: dict = {}
    for task, algorithm, seed in plan_runs(suite, tasks, algorithms, seeds):
        record = read_run(suite, run_directory(runs_dir, task, algorithm, seed), configs[(task, algorithm, seed)])
        if record is not None:
            records.setdefault(task, {}).setdefault(algorithm, {})[seed] = record
            _copy_columns(record.rows, output / "runs" / task / algorithm / f"seed{seed}.csv")
    summary = {task: {algorithm: _summarise(suite, runs, configs[(task, algorithm, min(runs))])
                      for algorithm, runs in by_algorithm.items()} for task, by_algorithm in records.items()}
    for task in summary:
        random_path = runs_dir / task / "random" / FINAL_EVAL
        if suite.random_baseline and random_path.exists():
            summary[task]["random"] = {f"final_{suite.metric}_mean": json.loads(random_path.read_text())[
                METRIC_COLUMNS[suite.metric]], "random_policy": True}
        _plot(suite, task, records[task], output / f"curves_{task}.png")
    comparison = compare(suite, records) if suite.analysis else None
    (output / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (output / "suite.json").write_text(json.dumps(_settings(suite, tasks), indent=1) + "\n")
    (output / "marl_eval.json").write_text(json.dumps(marl_eval_layout(suite, records, configs)) + "\n")
    if comparison is not None:
        (output / "comparison.json").write_text(json.dumps(comparison, indent=1) + "\n")
    (output / "table.md").write_text(_table(suite, summary, tasks, comparison))
    return summary


def _summarise(suite: Suite, runs: dict[int, RunRecord], cfg) -> dict:
    m = suite.metric
    finals = {s: r.final for s, r in runs.items() if r.final is not None}
    aucs = [r.auc for r in runs.values() if r.auc is not None]
    hits = [r.steps_to(suite.target) for r in runs.values()]
    train_s = [float(row["perf/train_s"]) for r in runs.values() for row in r.rows if row.get("perf/train_s")]
    out = {
        f"final_{m}_mean": float(np.mean(list(finals.values()))) if finals else None,
        f"final_{m}_std": float(np.std(list(finals.values()))) if finals else None,
        f"final_{m}_per_seed": {str(s): float(f) for s, f in finals.items()},
        f"auc_{m}_mean": float(np.mean(aucs)) if aucs else None,
        f"auc_{m}_std": float(np.std(aucs)) if aucs else None,
        "env_steps": cfg.run.iterations * cfg.run.batch_env_steps,
        "seeds": sorted(runs),
        "complete_seeds": sorted(s for s, r in runs.items() if r.complete),
        "final_eval_episodes": suite.final_eval_episodes or cfg.run.eval_episodes,
        "steps_to_target_mean": float(np.mean(hits)) if hits and all(h is not None for h in hits) else None,
        "steps_to_target_reached": sum(h is not None for h in hits),
        "train_s_per_iteration_mean": float(np.mean(train_s)) if train_s else None,
        "wall_s": float(sum(float(row["perf/iteration_s"]) for r in runs.values() for row in r.rows
                            if row.get("perf/iteration_s"))),
    }
    if len(finals) >= 2:
        out[f"final_{m}_iqm"] = statistics.iqm(np.array(list(finals.values()))[:, None]).as_dict()
    return out


def compare(suite: Suite, records: dict) -> dict:
    """The pre-registered paired comparison (docs/grasp.md): the second algorithm minus the first on the
    tasks whose every seed is complete in both arms; the others are listed as pending."""
    control, treatment = list(suite.algorithms)
    m = suite.metric
    ready = [t for t, by_algorithm in records.items()
             if all(set(suite.seeds_of(t)) <= {s for s, r in by_algorithm.get(a, {}).items() if r.complete}
                    for a in (control, treatment))]
    out = {"treatment": treatment, "control": control, "tasks": ready,
           "pending": [t for t in suite.tasks if t not in ready]}
    if not ready:
        return out
    for name, read in (("auc", lambda r: r.auc), (f"final_{m}", lambda r: r.final)):
        scores = {a: np.array([[read(records[t][a][s]) for t in ready] for s in suite.seeds_of(ready[0])])
                  for a in (control, treatment)}
        out[name] = {
            "difference": statistics.paired_difference(scores[treatment], scores[control], ready).as_dict(),
            "iqm": {a: statistics.iqm(v).as_dict() for a, v in scores.items()},
            "mean": {a: statistics.mean(v).as_dict() for a, v in scores.items()},
        }
    return out


def marl_eval_layout(suite: Suite, records: dict, configs) -> dict:
    """Raw results as marl-eval reads them: {env: {task: {algorithm: {seed_k: {step_i: {step_count, metric:
    [per-episode values]}, absolute_metrics: {...}}}}}}. Evaluations without per-episode values (runs from
    before eval_episodes.jsonl) carry their mean as a one-element list."""
    out: dict = {}
    for task, by_algorithm in records.items():
        for algorithm, runs in by_algorithm.items():
            for seed, record in runs.items():
                env_name = configs[(task, algorithm, seed)].env.name
                env_family = env_name.split("/")[0] if "/" in env_name else env_name
                run: dict = {}
                for i, row in enumerate(r for r in record.rows if r.get(METRIC_COLUMNS[suite.metric])):
                    episodes = record.episodes.get(int(row["iteration"]), {})
                    run[f"step_{i}"] = {"step_count": int(float(row["env_steps"])),
                                        **_episode_metrics(episodes, row)}
                if record.final_eval:
                    run["absolute_metrics"] = _episode_metrics(record.final_eval, record.final_eval, prefix="episodes/")
                out.setdefault(env_family, {}).setdefault(task, {}).setdefault(algorithm, {})[f"seed_{seed}"] = run
    return out


def _episode_metrics(episodes: dict, means: dict, prefix: str = "") -> dict:
    out = {}
    for metric, key in EPISODE_KEYS.items():
        values = episodes.get(prefix + key)
        mean = means.get(METRIC_COLUMNS[metric])
        if values is not None:
            out[metric] = [float(v) for v in values]
        elif mean not in (None, ""):
            out[metric] = [float(mean)]
    return out


def _copy_columns(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [c for c in KEPT_COLUMNS if c in rows[0]]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _plot(suite: Suite, task: str, runs_by_algorithm: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for algorithm, runs in runs_by_algorithm.items():
        curves = [r for r in runs.values() if len(r.values)]
        if not curves:
            continue
        n = min(len(r.values) for r in curves)
        values = np.stack([r.values[:n] for r in curves])
        ax.plot(curves[0].steps[:n], values.mean(0), label=f"{algorithm} ({len(curves)} seed{'s' * (len(curves) > 1)})")
        ax.fill_between(curves[0].steps[:n], values.min(0), values.max(0), alpha=0.2)
    if suite.target is not None:
        ax.axhline(suite.target, color="grey", linestyle="--", linewidth=1, label=f"target {suite.target}")
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"eval {suite.metric.replace('_', ' ')}")
    ax.set_title(f"{suite.name}: {task} (mean, min-max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _settings(suite: Suite, tasks) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"suite": suite.name, "file": str(suite.path), "base": str(suite.base), "metric": suite.metric,
            "target": suite.target, "budget_env_steps": {t: suite.budget(t) for t in tasks},
            "seeds": {t: suite.seeds_of(t) for t in tasks}, "final_eval_episodes": suite.final_eval_episodes,
            "tasks": suite.tasks, "algorithms": suite.algorithms, "overrides": suite.overrides,
            "analysis": suite.analysis, "pass_criteria": suite.pass_criteria,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "git_commit": commit}


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _interval(est: dict | None) -> str:
    return "-" if not est else f"{est['point']:.3f} [{est['low']:.3f}, {est['high']:.3f}]"


def _table(suite: Suite, summary: dict, tasks, comparison: dict | None) -> str:
    m = suite.metric
    final_what = (f"the final checkpoint on the same {suite.final_eval_episodes} greedy episodes for every run"
                  if suite.final_eval_episodes else "the last periodic greedy evaluation")
    lines = [f"# Suite `{suite.name}`", "",
             f"Final {m.replace('_', ' ')}: {final_what}; mean ± std over seeds, and the IQM with its 95 % "
             "stratified bootstrap interval (rliable). AUC: the mean of a run's periodic evaluations. Steps to "
             f"{suite.target}: the env steps at which a seed's evaluation first reaches it (mean over seeds, shown "
             "only when every seed reached it). Train s / iteration: the trainer's compute (its ratio to the first "
             f"algorithm's on the same task). Budgets {', '.join(f'{t} {suite.budget(t):,}' for t in tasks)} env "
             f"steps; settings in `suite.json`, raw results in marl-eval's layout in `marl_eval.json`, definition "
             f"in `{suite.path}`.", "",
             f"| task | algorithm | final {m} (mean ± std) | final {m} IQM [95 % CI] | AUC | steps to {suite.target} "
             "(seeds reached) | train s / iteration | env steps | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task, entries in summary.items():
        reference = next(iter(entries.values()), {}).get("train_s_per_iteration_mean")
        for algorithm, e in entries.items():
            if e.get("random_policy"):
                lines.append(f"| {task} | uniform random | {_fmt(e[f'final_{m}_mean'])} | - | - | - | - | - | - |")
                continue
            ratio = ""
            if reference and e["train_s_per_iteration_mean"]:
                ratio = f" ({e['train_s_per_iteration_mean'] / reference:.2f}x)"
            steps = "-" if e["steps_to_target_mean"] is None else f"{e['steps_to_target_mean']:,.0f}"
            lines.append(
                f"| {task} | {algorithm} | {_fmt(e[f'final_{m}_mean'])} ± {_fmt(e[f'final_{m}_std'])} | "
                f"{_interval(e.get(f'final_{m}_iqm'))} | {_fmt(e[f'auc_{m}_mean'])} | "
                f"{steps} ({e['steps_to_target_reached']}/{len(e['seeds'])}) | "
                f"{_fmt(e['train_s_per_iteration_mean'])}{ratio} | {e['env_steps']:,} | "
                f"{len(e['complete_seeds'])}/{len(e['seeds'])} complete |")
    lines += ["", f"Curves: {', '.join(f'`curves_{t}.png`' for t in summary)}.", ""]
    if comparison is not None:
        lines += _comparison_lines(comparison, m)
    if suite.pass_criteria:
        lines += ["## Pass criteria", "", suite.pass_criteria, ""]
    return "\n".join(lines)


def _comparison_lines(c: dict, m: str) -> list[str]:
    lines = ["## Paired comparison", "", f"{c['treatment']} - {c['control']}, paired by seed, on "
             f"{', '.join(c['tasks']) or 'no task yet'}; pending (runs incomplete): {', '.join(c['pending']) or 'none'}.", ""]
    for name in ("auc", f"final_{m}"):
        if name not in c:
            continue
        d = c[name]["difference"]
        per_task = "; ".join(f"{t} {_interval(e)}" for t, e in d["per_task"].items())
        lines += [f"- **{name}** (primary)" if name == "auc" else f"- **{name}**",
                  f"  - difference, mean over tasks [95 % CI]: {_interval(d['aggregate'])}; per task: {per_task}",
                  f"  - decision rule: **{d['verdict']}** (interval half-width {d['half_width']:.3f})",
                  "  - IQM per arm: " + "; ".join(f"{a} {_interval(e)}" for a, e in c[name]["iqm"].items())]
    return lines + [""]
