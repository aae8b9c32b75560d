"""LLM agents on the joint orchestrator: the same store, pipelines and checkpoints as the MARL workload.

What differs is only who produces rows and where weights go:
- rollout: `WorkflowWorker`s run the text task's workflow and call per-model-group inference engines
  (vLLM or HF actors on the rollout pool); each request yields one micro-batch per model group whose
  GRPO groups are complete, so the microbatch pipeline keeps zero policy lag;
- training: one `LLMGroupTrainer` per model group (its own causal LM and optimizer);
- weight sync: after each global batch, each trainer's weights go straight to that group's engines as
  version k+1 (by reference: trainer -> object store -> engines, never through the driver), in place.
Engines that die mid-request are replaced (loaded with the group's current weights and version) and the
requests that were using them are sent again under the same sample ids: nothing lost, nothing twice.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flexmarl.config import Config, ConfigError
from flexmarl.llm.cpus import engine_binding
from flexmarl.llm.engine import engine_class
from flexmarl.llm.groups import LLMGroup, build_llm_groups
from flexmarl.llm.tasks import make_task
from flexmarl.llm.workflow import EngineDiedError, WorkflowWorker
from orchestrator.orchestrator import JointOrchestrator
from orchestrator.placement import llm_actors, plan_placement
from orchestrator.runtime import Runtime
from orchestrator.store import ExperienceStore

log = logging.getLogger(__name__)


class EngineFailure(RuntimeError):
    """Inference engines died more often than `llm.max_engine_restarts` allows."""


def _root_cause(exc: BaseException) -> BaseException:
    return getattr(exc, "cause", None) or exc  # Ray wraps remote exceptions; `cause` is the original


def ensure_models(cfg: Config, groups: list[LLMGroup]) -> None:
    """Build the task's tiny warm-started models when the config points at the default build folder and
    it is empty; any other missing checkpoint is a config error."""
    missing = [g for g in groups if not (Path(g.model_dir) / "config.json").exists()]
    if not missing:
        return
    if cfg.llm.models:
        g = missing[0]
        raise ConfigError(f"llm.models.{g.name}", g.model_dir, "a local Hugging Face checkpoint directory (with config.json)")
    from flexmarl.llm.build import build_task_models

    log.info("no models in %s: building the task's tiny warm-started models there (once)", cfg.llm.model_dir)
    build_task_models(cfg.llm.task, cfg.llm.model_dir, seed=cfg.run.seed, log=log.info, **_task_kwargs(cfg))


def check_context(cfg: Config, groups: list[LLMGroup]) -> None:
    """Prompt + completion must fit every model's context, or the engines could not serve a call."""
    import json

    need = cfg.llm.max_prompt_tokens + cfg.llm.max_new_tokens
    for g in groups:
        context = json.loads((Path(g.model_dir) / "config.json").read_text()).get("max_position_embeddings")
        if context is not None and need > context:
            raise ConfigError("llm.max_prompt_tokens", cfg.llm.max_prompt_tokens,
                              f"at most {context - cfg.llm.max_new_tokens}: with llm.max_new_tokens = "
                              f"{cfg.llm.max_new_tokens} it must fit the {context}-token context of {g.model_dir}")


def _task_kwargs(cfg: Config) -> dict:
    return {"task_kwargs": cfg.llm.task_kwargs} if cfg.llm.task_kwargs else {}


