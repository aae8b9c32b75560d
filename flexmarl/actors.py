"""The actors a workload asks the placement for: one `ActorSpec` per actor, by key, role and group.

Workloads list their actors here (in `flexmarl`, below the orchestrator); `orchestrator/placement.py`
turns the list into bundles on the two resource pools (rollout, trainer) and checks it against the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

POOL_OF_ROLE = {"trainer": "trainer", "worker": "rollout", "engine": "rollout"}


@dataclass(frozen=True)
class ActorSpec:
    """One actor the orchestrator will create."""

    key: str
    """Unique name: trainer/<group>, trainer-slot/<index>, worker/<index>, engine/<group>/<index>."""
    role: str
    """trainer, worker or engine."""
    group: str | None = None
    """The agent group it serves (trainers, engines); None for rollout workers (they serve every group)."""

    @property
    def pool(self) -> str:
        return POOL_OF_ROLE[self.role]

    def describe(self) -> str:
        if self.role == "worker":
            return f"rollout worker {self.key.split('/')[1]}"
        if self.role == "engine":
            return f"inference engine {self.key.split('/')[2]} of group {self.group!r}"
        if self.group is None:
            return f"trainer slot {self.key.split('/')[1]}"
        return f"trainer of group {self.group!r}"


def marl_actors(groups: list[str], num_workers: int) -> list[ActorSpec]:
    """Rollout workers, then one trainer per group."""
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
