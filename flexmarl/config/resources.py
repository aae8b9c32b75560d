"""The `resources` section: placement, one bundle per actor in two pools (docs/cluster.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_serializer

from flexmarl.config.fields import SECTION, NonNegativeInt, NonNegativeNumber, PositiveNumber


class ActorDemand(BaseModel):
    """What one actor (a trainer, a rollout worker, an inference engine) asks of its placement bundle."""

    model_config = SECTION

    cpus: NonNegativeNumber = 0.0
    """CPUs; 0 = an equal share of its pool's `rollout_cpus` / `trainer_cpus` (the default)."""
    gpus: NonNegativeNumber = 0.0
    """GPUs (fractions allowed); > 0 puts the actor's model on the GPU Ray gives it (CUDA_VISIBLE_DEVICES)."""
    memory_gib: NonNegativeNumber = 0.0
    """Memory reserved for the actor in GiB (Ray's `memory` resource); 0 = none reserved."""


PlacementRole = Literal["trainer", "engine"]
"""Roles a `resources.per_group` entry may set: the group's trainer, and (LLM) its engine instances."""


class ResourcesConfig(BaseModel):
    """Placement: one bundle per actor, grouped in two pools (rollout, trainer); see docs/cluster.md."""

    model_config = SECTION

    rollout_cpus: PositiveNumber = 1.0
    """CPUs of the rollout pool, split evenly over the rollout actors (workers, LLM engines) that do not
    set their own `cpus`."""
    trainer_cpus: PositiveNumber = 1.0
    """CPUs of the training pool, split evenly over the group trainers that do not set their own `cpus`."""
    bind_cpus: bool = True
    """LLM workload on a CPU node: bind inference engines to the rollout pool's first cores and trainers
    to the next ones, so generation and training do not fight over cores (flexmarl/llm/cpus.py)."""
    trainer_slots: NonNegativeInt = 0
    """LLM workload: trainer actors the model groups share. 0 = one trainer per group, bound for the
    whole run; n > 0 = n slots, groups time-share them (group i on slot i % n): an idle group's weights,
    Adam state, gradients and version are swapped out (`llm.swap_to`) and swapped back in when its
    next micro-batch arrives (flexmarl/llm/slots.py)."""
    strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = "PACK"
    """Ray placement strategy of both pools' bundles: PACK (as few nodes as possible), SPREAD (over nodes,
    best effort), STRICT_SPREAD (each of a pool's actors on a different node)."""
    trainer: ActorDemand = Field(default_factory=ActorDemand)
    """Default demand of each group trainer."""
    rollout_worker: ActorDemand = Field(default_factory=ActorDemand)
    """Default demand of each rollout worker (MARL env stepping; LLM workflow workers)."""
    engine: ActorDemand = Field(default_factory=ActorDemand)
    """Default demand of each inference engine instance (`run.workload: llm`)."""
    per_group: dict[str, dict[PlacementRole, ActorDemand]] = Field(default_factory=dict)
    """Per agent group overrides, key by key: {group: {trainer: {cpus, gpus, memory_gib}, engine: {...}}},
    e.g. {listener: {trainer: {gpus: 1}}}. `engine` applies to LLM groups only."""

    @field_serializer("per_group")
    def _only_the_keys_given(self, per_group: dict) -> dict:
        """An override names only the keys it changes; the others keep the role's default demand."""
        return {group: {role: demand.model_dump(exclude_unset=True) for role, demand in roles.items()}
                for group, roles in per_group.items()}
