"""Batched envs: many copies of one env stepped by a single call (JAX vmap, vectorised simulators).

A batched env keeps the ParallelEnv vocabulary (`possible_agents`, per-agent `observation_space` /
`action_space`) but exchanges arrays instead of per-agent dicts:

- `reset(seed)` and `step(actions)` return a `BatchedObs`: obs [E, N, D], global state [E, S], action
  masks [E, N, A], alive [E, N] (dead agents stay present, act with the mask SMAC gives them, and are left
  out of the loss, as in MAPPO's active masks);
- `step(actions [E, N])` also returns rewards [E, N] and per copy `done`, `won`, `truncated`; a copy that
  ends is reset inside the same call (its returned observation is the new episode's first). A copy cut by
  a time limit is `truncated` (done but not terminal): the step's `final` observations (before the reset)
  let the sampler bootstrap it, as the per-copy sampler does with ParallelEnv truncations.

Agents are always in `possible_agents` order along axis 1. Factories of batched envs carry
`batched = True` and take `num_envs`; `describe_env` reads them like any other env. An env whose
discrete actions pick among candidates may set `candidate_dim`: its observations then end with one block
of that width per action (the candidate's features), which a candidate-scoring actor uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BatchedObs:
    obs: np.ndarray
    """[E, N, D] float32."""
    state: np.ndarray
    """[E, S] float32 global state."""
    action_mask: np.ndarray
    """[E, N, A] bool."""
    alive: np.ndarray
    """[E, N] bool: agents that act this step (dead ones are masked out of the loss)."""


@dataclass
class BatchedStep:
    next: BatchedObs
    """Observations after the step; copies that ended were reset, so these are their new episode's first."""
    rewards: np.ndarray
    """[E, N] float32."""
    done: np.ndarray
    """[E] bool: the episode ended with this step."""
    won: np.ndarray
    """[E] float32: 1.0 where an ended episode was won (meaningful where done)."""
    truncated: np.ndarray | None = None
    """[E] bool: the episode ended by a time limit, not a terminal state (bootstrapped from `final`);
    None: every ended episode terminated."""
    final: BatchedObs | None = None
    """Observations this step reached, before ended copies were reset (needed where `truncated`)."""


class BatchedEnv:
    """Base class of batched envs. Subclasses set the attributes below and implement reset/step."""

    num_envs: int
    possible_agents: tuple[str, ...]
    state_dim: int
    shared_reward: bool = False
    """True when every agent receives the same team reward (then the team return is that reward, not the
    sum over agents, matching how SMAC reports returns)."""
    reports_win: bool = False

    def observation_space(self, agent: str):
        raise NotImplementedError

    def action_space(self, agent: str):
        raise NotImplementedError

    def reset(self, seed: int) -> BatchedObs:
        raise NotImplementedError

    def step(self, actions: np.ndarray) -> BatchedStep:
        raise NotImplementedError

    def team_reward(self, rewards: np.ndarray) -> np.ndarray:
        """[E, N] per-agent rewards -> [E] team reward."""
        return rewards[:, 0] if self.shared_reward else rewards.sum(axis=1)


def batched_factory(factory):
    """Mark a factory as building a `BatchedEnv` (it then takes `num_envs`)."""
    factory.batched = True
    return factory


def is_batched(env_or_factory) -> bool:
    return isinstance(env_or_factory, BatchedEnv) or bool(getattr(env_or_factory, "batched", False))


def random_legal_actions(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random available action per agent: mask [E, N, A] -> actions [E, N]."""
    return (rng.random(mask.shape) * mask).argmax(-1)
