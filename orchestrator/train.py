"""The training run: iterate the orchestrator, write metrics, checkpoint, evaluate, resume."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from envs import describe_env
from flexmarl.config import Config, config_from_saved
from flexmarl.errors import plain_text
from flexmarl.groups import build_groups, critic_uses_state
from flexmarl.llm.engines.base import WeightSyncError
from flexmarl.llm.fleet import EngineFailure
from flexmarl.llm.workflow import TaskFailure
from flexmarl.rollout import EnvOutputError, EnvStepError, RandomPolicyBackend, TorchPolicyBackend
from flexmarl.rollout.evaluate import evaluate_policy
from flexmarl.rollout.worker import make_eval_env
from orchestrator.core import make_orchestrator
from orchestrator.dispatch import WorkerFailure
from orchestrator.run_dir import (MetricsWriter, latest_checkpoint, load_checkpoint, prepare_run_dir,
                                  record_eval_episodes, resume_checkpoint, resume_command, save_checkpoint)
from orchestrator.runtime import DataLostError, WorkerDiedError, make_runtime, ray_address

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """A run stopped on bad env output, an env exception, or workers that kept dying."""


def _root_cause(exc: BaseException) -> BaseException:
    return getattr(exc, "cause", None) or exc  # Ray wraps remote exceptions; `cause` is the original


def cluster_address(cfg: Config, address: str | None) -> str | None:
    """The Ray cluster a run joins (`--address`, else RAY_ADDRESS), None for a local or serial run."""
    return ray_address(address) if cfg.run.mode == "ray" else None


def train(cfg: Config, run_dir: Path, resume: bool = False, address: str | None = None,
          on_start: Callable[[Path], None] | None = None) -> dict:
    """Train until `run.iterations`; returns the last iteration's metrics. The run directory and its
    config.yaml are written once the orchestrator's actors are placed (then `on_start(run_dir)` is called):
    a config or placement error leaves no new run directory and a resumed one as it was."""
    address = cluster_address(cfg, address)
    checkpoint = resume_checkpoint(run_dir, address) if resume else None  # a corrupt one: refused before Ray
    runtime = make_runtime(cfg, address)
    orch = None
    writer = None
    last: dict = {}
    try:
        orch = make_orchestrator(cfg, runtime)
        prepare_run_dir(run_dir, cfg, resume)
        if on_start is not None:
            on_start(run_dir)
        if resume and checkpoint is None:
            log.warning("%s has no checkpoint; starting from iteration 0", run_dir)
        if checkpoint is not None:
            orch.set_state(load_checkpoint(checkpoint, orch.groups)["state"])
            log.info("resumed from %s (iteration %d)", checkpoint, orch.iteration)
        unit = orch.workload.progress  # env steps (MARL), trajectories (LLM): the bar, TensorBoard's step, resume
        writer = MetricsWriter(run_dir, unit.name, resume_after_iteration=orch.iteration if resume else None,
                               resume_step=orch.progress)
        bar = tqdm(total=cfg.run.iterations * unit.per_iteration, initial=orch.progress, unit=unit.short,
                   disable=not cfg.run.progress, dynamic_ncols=True)
        while orch.iteration < cfg.run.iterations:
            try:  # a worker can die in any call to it, the checkpoint's get_state included
                metrics = orch.step()
                if cfg.run.eval_every and orch.iteration % cfg.run.eval_every == 0:
                    evaluation = orch.evaluate(cfg.run.eval_episodes)
                    metrics.update(record_eval_episodes(run_dir, orch.iteration, {unit.name: orch.progress},
                                                        evaluation))
                writer.write(metrics)
                last = metrics
                bar.update(metrics[unit.name] - bar.n)
                score = metrics[unit.score]
                bar.set_postfix(iter=orch.iteration, ret=f"{score:.2f}" if not math.isnan(score) else "-",
                                sps=f"{metrics[f'{unit.name}_per_s']:.0f}")
                every = cfg.run.checkpoint_every
                if (every and orch.iteration % every == 0) or orch.iteration == cfg.run.iterations:
                    save_checkpoint(run_dir, cfg, orch.groups, orch.get_state())
            except (EnvStepError, EnvOutputError, WorkerFailure, WorkerDiedError, DataLostError, EngineFailure,
                    WeightSyncError, TaskFailure) as exc:
                raise _stop(run_dir, exc, address) from exc
        bar.close()
        return last
    finally:
        if writer is not None:
            writer.close()
        if orch is not None:
            orch.shutdown()
        else:
            runtime.shutdown()


def _stop(run_dir: Path, exc: BaseException, address: str | None = None) -> TrainingError:
    """Write error.txt, naming what failed (a dead actor by kind, group and index), and say where the run
    can continue from (and on which cluster).

    A dead trainer actor is not replaced mid-iteration: its optimizer and value-normaliser state since the
    last checkpoint is gone, so the run stops and `--resume` continues exactly from that checkpoint."""
    saved = latest_checkpoint(run_dir)
    cause = _root_cause(exc)
    what = _actor_death(exc) if isinstance(exc, WorkerDiedError) else f"{type(cause).__name__}: {cause}"
    resume = (f"Continue from {saved.name} with: {resume_command(run_dir, address)}" if saved
              else "No checkpoint was written yet; start the run again.")
    message = plain_text(f"{what}\nThe run directory {run_dir} keeps every metric row and checkpoint written before this "
               f"error. {resume}")
    (Path(run_dir) / "error.txt").write_text(message + "\n")
    return TrainingError(message)


def _actor_death(exc: WorkerDiedError) -> str:
    """Who died and why the run cannot go on without it."""
    actor = exc.actor
    if actor is None:
        return f"an actor died ({exc})"
    if actor.role == "trainer":
        return (f"a trainer actor died: the {actor.describe()} ({exc}); a trainer is not replaced mid-run, because its "
                "state since the last checkpoint died with it")
    if actor.role == "engine":
        return (f"an engine actor died: the {actor.describe()} ({exc}); an engine is replaced when it dies serving "
                "requests or during a weight push, not while it moves between groups")
    return f"a {actor.role} actor died: the {actor.describe()} ({exc})"


def _eval_setup(cfg: Config, seed: int, episodes: int):
    env = make_eval_env(cfg, episodes)
    spec = describe_env(env, seed=seed)
    return env, spec, build_groups(cfg, spec)


def evaluate_checkpoint(path: Path, episodes: int, seed: int = 12345, sample: bool = False) -> dict:
    """Greedy evaluation of a checkpoint (`sample`: of its sampling policy), in this process (no Ray needed)."""
    data = load_checkpoint(path)
    cfg = config_from_saved(data["config"])
    env, spec, groups = _eval_setup(cfg, seed, episodes)
    load_checkpoint(path, groups)  # refuses a checkpoint whose groups no longer match the env
    backend = TorchPolicyBackend(cfg, groups)
    weights = {
        name: {"policy": {k: v.numpy() for k, v in s["policy"].items()}, "value_norm": s["value_norm"]}
        for name, s in data["state"]["trainers"].items()
    }
    backend.set_weights(weights, int(data["state"]["iteration"]))
    result = evaluate_policy(env, spec, groups, backend, critic_uses_state(cfg), cfg.env.global_state, episodes, seed,
                             sample)
    result["iteration"] = int(data["state"]["iteration"])
    return result


def random_policy_baseline(cfg: Config, episodes: int, seed: int = 12345) -> dict:
    """The same evaluation with uniform random actions."""
    env, spec, groups = _eval_setup(cfg, seed, episodes)
    backend = RandomPolicyBackend(cfg, groups)
    return evaluate_policy(env, spec, groups, backend, critic_uses_state(cfg), cfg.env.global_state, episodes, seed)
