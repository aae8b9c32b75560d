"""`flexmarl bench suite NAME`: algorithms x tasks x seeds at a fixed env-step budget, with a report.

A suite is a YAML file (built-ins in `configs/suites/<name>.yaml`):

    suite: smax                      # results go to benchmarks/results/<suite>/
    base: configs/smax/mappo.yaml    # base training config (relative to the cwd, else the repo root)
    metric: win_rate                 # win_rate (eval/win_rate) or return (eval/return_mean)
    target: 0.8                      # report the env steps at which each seed's eval metric first reaches it
    budget_env_steps: 2000000        # per run: iterations = ceil(budget / run.batch_env_steps)
    seeds: [0, 1, 2]
    final_eval_episodes: 256         # optional: the final checkpoint evaluated on these many episodes, the
                                     # same episodes for every run (0: the last periodic evaluation counts)
    random_baseline: true            # optional: a uniform random policy on the same final episodes, as a row
    overrides: {run.eval_every: 10}  # dotted keys applied to every run
    tasks:                           # a task's own `budget_env_steps` / `seeds` replace the suite's
      3m: {env.name: smax/3m}
      2s3z: {env.name: smax/2s3z, seeds: [0]}
    algorithms: {mappo: {algo.name: mappo}, grasp: {algo.gradient_aggregator: grasp}}
    analysis: {...}                  # optional: the second algorithm compared with the first, paired by seed
    pass_criteria: free text shown in the report

Overrides apply in the order suite, task, algorithm, then run.seed and run.iterations (from the budget).
Each (task, algorithm, seed) trains in `<runs-dir>/<task>/<algorithm>/seed<k>/` (a normal run directory,
plus `final_eval.json`). Runs that reached their last iteration are skipped and unfinished ones resume
from their latest checkpoint, so re-running an interrupted suite continues it. The report
(benchmarks/suite_report.py) is rebuilt from the run directories, alone with `--report-only`; the runner
is benchmarks/suite_run.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from flexmarl.config import Config, ConfigError, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
SUITES_DIR = Path("configs/suites")
METRIC_COLUMNS = {"win_rate": "eval/win_rate", "return": "eval/return_mean"}
TASK_SETTINGS = ("budget_env_steps", "seeds")
"""Keys of a task entry that are settings of the suite for that task, not config overrides."""
FINAL_EVAL_SEED = 12345
"""Seed of the final evaluation's episodes: the same episodes for every run of a suite."""


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
    """Task -> config overrides."""
    algorithms: dict[str, dict]
    overrides: dict = field(default_factory=dict)
    pass_criteria: str = ""
    task_settings: dict[str, dict] = field(default_factory=dict)
    """Task -> its own `budget_env_steps` / `seeds`, where they differ from the suite's."""
    final_eval_episodes: int = 0
    random_baseline: bool = False
    analysis: dict = field(default_factory=dict)
    """The pre-registered comparison (second algorithm vs first, paired by seed); empty: none."""
    kind: str = "generic"
    """"recsys": the recommendation report (baselines, offline metrics) on top of the training runs."""
    generative: dict = field(default_factory=dict)
    """recsys only: GenerativeConfig fields plus `losses`, for the generative semantic-ID policies."""
    llm: dict = field(default_factory=dict)
    """recsys only: the LLM scenario agents' rows (benchmarks.recsys_llm.LLMRows fields)."""

    def budget(self, task: str) -> int:
        return int(self.task_settings.get(task, {}).get("budget_env_steps", self.budget_env_steps))

    def seeds_of(self, task: str) -> list[int]:
        return [int(s) for s in self.task_settings.get(task, {}).get("seeds", self.seeds)]

    def with_budget(self, budget: int) -> "Suite":
        """Every task at `budget` env steps (the CLI's --budget)."""
        settings = {t: {k: v for k, v in s.items() if k != "budget_env_steps"} for t, s in self.task_settings.items()}
        return Suite(**{**self.__dict__, "budget_env_steps": budget, "task_settings": settings})


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
    tasks, settings = {}, {}
    for task, entry in data["tasks"].items():
        entry = dict(entry or {})
        settings[task] = {k: entry.pop(k) for k in TASK_SETTINGS if k in entry}
        tasks[task] = entry
    if data.get("analysis") and len(data["algorithms"]) != 2:
        raise SuiteError(f"suite {path}: `analysis` compares two algorithms (the second against the first); "
                         f"got {len(data['algorithms'])}")
    return Suite(name=data["suite"], path=path, base=base, metric=data["metric"],
                 target=data.get("target"), budget_env_steps=int(data["budget_env_steps"]),
                 seeds=[int(s) for s in data["seeds"]], tasks=tasks, algorithms=data["algorithms"],
                 overrides=data.get("overrides") or {}, pass_criteria=str(data.get("pass_criteria", "")).strip(),
                 task_settings={t: s for t, s in settings.items() if s},
                 final_eval_episodes=int(data.get("final_eval_episodes", 0)),
                 random_baseline=bool(data.get("random_baseline", False)), analysis=data.get("analysis") or {},
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
        iterations = math.ceil(suite.budget(task) / probe.run.batch_env_steps)
        return load_config(suite.base, overrides + [f"run.iterations={iterations}"])
    except ConfigError as exc:
        raise SuiteError(f"suite {suite.path}: task {task!r} x algorithm {algorithm!r}: {exc}") from exc


def run_directory(runs_dir: Path, task: str, algorithm: str, seed: int) -> Path:
    return runs_dir / task / algorithm / f"seed{seed}"


def plan_runs(suite: Suite, tasks, algorithms, seeds) -> list[tuple[str, str, int]]:
    """(task, algorithm, seed) in the order they run: seeds outermost, so early results cover every task."""
    all_seeds = sorted({s for t in tasks for s in (seeds or suite.seeds_of(t))})
    return [(t, a, s) for s in all_seeds for t in tasks for a in algorithms if s in (seeds or suite.seeds_of(t))]


def read_metrics(run_dir: Path) -> list[dict]:
    import csv

    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def is_complete(run_dir: Path, cfg: Config) -> bool:
    rows = read_metrics(run_dir)
    return bool(rows) and int(rows[-1]["iteration"]) >= cfg.run.iterations


FINAL_EVAL = "final_eval.json"
