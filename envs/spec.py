"""Read what a trainer needs to know about a ParallelEnv: agents, spaces, global state, action masks.

Conventions of the contract:
- an observation is a Box, or a Dict {"observation": Box, "action_mask": Box/MultiBinary} for envs with
  action masks (the PettingZoo convention);
- `env.state()`, when the env implements it, is the global state for centralised critics;
- `infos[agent]` may carry "win" (bool) or "score" (float) at the end of an episode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.batched import is_batched


class UnsupportedSpaceError(TypeError):
    """An observation or action space the policies cannot read; names the agent and the space."""


class EnvContractError(TypeError):
    """The env does not follow the ParallelEnv API (e.g. `reset` returns None, as an AEC env does)."""


@dataclass(frozen=True)
class ActionSpec:
    kind: str
    """"discrete" or "box"."""
    n: int = 0
    """Number of discrete actions (discrete only)."""
    shape: tuple[int, ...] = ()
    """Action shape (box only)."""
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    @property
    def dim(self) -> int:
        """Width of the policy head's output."""
        return self.n if self.kind == "discrete" else int(np.prod(self.shape))


@dataclass(frozen=True)
class AgentSpec:
    obs_dim: int
    action: ActionSpec
    has_action_mask: bool
    candidate_dim: int = 0
    """Width of one candidate's features when the observation ends with one feature block per discrete
    action (a recommender's candidate slate; `env.candidate_dim`), else 0."""


@dataclass(frozen=True)
class EnvSpec:
    agents: tuple[str, ...]
    per_agent: dict[str, AgentSpec]
    state_dim: int | None
    """Global state width, or None when the env has no `state()`."""


def _action_spec(space: spaces.Space, agent: str) -> ActionSpec:
    if isinstance(space, spaces.Discrete):
        return ActionSpec(kind="discrete", n=int(space.n))
    if isinstance(space, spaces.Box):
        low = np.broadcast_to(space.low, space.shape).astype(float).ravel()
        high = np.broadcast_to(space.high, space.shape).astype(float).ravel()
        return ActionSpec(kind="box", shape=tuple(space.shape), low=tuple(low), high=tuple(high))
    raise UnsupportedSpaceError(f"agent {agent!r}: action space {space} is not supported (Discrete or Box)")


def _obs_dim(space: spaces.Space, agent: str) -> tuple[int, bool]:
    if isinstance(space, spaces.Dict) and "observation" in space.spaces:
        inner, _ = _obs_dim(space.spaces["observation"], agent)
        return inner, "action_mask" in space.spaces
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape)), False
    raise UnsupportedSpaceError(f"agent {agent!r}: observation space {space} is not supported (Box or Dict with 'observation')")


def split_observation(obs: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(flat observation, action mask or None) from one agent's raw observation."""
    if isinstance(obs, dict):
        mask = obs.get("action_mask")
        return np.asarray(obs["observation"], dtype=np.float32).ravel(), (
            None if mask is None else np.asarray(mask, dtype=bool)
        )
    return np.asarray(obs, dtype=np.float32).ravel(), None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_env(env: Any, seed: int = 0) -> EnvSpec:
    """Inspect a ParallelEnv (resets it once to probe `state()`) or a `BatchedEnv`."""
    if is_batched(env):
        agents = tuple(env.possible_agents)
        per_agent = {}
        for agent in agents:
            obs_dim, has_mask = _obs_dim(env.observation_space(agent), agent)
            per_agent[agent] = AgentSpec(obs_dim, _action_spec(env.action_space(agent), agent), has_mask,
                                         int(getattr(env, "candidate_dim", 0)))
        return EnvSpec(agents=agents, per_agent=per_agent, state_dim=int(env.state_dim))
    out = env.reset(seed=seed)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], dict)):
        raise EnvContractError(f"reset() returned {type(out).__name__} {_short(out)}, not (observations: dict, "
                               "infos: dict) as a ParallelEnv's reset does")
    agents = tuple(env.possible_agents)
    per_agent = {}
    for agent in agents:
        obs_dim, has_mask = _obs_dim(env.observation_space(agent), agent)
        per_agent[agent] = AgentSpec(obs_dim, _action_spec(env.action_space(agent), agent), has_mask)
    try:
        state_dim: int | None = int(np.asarray(env.state(), dtype=np.float32).size)
    except (NotImplementedError, AttributeError):
        state_dim = None
    return EnvSpec(agents=agents, per_agent=per_agent, state_dim=state_dim)
