"""Model groups of a text task: which agents share one model (and so one trainer), and the engine pools
that serve them: a full-model group has its own pool, all LoRA-adapter groups share one over their base."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flexmarl.config import ConfigError, LLMConfig
from flexmarl.config.adapters import LoraAdapter
from flexmarl.groups import group_mapping
from flexmarl.llm.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, saved_adapter

SHARED_BASE = "shared-base"
"""`flexmarl llm build` puts the model warm-started on all agents' examples there: LoRA agents' default base."""
ADAPTER_POOL = "lora"
"""Name of the engine pool that serves every adapter group (engines `engine/lora/<i>`)."""


@dataclass(frozen=True)
class LLMGroup:
    name: str
    agents: tuple[str, ...]
    model_dir: str
    """Local Hugging Face checkpoint the group's trainer and engines start from, as an absolute path
    (resolved on the driver: actors on other nodes or in other working directories get the same folder)."""
    model_key: str = "llm.model_dir"
    """The config key that chose the checkpoint (`llm.models.<key>`, `llm.base_model` or `llm.model_dir`),
    for error messages."""
    adapter: LoraAdapter | None = None
    """A LoRA adapter over `model_dir` (the base): the group trains and serves only that; None: the whole model."""
    adapter_key: str = ""
    """`llm.models.<key>` that made the group an adapter (error messages name its sub-keys)."""

    def signature(self) -> dict:
        """What a checkpoint must match to be loaded into this group."""
        signature = {"agents": list(self.agents), "model_dir": self.model_dir}
        if self.adapter is not None:
            signature["adapter"] = self.adapter.model_dump()
        return signature

    @property
    def pool(self) -> str:
        """The engine pool serving the group's calls."""
        return ADAPTER_POOL if self.adapter is not None else self.name

    @property
    def push_args(self) -> tuple:
        """What follows (weights, version) in an engine's `load_weights` and `generate` for this group: its
        adapter's name, or nothing (the whole model)."""
        return (self.name,) if self.adapter is not None else ()


@dataclass(frozen=True)
class EnginePool:
    """Engine instances that serve some model groups: one full-model group, or every adapter group (one
    base, each call naming its agent's adapter). Quacks like an LLMGroup where engines are concerned."""

    name: str
    model_dir: str
    groups: tuple[LLMGroup, ...]

    @property
    def agents(self) -> tuple[str, ...]:
        return tuple(agent for g in self.groups for agent in g.agents)

    @property
    def adapters(self) -> dict[str, LoraAdapter]:
        """{group: adapter} of the pool's adapter groups (empty for a full-model pool)."""
        return {g.name: g.adapter for g in self.groups if g.adapter is not None}


def engine_pools(groups: list[LLMGroup]) -> list[EnginePool]:
    """One pool per full-model group (named as the group) and one shared by all adapter groups."""
    pools = [EnginePool(g.name, g.model_dir, (g,)) for g in groups if g.adapter is None]
    adapters = tuple(g for g in groups if g.adapter is not None)
    if adapters:
        pools.append(EnginePool(ADAPTER_POOL, adapters[0].model_dir, adapters))
    return pools


def default_model_dir(task: str) -> str:
    """Where `flexmarl llm build` puts a task's models by default: runs/llm-models/<task>, a
    'module:Class' task as runs/llm-models/module.Class."""
    return str(Path("runs/llm-models") / task.replace(":", "."))


def models_folder(llm: LLMConfig) -> str:
    """`llm.model_dir`, or the task's default folder when it is empty."""
    return llm.model_dir or default_model_dir(llm.task)


def build_llm_groups(llm: LLMConfig, agents: tuple[str, ...]) -> list[LLMGroup]:
    """Resolve `llm.groups` against the task's agents; a group's model is `llm.models[group]` (or of its
    first agent), else `<llm.model_dir>/<first agent>`, made absolute against this process's directory."""
    mapping = group_mapping(llm.groups, agents, "llm.groups", owner="the task")
    unknown_models = sorted(set(llm.models) - set(agents) - set(mapping))
    if unknown_models:
        raise ConfigError(f"llm.models.{unknown_models[0]}", llm.models[unknown_models[0]],
                          f"keys naming agents ({', '.join(agents)}) or groups ({', '.join(mapping)})")
    if ADAPTER_POOL in mapping and isinstance(llm.models.get(ADAPTER_POOL), LoraAdapter):
        raise ConfigError("llm.groups", llm.groups, f"group names other than {ADAPTER_POOL!r} (the adapters' engine pool)")
    groups = []
    for name, members in mapping.items():
        key = name if llm.models.get(name) else members[0]
        source = llm.models.get(key)
        if isinstance(source, LoraAdapter):
            base, base_key = adapter_base(llm)
            adapter = started_adapter(source, f"llm.models.{key}")
            groups.append(LLMGroup(name, tuple(members), base, base_key, adapter, f"llm.models.{key}"))
            continue
        if source:
            model, model_key = source, f"llm.models.{key}"
        else:
            model, model_key = Path(models_folder(llm)) / members[0], "llm.model_dir"
        groups.append(LLMGroup(name, tuple(members), os.path.abspath(model), model_key))
    return groups


def adapter_base(llm: LLMConfig) -> tuple[str, str]:
    """(absolute base checkpoint, the key that chose it) of every adapter group: `llm.base_model`, else the
    task's built model warm-started on every agent's examples (`<model_dir>/shared-base`, flexmarl/llm/build.py)."""
    if llm.base_model:
        return os.path.abspath(llm.base_model), "llm.base_model"
    return os.path.abspath(Path(models_folder(llm)) / SHARED_BASE), "llm.model_dir"


def started_adapter(spec: LoraAdapter, key: str) -> LoraAdapter:
    """An adapter with `init` takes its folder's rank, alpha and target modules (absolute folder path);
    those set in the config as well must equal the folder's. ConfigError naming the key otherwise."""
    if not spec.init:
        return spec
    try:
        saved = saved_adapter(spec.init)
    except ValueError as exc:
        raise ConfigError(f"{key}.init", spec.init, f"a PEFT LoRA adapter folder ({ADAPTER_CONFIG} + "
                                                    f"{ADAPTER_WEIGHTS}); {exc}") from None
    configured = {"rank": spec.rank, "alpha": spec.scale_alpha, "target_modules": sorted(spec.target_modules)}
    for field in ("rank", "alpha", "target_modules"):
        if field in spec.model_fields_set and configured[field] != saved[field]:
            raise ConfigError(f"{key}.{field}", getattr(spec, field),
                              f"{saved[field]!r} as the adapter in {spec.init} has (or leave {field} out: an adapter "
                              f"that starts from init takes its folder's)")
    return spec.model_copy(update={**saved, "init": os.path.abspath(spec.init)})