class LLMOrchestrator(JointOrchestrator):
    def __init__(self, cfg: Config, runtime: Runtime):
        if cfg.pipeline.mode == "stale":
            raise ConfigError("pipeline.mode", "stale", "sync or microbatch for run.workload: llm")
        self.cfg, self.runtime = cfg, runtime
        self.task = make_task(cfg.llm.task, format_penalty=cfg.llm.format_penalty, **cfg.llm.task_kwargs)
        self.groups: list[LLMGroup] = build_llm_groups(cfg.llm, tuple(self.task.agents))
        ensure_models(cfg, self.groups)
        check_context(cfg, self.groups)
        self.store = ExperienceStore([g.name for g in self.groups])
        self._init_progress()
        self.engine_restarts = 0
        self._group_weights: dict[str, object] = {}
        """Per group, a reference to the weights of the current version (None: the checkpoint's)."""
        n = cfg.llm.engines_per_agent
        runtime.place(plan_placement(cfg, llm_actors([g.name for g in self.groups], n, cfg.rollout.num_workers)))
        self.incarnations = {g.name: [0] * n for g in self.groups}
        self.engines = {g.name: [self._make_engine(g, i) for i in range(n)] for g in self.groups}
        self.trainers = {
            g.name: runtime.create(_trainer_class(), cfg, g.name, g.model_dir, cfg.run.seed * 1000 + i,
                                   actor=f"trainer/{g.name}")
            for i, g in enumerate(self.groups)
        }
        self.workers = [self._make_worker(i) for i in range(cfg.rollout.num_workers)]
        self.last_push_s = 0.0

    # -- actors -----------------------------------------------------------------------------------
    def _make_engine(self, group: LLMGroup, index: int):
        cfg, llm = self.cfg, self.cfg.llm
        self._engines_started = getattr(self, "_engines_started", 0) + 1
        settings = dict(model_dir=group.model_dir, seed=cfg.run.seed,
                        max_model_len=llm.max_prompt_tokens + llm.max_new_tokens,
                        omp_threads_bind=engine_binding(cfg, self._engines_started - 1),
                        kv_cache_gib=llm.engine_kv_cache_gib,
                        device=self.runtime.device_for(f"engine/{group.name}/{index}", llm.device),
                        gpu_memory_utilization=llm.gpu_memory_utilization, engine_name=f"{group.name}/{index}",
                        max_batch=llm.engine_max_batch)
        # Concurrency: the calls of every in-flight request batch together inside the engine.
        concurrency = max(8, llm.concurrent_requests * llm.max_concurrent_calls)
        return self.runtime.create(engine_class(llm.backend), actor=f"engine/{group.name}/{index}",
                                   concurrency=concurrency, **settings)

    def _make_worker(self, index: int):
        cfg = self.cfg
        # + 2 threads for control calls (engine replacement) while every request slot is busy
        return self.runtime.create(WorkflowWorker, cfg, index, self.groups, self.engines, self.incarnations,
                                   actor=f"worker/{index}", concurrency=cfg.llm.concurrent_requests + 2)

    # -- weights ----------------------------------------------------------------------------------
    def sync_weights(self, workers: list[int] | None = None, wait: bool = True) -> None:
        """Push each trainer's weights (policy version = iteration) to its engines, in place. Workflow
        workers hold no weights, so a replaced worker needs nothing."""
        if workers is not None:
            return
        start = time.time()
        acks = []
        for g in self.groups:
            self._group_weights[g.name] = self.runtime.call(self.trainers[g.name], "get_weights")
            acks += [self.runtime.call(e, "load_weights", self._group_weights[g.name], self.iteration)
                     for e in self.engines[g.name]]
        self.runtime.get(acks)  # a failed push raises WeightSyncError naming the engine
        self.last_push_s = time.time() - start

    def _load_current_weights(self, group: str, engine) -> None:
        ref = self._group_weights.get(group)
        if ref is not None:
            self.runtime.get(self.runtime.call(engine, "load_weights", ref, self.iteration))

    # -- faults -----------------------------------------------------------------------------------
    def _repair(self, exc: Exception) -> bool:
        """A request that lost its engine goes again; the engine is replaced once, by the first request
        that reports it (later reports name an incarnation that is already gone)."""
        cause = _root_cause(exc)
        if not isinstance(cause, EngineDiedError):
            return super()._repair(exc)
        if cause.incarnation == self.incarnations[cause.group][cause.index]:
            self._replace_engine(cause)
        return True

    def _replace_engine(self, dead: EngineDiedError) -> None:
        self.engine_restarts += 1
        if self.engine_restarts > self.cfg.llm.max_engine_restarts:
            raise EngineFailure(f"{dead}; {self.engine_restarts - 1} engine restarts already used, "
                                f"llm.max_engine_restarts = {self.cfg.llm.max_engine_restarts}")
        log.warning("%s; starting a replacement with version %d", dead, self.iteration)
        group = next(g for g in self.groups if g.name == dead.group)
        self.runtime.kill(self.engines[dead.group][dead.index])
        engine = self._make_engine(group, dead.index)
        self._load_current_weights(dead.group, engine)
        self.engines[dead.group][dead.index] = engine
        self.incarnations[dead.group][dead.index] += 1
        incarnation = self.incarnations[dead.group][dead.index]
        self.runtime.get([self.runtime.call(w, "set_engine", dead.group, dead.index, engine, incarnation)
                          for w in self.workers])

    # -- metrics ----------------------------------------------------------------------------------
    def step(self) -> dict:
        metrics = super().step()
        metrics["perf/weight_push_s"] = self.last_push_s
        metrics["perf/engine_restarts"] = self.engine_restarts
        metrics["perf/tokens_per_s"] = metrics.get("llm/generated_tokens", 0) / metrics["perf/iteration_s"]
        metrics["charts/reward_mean"] = metrics["episode_return_mean"]
        return metrics

    def engine_calls(self) -> dict[str, list[int]]:
        """Calls each engine instance served, summed over workers (per-agent request counts)."""
        per_worker = self.runtime.get([self.runtime.call(w, "engine_calls") for w in self.workers])
        return {g: [sum(c[g][i] for c in per_worker) for i in range(len(per_worker[0][g]))] for g in per_worker[0]}


def _trainer_class():
    from flexmarl.llm.trainer import LLMGroupTrainer

    return LLMGroupTrainer


def make_orchestrator(cfg: Config, runtime: Runtime) -> JointOrchestrator:
    return LLMOrchestrator(cfg, runtime) if cfg.run.workload == "llm" else JointOrchestrator(cfg, runtime)
