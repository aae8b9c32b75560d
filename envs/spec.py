"""Read what a trainer needs to know about a ParallelEnv: agents, spaces, global state, action masks.

Conventions of the contract:
- an observation is a Box (a 3-D one with 1-4 channels is an image, read by a CNN), Discrete,
  MultiDiscrete, MultiBinary, or a Dict/Tuple of these (flattened: one-hots and concatenation); envs with
  action masks wrap it as Dict {"observation": ..., "action_mask": Box/MultiBinary} (PettingZoo's convention);
- an action space is Discrete, MultiDiscrete or Box;
- `env.state()`, when the env implements it, is the global state for centralised critics;
- `infos[agent]` may carry "win" (bool) or "score" (float) at the end of an episode;
- `env.shared_reward = True` declares that every agent gets the same team reward at every step.
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
    """"discrete", "multi_discrete" or "box"."""
    n: int = 0
    """Number of discrete actions (discrete only)."""
    shape: tuple[int, ...] = ()
    """Action shape (box only)."""
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()
    nvec: tuple[int, ...] = ()
    """Choices of each component (multi_discrete only): an action is one index per component."""

    @property
    def dim(self) -> int:
        """Width of the policy head's output (and of an action mask: one flag per choice of each component)."""
        if self.kind == "discrete":
            return self.n
        if self.kind == "multi_discrete":
            return int(sum(self.nvec))
        return int(np.prod(self.shape))


@dataclass(frozen=True)
class ImageSpec:
    """An image observation (a 3-D Box): read by a CNN instead of flattened into an MLP.

    The flat vector the worker stores is the image's values in the env's own order; the encoder reshapes
    it to [frames * channels, height, width]."""

    channels: int
    height: int
    width: int
    channels_last: bool
    """HWC (gymnasium's and PettingZoo's convention) or CHW."""
    scale: float = 1.0
    """Pixels are divided by this (255 for uint8 images)."""
    frames: int = 1
    """Images side by side in one vector: a centralised critic's concatenated observations."""


@dataclass(frozen=True)
class AgentSpec:
    obs_dim: int
    action: ActionSpec
    has_action_mask: bool
    candidate_dim: int = 0
    """Width of one candidate's features when the observation ends with one feature block per discrete
    action (a recommender's candidate slate; `env.candidate_dim`), else 0."""
    obs_space: Any = None
    """The observation (without its action mask) when it is not a Box: Discrete and MultiDiscrete become
    one-hots, MultiBinary 0/1 floats, Dict/Tuple the concatenation of their parts (gymnasium's flatten).
    None for a Box, which is read as its raveled values."""
    image: ImageSpec | None = None
    """Set when the observation is an image (3-D Box, 1-4 channels first or last, sides >= 4)."""


@dataclass(frozen=True)
class EnvSpec:
    agents: tuple[str, ...]
    per_agent: dict[str, AgentSpec]
    state_dim: int | None
    """Global state width, or None when the env has no `state()`."""
    state_image: ImageSpec | None = None
    """Set when `state()` returns an image."""
    shared_reward: bool = False
    """The env gives every agent the same (team) reward at every step (`env.shared_reward = True`): then
    the team return is that reward, not the sum over agents, and one value function fits every agent."""
    state_problem: str | None = None
    """Why `state()` cannot serve as the global state (it raised, or returned no numeric array); None when it
    works or the env has no state() at all. Either way `state_dim` is then None."""


_SUPPORTED_OBS = "Box, Discrete, MultiDiscrete, MultiBinary, or Dict/Tuple of these"


def _action_spec(space: spaces.Space, agent: str) -> ActionSpec:
    start = np.asarray(getattr(space, "start", 0))
    if isinstance(space, (spaces.Discrete, spaces.MultiDiscrete)) and np.any(start != 0):
        raise UnsupportedSpaceError(f"agent {agent!r}: action space {space} starts at {start.tolist()}; only "
                                    "spaces starting at 0 are supported (wrap the env to shift its actions)")
    if isinstance(space, spaces.Discrete):
        return ActionSpec(kind="discrete", n=int(space.n))
    if isinstance(space, spaces.MultiDiscrete) and space.nvec.ndim == 1:
        return ActionSpec(kind="multi_discrete", nvec=tuple(int(n) for n in space.nvec))
    if isinstance(space, spaces.Box):
        low = np.broadcast_to(space.low, space.shape).astype(float).ravel()
        high = np.broadcast_to(space.high, space.shape).astype(float).ravel()
        return ActionSpec(kind="box", shape=tuple(space.shape), low=tuple(low), high=tuple(high))
    raise UnsupportedSpaceError(f"agent {agent!r}: action space {space} is not supported "
                                "(Discrete, MultiDiscrete with a 1-D nvec, or Box)")


