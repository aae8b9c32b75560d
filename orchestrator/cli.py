"""`flexmarl` command line: train, eval, bench."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from flexmarl.config import ConfigError, load_config
from orchestrator.run_dir import CheckpointError, check_output_dir, choose_run_dir, load_run_config, resume_command


class UsageError(ValueError):
    """A command-line argument outside its allowed range, or a bad suite file (reported like a config error)."""


def _cmd_train(args) -> int:
    from orchestrator.train import TrainingError, cluster_address, train

    if args.resume:
        run_dir = Path(args.resume)
        overrides = ([args.config] if args.config else []) + args.overrides  # no CONFIG with --resume
        cfg = load_run_config(run_dir, overrides)
        _check_env(cfg)
    else:
        if not args.config:
            raise SystemExit("flexmarl train: give a CONFIG file or --resume RUN_DIR")
        cfg = load_config(args.config, args.overrides)
        check_output_dir(cfg, os.environ)
        _check_env(cfg)
        run_dir = choose_run_dir(cfg)  # created by train once the actors are placed
    try:
        metrics = train(cfg, run_dir, resume=bool(args.resume), address=args.address,
                        on_start=lambda path: print(f"run directory: {path}", flush=True))
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: no traceback, just where the run is and how to continue it
        if not run_dir.exists():
            print("\ninterrupted before the run started; nothing was written", file=sys.stderr)
        else:
            print(f"\ninterrupted: run directory {run_dir}; continue from its latest checkpoint with: "
                  f"{resume_command(run_dir, cluster_address(cfg, args.address))}", file=sys.stderr)
        return 130
    if cfg.run.workload == "llm":
        _print_llm_summary(cfg, run_dir, metrics)
    else:
        _print_summary(cfg, run_dir, metrics)
    return 0


def _print_llm_summary(cfg, run_dir: Path, last: dict) -> None:
    import csv
    import json

    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    from flexmarl.llm.groups import models_folder

    build = Path(models_folder(cfg.llm)) / "build.json"
    if not cfg.llm.models and build.exists():
        print(f"warm-started team (build.json, sampled): success {json.loads(build.read_text())['warm_start_success']:.3f}")
    for key, what in (("charts/reward_mean", "mean reward"), ("charts/success_rate", "sampled success")):
        values = [float(r[key]) for r in rows if r.get(key)]
        if values:  # windows of up to 10 iterations: one iteration's 16 queries are a noisy estimate
            n = max(1, min(10, len(values) // 2))
            print(f"{what}: first {n} iterations {sum(values[:n]) / n:.3f}, last {n} iterations {sum(values[-n:]) / n:.3f}")
    evals = [(r["iteration"], float(r["eval/win_rate"])) for r in rows if r.get("eval/win_rate")]
    if evals:
        print("greedy success (eval/win_rate): " + ", ".join(f"iteration {i}: {v:.3f}" for i, v in evals))
    if last:
        print(f"tokens/s (last iteration): {last.get('perf/tokens_per_s', 0):.0f}, "
              f"step time {last['perf/iteration_s']:.2f} s, weight push {last['perf/weight_push_s']:.3f} s")
    print(f"metrics: {run_dir / 'metrics.csv'}; checkpoints: {run_dir / 'checkpoints'}")


def _cmd_llm_export(args) -> int:
    from orchestrator.llm_export import export_llm_checkpoint

    for group, path in export_llm_checkpoint(Path(args.checkpoint), Path(args.out)).items():
        print(f"{group}: {path}")
    return 0


def _cmd_llm_build(args) -> int:
    import yaml

    from flexmarl.llm.build import build_task_models
    from flexmarl.llm.groups import default_model_dir
    from flexmarl.llm.tasks import task_class

    try:
        task_class(args.task)
    except ValueError as exc:
        raise UsageError(f"flexmarl llm build --task: got {args.task!r}; allowed: a registered task or "
                         f"'module:Class' naming a TextTask subclass; {exc}") from None
    kwargs = yaml.safe_load(args.task_kwargs) if args.task_kwargs else {}
    if not isinstance(kwargs, dict):
        raise UsageError(f"flexmarl llm build --task-kwargs: got {args.task_kwargs!r}; allowed: a YAML mapping, "
                         "e.g. '{num_distractors: 2}'")
    out = args.out or default_model_dir(args.task)
    try:
        paths = build_task_models(args.task, out, seed=args.seed, task_kwargs=kwargs)
    except TypeError as exc:  # the task's constructor refused the kwargs
        raise UsageError(f"flexmarl llm build --task-kwargs: got {kwargs!r}; allowed: keyword arguments of "
                         f"{args.task} ({exc})") from None
    for agent, path in paths.items():
        print(f"{agent}: {path}")
    return 0


def _check_env(cfg) -> None:
    """Build the env (MARL) or check the task and checkpoints (LLM) before Ray starts or a run directory
    exists: their errors are config errors."""
    if cfg.run.workload == "marl":
        from flexmarl.env_probe import probe_env

        probe_env(cfg)
    else:
        from flexmarl.llm.setup import check_llm_run

        check_llm_run(cfg)


def _print_summary(cfg, run_dir: Path, last: dict) -> None:
    import csv

    from orchestrator.run_dir import latest_checkpoint
    from orchestrator.train import evaluate_checkpoint, random_policy_baseline

    with (run_dir / "metrics.csv").open() as f:
        returns = [float(r["episode_return_mean"]) for r in csv.DictReader(f) if r.get("episode_return_mean")]
    if returns:
        tail = returns[-3:]
        print(f"training episode return: first iteration {returns[0]:.2f}, last {len(tail)} iterations {sum(tail) / len(tail):.2f}")
    episodes = cfg.run.eval_episodes
    trained = evaluate_checkpoint(latest_checkpoint(run_dir), episodes)
    random = random_policy_baseline(cfg, episodes)
    print(f"evaluation over {episodes} episodes: trained policy (greedy) {trained['eval/return_mean']:.2f}, "
          f"uniform random policy {random['eval/return_mean']:.2f}")
    if last:
        print(f"env steps: {last['env_steps']}, env steps/s (last iteration): {last['env_steps_per_s']:.0f}")
    print(f"metrics: {run_dir / 'metrics.csv'}; checkpoints: {run_dir / 'checkpoints'}")


def _cmd_eval(args) -> int:
    from orchestrator.train import evaluate_checkpoint

    if args.episodes <= 0:
        raise UsageError(f"flexmarl eval --episodes: got {args.episodes}; allowed: an integer > 0")
    result = evaluate_checkpoint(Path(args.checkpoint), args.episodes, args.seed, sample=args.sample)
    policy = "sampled actions" if args.sample else "greedy"
    line = f"checkpoint iteration {result['iteration']} ({policy}): mean return {result['eval/return_mean']:.3f} over {args.episodes} episodes"
    if "eval/win_rate" in result:
        line += f", win rate {result['eval/win_rate']:.3f}"
    print(line)
    return 0


def _cmd_bench(args) -> int:
    from benchmarks import commands  # the one import of benchmarks/ outside it (tests/test_layering.py)

    out = Path(args.out) if args.out else None
    split = lambda text: [x for x in text.split(",") if x] if text else None  # noqa: E731
    try:
        if args.what == "suite":
            if not args.name:
                raise SystemExit("flexmarl bench suite NAME: a built-in suite (configs/suites/*.yaml: smax, grf, mpe, grasp, ...) or a suite YAML")
            seeds = [int(s) for s in split(args.seeds)] if args.seeds else None
            summary, output = commands.suite(
                args.name, out=out, runs_dir=Path(args.runs_dir) if args.runs_dir else None, budget=args.budget,
                seeds=seeds, tasks=split(args.only_tasks), algorithms=split(args.only_algorithms), mode=args.mode,
                rows=split(args.rows), report_only=args.report_only)
            print(json.dumps(summary, indent=1))
            print(f"report: {output / 'table.md'}")
            return 0
        summary = {
            "throughput": lambda: commands.throughput(args.duration, out),
            "pipeline": lambda: commands.pipeline(args.iterations or 4, out),
            "aggregators": lambda: commands.aggregators(out),
            "llm": lambda: commands.llm(args.iterations or 4, out, args.set),
            "scale": lambda: commands.scale(args.iterations or 4, out),
            "lora": lambda: commands.lora([int(n) for n in split(args.agents)] if args.agents else None,
                                          args.iterations or 4, args.quick, out, args.set),
            "lora-alpha": lambda: commands.lora_alpha(args.iterations, out),
            "benchmarl": lambda: commands.benchmarl([int(s) for s in split(args.seeds)] if args.seeds else None, out),
        }[args.what]()
    except (commands.SuiteError, commands.MissingSetupError) as exc:
        raise UsageError(str(exc)) from exc
    print(json.dumps(summary, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flexmarl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train from a YAML config, or resume a run directory")
    t.add_argument("config", nargs="?", help="YAML config (configs/demo.yaml)")
    t.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. algo.lr_actor=1e-3")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    t.add_argument("--address", help="join an existing Ray cluster (default: RAY_ADDRESS, else a local one)")
    t.set_defaults(fn=_cmd_train)
    e = sub.add_parser("eval", help="evaluation of a checkpoint (greedy unless --sample)")
    e.add_argument("checkpoint", help="checkpoint directory (runs/<run>/checkpoints/iter_NNNNNN)")
    e.add_argument("--episodes", type=int, default=20)
    e.add_argument("--seed", type=int, default=12345)
    e.add_argument("--sample", action="store_true",
                   help="draw actions from the policy (seeded by --seed) instead of taking the most likely one")
    e.set_defaults(fn=_cmd_eval)
    b = sub.add_parser("bench", help="benchmarks that write benchmarks/results/*.json")
    b.add_argument("what", choices=["throughput", "pipeline", "aggregators", "suite", "llm", "scale", "lora",
                                          "lora-alpha", "benchmarl"])
    b.add_argument("name", nargs="?", help="suite: a built-in name (configs/suites/*.yaml: smax, grf, mpe, grasp, ...) or a suite YAML path")
    b.add_argument("--duration", type=float, default=60.0, help="timed seconds per system")
    b.add_argument("--iterations", type=int, help="timed iterations per mode and round (pipeline); timed rounds (scale); "
                   "timed iterations per arm (lora) (default 4); iterations per run (lora-alpha, default 40)")
    b.add_argument("--out", "--output", help="result file (default benchmarks/results/<what>.json); suites: a "
                   "directory (default benchmarks/results/<suite>)")
    b.add_argument("--seeds", help="suite: comma-separated seeds instead of the suite's; benchmarl: seeds (default 0,1)")
    b.add_argument("--budget", type=int, help="suite: env steps per run instead of the suite's")
    b.add_argument("--only-tasks", help="suite: comma-separated subset of tasks")
    b.add_argument("--only-algorithms", help="suite: comma-separated subset of algorithms")
    b.add_argument("--mode", choices=["ray", "serial"], help="suite: override run.mode")
    b.add_argument("--runs-dir", help="suite: where run directories live (default runs/suites/<suite>)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="llm, lora: config overrides of the benchmark's workload, e.g. --set llm.queries_per_request=1")
    b.add_argument("--agents", help="lora: comma-separated even agent counts (default 2,4,8)")
    b.add_argument("--quick", action="store_true", help="lora: the tiny base (no widening) and a smaller batch")
    b.add_argument("--rows", help="recsys suite: comma-separated row families to re-run (baselines, learned, "
                   "generative, llm); the others are kept from the existing summary.json")
    b.add_argument("--report-only", action="store_true", help="suite: rebuild the report from existing runs")
    b.set_defaults(fn=_cmd_bench)
    m = sub.add_parser("llm", help="LLM agents: build a task's tiny models, export a run's trained models")
    llm = m.add_subparsers(dest="action", required=True)
    mb = llm.add_parser("build", help="build a task's tiny warm-started models locally")
    mb.add_argument("--task", default="speaker_listener",
                    help="a registered text task (speaker_listener, recsys_sessions, speaker_listener_skewed) or "
                    "'module:Class' naming your TextTask subclass, as in llm.task")
    mb.add_argument("--task-kwargs", metavar="YAML", help="the task's constructor arguments as a YAML mapping, as in "
                    "llm.task_kwargs, e.g. '{num_distractors: 2}'")
    mb.add_argument("--out", help="one checkpoint per agent goes here (default runs/llm-models/<task>, a "
                    "'module:Class' task as module.Class: where llm.model_dir looks by default)")
    mb.add_argument("--seed", type=int, default=0)
    mb.set_defaults(fn=_cmd_llm_build)
    me = llm.add_parser("export", help="a run checkpoint's trained models as Hugging Face directories")
    me.add_argument("checkpoint", help="checkpoint directory of an LLM run (runs/<run>/checkpoints/iter_NNNNNN)")
    me.add_argument("out", help="OUT/<model group>/ gets each group's config, weights, tokenizer, generation config")
    me.set_defaults(fn=_cmd_llm_export)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """argparse, except that `train` overrides may also follow its options (`train CONFIG --address X key=val`):
    argparse takes positionals in one run, so the ones after an option come back unrecognised."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "train":
        args.overrides += [item for item in extra if not item.startswith("-")]
        extra = [item for item in extra if item.startswith("-")]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, CheckpointError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
