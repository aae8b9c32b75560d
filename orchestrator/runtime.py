"""Where components run: `RayRuntime` (actors on two resource pools) or `SerialRuntime` (one process).

The orchestrator talks to both through the same small interface: place a plan (orchestrator/placement.py),
create the plan's actors, call methods (getting references back), wait, get, put. Serial references hold
the result (or the raised exception), so errors surface at `get` in both modes.
"""

from __future__ import annotations

import logging
import os
import random
from abc import ABC, abstractmethod
from collections import deque
from typing import Any

from flexmarl.config import Config
from flexmarl.errors import first_line
from flexmarl.workload import WorkerDiedError  # noqa: F401  (raised by get; importers take it from here)
from orchestrator.placement import ActorSpec, Node, PlacementPlan, check_plan

log = logging.getLogger(__name__)


def ray_address(address: str | None) -> str | None:
    """The cluster to join: `address` (`flexmarl train --address`), else RAY_ADDRESS; None: a local instance."""
    return address or os.environ.get("RAY_ADDRESS")


class DataLostError(RuntimeError):
    """An object a call needed (a row's payload, a group's weights) was lost with the node that held it, and
    Ray could not rebuild it (an actor's results are not recomputed). Ray mode only."""

    def __init__(self, message: str, object_id: str = ""):
        super().__init__(message)
        self.object_id = object_id

    def names(self, ref) -> bool:
        """Whether `ref` is the object that was lost."""
        return ref.hex() == self.object_id


class SerialRef:
    def __init__(self, value: Any = None, error: BaseException | None = None):
        self.value, self.error = value, error
        self.pending = False
        """True while the call behind it is queued (out-of-order serial runtime only)."""


class Runtime(ABC):
    plan: PlacementPlan | None = None

    def place(self, plan: PlacementPlan) -> None:
        """Reserve the plan's bundles (checked against the cluster first); the serial runtime keeps the
        plan and ignores it."""
        self.plan = plan

    def device_for(self, actor: str, device: str) -> str:
        """The torch device an actor puts its model on, the one rule for every actor (trainers of both
        workloads, trainer slots, engines), serial and on Ray: `device` unless "auto"; auto = cuda when the
        actor's placement bundle asks for a GPU, else cpu (a model does not go to a GPU nobody asked for)."""
        if device != "auto":
            return device
        return "cuda" if self.plan is not None and self.plan.locate(actor)[2].gpus > 0 else "cpu"

    @abstractmethod
    def create(self, cls: type, *args, actor: str, concurrency: int = 1, replacement: bool = False, **kwargs) -> Any:
        """Start an instance of `cls` as the plan's `actor` (its key, e.g. "trainer/shared"), on that
        actor's bundle; `concurrency` > 1: up to that many of its method calls run at once (threads).
        `replacement` (for a dead actor): in its bundle while the bundle's node is alive, else (its node
        died) on any live node with room for the bundle's demand."""

    def misplaced(self, handle) -> bool:
        """True when a replacement that is not running yet waits in the wrong place: in a bundle whose node
        died, or outside its bundle while Ray has placed the bundle on a live node again (it would wait for
        resources the bundle holds). Start it again then. Serial: never."""
        return False

    def node_of(self, actor: str) -> str:
        """The node that hosts the actor's bundle (Ray node id); serial: this process."""
        return "this process"

    def run_on_node(self, node: str, fn, *args):
        """Run the plain function `fn(*args)` on `node` (a Ray task that takes no CPU from the pools);
        returns a reference to its result."""
        try:
            return SerialRef(fn(*args))
        except Exception as exc:
            return SerialRef(error=exc)

    @abstractmethod
    def call(self, handle, method: str, *args, num_returns: int = 1):
        """Call a method; returns one reference, or a list of `num_returns` references."""

    @abstractmethod
    def get(self, ref_or_refs):
        """Resolve references; raises the callee's exception, or WorkerDiedError if it died."""

    @abstractmethod
    def wait(self, refs: list, timeout: float | None = None) -> tuple[list, list]:
        """(ready, not ready): returns as soon as at least one is ready."""

    @abstractmethod
    def put(self, value) -> Any: ...

    def kill(self, handle) -> None:
        """Stop an actor (used to replace a dead or wedged worker)."""

    def shutdown(self) -> None: ...


