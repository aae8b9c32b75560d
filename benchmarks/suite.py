"""`flexmarl bench suite NAME`: algorithms x tasks x seeds at a fixed env-step budget, with a report.

A suite is a YAML file (built-ins in `configs/suites/<name>.yaml`):

    suite: smax                      # results go to benchmarks/results/<suite>/
    base: configs/smax/mappo.yaml    # base training config (relative to the cwd, else the repo root)
    metric: win_rate                 # win_rate (eval/win_rate) or return (eval/return_mean)
    target: 0.8                      # report the env steps at which each seed's eval metric first reaches it
    budget_env_steps: 2000000        # per run: iterations = ceil(budget / run.batch_env_steps)
    seeds: [0, 1, 2]
    overrides: {run.eval_every: 10}  # dotted keys applied to every run
    tasks: {3m: {env.name: smax/3m}, 2s3z: {env.name: smax/2s3z}}
    algorithms: {mappo: {algo.name: mappo}, grasp: {algo.gradient_aggregator: grasp}}
    pass_criteria: free text shown in the report

Overrides apply in the order suite, task, algorithm, then run.seed and run.iterations (from the budget).
Each (task, algorithm, seed) trains in `<runs-dir>/<task>/<algorithm>/seed<k>/` (a normal run directory).
Runs that reached their last iteration are skipped and unfinished ones resume from their latest
checkpoint, so re-running an interrupted suite continues it. The report (`table.md`, `summary.json`
shaped {task: {algorithm: {...}}}, `suite.json` with the settings, `curves_<task>.png`, and each run's
key metric columns under `runs/`) is rebuilt from the run directories, alone with `--report-only`.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from flexmarl.config import Config, ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
SUITES_DIR = Path("configs/suites")
METRIC_COLUMNS = {"win_rate": "eval/win_rate", "return": "eval/return_mean"}
KEPT_COLUMNS = ("iteration", "env_steps", "eval/win_rate", "eval/return_mean", "episode_return_mean",
                "charts/train_win_rate", "perf/train_s", "perf/iteration_s", "env_steps_per_s")


class SuiteError(ValueError):
    """A suite file that is missing or invalid; the message names the file and the entry."""


@dataclass
class Suite:
    name: str
    path: Path
    base: Path
    metric: str
    target: float | None
    budget_env_steps: int
    seeds: list[int]
    tasks: dict[str, dict]
    algorithms: dict[str, dict]
    overrides: dict = field(default_factory=dict)
    pass_criteria: str = ""
    kind: str = "generic"
    """"recsys": the recommendation report (baselines, offline metrics) on top of the training runs."""
    generative: dict = field(default_factory=dict)
    """recsys only: GenerativeConfig fields plus `losses`, for the generative semantic-ID policies."""
    llm: dict = field(default_factory=dict)
    """recsys only: the LLM scenario agents' rows (benchmarks.recsys_llm.LLMRows fields)."""


def _find(path: Path) -> Path:
    """`path` itself if it exists (relative to the cwd), else the same path under the repo root."""
    return path if path.exists() or path.is_absolute() or not (REPO_ROOT / path).exists() else REPO_ROOT / path


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in _find(SUITES_DIR).glob("*.yaml"))


