"""Model groups of a text task: which agents share one model (and so one trainer and its engines)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flexmarl.config import ConfigError, LLMConfig


@dataclass(frozen=True)
class LLMGroup:
    name: str
    agents: tuple[str, ...]
    model_dir: str
    """Local Hugging Face checkpoint the group's trainer and engines start from."""

    def signature(self) -> dict:
        """What a checkpoint must match to be loaded into this group."""
        return {"agents": list(self.agents), "model_dir": self.model_dir}


def build_llm_groups(llm: LLMConfig, agents: tuple[str, ...]) -> list[LLMGroup]:
    """Resolve `llm.groups` against the task's agents; a group's model is `llm.models[group]` (or of its
    first agent), else `<llm.model_dir>/<first agent>`."""
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
        model = llm.models.get(name) or llm.models.get(members[0]) or str(Path(llm.model_dir) / members[0])
        groups.append(LLMGroup(name, tuple(members), str(model)))
    return groups
