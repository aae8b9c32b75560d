"""Agent -> policy group layout. Parameter sharing is one group; independent learners are one group each."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from envs import ActionSpec, EnvSpec
from envs.spec import AgentSpec, ImageSpec
from flexmarl.config import Config, ConfigError


@dataclass(frozen=True)
class GroupLayout:
    name: str
    agents: tuple[str, ...]
    obs_dim: int
    action: ActionSpec
    has_action_mask: bool
    critic_dim: int
    """Critic input width: the global state (MAPPO) or the agent's observation (IPPO)."""
    candidate_dim: int = 0
    """Per-candidate feature width when observations end with one block per action (else 0)."""
    obs_image: ImageSpec | None = None
    """The actor reads its observation with a CNN (model.encoder); None: flat observation into the MLP."""
    critic_image: ImageSpec | None = None
    """The critic reads its input with a CNN; None: flat input into the MLP."""
    critic_agent_id: bool = False
    """The critic's input ends with a one-hot of the agent's index in the group (`algo.critic_agent_id`)."""


def critic_uses_state(cfg: Config) -> bool:
    return cfg.algo.name == "mappo"


def critic_takes_agent_id(cfg: Config, spec: EnvSpec, group: str, size: int, critic_image: ImageSpec | None) -> bool:
    """The rule behind `algo.critic_agent_id` (documented there)."""
    choice = cfg.algo.critic_agent_id
    if choice == "auto":
        return critic_uses_state(cfg) and size > 1 and not spec.shared_reward and critic_image is None
    if choice and critic_image is not None:
        raise ConfigError("algo.critic_agent_id", True, f"false or auto: group {group!r}'s critic reads images "
                          "(a CNN input cannot carry an agent id)")
    return bool(choice)


def global_state_dim(spec: EnvSpec, global_state: str) -> int:
    """`env.state()` width, or the concatenated observations (`concat_obs`, or an env without state());
    the same choice as `flexmarl.rollout.env_io.critic_input`."""
    if global_state == "concat_obs" or spec.state_dim is None:
        return sum(a.obs_dim for a in spec.per_agent.values())
    return spec.state_dim


def _images(cfg: Config, spec: EnvSpec, agent: AgentSpec, group: str) -> tuple[ImageSpec | None, ImageSpec | None]:
    """(actor image, critic image) by `model.encoder`: which inputs go through a CNN."""
    if cfg.model.encoder == "mlp":
        return None, None
    if cfg.model.encoder == "cnn" and agent.image is None:
        raise ConfigError("model.encoder", "cnn", "image observations (a 3-D Box with 1-4 channels first or last); "
                          f"group {group!r} has none: use 'auto' or 'mlp'")
    if not critic_uses_state(cfg):
        return agent.image, agent.image
    if cfg.env.global_state == "concat_obs" or spec.state_dim is None:
        images = {spec.per_agent[a].image for a in spec.agents}
        (one,) = images if len(images) == 1 else (None,)
        # the critic's input is every agent's image in turn: a stack of frames for one CNN
        return agent.image, None if one is None else replace(one, frames=len(spec.agents))
    return agent.image, spec.state_image


def _check_global_state(cfg: Config, spec: EnvSpec) -> None:
    """A centralised critic asked to read `env.state()` of an env whose state() is broken."""
    if critic_uses_state(cfg) and cfg.env.global_state == "env" and spec.state_problem:
        raise ConfigError("env.global_state", "env", f"'concat_obs' for {cfg.env.name!r}: its {spec.state_problem}")


def groups_by_spaces(spec: EnvSpec) -> dict[str, list[str]]:
    """Agents with identical spaces in one group, named after its first agent without a trailing index
    ('adversary_0' -> 'adversary'; the whole name where that is taken): what to suggest when `shared` fails."""
    mapping: dict[str, list[str]] = {}
    firsts: dict[str, AgentSpec] = {}
    for agent in spec.agents:
        group = next((g for g, first in firsts.items() if first == spec.per_agent[agent]), None)
        if group is None:
            group = re.sub(r"_\d+$", "", agent)
            group = agent if group in mapping else group
            firsts[group], mapping[group] = spec.per_agent[agent], []
        mapping[group].append(agent)
    return mapping


def _groups_override(mapping: dict[str, list[str]]) -> str:
    """A mapping as a command-line override: env.groups='{a: [a_0, a_1], b: [b_0]}'."""
    return "env.groups='{" + ", ".join(f"{g}: [{', '.join(agents)}]" for g, agents in mapping.items()) + "}'"


def group_mapping(groups: str | dict, agents: tuple[str, ...], key: str, owner: str = "this env") -> dict[str, list[str]]:
    """`shared` (one group of every agent), `independent` (a group per agent) or an explicit
    {group: [agents]} mapping, checked against `agents`: every agent in exactly one group. The one resolver
    of the group syntax, for `env.groups` and `llm.groups` (`key` names the config key in errors)."""
    if groups == "shared":
        return {"shared": list(agents)}
    if groups == "independent":
        return {agent: [agent] for agent in agents}
    seen: dict[str, str] = {}
    for name, members in groups.items():
        for agent in members:
            if agent not in agents:
                raise ConfigError(f"{key}.{name}", agent, f"agents of {owner}: " + ", ".join(agents))
            if agent in seen:
                raise ConfigError(f"{key}.{name}", agent, f"each agent in one group; already in {seen[agent]!r}")
            seen[agent] = name
    missing = [a for a in agents if a not in seen]
    if missing:
        raise ConfigError(key, groups, f"a mapping covering every agent; missing: {', '.join(missing)}")
    return {name: list(members) for name, members in groups.items()}


def build_groups(cfg: Config, spec: EnvSpec) -> list[GroupLayout]:
    """Resolve `env.groups` against the env's agents and check every group is homogeneous."""
    _check_global_state(cfg, spec)
    mapping = group_mapping(cfg.env.groups, tuple(spec.agents), "env.groups")

    layouts = []
    for name, members in mapping.items():
        first = spec.per_agent[members[0]]
        for agent in members[1:]:
            if spec.per_agent[agent] != first:
                raise ConfigError(
                    f"env.groups.{name}", members,
                    f"agents with identical observation/action spaces ({agent!r} differs from {members[0]!r}); "
                    f"for {cfg.env.name!r}: env.groups=independent or {_groups_override(groups_by_spaces(spec))}",
                )
        critic_dim = global_state_dim(spec, cfg.env.global_state) if critic_uses_state(cfg) else first.obs_dim
        if cfg.model.actor == "candidate_scorer" and not first.candidate_dim:
            raise ConfigError("model.actor", "candidate_scorer", "an env whose observations end with one feature "
                              f"block per action (env.candidate_dim); group {name!r} has none: use 'mlp'")
        obs_image, critic_image = _images(cfg, spec, first, name)
        agent_id = critic_takes_agent_id(cfg, spec, name, len(members), critic_image)
        critic_dim += len(members) if agent_id else 0
        layouts.append(GroupLayout(name, tuple(members), first.obs_dim, first.action, first.has_action_mask, critic_dim,
                                   first.candidate_dim, obs_image, critic_image, agent_id))
    return layouts
