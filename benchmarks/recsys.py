"""`flexmarl bench suite recsys`: learned multi-scenario policies vs baselines, simulated and offline.

The learned methods train through the generic suite (its training curves and table go to
`<output>/training/`); then every method, learned or baseline, is scored the same way: greedy simulated
sessions (team reward per session and each scenario's share) and offline hit rate@10 / NDCG@10 on
held-out MovieLens-1M ratings. `summary.json` is `{"methods": {name: {...}}}`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from envs import make_env
from envs.batched import random_legal_actions
from flexmarl.recsys_eval import offline_metrics, popularity_scores, random_scores, simulate, trained_policy
from benchmarks.suite import Suite, SuiteError, run_config
from benchmarks.suite_run import run_suite

EVAL_SESSIONS = 512
EVAL_SEED = 20261122
OFFLINE_USERS = 1000
THROUGHPUT_USERS = (1, 16, 128, 512)
THROUGHPUT_SECONDS = 3.0


def _score(env, scores, seed: int) -> dict:
    sim = simulate(env, scores, seed=EVAL_SEED + seed)
    offline = offline_metrics(env, scores, users=OFFLINE_USERS, seed=seed)
    sim["offline"] = offline
    sim["hit_rate_at_10"] = float(np.mean([m["hit_rate_at_10"] for m in offline.values()]))
    sim["ndcg_at_10"] = float(np.mean([m["ndcg_at_10"] for m in offline.values()]))
    return sim


def env_throughput(env_name: str, env_kwargs: dict, users=THROUGHPUT_USERS,
                   duration_s: float = THROUGHPUT_SECONDS) -> dict:
    """Simulator speed: env steps/s (one step = one user served one item) with random legal actions, for
    each number of users stepped together by one call; measured one after another in this process."""
    rates = {}
    for num_envs in users:
        env = make_env(env_name, num_envs=num_envs, **env_kwargs)
        rng = np.random.default_rng(0)
        ob, steps, start = env.reset(seed=0), 0, time.perf_counter()
        while time.perf_counter() - start < duration_s:
            ob = env.step(random_legal_actions(ob.action_mask, rng)).next
            steps += num_envs
        rates[str(num_envs)] = steps / (time.perf_counter() - start)
    return {"env_steps_per_s": rates, "duration_s": duration_s}


def _combine(per_seed: list[dict], env_steps: int, seeds: list[int]) -> dict:
    team = [r["team_reward_mean"] for r in per_seed]
    scenarios = per_seed[0]["scenario_reward"]
    return {
        "team_reward_mean": float(np.mean(team)), "team_reward_std": float(np.std(team)),
        "scenario_reward": {s: float(np.mean([r["scenario_reward"][s] for r in per_seed])) for s in scenarios},
        "hit_rate_at_10": float(np.mean([r["hit_rate_at_10"] for r in per_seed])),
        "ndcg_at_10": float(np.mean([r["ndcg_at_10"] for r in per_seed])),
        "offline_per_scenario": per_seed[0]["offline"], "env_steps": env_steps, "seeds": seeds,
    }


ROW_FAMILIES = ("baselines", "learned", "generative", "llm")
"""Row families of the report: random and most-popular; the suite's trained algorithms; the generative
semantic-ID policies; the LLM scenario agents."""


def run_recsys_suite(suite: Suite, runs_dir: Path, output: Path, report_only: bool = False, rows=None, **select) -> dict:
    """rows: the row families to (re)compute (default all); the others are kept from the existing
    `<output>/summary.json`, e.g. `rows=["llm"]` re-runs the LLM rows beside earlier results."""
    rows = list(ROW_FAMILIES if rows is None else rows)
    unknown = [r for r in rows if r not in ROW_FAMILIES]
    if unknown:
        raise SuiteError(f"unknown row family {unknown[0]!r}; known: {', '.join(ROW_FAMILIES)}")
    kept = _kept_methods(output / "summary.json", rows)
    seeds = select.get("seeds") or suite.seeds
    task = next(iter(suite.tasks))  # one env: the scenarios are the agents
    cfg = run_config(suite, task, next(iter(suite.algorithms)), seeds[0], runs_dir, None)
    env = make_env(cfg.env.name, num_envs=EVAL_SESSIONS, **cfg.env.kwargs)
    methods: dict = {}
    if "baselines" in rows:
        methods["random"] = _combine([_score(env, random_scores(env, s), s) for s in seeds], 0, seeds)
        methods["most_popular"] = _combine([_score(env, popularity_scores(env), s) for s in seeds], 0, seeds)
    if "learned" in rows:
        methods.update(_learned_methods(suite, env, runs_dir, output, report_only, select))
    output.mkdir(parents=True, exist_ok=True)
    if "generative" in rows:
        methods.update(_generative_methods(suite, env, seeds, output / "training"))
    if "llm" in rows and suite.llm:  # LLM scenario agents (workload 2): same seeds, same sessions and offline users
        from benchmarks.recsys_llm import llm_methods

        methods.update(llm_methods(suite.llm, env, seeds, output / "training",
                                   lambda scores, s: _score(env, scores, s), _combine))
    # report order: the families' order, whichever were computed now
    methods = {name: m for family in ROW_FAMILIES for name, m in {**kept, **methods}.items()
               if _family(name, suite) == family}
    result = {"methods": methods}
    (output / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
    speed = output / "throughput.json"
    if "baselines" in rows or not speed.exists():  # the simulator's speed goes with the baselines' rows
        measured = env_throughput(cfg.env.name, cfg.env.kwargs, duration_s=THROUGHPUT_SECONDS)
        speed.write_text(json.dumps(measured, indent=1) + "\n")
    throughput = json.loads(speed.read_text())
    (output / "table.md").write_text(_table(suite, methods, env.possible_agents, throughput))
    return result


def _family(method: str, suite: Suite) -> str:
    if method in ("random", "most_popular"):
        return "baselines"
    if method.startswith("generative_"):
        return "generative"
    if suite.llm and method.startswith(suite.llm.get("name", "llm") + "_"):
        return "llm"
    return "learned"


def _kept_methods(summary: Path, rows: list[str]) -> dict:
    """Methods of the families not re-run, from an earlier summary.json (which must exist then)."""
    if set(rows) == set(ROW_FAMILIES):
        return {}
    if not summary.exists():
        raise SuiteError(f"only rows {', '.join(rows)} requested, but {summary} does not exist to keep the others "
                         "from: run the whole suite once first")
    return json.loads(summary.read_text())["methods"]


def _learned_methods(suite: Suite, env, runs_dir: Path, output: Path, report_only: bool, select: dict) -> dict:
    """Train (or reuse) the suite's algorithms through the generic suite, then score each seed's latest
    checkpoint."""
    from orchestrator.run_dir import latest_checkpoint, load_checkpoint

    summary = run_suite(suite, runs_dir, output / "training", report_only=report_only, **select)
    (task,) = summary
    methods = {}
    for algorithm, entry in summary[task].items():
        results = []
        for seed in entry["complete_seeds"]:
            checkpoint = latest_checkpoint(runs_dir / task / algorithm / f"seed{seed}")
            data = load_checkpoint(checkpoint)
            results.append(_score(env, trained_policy(data["config"], data["state"]["trainers"], env), seed))
        if results:
            methods[algorithm] = _combine(results, entry["env_steps"], entry["complete_seeds"])
    return methods


def _generative_methods(suite: Suite, env, seeds: list[int], log_dir: Path) -> dict:
    """Per seed: pretrain one generative policy, then continue it with each configured loss (in this
    process), so the losses start from the same model and see the same requests."""
    import csv

    from flexmarl.generative import GenerativeConfig, GenerativeRecommender

    settings = dict(suite.generative)
    losses = settings.pop("losses", [])
    per_loss: dict[str, list[dict]] = {loss: [] for loss in losses}
    pretrained_only: list[dict] = []
    samples = logged = 0
    for seed in seeds if losses else []:
        pretrained = GenerativeRecommender(env, GenerativeConfig(loss=losses[0], seed=seed, **settings))
        if pretrained.cfg.pretrain_steps:
            pretrained.pretrain()
            logged = pretrained.cfg.pretrain_steps * pretrained.cfg.pretrain_batch
            pretrained_only.append(_score(env, pretrained.scores, seed))
        for loss in losses:
            model = pretrained.with_loss(loss)
            history = model.train()
            log_dir.mkdir(parents=True, exist_ok=True)
            with (log_dir / f"generative_{loss}_seed{seed}.csv").open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(history[0]))
                writer.writeheader()
                writer.writerows(history)
            per_loss[loss].append({**_score(env, model.scores, seed), "final_valid_rate": history[-1]["valid_rate"],
                                   "final_kl": history[-1]["kl"]})
            samples = model.samples
    methods = {}
    if pretrained_only:  # the supervised starting point of every loss: what RL adds is measured against it
        methods["generative_pretrained"] = {**_combine(pretrained_only, 0, seeds), "logged_pairs": logged}
    for loss, results in per_loss.items():
        methods[f"generative_{loss}"] = _combine(results, samples, seeds)
        for key in ("final_valid_rate", "final_kl"):
            methods[f"generative_{loss}"][key] = float(np.mean([r[key] for r in results]))
        methods[f"generative_{loss}"]["logged_pairs"] = logged
    return methods


def _table(suite: Suite, methods: dict, scenarios, throughput: dict) -> str:
    lines = [f"# Suite `{suite.name}`: multi-scenario recommendation", "",
             f"Team reward per simulated session (greedy, {EVAL_SESSIONS} sessions per seed; mean ± std over "
             f"seeds), each scenario's share, and offline hit rate@10 / NDCG@10 of the held-out MovieLens-1M "
             f"item among 19 unrated ones ({OFFLINE_USERS} users, mean over scenarios). Training curves: "
             "`training/`. Generative rows: pretrained on logged (user, liked item) pairs, then env steps = "
             "sampled (request, code) pairs scored by the user model; `generative_pretrained` is the "
             "supervised starting point every loss continues from. `llm_*` rows: language-model scenario agents "
             "(task `recsys_sessions`, trained through the orchestrator), env steps = agent calls (one user "
             "served one item); `llm_pretrained` is their warm start (docs/recsys.md).", "",
             "| method | team reward | " + " | ".join(scenarios) + " | HR@10 | NDCG@10 | env steps | seeds |",
             "|---|---|" + "---|" * len(scenarios) + "---|---|---|---|"]
    for name, m in methods.items():
        shares = " | ".join(f"{m['scenario_reward'][s]:.2f}" for s in scenarios)
        lines.append(f"| {name} | {m['team_reward_mean']:.2f} ± {m['team_reward_std']:.2f} | {shares} | "
                     f"{m['hit_rate_at_10']:.3f} | {m['ndcg_at_10']:.3f} | {m['env_steps']:,} | {len(m['seeds'])} |")
    rates = ", ".join(f"{rate:,.0f} ({users})" for users, rate in throughput["env_steps_per_s"].items())
    lines += ["", "Simulator speed, env steps/s (users stepped per call) with random actions in one process "
              f"(`throughput.json`): {rates}."]
    if suite.pass_criteria:
        lines += ["", "## Pass criteria", "", suite.pass_criteria]
    return "\n".join(lines) + "\n"