def load_suite(name_or_path: str) -> Suite:
    path = Path(name_or_path)
    if not path.suffix:
        path = _find(SUITES_DIR / f"{name_or_path}.yaml")
        if not path.exists():
            raise SuiteError(f"unknown suite {name_or_path!r}; built-in suites: {', '.join(builtin_suites())}, "
                             "or give a suite YAML path")
    if not path.exists():
        raise SuiteError(f"suite file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    missing = [k for k in ("suite", "base", "metric", "budget_env_steps", "seeds", "tasks", "algorithms") if k not in data]
    if missing:
        raise SuiteError(f"suite {path}: missing keys {', '.join(missing)}")
    if data["metric"] not in METRIC_COLUMNS:
        raise SuiteError(f"suite {path}: metric {data['metric']!r}; allowed: {', '.join(METRIC_COLUMNS)}")
    base = _find(Path(data["base"]))
    if not base.exists():
        raise SuiteError(f"suite {path}: base config {data['base']} does not exist")
    return Suite(name=data["suite"], path=path, base=base, metric=data["metric"],
                 target=data.get("target"), budget_env_steps=int(data["budget_env_steps"]),
                 seeds=[int(s) for s in data["seeds"]], tasks=data["tasks"], algorithms=data["algorithms"],
                 overrides=data.get("overrides") or {}, pass_criteria=str(data.get("pass_criteria", "")).strip(),
                 kind=data.get("kind", "generic"), generative=data.get("generative") or {},
                 llm=data.get("llm") or {})


def run_config(suite: Suite, task: str, algorithm: str, seed: int, runs_dir: Path, mode: str | None) -> Config:
    """The training config of one (task, algorithm, seed): base + suite + task + algorithm overrides."""
    items = {**suite.overrides, **(suite.tasks[task] or {}), **(suite.algorithms[algorithm] or {})}
    overrides = [f"{k}={json.dumps(v)}" for k, v in items.items()]
    overrides += [f"run.seed={seed}", f"run.name={task}-{algorithm}-seed{seed}", f"run.output_dir={runs_dir}"]
    if mode:
        overrides.append(f"run.mode={mode}")
    try:
        probe = load_config(suite.base, overrides)
        iterations = math.ceil(suite.budget_env_steps / probe.run.batch_env_steps)
        return load_config(suite.base, overrides + [f"run.iterations={iterations}"])
    except ConfigError as exc:
        raise SuiteError(f"suite {suite.path}: task {task!r} x algorithm {algorithm!r}: {exc}") from exc


def _read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def run_suite(suite: Suite, runs_dir: Path, output: Path, mode: str | None = None, tasks=None,
              algorithms=None, seeds=None, report_only: bool = False) -> dict:
    from orchestrator.run_dir import latest_checkpoint, save_run_config
    from orchestrator.train import train

    tasks = tasks or list(suite.tasks)
    algorithms = algorithms or list(suite.algorithms)
    seeds = suite.seeds if seeds is None else seeds
    for name, known, kind in ((tasks, suite.tasks, "task"), (algorithms, suite.algorithms, "algorithm")):
        unknown = [n for n in name if n not in known]
        if unknown:
            raise SuiteError(f"suite {suite.path}: unknown {kind} {unknown[0]!r}; defined: {', '.join(known)}")
    plan = [(t, a, s) for s in seeds for t in tasks for a in algorithms]  # seeds outermost: early results cover all
    configs = {key: run_config(suite, *key, runs_dir, mode) for key in plan}  # validate everything first
    if not report_only:
        for i, key in enumerate(plan, 1):
            task, algorithm, seed = key
            cfg, run_dir = configs[key], runs_dir / task / algorithm / f"seed{seed}"
            rows = _read_metrics(run_dir)
            done = bool(rows) and int(rows[-1]["iteration"]) >= cfg.run.iterations
            label = f"[{i}/{len(plan)}] {task} / {algorithm} / seed {seed}"
            if done:
                print(f"{label}: done already, skipped", flush=True)
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            save_run_config(run_dir, cfg)
            checkpoint = latest_checkpoint(run_dir)
            how = f"resumed from {checkpoint.name}" if checkpoint else "started"
            print(f"{label}: {'resuming from ' + checkpoint.name if checkpoint else 'starting'} "
                  f"({cfg.run.iterations} iterations)", flush=True)
            start = time.perf_counter()
            train(cfg, run_dir, resume=True)
            print(f"{label}: done ({how}) in {time.perf_counter() - start:.0f} s", flush=True)
    return write_report(suite, runs_dir, output, tasks, algorithms, seeds, configs)


def _curve(rows: list[dict], column: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(float(r["env_steps"]), float(r[column])) for r in rows if r.get(column) not in (None, "")]
    return (np.array([p[0] for p in points]), np.array([p[1] for p in points]))


def _summarise(suite: Suite, runs: dict[int, list[dict]], iterations: int, batch: int) -> dict:
    column = METRIC_COLUMNS[suite.metric]
    curves = {seed: _curve(rows, column) for seed, rows in runs.items()}
    finals = [c[1][-1] for c in curves.values() if len(c[1])]
    hits = []
    for steps, values in curves.values():
        reached = np.flatnonzero(values >= suite.target) if suite.target is not None else []
        hits.append(float(steps[reached[0]]) if len(reached) else None)
    train_s = [float(r["perf/train_s"]) for rows in runs.values() for r in rows if r.get("perf/train_s")]
    complete = [seed for seed, rows in runs.items() if rows and int(rows[-1]["iteration"]) >= iterations]
    return {
        f"final_{suite.metric}_mean": float(np.mean(finals)) if finals else None,
        f"final_{suite.metric}_std": float(np.std(finals)) if finals else None,
        f"final_{suite.metric}_per_seed": [float(f) for f in finals],
        "env_steps": iterations * batch,
        "seeds": sorted(runs),
        "complete_seeds": sorted(complete),
        "steps_to_target_mean": float(np.mean(hits)) if hits and all(h is not None for h in hits) else None,
        "steps_to_target_reached": sum(h is not None for h in hits),
        "train_s_per_iteration_mean": float(np.mean(train_s)) if train_s else None,
        "wall_s": float(sum(float(r["perf/iteration_s"]) for rows in runs.values() for r in rows if r.get("perf/iteration_s"))),
    }


def write_report(suite: Suite, runs_dir: Path, output: Path, tasks, algorithms, seeds, configs) -> dict:
    output.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    for task in tasks:
        summary[task] = {}
        for algorithm in algorithms:
            runs, iterations = {}, configs[(task, algorithm, seeds[0])].run.iterations
            for seed in seeds:  # rows past the budget (a run made with a larger one) are left out
                rows = [r for r in _read_metrics(runs_dir / task / algorithm / f"seed{seed}")
                        if int(r["iteration"]) <= iterations]
                if rows:
                    runs[seed] = rows
                    _copy_columns(rows, output / "runs" / task / algorithm / f"seed{seed}.csv")
            if runs:
                cfg = configs[(task, algorithm, seeds[0])]
                summary[task][algorithm] = _summarise(suite, runs, cfg.run.iterations, cfg.run.batch_env_steps)
                summary[task][algorithm]["_curves"] = {s: _curve(r, METRIC_COLUMNS[suite.metric]) for s, r in runs.items()}
    for task in tasks:
        _plot(suite, task, summary[task], output / f"curves_{task}.png")
    for task in summary.values():
        for entry in task.values():
            entry.pop("_curves", None)
    (output / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (output / "suite.json").write_text(json.dumps(_settings(suite, seeds), indent=1) + "\n")
    (output / "table.md").write_text(_table(suite, summary, seeds))
    return summary


def _copy_columns(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = [c for c in KEPT_COLUMNS if c in rows[0]]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _plot(suite: Suite, task: str, entries: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for algorithm, entry in entries.items():
        curves = list(entry["_curves"].values())
        n = min(len(c[0]) for c in curves)
        if n == 0:
            continue
        steps = curves[0][0][:n]
        values = np.stack([c[1][:n] for c in curves])
        ax.plot(steps, values.mean(0), label=f"{algorithm} ({len(curves)} seed{'s' * (len(curves) > 1)})")
        ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2)
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


def _settings(suite: Suite, seeds) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"suite": suite.name, "file": str(suite.path), "base": str(suite.base), "metric": suite.metric,
            "target": suite.target, "budget_env_steps": suite.budget_env_steps, "seeds": list(seeds),
            "tasks": suite.tasks, "algorithms": suite.algorithms, "overrides": suite.overrides,
            "pass_criteria": suite.pass_criteria, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "git_commit": commit}


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(suite: Suite, summary: dict, seeds) -> str:
    m = suite.metric
    lines = [f"# Suite `{suite.name}`", "",
             f"Final greedy-evaluation {m.replace('_', ' ')} (last evaluation of each seed; mean ± std over seeds), "
             f"env steps at which a seed's evaluation first reaches {suite.target} (mean over seeds, shown only "
             f"when every seed reached it), and the trainer's compute per iteration "
             f"(its ratio to the first algorithm's on the same task). Budget {suite.budget_env_steps:,} env steps "
             f"per run; seeds {list(seeds)}; settings in `suite.json`, definition in `{suite.path}`.", "",
             f"| task | algorithm | final {m} | steps to {suite.target} (seeds reached) | train s / iteration | env steps | seeds |",
             "|---|---|---|---|---|---|---|"]
    for task, entries in summary.items():
        reference = next(iter(entries.values()), {}).get("train_s_per_iteration_mean")
        for algorithm, e in entries.items():
            ratio = ""
            if reference and e["train_s_per_iteration_mean"]:
                ratio = f" ({e['train_s_per_iteration_mean'] / reference:.2f}x)"
            steps = "-" if e["steps_to_target_mean"] is None else f"{e['steps_to_target_mean']:,.0f}"
            lines.append(
                f"| {task} | {algorithm} | {_fmt(e[f'final_{m}_mean'])} ± {_fmt(e[f'final_{m}_std'])} | "
                f"{steps} ({e['steps_to_target_reached']}/{len(e['seeds'])}) | "
                f"{_fmt(e['train_s_per_iteration_mean'])}{ratio} | {e['env_steps']:,} | "
                f"{len(e['complete_seeds'])}/{len(e['seeds'])} complete |")
    lines += ["", f"Curves: {', '.join(f'`curves_{t}.png`' for t in summary)}.", ""]
    if suite.pass_criteria:
        lines += ["## Pass criteria", "", suite.pass_criteria, ""]
    return "\n".join(lines)