class SerialRuntime(Runtime):
    """Same components, one process, no Ray: for debugging and fast tests.

    By default every call runs when it is made, so requests complete in dispatch order. With
    `completion_seed`, calls are queued per actor and `wait` completes a seeded random actor's next call,
    as Ray's workers finish in whatever order they finish: each actor still runs its own calls in order
    (as a Ray actor does), but requests on different workers complete out of dispatch order. Tests use it
    to exercise what the pipelines do with out-of-order rows, deterministically."""

    def __init__(self, completion_seed: int | None = None):
        self._rng = None if completion_seed is None else random.Random(completion_seed)
        self._queues: dict[int, deque] = {}
        self._owner: dict[int, int] = {}  # id(ref) -> id(handle) while the ref is pending

    def create(self, cls, *args, actor, concurrency=1, replacement=False, **kwargs):
        return cls(*args, **kwargs)

    def _run(self, handle, method, args, num_returns, refs: list[SerialRef]) -> None:
        args = [self.get(a) if isinstance(a, SerialRef) else a for a in args]
        try:
            out = getattr(handle, method)(*args)
            values = [out] if num_returns == 1 else list(out)
            for ref, value in zip(refs, values):
                ref.value = value
        except Exception as exc:  # surfaced at get(), as Ray does
            for ref in refs:
                ref.error = exc
        for ref in refs:
            ref.pending = False
            self._owner.pop(id(ref), None)

    def _run_next(self, handle_key: int) -> None:
        self._run(*self._queues[handle_key].popleft())

    def call(self, handle, method, *args, num_returns=1):
        refs = [SerialRef() for _ in range(num_returns)]
        if self._rng is None:
            self._run(handle, method, args, num_returns, refs)
        else:
            key = id(handle)
            self._queues.setdefault(key, deque()).append((handle, method, args, num_returns, refs))
            for ref in refs:
                ref.pending = True
                self._owner[id(ref)] = key
        return refs[0] if num_returns == 1 else refs

    def get(self, ref_or_refs):
        if isinstance(ref_or_refs, list):
            return [self.get(r) for r in ref_or_refs]
        while ref_or_refs.pending:  # run its actor's queue up to it
            self._run_next(self._owner[id(ref_or_refs)])
        if ref_or_refs.error is not None:
            raise ref_or_refs.error
        return ref_or_refs.value

    def wait(self, refs, timeout=None):
        refs = list(refs)
        if self._rng is not None and all(r.pending for r in refs):
            actors = sorted({self._owner[id(r)] for r in refs}, key=lambda k: min(
                i for i, r in enumerate(refs) if self._owner.get(id(r)) == k))  # a stable order for the seed
            key = self._rng.choice(actors)
            while all(r.pending for r in refs if self._owner.get(id(r), key) == key):
                self._run_next(key)
        done = [r for r in refs if not r.pending]
        return done, [r for r in refs if r.pending]

    def put(self, value):
        return SerialRef(value)