def _flattenable(space: spaces.Space) -> bool:
    if isinstance(space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)):
        return True
    if isinstance(space, spaces.Dict):
        return all(_flattenable(s) for s in space.spaces.values())
    if isinstance(space, spaces.Tuple):
        return all(_flattenable(s) for s in space.spaces)
    return False


def image_spec(shape: tuple[int, ...], dtype: Any = np.float32) -> ImageSpec | None:
    """An ImageSpec for an image-shaped array (HWC or CHW with 1-4 channels, sides >= 4), else None."""
    if len(shape) != 3:
        return None
    scale = 255.0 if np.dtype(dtype) == np.uint8 else 1.0
    if shape[-1] <= 4 and min(shape[:2]) >= 4:
        return ImageSpec(int(shape[2]), int(shape[0]), int(shape[1]), True, scale)
    if shape[0] <= 4 and min(shape[1:]) >= 4:
        return ImageSpec(int(shape[0]), int(shape[1]), int(shape[2]), False, scale)
    return None


def _obs_spec(space: spaces.Space, agent: str) -> tuple[int, bool, Any, ImageSpec | None]:
    """(flat width, has action mask, space to flatten with or None, image spec or None)."""
    if isinstance(space, spaces.Dict) and "observation" in space.spaces:
        dim, _, inner, image = _obs_spec(space.spaces["observation"], agent)
        return dim, "action_mask" in space.spaces, inner, image
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape)), False, None, image_spec(space.shape, space.dtype)
    if _flattenable(space):
        return int(spaces.flatdim(space)), False, space, None
    raise UnsupportedSpaceError(f"agent {agent!r}: observation space {space} is not supported ({_SUPPORTED_OBS}; "
                                "with an action mask: Dict {'observation': ..., 'action_mask': ...})")


def _agent_spec(space: spaces.Space, action: spaces.Space, agent: str, candidate_dim: int = 0) -> AgentSpec:
    dim, has_mask, obs_space, image = _obs_spec(space, agent)
    return AgentSpec(dim, _action_spec(action, agent), has_mask, candidate_dim, obs_space, image)


def split_observation(obs: Any, spec: AgentSpec | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(flat float32 observation, action mask or None) from one agent's raw observation.

    `spec` says how to flatten a non-Box observation; without it the observation is read as an array."""
    mask = None
    if isinstance(obs, dict) and "observation" in obs:  # PettingZoo's action-mask convention, as in _obs_spec
        mask = obs.get("action_mask")
        obs = obs["observation"]
    space = None if spec is None else spec.obs_space
    flat = spaces.flatten(space, obs) if space is not None else obs
    return np.asarray(flat, dtype=np.float32).ravel(), None if mask is None else np.asarray(mask, dtype=bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_env(env: Any, seed: int = 0) -> EnvSpec:
    """Inspect a ParallelEnv (resets it once to probe `state()`) or a `BatchedEnv`."""
    if is_batched(env):
        agents = tuple(env.possible_agents)
        per_agent = {}
        for agent in agents:
            per_agent[agent] = _agent_spec(env.observation_space(agent), env.action_space(agent), agent,
                                           int(getattr(env, "candidate_dim", 0)))
        return EnvSpec(agents=agents, per_agent=per_agent, state_dim=int(env.state_dim),
                       shared_reward=bool(env.shared_reward))
    out = env.reset(seed=seed)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], dict)):
        raise EnvContractError(f"reset() returned {type(out).__name__} {_short(out)}, not (observations: dict, "
                               "infos: dict) as a ParallelEnv's reset does")
    agents = tuple(env.possible_agents)
    per_agent = {}
    for agent in agents:
        per_agent[agent] = _agent_spec(env.observation_space(agent), env.action_space(agent), agent)
    shared_reward = bool(getattr(env, "shared_reward", False))
    state, problem = _probe_state(env)
    if state is None:
        return EnvSpec(agents=agents, per_agent=per_agent, state_dim=None, shared_reward=shared_reward,
                       state_problem=problem)
    return EnvSpec(agents=agents, per_agent=per_agent, state_dim=int(state.size),
                   state_image=image_spec(state.shape, state.dtype), shared_reward=shared_reward)


def _probe_state(env: Any) -> tuple[np.ndarray | None, str | None]:
    """(global state, None), (None, None) for an env without state(), or (None, why it cannot be used).

    A broken state() is not fatal here: critics that read the agents' observations instead never call it
    (PettingZoo's rock-paper-scissors keeps a dict in `self.state`, so its wrappers' state() raises)."""
    try:
        state = env.state()
    except (NotImplementedError, AttributeError):
        return None, None
    except Exception as exc:
        return None, f"state() raised {type(exc).__name__}: {exc}"
    array = np.asarray(state)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        return None, f"state() returned {_short(state)}, not a numeric array"
    return array, None
