"""Where actors run: a placement plan computed from the config, checked against the cluster before
anything starts.

Every actor (group trainer, rollout worker, LLM inference engine) gets one bundle of its own; a pool
("rollout" or "trainer") is one Ray placement group holding its actors' bundles with the configured
strategy, so a pool may span nodes. `plan_placement` is a pure function of the config and the actor list;
`check_plan` simulates placing the bundles on the nodes and fails with a message naming the actor, what
it asked for and what the cluster has. The serial runtime accepts the same plan and ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flexmarl.config import ActorDemand, Config, ConfigError

GIB = 1024**3
POOLS = ("rollout", "trainer")
_POOL_OF_ROLE = {"trainer": "trainer", "worker": "rollout", "engine": "rollout"}
_DEFAULT_KEY = {"trainer": "trainer", "worker": "rollout_worker", "engine": "engine"}


class PlacementError(ConfigError):
    """The cluster cannot hold the plan: names the actor, its demand and the cluster's nodes."""

    def __init__(self, path: str, message: str):
        self.path, self.value, self.allowed = path, None, message
        ValueError.__init__(self, f"placement ({path}): {message}")


@dataclass(frozen=True)
class ActorSpec:
    """One actor the orchestrator will create."""

    key: str
    """Unique name: trainer/<group>, worker/<index>, engine/<group>/<index>."""
    role: str
    """trainer, worker or engine."""
    group: str | None = None
    """The agent group it serves (trainers, engines); None for rollout workers (they serve every group)."""

    @property
    def pool(self) -> str:
        return _POOL_OF_ROLE[self.role]

    def describe(self) -> str:
        if self.role == "worker":
            return f"rollout worker {self.key.split('/')[1]}"
        if self.role == "engine":
            return f"inference engine {self.key.split('/')[2]} of group {self.group!r}"
        if self.group is None:
            return f"trainer slot {self.key.split('/')[1]}"
        return f"trainer of group {self.group!r}"


@dataclass(frozen=True)
class Bundle:
    """One actor's reserved resources."""

    actor: ActorSpec
    cpus: float
    gpus: float
    memory_bytes: int
    source: str
    """Config key the demand came from (named in errors)."""

    def resources(self) -> dict[str, float]:
        """Ray bundle: zero entries dropped (Ray refuses an all-zero bundle; CPUs are always > 0 here)."""
        out = {"CPU": self.cpus, "GPU": self.gpus, "memory": float(self.memory_bytes)}
        return {k: v for k, v in out.items() if v > 0}

    def describe(self) -> str:
        return _format(self.resources())


@dataclass
class PoolPlan:
    name: str
    strategy: str
    bundles: list[Bundle] = field(default_factory=list)


@dataclass
class PlacementPlan:
    pools: dict[str, PoolPlan]

    def locate(self, key: str) -> tuple[str, int, Bundle]:
        """(pool, bundle index, bundle) of an actor."""
        for pool in self.pools.values():
            for i, bundle in enumerate(pool.bundles):
                if bundle.actor.key == key:
                    return pool.name, i, bundle
        raise KeyError(f"actor {key!r} is not in the placement plan")

    def total(self, resource: str) -> float:
        return sum(b.resources().get(resource, 0.0) for p in self.pools.values() for b in p.bundles)


def marl_actors(groups: list[str], num_workers: int) -> list[ActorSpec]:
    return ([ActorSpec(f"worker/{i}", "worker") for i in range(num_workers)]
            + [ActorSpec(f"trainer/{g}", "trainer", g) for g in groups])


def llm_actors(groups: list[str], engines_per_group: int, num_workers: int, trainer_slots: int = 0,
               engine_pools: list[str] | None = None) -> list[ActorSpec]:
    """Engines, workflow workers and trainers; with `trainer_slots` > 0 the groups time-share that many
    trainer actors (`trainer-slot/<i>`, default trainer demand) instead of one trainer each. Engines are
    per engine pool (`engine_pools`; default: one per group; LoRA adapter groups share one)."""
    engines = [ActorSpec(f"engine/{p}/{i}", "engine", p) for p in (engine_pools or groups) for i in range(engines_per_group)]
    if trainer_slots <= 0:
        return engines + marl_actors(groups, num_workers)
    slots = [ActorSpec(f"trainer-slot/{i}", "trainer") for i in range(min(trainer_slots, len(groups)))]
    return engines + marl_actors([], num_workers) + slots


def plan_placement(cfg: Config, actors: list[ActorSpec]) -> PlacementPlan:
    """One bundle per actor. An actor's demand: `resources.<role>`, overridden key by key by
    `resources.per_group.<group>.<role>`; CPUs left at 0 take an equal share of the pool's CPUs."""
    res = cfg.resources
    groups = {a.group for a in actors if a.group is not None}
    for group, roles in res.model_dump()["per_group"].items():  # as given: the keys each override sets
        if group not in groups:
            raise ConfigError(f"resources.per_group.{group}", roles, "a group of this run: " + ", ".join(sorted(groups)))
        if "engine" in roles and not any(a.role == "engine" for a in actors):
            raise ConfigError(f"resources.per_group.{group}.engine", roles["engine"],
                              "nothing here: engine demands apply to run.workload: llm")
    pool_cpus = {"rollout": res.rollout_cpus, "trainer": res.trainer_cpus}
    plan = PlacementPlan({name: PoolPlan(name, res.strategy) for name in POOLS})
    for pool in POOLS:
        members = [a for a in actors if a.pool == pool]
        for actor in members:
            demand, source = _demand(res, actor)
            cpus = demand.cpus or round(pool_cpus[pool] / len(members), 4)
            plan.pools[pool].bundles.append(
                Bundle(actor, cpus, demand.gpus, int(round(demand.memory_gib * GIB)), source))
    return plan


