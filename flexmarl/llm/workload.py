"""The LLM workload: agents of a text task, each model group with its own causal LM.

- rollout: `WorkflowWorker`s run the task's workflow and call per-model-group inference engines (vLLM or
  HF actors on the rollout pool, `EngineFleet`); each request yields one micro-batch per model group whose
  GRPO groups are complete, so the microbatch pipeline keeps zero policy lag;
- training: one `LLMGroupTrainer` per model group, or groups time-sharing `resources.trainer_slots`
  trainer actors (flexmarl/llm/slots.py);
- weights: after each global batch, each trainer's weights go straight to that group's engines as version
  k+1 (by reference: trainer -> object store -> engines, never through the driver), in place, into idle
  engines only; workflow workers hold no weights.
Engines that die mid-request are replaced (loaded with the group's current weights and version) and the
core sends the requests that were using them again under the same sample ids: nothing lost, nothing twice.
An engine that dies during a weight push is replaced too; a replacement that cannot start where its
bundle is (its node died with the engine) is started again on a live node (flexmarl/llm/fleet.py).

Units: trajectories (one query answered by the whole team), agent calls and generated tokens; a request's
team reward per trajectory gives `charts/reward_mean`, the task's success flag `charts/success_rate`.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from flexmarl.actors import ActorSpec, llm_actors
from flexmarl.config import Config
from flexmarl.llm.fleet import EngineFleet
from flexmarl.llm.groups import engine_pools
from flexmarl.llm.setup import check_context, check_llm_run, check_nodes_read_models, ensure_models
from flexmarl.llm.slots import SlotGroupHandle, make_slotted_trainers
from flexmarl.llm.workflow import EngineDiedError, TaskFailure, WorkflowResult, WorkflowWorker
from flexmarl.workload import ProgressUnit, Runtime

log = logging.getLogger(__name__)


def _root_cause(exc: BaseException) -> BaseException:
    return getattr(exc, "cause", None) or exc  # Ray wraps remote exceptions; `cause` is the original


class LLMWorkload:
    weights_apply_between_requests = False  # an engine takes a push only when idle (flexmarl/llm/engines/base.py)

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.task, self.groups = check_llm_run(cfg)  # config errors, before any actor starts
        ensure_models(cfg, self.groups)
        check_context(cfg, self.groups)
        llm = cfg.llm
        self.progress = ProgressUnit("trajectories", "traj", llm.queries_per_iteration * llm.group_size,
                                     "charts/reward_mean")
        self.task_errors = 0

    @property
    def inference_starts_synced(self) -> bool:
        """Engines and trainers load the same checkpoints; an adapter that starts from `init` is loaded by
        its trainer and reaches the engines with the first push."""
        return not any(g.adapter is not None and g.adapter.init for g in self.groups)

    # -- actors -----------------------------------------------------------------------------------
    def actors(self) -> list[ActorSpec]:
        return llm_actors([g.name for g in self.groups], self.cfg.llm.engines_per_agent, self.cfg.rollout.num_workers,
                          self.cfg.resources.trainer_slots, [p.name for p in engine_pools(self.groups)])

    def create_actors(self, runtime: Runtime, workers: list) -> dict:
        cfg = self.cfg
        check_nodes_read_models(cfg, runtime, self.groups, self.actors())  # before any actor starts
        self.runtime, self.workers, self.trainers = runtime, workers, {}
        self.fleet = EngineFleet(cfg, runtime, self.groups, workers, self.trainers)
        self.trainers.update(make_slotted_trainers(runtime, cfg, self.groups) if cfg.resources.trainer_slots > 0 else {
            g.name: runtime.create(_trainer_class(), cfg, g.name, g.model_dir, cfg.run.seed * 1000 + i, g.adapter,
                                   device=runtime.device_for(f"trainer/{g.name}", cfg.trainer.device),
                                   actor=f"trainer/{g.name}")
            for i, g in enumerate(self.groups)})
        workers.extend(self.make_worker(i) for i in range(cfg.rollout.num_workers))
        return self.trainers

    def make_worker(self, index: int):
        # + 2 threads for control calls (engine replacement) while every request slot is busy
        return self.runtime.create(WorkflowWorker, self.cfg, index, self.groups, self.fleet.engines,
                                   self.fleet.incarnations, actor=f"worker/{index}",
                                   concurrency=self.cfg.llm.concurrent_requests + 2)

    @property
    def engines(self) -> dict[str, list]:
        return self.fleet.engines

    # -- weights: the engines hold them -----------------------------------------------------------
    def push_weights(self, weights: dict, version: int) -> list:
        return self.fleet.load(weights, version)

    def load_worker_weights(self, worker, weights: dict, version: int):
        return None

    # -- results and faults -----------------------------------------------------------------------
    def row_meta(self, result: WorkflowResult, group: str) -> dict:
        return {"num_active": result.num_active[group], "trajectories": len(result.team_rewards)}

    def check_result(self, result: WorkflowResult) -> None:
        """One warning line per request in which task code failed; past `llm.max_task_errors` the run stops."""
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

    def repair(self, exc: BaseException) -> bool:
        """A request that lost its engine goes again, after the engine is replaced."""
        cause = _root_cause(exc)
        if not isinstance(cause, EngineDiedError):
            return False
        self.fleet.repair(cause)
        return True

    # -- metrics ----------------------------------------------------------------------------------
    def count(self, results: list[WorkflowResult]) -> int:
        return sum(len(r.team_rewards) for r in results)

    def metrics(self, results: list[WorkflowResult]) -> dict:
        rewards = [x for r in results for x in r.team_rewards]
        successes = [x for r in results for x in r.successes]
        return {
            "charts/reward_mean": float(np.mean(rewards)) if rewards else float("nan"),
            "charts/success_rate": float(np.mean(successes)) if successes else float("nan"),
            "perf/engine_restarts": self.fleet.restarts,
        }

    def after_iteration(self, metrics: dict, timeline: dict) -> None:
        metrics["perf/tokens_per_s"] = metrics.get("llm/generated_tokens", 0) / metrics["perf/iteration_s"]
        self._balance(metrics)
        self._slot_metrics(metrics, timeline)

    def engine_calls(self) -> dict[str, list[int]]:
        """Calls each engine instance served, summed over workers (per-agent request counts)."""
        per_worker = self.runtime.get([self.runtime.call(w, "engine_calls") for w in self.workers])
        return {g: [sum(c[g][i] for c in per_worker) for i in range(len(per_worker[0][g]))] for g in per_worker[0]}

    def _slot_metrics(self, metrics: dict, timeline: dict) -> None:
        """Trainer-slot swaps of the iteration: count, seconds, and the share of those seconds spent
        while rollout was still running (hidden behind it)."""
        slots = list({id(h.slot): h.slot for h in self.trainers.values() if isinstance(h, SlotGroupHandle)}.values())
        if not slots:
            return
        stats = self.runtime.get([self.runtime.call(slot, "swap_stats") for slot in slots])
        rollout_end = max(end for *_, end in timeline["rollout"])
        spans = [span for s in stats for span in s["spans"]]
        total = sum(end - start for start, end in spans)
        hidden = sum(max(0.0, min(end, rollout_end) - max(start, timeline["start"])) for start, end in spans)
        metrics["perf/trainer_swaps"] = sum(s["swaps"] for s in stats)
        metrics["perf/swap_s"] = total
        metrics["perf/swap_hidden_share"] = hidden / total if total > 0 else 0.0

    # -- inter-agent load balancing (between iterations) -----------------------------------------
    def pool_loads(self, metrics: dict) -> dict[str, float]:
        """Calls each engine pool served in the iteration that produced `metrics` (its agents' calls)."""
        return {p.name: float(sum(metrics.get(f"llm/calls/{agent}", 0) for agent in p.agents)) for p in self.fleet.pools}

    def _balance(self, metrics: dict) -> None:
        """Record per-pool load and instances of the finished iteration, then rebalance for the next."""
        loads = self.pool_loads(metrics)
        for p in self.fleet.pools:
            metrics[f"llm/load/{p.name}"] = loads[p.name]
            metrics[f"llm/engines/{p.name}"] = len(self.engines[p.name])
        start = time.time()
        planned = self.fleet.rebalance(loads) if self.cfg.llm.load_balancing else []
        metrics["perf/rebalance_s"] = time.time() - start
        metrics["llm/engine_moves"] = len(planned)


def logprob_agreement(workload: LLMWorkload, samples: int = 8, seed: int = 0) -> float:
    """Max |engine logprob - trainer logprob| over sampled tokens, right after a weight push: both hold
    the same version, so this checks that the pushed weights are the trained ones."""
    from flexmarl.llm.models import load_tokenizer  # transformers: only when asked

    runtime, rng = workload.runtime, np.random.default_rng(seed)
    worst = 0.0
    for g in workload.groups:
        tokenizer = load_tokenizer(g.model_dir)
        examples = workload.task.sft_examples(rng, samples)[g.agents[0]]
        prompts = [tokenizer.encode(prompt) for prompt, _ in examples]
        engine = workload.engines[g.pool][0]
        outs = runtime.get([runtime.call(engine, "generate", p, workload.cfg.llm.max_new_tokens, 1.0, 1000 + i,
                                         workload.fleet.version, *g.push_args) for i, p in enumerate(prompts)])
        recomputed = runtime.get(runtime.call(workload.trainers[g.name], "token_logprobs", prompts,
                                              [list(o.token_ids) for o in outs]))
        for out, ref in zip(outs, recomputed):
            if out.logprobs:
                worst = max(worst, float(np.max(np.abs(np.asarray(out.logprobs) - np.asarray(ref)))))
    return worst


def _trainer_class():
    from flexmarl.llm.trainer import LLMGroupTrainer  # torch and transformers: only when trainers start

    return LLMGroupTrainer
