"""The run's inference engines, per engine pool (`flexmarl/llm/groups.py`: a full-model group has its own
pool, all LoRA adapter groups share one over their base), as the LLM workload runs them: created on the
rollout resource pool, loaded with pushed weights (or adapters) in place, replaced when one dies serving a
request, and moved between pools by inter-agent load balancing. The workflow workers' routers follow every change (`set_engine`,
`remove_engine`), tagged with an incarnation number so that a late report of a dead engine never
replaces its replacement.

Moves (`llm.load_balancing`, between iterations: no call in flight): the calls each pool served go
through `flexmarl.llm.balance.plan_allocation`; an instance moved from pool A to B is reloaded in place
with B's current weights and version when all pools' checkpoints share one layout (config.json and
tokenizer) and none serves adapters, else it is rebuilt from B's model dir.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path

from flexmarl.config import Config
from flexmarl.llm.balance import moves, plan_allocation
from flexmarl.llm.cpus import engine_binding
from flexmarl.llm.engines.registry import engine_class
from flexmarl.llm.groups import EnginePool, LLMGroup, engine_pools
from flexmarl.llm.workflow import EngineDiedError
from flexmarl.workload import Runtime, WorkerDiedError

log = logging.getLogger(__name__)


class EngineFailure(RuntimeError):
    """Inference engines died more often than `llm.max_engine_restarts` allows, or a dead engine's
    replacement did not start within `llm.engine_replace_timeout_s`."""


class _NotReady(Exception):
    """A replacement that waits in the wrong place (`Runtime.misplaced`) or past the deadline."""


def engine_key(pool: str, index: int) -> str:
    """The plan's actor key of an engine instance (named in placement and in stop messages)."""
    return f"engine/{pool}/{index}"


