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

Inter-agent load balancing (`llm.load_balancing`): after each iteration (no request in flight) the calls
each model group served go through `flexmarl.llm.balance.plan_allocation`; an instance moved from group
A to B is reloaded in place with B's current weights and version when all groups' checkpoints share one
layout (config.json and tokenizer), else it is rebuilt from B's model dir; the workers' routers then
drop it from A and add it to B. With `resources.trainer_slots` > 0, groups time-share trainer actors
(orchestrator/slots.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from flexmarl.config import Config
from flexmarl.llm.balance import moves, plan_allocation
from flexmarl.llm.cpus import engine_binding
from flexmarl.llm.engine_registry import engine_class
from flexmarl.llm.groups import EnginePool, engine_pools
from flexmarl.llm.workflow import EngineDiedError, WorkflowWorker
from orchestrator.orchestrator import JointOrchestrator
from orchestrator.llm_setup import check_context, check_llm_run, ensure_models
from orchestrator.placement import llm_actors, plan_placement
from orchestrator.runtime import Runtime
from orchestrator.store import ExperienceStore

log = logging.getLogger(__name__)


class EngineFailure(RuntimeError):
    """Inference engines died more often than `llm.max_engine_restarts` allows."""


class TaskFailure(RuntimeError):
    """The task's own code failed in more trajectories than `llm.max_task_errors` allows."""


def _root_cause(exc: BaseException) -> BaseException:
    return getattr(exc, "cause", None) or exc  # Ray wraps remote exceptions; `cause` is the original


class LLMOrchestrator(JointOrchestrator):
    def __init__(self, cfg: Config, runtime: Runtime):
        self.cfg, self.runtime = cfg, runtime
        self.task, self.groups = check_llm_run(cfg)  # config errors, before any actor starts
        ensure_models(cfg, self.groups)
        check_context(cfg, self.groups)
        self.store = ExperienceStore([g.name for g in self.groups])
        self._init_progress()
        self.engine_restarts = 0
        self.task_errors = 0
        n = cfg.llm.engines_per_agent
        self.pools = engine_pools(self.groups)  # engines: per pool (adapter groups share one; groups.py)
        runtime.place(plan_placement(cfg, llm_actors([g.name for g in self.groups], n, cfg.rollout.num_workers,
                                                     cfg.resources.trainer_slots, [p.name for p in self.pools])))
        self.incarnations = {p.name: [0] * n for p in self.pools}
        self.engines = {p.name: [self._make_engine(p, i) for i in range(n)] for p in self.pools}
        self.trainers = self._make_slotted_trainers() or {
            g.name: runtime.create(_trainer_class(), cfg, g.name, g.model_dir, cfg.run.seed * 1000 + i, g.adapter,
                                   actor=f"trainer/{g.name}")
            for i, g in enumerate(self.groups)
        }
        self.workers = [self._make_worker(i) for i in range(cfg.rollout.num_workers)]
        self.last_push_s = 0.0
        self._next_incarnation = 1
        self._reload_in_place = (same_checkpoint_layout([p.model_dir for p in self.pools])
                                 and not any(p.adapters for p in self.pools))

    # -- actors -----------------------------------------------------------------------------------
    def _make_engine(self, group: EnginePool, index: int):
        cfg, llm = self.cfg, self.cfg.llm
        self._engines_started = getattr(self, "_engines_started", 0) + 1
        settings = dict(model_dir=group.model_dir, seed=cfg.run.seed,
                        max_model_len=llm.max_prompt_tokens + llm.max_new_tokens,
                        omp_threads_bind=engine_binding(cfg, self._engines_started - 1),
                        kv_cache_gib=llm.engine_kv_cache_gib,
                        device=self.runtime.device_for(f"engine/{group.name}/{index}", llm.engine_device),
                        gpu_memory_utilization=llm.gpu_memory_utilization, engine_name=f"{group.name}/{index}",
                        max_batch=llm.engine_max_batch, **({"adapters": group.adapters} if group.adapters else {}))
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
        for g in self.groups:  # an adapter group pushes its adapter alone, into its pool's engines
            self._weights_refs[g.name] = self.runtime.call(self.trainers[g.name], "get_weights")
            acks += [self.runtime.call(e, "load_weights", self._weights_refs[g.name], self.iteration, *g.push_args)
                     for e in self.engines[g.pool]]
        self.runtime.get(acks)  # a failed push raises WeightSyncError naming the engine
        self.last_push_s = time.time() - start

    def _load_current_weights(self, pool: str, engine) -> None:
        for g in next(p for p in self.pools if p.name == pool).groups:
            ref = self._weights_refs.get(g.name)
            if ref is not None:
                self.runtime.get(self.runtime.call(engine, "load_weights", ref, self.iteration, *g.push_args))

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
        group = next(p for p in self.pools if p.name == dead.group)
        self.runtime.kill(self.engines[dead.group][dead.index])
        engine = self._make_engine(group, dead.index)
        self._load_current_weights(dead.group, engine)
        self.engines[dead.group][dead.index] = engine
        self.incarnations[dead.group][dead.index] += 1
        incarnation = self.incarnations[dead.group][dead.index]
        self.runtime.get([self.runtime.call(w, "set_engine", dead.group, dead.index, engine, incarnation)
                          for w in self.workers])

    def _publish(self, flight, result) -> None:
        super()._publish(flight, result)
        self._count_task_errors(result)

    def _count_task_errors(self, result) -> None:
        """One warning line per request in which task code failed; past the limit the run stops."""
        failed = sum(v for k, v in result.counters.items() if k.startswith("llm/task_errors/"))
        if not failed:
            return
        self.task_errors += failed
        limit = self.cfg.llm.max_task_errors
        if self.task_errors > limit:
            raise TaskFailure(f"the task {self.cfg.llm.task!r} failed in {self.task_errors} trajectories, more than "
                              f"llm.max_task_errors = {limit} allows; the last: {result.errors[-1]}")
        log.warning("task %r failed, its group dropped (%d of llm.max_task_errors = %d used): %s", self.cfg.llm.task,
                    self.task_errors, limit, "; ".join(result.errors))

    # -- metrics ----------------------------------------------------------------------------------
    def step(self) -> dict:
        metrics = super().step()
        metrics["perf/weight_push_s"] = self.last_push_s
        metrics["perf/engine_restarts"] = self.engine_restarts
        metrics["perf/tokens_per_s"] = metrics.get("llm/generated_tokens", 0) / metrics["perf/iteration_s"]
        metrics["charts/reward_mean"] = metrics["episode_return_mean"]
        self._balance(metrics)
        self._slot_metrics(metrics)
        return metrics

    def engine_calls(self) -> dict[str, list[int]]:
        """Calls each engine instance served, summed over workers (per-agent request counts)."""
        per_worker = self.runtime.get([self.runtime.call(w, "engine_calls") for w in self.workers])
        return {g: [sum(c[g][i] for c in per_worker) for i in range(len(per_worker[0][g]))] for g in per_worker[0]}


    # -- trainer slots (agent-centric training: groups time-share trainer actors) -----------------
    def _make_slotted_trainers(self) -> dict | None:
        """{group: handle} of groups sharing `resources.trainer_slots` trainer actors; None: one each."""
        if self.cfg.resources.trainer_slots <= 0:
            return None
        from orchestrator.slots import make_slotted_trainers

        return make_slotted_trainers(self.runtime, self.cfg, self.groups)

    def _slot_metrics(self, metrics: dict) -> None:
        """Trainer-slot swaps of the iteration: count, seconds, and the share of those seconds spent
        while rollout was still running (hidden behind it)."""
        from orchestrator.slots import SlotGroupHandle

        slots = list({id(h.slot): h.slot for h in self.trainers.values() if isinstance(h, SlotGroupHandle)}.values())
        if not slots:
            return
        stats = self.runtime.get([self.runtime.call(slot, "swap_stats") for slot in slots])
        rollout_end = max(end for *_, end in self.timeline["rollout"])
        spans = [span for s in stats for span in s["spans"]]
        total = sum(end - start for start, end in spans)
        hidden = sum(max(0.0, min(end, rollout_end) - max(start, self.timeline["start"])) for start, end in spans)
        metrics["perf/trainer_swaps"] = sum(s["swaps"] for s in stats)
        metrics["perf/swap_s"] = total
        metrics["perf/swap_hidden_share"] = hidden / total if total > 0 else 0.0

    # -- inter-agent load balancing (between iterations) -----------------------------------------
    def group_loads(self, metrics: dict) -> dict[str, float]:
        """Calls each model group served in the iteration that produced `metrics` (its agents' calls)."""
        return {p.name: float(sum(metrics.get(f"llm/calls/{agent}", 0) for agent in p.agents)) for p in self.pools}

    def _balance(self, metrics: dict) -> None:
        """Record per-group load and instances of the finished iteration, then rebalance for the next."""
        loads = self.group_loads(metrics)
        for g in self.pools:
            metrics[f"llm/load/{g.name}"] = loads[g.name]
            metrics[f"llm/engines/{g.name}"] = len(self.engines[g.name])
        start = time.time()
        planned = self.rebalance(loads) if self.cfg.llm.load_balancing else []
        metrics["perf/rebalance_s"] = time.time() - start
        metrics["llm/engine_moves"] = len(planned)

    def rebalance(self, loads: dict[str, float]) -> list[tuple[str, str]]:
        """Move engine instances between model groups so that they follow `loads` (calls per group),
        when the load disparity exceeds `llm.rebalance_threshold`; returns the (from, to) moves made.
        Call only between iterations: a moved instance must have no call in flight."""
        current = {g: len(e) for g, e in self.engines.items()}
        target = plan_allocation(loads, current, capacity=sum(current.values()),
                                 threshold=self.cfg.llm.rebalance_threshold)
        return self.apply_allocation(target) if target is not None else []

    def apply_allocation(self, target: dict[str, int]) -> list[tuple[str, str]]:
        """Give each group `target[group]` engine instances (same total), moving the fewest instances."""
        planned = moves({g: len(e) for g, e in self.engines.items()}, target)
        for donor, receiver in planned:
            self._move_engine(donor, receiver)
        if planned:
            log.info("engines moved between model groups %s; now %s", planned,
                     {g: len(e) for g, e in self.engines.items()})
        return planned

    def _move_engine(self, donor: str, receiver: str) -> None:
        """The donor's last instance (the others keep their indices) leaves the donor's routers, gets the
        receiver's current weights and version, and joins the receiver's routers."""
        rt = self.runtime
        index = len(self.engines[donor]) - 1
        engine = self.engines[donor].pop()
        self.incarnations[donor].pop()
        rt.get([rt.call(w, "remove_engine", donor, index) for w in self.workers])
        group = next(p for p in self.pools if p.name == receiver)
        new_index = len(self.engines[receiver])
        if self._reload_in_place:  # same architecture and tokenizer: only the weights differ
            weights = self._weights_refs.get(receiver)
            if weights is None:  # no push yet: the receiver trainer's (= its checkpoint's) weights
                weights = rt.call(self.trainers[receiver], "get_weights")
            rt.get(rt.call(engine, "load_weights", weights, self.iteration))
        else:  # another architecture: a fresh engine from the receiver's model dir
            rt.kill(engine)
            engine = self._make_engine(group, new_index)
            self._load_current_weights(receiver, engine)
        incarnation = self._next_incarnation
        self._next_incarnation += 1
        self.engines[receiver].append(engine)
        self.incarnations[receiver].append(incarnation)
        rt.get([rt.call(w, "set_engine", receiver, new_index, engine, incarnation) for w in self.workers])


def logprob_agreement(orch: LLMOrchestrator, samples: int = 8, seed: int = 0) -> float:
    """Max |engine logprob - trainer logprob| over sampled tokens, right after a weight push: both hold
    the same version, so this checks that the pushed weights are the trained ones."""
    from flexmarl.llm.models import load_tokenizer  # transformers: only when asked

    runtime, rng = orch.runtime, np.random.default_rng(seed)
    worst = 0.0
    for g in orch.groups:
        tokenizer = load_tokenizer(g.model_dir)
        examples = orch.task.sft_examples(rng, samples)[g.agents[0]]
        prompts = [tokenizer.encode(prompt) for prompt, _ in examples]
        engine = orch.engines[g.pool][0]
        outs = runtime.get([runtime.call(engine, "generate", p, orch.cfg.llm.max_new_tokens, 1.0, 1000 + i,
                                         orch.iteration, *g.push_args) for i, p in enumerate(prompts)])
        recomputed = runtime.get(runtime.call(orch.trainers[g.name], "token_logprobs", prompts,
                                              [list(o.token_ids) for o in outs]))
        for out, ref in zip(outs, recomputed):
            if out.logprobs:
                worst = max(worst, float(np.max(np.abs(np.asarray(out.logprobs) - np.asarray(ref)))))
    return worst


def same_checkpoint_layout(model_dirs: list[str]) -> bool:
    """True when every checkpoint has the same architecture settings (config.json, names aside) and
    the same tokenizer files, so an engine can switch between them by loading weights alone."""
    import json

    def layout(model_dir: str) -> tuple:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        for key in ("_name_or_path", "transformers_version"):
            config.pop(key, None)
        tokenizer = [(name, (Path(model_dir) / name).read_bytes()) for name in
                     ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
                     if (Path(model_dir) / name).exists()]
        return json.dumps(config, sort_keys=True), tokenizer

    layouts = [layout(d) for d in model_dirs]
    return all(x == layouts[0] for x in layouts[1:])


def _engine_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _trainer_class():
    from flexmarl.llm.trainer import LLMGroupTrainer

    return LLMGroupTrainer


def make_orchestrator(cfg: Config, runtime: Runtime) -> JointOrchestrator:
    return LLMOrchestrator(cfg, runtime) if cfg.run.workload == "llm" else JointOrchestrator(cfg, runtime)