class RayRuntime(Runtime):
    """Ray actors on two placement groups, the rollout pool and the training pool, with one bundle per
    actor (so a pool may span nodes). Ray starts (or joins a cluster) when the plan is placed."""

    def __init__(self, cfg: Config, address: str | None = None):
        import ray

        self.ray = ray
        self.address = ray_address(address)
        self._actor_classes: dict[type, Any] = {}
        self.pools: dict[str, Any] = {}
        self._owns_ray = False
        self._cluster_gpus = 0.0
        self._actors: dict[str, ActorSpec] = {}
        """Actor id (hex) -> the plan's actor, so that a death names who died."""
        self._off_bundle: set[str] = set()
        """Actor ids (hex) of replacements started outside their bundle (its node had died)."""

    def _start(self, plan: PlacementPlan) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        if self.address:
            ray.init(address=self.address, log_to_driver=True)
        else:
            # address="local": always a private instance, never a cluster another process started here
            # logging_level WARNING: Ray's start-up INFO line would sit between our progress and error lines
            ray.init(address="local", num_cpus=max(1, int(round(plan.total("CPU") + 0.49))), include_dashboard=False,
                     object_store_memory=300 * 1024 * 1024, log_to_driver=True, logging_level=logging.WARNING)
            self._owns_ray = True

    def nodes(self) -> list[Node]:
        """The cluster's live nodes and their total resources."""
        return [Node(n["NodeID"], dict(n["Resources"]), "node:__internal_head__" in n["Resources"])
                for n in self.ray.nodes() if n.get("Alive")]

    def place(self, plan: PlacementPlan) -> None:
        from ray.util.placement_group import placement_group

        self._start(plan)
        nodes = self.nodes()
        check_plan(plan, nodes)  # a demand the cluster cannot meet fails here, naming the actor
        self._cluster_gpus = sum(n.resources.get("GPU", 0.0) for n in nodes)
        self.plan = plan
        for name, pool in plan.pools.items():
            if pool.bundles:
                self.pools[name] = placement_group([b.resources() for b in pool.bundles], strategy=pool.strategy,
                                                   name=f"flexmarl-{name}-{os.getpid()}")
        for name, pg in self.pools.items():
            if not pg.wait(timeout_seconds=60):
                wanted = "; ".join(f"{b.actor.key}: {b.describe()}" for b in plan.pools[name].bundles)
                raise RuntimeError(
                    f"the {name} pool ({wanted}; strategy {plan.pools[name].strategy}) was not placed within 60 s: "
                    f"the cluster has the resources in total but they are in use; available now: "
                    f"{self.ray.available_resources()}")

    def create(self, cls, *args, actor, concurrency=1, replacement=False, **kwargs):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pool, index, bundle = self.plan.locate(actor)
        actor_cls = self._actor_classes.setdefault(cls, self.ray.remote(cls))
        in_bundle = not replacement or self._bundle_is_live(actor)
        options = dict(num_cpus=bundle.cpus, num_gpus=bundle.gpus, max_restarts=0, max_concurrency=concurrency)
        if in_bundle:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=self.pools[pool], placement_group_bundle_index=index)
        # else: Ray's default scheduling, any live node with the bundle's demand free (outside both pools)
        if bundle.memory_bytes:
            options["memory"] = bundle.memory_bytes
        if self._cluster_gpus and not bundle.gpus:
            # Ray leaves CUDA_VISIBLE_DEVICES alone for an actor without GPUs: it would see every GPU of its node
            options["runtime_env"] = {"env_vars": {"CUDA_VISIBLE_DEVICES": ""}}
        handle = actor_cls.options(**options).remote(*args, **kwargs)
        self._actors[handle._actor_id.hex()] = bundle.actor  # RayActorError names only the actor id
        if not in_bundle:
            self._off_bundle.add(handle._actor_id.hex())
            log.warning("the node of %s's bundle is dead: its replacement starts on any live node with room for %s",
                        actor, bundle.describe())
        return handle

    def node_of(self, actor):
        from ray.util.placement_group import placement_group_table

        pool, index, _ = self.plan.locate(actor)
        return placement_group_table(self.pools[pool])["bundles_to_node_id"].get(index) or ""

    def _bundle_is_live(self, actor: str) -> bool:
        """Whether the actor's bundle is placed on a node Ray counts alive (False while Ray re-places the
        bundle of a dead node, or finds no room for it)."""
        node = self.node_of(actor)
        return bool(node) and node in {n.node_id for n in self.nodes()}

    def misplaced(self, handle):
        actor_id = handle._actor_id.hex()
        return (actor_id in self._off_bundle) == self._bundle_is_live(self._actors[actor_id].key)

    def run_on_node(self, node, fn, *args):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = self.ray.remote(fn).options(num_cpus=0, max_retries=0,
                                           scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
        return task.remote(*args)

    def call(self, handle, method, *args, num_returns=1):
        fn = getattr(handle, method)
        if num_returns != 1:
            fn = fn.options(num_returns=num_returns)
        return fn.remote(*args)

    def get(self, ref_or_refs):
        try:
            return self.ray.get(ref_or_refs)
        except self.ray.exceptions.RayActorError as exc:
            raise WorkerDiedError(first_line(exc), self._actors.get(getattr(exc, "actor_id", None))) from exc
        except self.ray.exceptions.ObjectLostError as exc:  # also a call whose argument was lost: RayTaskError(...)
            lost = getattr(exc, "cause", None) or exc
            raise DataLostError(first_line(lost), exc.object_ref_hex) from exc

    def wait(self, refs, timeout=None):
        return self.ray.wait(list(refs), num_returns=1, timeout=timeout)

    def put(self, value):
        return self.ray.put(value)

    def kill(self, handle):
        self.ray.kill(handle, no_restart=True)

    def shutdown(self):
        from ray.util.placement_group import remove_placement_group

        for pg in self.pools.values():
            remove_placement_group(pg)
        self.pools = {}
        if self._owns_ray:
            self.ray.shutdown()


def make_runtime(cfg: Config, address: str | None = None) -> Runtime:
    return SerialRuntime() if cfg.run.mode == "serial" else RayRuntime(cfg, address)
