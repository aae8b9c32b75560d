"""The LLM scenario agents (workload 2, task `recsys_sessions`) in the recsys suite.

Per suite seed and group loss (GRPO, SA-GCPO, GBPO): start from the same built, warm-started models,
train through the orchestrator core with the LLM workload (serial or Ray, the micro-batch pipeline, engines and trainers of the
config) with `run.seed` = the suite seed, then score the trained models with the suite's own evaluation
(the same simulated sessions and offline users as every other method). The request stream is the same
for every loss: the orchestrator derives request r of iteration i's seed from (run.seed, i, r) only
(`orchestrator.dispatch.request_seed`) and the workflow worker draws the request's queries from it,
so the losses differ only by their updates (tests/flexmarl/llm/test_recsys_task.py checks it). `llm_pretrained` is the warm-started starting point.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from flexmarl.config import Config, load_config
from flexmarl.llm.tasks import make_task

LOGGED_COLUMNS = ("iteration", "trajectories", "charts/reward_mean", "perf/iteration_s")


@dataclass
class LLMRows:
    """The suite's `llm:` section."""

    config: str = "configs/llm/recsys.yaml"
    """Training config of the workload (its llm.task must be recsys_sessions)."""
    losses: list[str] = field(default_factory=lambda: ["grpo", "sa_gcpo", "gbpo"])
    """Group losses compared, each a row `<name>_<loss>`."""
    overrides: dict = field(default_factory=dict)
    """Dotted config keys applied to every run (e.g. run.iterations, llm.backend, llm.groups)."""
    build: dict = field(default_factory=dict)
    """`build_task_models` settings of the shared starting models (warm_start_steps, hidden, ...)."""
    build_seed: int = 0
    """Seed of the one build every loss and seed starts from."""
    model_dir: str = "runs/llm-models/recsys_suite"
    """Where the built models go (reused while the build settings match)."""
    name: str = "llm"
    """Row name prefix."""


def run_config(rows: LLMRows, loss: str, seed: int) -> Config:
    """The training config of one (loss, seed): the workload config + overrides, on the shared models."""
    items = {**rows.overrides, "llm.loss": loss, "run.seed": seed, "llm.model_dir": rows.model_dir,
             "run.name": f"recsys-{rows.name}-{loss}-seed{seed}", "run.progress": False}
    return load_config(rows.config, [f"{k}={json.dumps(v)}" for k, v in items.items()])


def train_agents(cfg: Config) -> tuple[dict, list[dict]]:
    """Train through the orchestrator for `run.iterations`; returns ({group: trained weights}, metrics
    of every iteration)."""
    from orchestrator.core import make_orchestrator
    from orchestrator.runtime import make_runtime

    runtime = make_runtime(cfg)
    orch = make_orchestrator(cfg, runtime)
    try:
        history = [orch.step() for _ in range(cfg.run.iterations)]
        weights = {g.name: runtime.get(runtime.call(orch.trainers[g.name], "get_weights")) for g in orch.groups}
    finally:
        orch.shutdown()
    return weights, history


def agent_models(cfg: Config, weights: dict | None = None) -> tuple[dict, object]:
    """({agent: causal LM}, tokenizer): the groups' checkpoints, with `weights` ({group: state}) loaded."""
    from flexmarl.llm.groups import build_llm_groups
    from flexmarl.llm.models import load_causal_lm, load_tokenizer

    task = make_task(cfg.llm.task, **cfg.llm.task_kwargs)
    models = {}
    for group in build_llm_groups(cfg.llm, tuple(task.agents)):
        model = load_causal_lm(group.model_dir)
        if weights is not None:
            model.load_state_dict(weights[group.name])
        models.update({agent: model for agent in group.agents})
    return models, load_tokenizer(build_llm_groups(cfg.llm, tuple(task.agents))[0].model_dir)


def env_steps(history: list[dict]) -> int:
    """Simulator steps the training used: one per agent call (one user served one item)."""
    return int(sum(v for m in history for k, v in m.items() if k.startswith("llm/calls/")))


def llm_methods(section: dict, env, seeds: list[int], log_dir: Path, score: Callable, combine: Callable) -> dict:
    """Suite rows of the LLM scenario agents: `score(scores_fn, seed)` evaluates a policy the suite's
    way on `env`, `combine(per_seed, env_steps, seeds)` makes a row."""
    from flexmarl.llm.build import build_task_models
    from flexmarl.llm.recsys_scores import llm_scores

    rows = LLMRows(**section)
    probe = run_config(rows, rows.losses[0], seeds[0])
    task = make_task(probe.llm.task, **probe.llm.task_kwargs)
    if tuple(task.agents) != tuple(env.possible_agents):
        raise ValueError(f"the LLM task's agents {task.agents} must be the evaluated env's scenarios "
                         f"{env.possible_agents}, in order (llm.task_kwargs.scenarios)")
    build_task_models(probe.llm.task, rows.model_dir, seed=rows.build_seed, task_kwargs=probe.llm.task_kwargs,
                      **rows.build)
    models, tokenizer = agent_models(probe)
    print(f"[{rows.name}] scoring the warm-started models ({len(seeds)} seeds)", flush=True)
    methods = {f"{rows.name}_pretrained": combine([score(llm_scores(task, models, tokenizer), s) for s in seeds], 0, seeds)}
    log_dir.mkdir(parents=True, exist_ok=True)
    for loss in rows.losses:
        per_seed, steps = [], 0
        for seed in seeds:
            cfg = run_config(rows, loss, seed)
            print(f"[{rows.name}] {loss} / seed {seed}: training {cfg.run.iterations} iterations", flush=True)
            started = time.perf_counter()
            weights, history = train_agents(cfg)
            print(f"[{rows.name}] {loss} / seed {seed}: trained in {time.perf_counter() - started:.0f} s, last reward "
                  f"{history[-1]['charts/reward_mean']:.3f}; scoring", flush=True)
            _write_history(log_dir / f"{rows.name}_{loss}_seed{seed}.csv", history)
            models, tokenizer = agent_models(cfg, weights)
            per_seed.append({**score(llm_scores(task, models, tokenizer), seed),
                             "final_reward": float(history[-1]["charts/reward_mean"])})
            steps = env_steps(history)
        methods[f"{rows.name}_{loss}"] = {**combine(per_seed, steps, seeds),
                                          "final_reward": float(np.mean([r["final_reward"] for r in per_seed]))}
    return methods


def _write_history(path: Path, history: list[dict]) -> None:
    columns = [c for c in LOGGED_COLUMNS if c in history[0]] + sorted(k for k in history[0] if k.startswith("llm/"))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