class EngineFleet:
    """Every engine instance of a run, by pool: `engines[pool][i]`, as the workflow workers' routers see them."""

    def __init__(self, cfg: Config, runtime: Runtime, groups: list[LLMGroup], workers: list, trainers: dict):
        """`workers`, `trainers`: the run's live handles (filled after the engines start: workers need them)."""
        self.cfg, self.runtime, self.groups = cfg, runtime, groups
        self.pools = engine_pools(groups)
        self.workers, self.trainers = workers, trainers
        n = cfg.llm.engines_per_agent
        self._started = 0
        self.engines = {p.name: [self._make(p, i) for i in range(n)] for p in self.pools}
        self.incarnations = {p.name: [0] * n for p in self.pools}
        self._next_incarnation = 1
        self.restarts = 0
        self.weights: dict = {}
        """Per group, a reference to the weights last pushed (loaded into replacements and moved instances)."""
        self.version = 0
        self._reload_in_place = (same_checkpoint_layout([p.model_dir for p in self.pools])
                                 and not any(p.adapters for p in self.pools))

    def _make(self, pool: EnginePool, index: int, replacement: bool = False):
        cfg, llm = self.cfg, self.cfg.llm
        self._started += 1
        settings = dict(model_dir=pool.model_dir, seed=cfg.run.seed,
                        max_model_len=llm.max_prompt_tokens + llm.max_new_tokens,
                        omp_threads_bind=engine_binding(cfg, self._started - 1),
                        kv_cache_gib=llm.engine_kv_cache_gib,
                        device=self.runtime.device_for(engine_key(pool.name, index), llm.engine_device),
                        gpu_memory_utilization=llm.gpu_memory_utilization, engine_name=f"{pool.name}/{index}",
                        max_batch=llm.engine_max_batch, **({"adapters": pool.adapters} if pool.adapters else {}))
        # Concurrency: the calls of every in-flight request batch together inside the engine.
        concurrency = max(8, llm.concurrent_requests * llm.max_concurrent_calls)
        return self.runtime.create(engine_class(llm.backend), actor=engine_key(pool.name, index),
                                   concurrency=concurrency, replacement=replacement, **settings)

    def _pool(self, name: str) -> EnginePool:
        return next(p for p in self.pools if p.name == name)

    def _tell_workers(self, method: str, *args) -> None:
        self.runtime.get([self.runtime.call(w, method, *args) for w in self.workers])

    # -- weights ----------------------------------------------------------------------------------
    def load(self, weights: dict, version: int) -> list:
        """Push each group's weights to its pool's engines, in place (into idle engines only): an adapter
        group's push is its adapter alone, named (`push_args`). Waits for every ack here: an engine that
        died before or during the push (e.g. with its node) is replaced, loaded with these weights, as one
        that dies serving a request. Returns no acks left to wait for."""
        self.weights, self.version = dict(weights), version
        acks = [((g.pool, i), self.runtime.call(e, "load_weights", weights[g.name], version, *g.push_args))
                for g in self.groups for i, e in enumerate(self.engines[g.pool])]
        dead: dict[tuple[str, int], str] = {}
        for (pool, index), ack in acks:
            try:
                self.runtime.get(ack)
            except WorkerDiedError as exc:
                if not _is_engine(exc, engine_key(pool, index)):
                    raise  # e.g. the trainer that holds the weights: named as itself
                dead.setdefault((pool, index), str(exc))
        for (pool, index), reason in dead.items():  # replacements load `weights`: every group of the pool
            self._replace(pool, index, f"inference engine {index} of model group {pool!r} died during the weight "
                                       f"push of version {version}: {reason}")
        return []

    def _load_current(self, pool: str, engine, deadline: float | None = None) -> None:
        """Load the current weights into `engine` (the groups' trainers' before the first push); a
        `deadline`: a replacement's, whose first call may wait in the wrong place (`_ready`)."""
        for g in self._pool(pool).groups:
            weights = self.weights.get(g.name)
            if weights is None:  # no push yet: the group trainer's (= its checkpoint's) weights
                weights = self.runtime.call(self.trainers[g.name], "get_weights")
            ack = self.runtime.call(engine, "load_weights", weights, self.version, *g.push_args)
            self._ready(engine, ack, deadline) if deadline is not None else self.runtime.get(ack)

    def _ready(self, engine, ref, deadline: float):
        """`ref`'s value once the replacement `engine` answers; _NotReady when it waits in the wrong place
        (Ray moved its bundle, or its node died) or past `deadline`. Polls: a replacement put on a node
        that died, or waiting for resources, never answers by itself."""
        while True:
            ready, _ = self.runtime.wait([ref], timeout=max(0.0, min(2.0, deadline - time.monotonic())))
            if ready:
                return self.runtime.get(ref)
            if self.runtime.misplaced(engine):
                raise _NotReady("it waited for a placement Ray has since changed")
            if time.monotonic() >= deadline:
                raise _NotReady("it was not running yet")

    # -- faults -----------------------------------------------------------------------------------
    def repair(self, dead: EngineDiedError) -> None:
        """Replace a dead engine once: later reports name an incarnation that is already gone."""
        if dead.incarnation != self.incarnations[dead.group][dead.index]:
            return
        self._replace(dead.group, dead.index, str(dead))

    def _replace(self, pool: str, index: int, reason: str) -> None:
        """Start a replacement for engine `index` of `pool` with the current weights and version, counted
        as one restart however many attempts it takes. An attempt that dies or does not start (it was put
        in the bundle of a node that died with the engine, before Ray declared that node dead; or it waits
        where there is no room) is stopped and started again, where the runtime finds room, until
        `llm.engine_replace_timeout_s` passes."""
        llm, key = self.cfg.llm, engine_key(pool, index)
        self.restarts += 1
        if self.restarts > llm.max_engine_restarts:
            raise EngineFailure(f"{key}: {reason}; {self.restarts - 1} engine restarts already used, "
                                f"llm.max_engine_restarts = {llm.max_engine_restarts}")
        log.warning("%s; starting a replacement with version %d", reason, self.version)
        self.runtime.kill(self.engines[pool][index])
        deadline = time.monotonic() + llm.engine_replace_timeout_s
        for attempt in itertools.count(1):
            engine = self._make(self._pool(pool), index, replacement=True)
            try:
                if self.weights:
                    self._load_current(pool, engine, deadline)
                else:  # the checkpoint's weights: a first call shows that it started
                    self._ready(engine, self.runtime.call(engine, "version"), deadline)
                break
            except (WorkerDiedError, _NotReady) as exc:
                if isinstance(exc, WorkerDiedError) and not _is_engine(exc, key):
                    raise
                self.runtime.kill(engine)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EngineFailure(
                        f"{key}: {reason}; its replacement did not start within llm.engine_replace_timeout_s = "
                        f"{llm.engine_replace_timeout_s:g} s ({attempt} attempts; the last: {exc})") from None
                log.warning("the replacement of %s failed (attempt %d: %s); trying again", key, attempt, exc)
                time.sleep(min(1.0 * attempt, 5.0, left))  # Ray needs a moment to declare a node dead
        self.engines[pool][index] = engine
        self.incarnations[pool][index] += 1
        self._tell_workers("set_engine", pool, index, engine, self.incarnations[pool][index])

    # -- inter-agent load balancing (between iterations) -----------------------------------------
    def rebalance(self, loads: dict[str, float]) -> list[tuple[str, str]]:
        """Move engine instances between pools so that they follow `loads` (calls per pool), when
        the load disparity exceeds `llm.rebalance_threshold`; returns the (from, to) moves made."""
        current = {g: len(e) for g, e in self.engines.items()}
        target = plan_allocation(loads, current, capacity=sum(current.values()),
                                 threshold=self.cfg.llm.rebalance_threshold)
        return self.apply_allocation(target) if target is not None else []

    def apply_allocation(self, target: dict[str, int]) -> list[tuple[str, str]]:
        """Give each pool `target[pool]` engine instances (same total), moving the fewest instances."""
        planned = moves({g: len(e) for g, e in self.engines.items()}, target)
        for donor, receiver in planned:
            self._move(donor, receiver)
        if planned:
            log.info("engines moved between pools %s; now %s", planned,
                     {g: len(e) for g, e in self.engines.items()})
        return planned

    def _move(self, donor: str, receiver: str) -> None:
        """The donor's last instance (the others keep their indices) leaves the donor's routers, gets the
        receiver's current weights and version, and joins the receiver's routers."""
        index = len(self.engines[donor]) - 1
        engine = self.engines[donor].pop()
        self.incarnations[donor].pop()
        self._tell_workers("remove_engine", donor, index)
        new_index = len(self.engines[receiver])
        if not self._reload_in_place:  # another architecture: a fresh engine from the receiver's model dir
            self.runtime.kill(engine)
            engine = self._make(self._pool(receiver), new_index)
        if self._reload_in_place or self.weights:  # same architecture and tokenizer: only the weights differ
            self._load_current(receiver, engine)
        incarnation = self._next_incarnation
        self._next_incarnation += 1
        self.engines[receiver].append(engine)
        self.incarnations[receiver].append(incarnation)
        self._tell_workers("set_engine", receiver, new_index, engine, incarnation)


def _is_engine(exc: WorkerDiedError, key: str) -> bool:
    """Whether a death reported by a call to engine `key` is the engine's own (not that of the trainer
    whose weights the call carried); unknown (serial runtime, an actor Ray cannot name): the engine's."""
    return exc.actor is None or exc.actor.key == key


def same_checkpoint_layout(model_dirs: list[str]) -> bool:
    """True when every checkpoint has the same architecture settings (config.json, names aside) and
    the same tokenizer files, so an engine can switch between them by loading weights alone."""

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