def _demand(res, actor: ActorSpec) -> tuple[ActorDemand, str]:
    base_key = _DEFAULT_KEY[actor.role]
    values = getattr(res, base_key).model_dump()
    source = f"resources.{base_key}"
    override = res.per_group.get(actor.group, {}).get(actor.role) if actor.group else None
    given = override.model_dump(exclude_unset=True) if override is not None else {}
    if given:
        values.update(given)
        source = f"resources.per_group.{actor.group}.{actor.role}"
    return ActorDemand(**values), source


# ---------------------------------------------------------------- checking against the cluster


@dataclass
class Node:
    """A node's total resources (CPU, GPU, memory in bytes, custom resources)."""

    node_id: str
    resources: dict[str, float]
    is_head: bool = False

    def describe(self) -> str:
        head = " (head)" if self.is_head else ""
        shown = {k: self.resources.get(k, 0.0) for k in ("CPU", "GPU", "memory")}
        return f"node {self.node_id[:8]}{head}: {_format(shown)}"


def _format(resources: dict[str, float]) -> str:
    parts = []
    for key, value in resources.items():
        if key == "memory":
            parts.append(f"{value / GIB:.3g} GiB memory")
        elif key in ("CPU", "GPU"):
            parts.append(f"{value:g} {key}{'s' if value != 1 else ''}")
    return ", ".join(parts) or "nothing"


def _fits(need: dict[str, float], free: dict[str, float]) -> bool:
    return all(free.get(k, 0.0) + 1e-9 >= v for k, v in need.items())


def check_plan(plan: PlacementPlan, nodes: list[Node]) -> dict[str, list[str]]:
    """Place every bundle on the nodes as the strategies require (first fit, largest bundles first;
    STRICT_SPREAD: each of a pool's bundles on a different node). Returns {pool: [node id per bundle]}
    (the simulated placement; Ray's own may differ), or raises PlacementError naming the first actor that
    does not fit, what it asked for and what the cluster has. No nodes (serial runtime): nothing to check."""
    if not nodes:
        return {}
    cluster = "; ".join(n.describe() for n in nodes)
    for pool in plan.pools.values():
        for b in pool.bundles:
            if not any(_fits(b.resources(), n.resources) for n in nodes):
                raise PlacementError(b.source, f"the {b.actor.describe()} asks for {b.describe()}; no node of "
                                     f"this cluster has that much: {cluster}")
    free = {n.node_id: dict(n.resources) for n in nodes}
    placed: dict[str, list[str]] = {}
    for pool in sorted(plan.pools.values(), key=lambda p: p.strategy != "STRICT_SPREAD"):  # the hardest first
        order = sorted(range(len(pool.bundles)), key=lambda i: _size(pool.bundles[i]), reverse=True)
        where: dict[int, str] = {}
        for i in order:
            b = pool.bundles[i]
            used = set(where.values()) if pool.strategy == "STRICT_SPREAD" else set()
            node = next((n for n in nodes if n.node_id not in used and _fits(b.resources(), free[n.node_id])), None)
            if node is None:
                raise PlacementError(b.source, _no_room(plan, pool, b, nodes, free))
            where[i] = node.node_id
            for k, v in b.resources().items():
                free[node.node_id][k] = free[node.node_id].get(k, 0.0) - v
        placed[pool.name] = [where[i] for i in range(len(pool.bundles))]
    return placed


def _size(b: Bundle) -> tuple:
    r = b.resources()
    return r.get("GPU", 0.0), r.get("CPU", 0.0), r.get("memory", 0.0)


def _no_room(plan: PlacementPlan, pool: PoolPlan, b: Bundle, nodes: list[Node], free: dict) -> str:
    need = {k: plan.total(k) for k in ("CPU", "GPU", "memory") if plan.total(k) > 0}
    have = {k: sum(n.resources.get(k, 0.0) for n in nodes) for k in need}
    left = "; ".join(f"node {node_id[:8]}: {_format({k: max(0.0, v) for k, v in r.items() if k in need})}"
                     for node_id, r in free.items())
    strict = ""
    if pool.strategy == "STRICT_SPREAD":
        strict = (f"; resources.strategy STRICT_SPREAD puts each of the {pool.name} pool's "
                  f"{len(pool.bundles)} actors on a different node, and the cluster has {len(nodes)} nodes")
    return (f"the {b.actor.describe()} asks for {b.describe()} and no node has that much left{strict}. "
            f"Both pools together ask for {_format(need)}; the cluster has {_format(have)} "
            f"({len(nodes)} nodes; left per node after the actors placed before it: {left})")
