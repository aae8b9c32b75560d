"""Model groups of a text task: which agents share one model (and so one trainer and its engines)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flexmarl.config import ConfigError, LLMConfig


@dataclass(frozen=True)
class LLMGroup:
    name: str
    agents: tuple[str, ...]
    model_dir: str
    """Local Hugging Face checkpoint the group's trainer and engines start from, as an absolute path
    (resolved on the driver: actors on other nodes or in other working directories get the same folder)."""
    model_key: str = "llm.model_dir"
    """The config key that chose the checkpoint (`llm.models.<key>` or `llm.model_dir`), for error messages."""

    def signature(self) -> dict:
        """What a checkpoint must match to be loaded into this group."""
        return {"agents": list(self.agents), "model_dir": self.model_dir}


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
    if llm.groups == "independent":
        mapping = {agent: [agent] for agent in agents}
    elif llm.groups == "shared":
        mapping = {"shared": list(agents)}
    else:
        mapping = dict(llm.groups)
        listed = [a for members in mapping.values() for a in members]
        unknown = sorted(set(listed) - set(agents))
        if unknown:
            raise ConfigError("llm.groups", llm.groups, f"agents of the task: {', '.join(agents)} (unknown: {', '.join(unknown)})")
        if sorted(listed) != sorted(agents):
            raise ConfigError("llm.groups", llm.groups, f"every agent of the task ({', '.join(agents)}) in exactly one group")
    unknown_models = sorted(set(llm.models) - set(agents) - set(mapping))
    if unknown_models:
        raise ConfigError(f"llm.models.{unknown_models[0]}", llm.models[unknown_models[0]],
                          f"keys naming agents ({', '.join(agents)}) or groups ({', '.join(mapping)})")
    groups = []
    for name, members in mapping.items():
        key = name if llm.models.get(name) else members[0]
        if llm.models.get(key):
            model, model_key = llm.models[key], f"llm.models.{key}"
        else:
            model, model_key = Path(models_folder(llm)) / members[0], "llm.model_dir"
        groups.append(LLMGroup(name, tuple(members), os.path.abspath(model), model_key))
    return groups
