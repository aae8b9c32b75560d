"""Inference backends: the rollout worker asks one for actions and values and never touches models.

`TorchPolicyBackend` runs the groups' torch policies in-process; an LLM backend (vLLM) implements the
same interface later.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from flexmarl.algorithms import ValueNorm
from flexmarl.config import Config
from flexmarl.groups import GroupLayout
from flexmarl.models import GroupPolicy, load_numpy_state


@dataclass
class ActOutput:
    actions: np.ndarray
    logp: np.ndarray
    values_norm: np.ndarray
    """Critic outputs in normalised space (what the value loss clips around)."""
    values: np.ndarray
    """Critic outputs mapped back to return scale (what GAE uses)."""
    h_actor: np.ndarray
    h_critic: np.ndarray


class InferenceBackend(ABC):
    """Computes actions and values for one group's batch of agents; holds versioned weights."""

    version: int = -1

    @abstractmethod
    def set_weights(self, weights: dict, version: int) -> None:
        """weights: {group: {"policy": numpy state dict, "value_norm": ValueNorm state}}."""

    @abstractmethod
    def initial_state(self, group: str, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Recurrent state (actor, critic) for `batch` fresh columns; width 0 for feed-forward policies."""

    @abstractmethod
    def act(self, group: str, obs, critic_in, action_mask, h_actor, h_critic, episode_start,
            deterministic: bool, generator: torch.Generator | None) -> ActOutput:
        """One step for a batch of columns: obs [B, D], critic_in [B, S], episode_start [B]."""

    @abstractmethod
    def value(self, group: str, critic_in, h_critic, episode_start) -> np.ndarray:
        """Return-scale values for bootstrapping, [B]."""


class TorchPolicyBackend(InferenceBackend):
    def __init__(self, cfg: Config, groups: list[GroupLayout]):
        self.policies = {g.name: GroupPolicy.for_group(g, cfg.model).eval() for g in groups}
        self.value_norms = {g.name: ValueNorm(enabled=cfg.algo.value_norm) for g in groups}

    def set_weights(self, weights: dict, version: int) -> None:
        for name, group_weights in weights.items():
            load_numpy_state(self.policies[name], group_weights["policy"])
            self.value_norms[name].set_state(group_weights["value_norm"])
        self.version = version

    def initial_state(self, group, batch):
        policy = self.policies[group]
        return (policy.actor.trunk.initial_state(batch).numpy(), policy.critic.trunk.initial_state(batch).numpy())

    @torch.inference_mode()
    def act(self, group, obs, critic_in, action_mask, h_actor, h_critic, episode_start, deterministic, generator):
        policy = self.policies[group]
        starts = torch.as_tensor(episode_start, dtype=torch.float32)[None]
        mask = None if action_mask is None else torch.as_tensor(action_mask)[None]
        dist, h_a = policy.actor.distribution(torch.as_tensor(obs)[None], torch.as_tensor(h_actor), starts, mask)
        actions = policy.actor.greedy(dist) if deterministic else policy.actor.sample(dist, generator)
        logp = dist.log_prob(actions)
        values_norm, h_c = policy.critic(torch.as_tensor(critic_in)[None], torch.as_tensor(h_critic), starts)
        values_norm = values_norm[0].numpy()
        return ActOutput(
            actions=actions[0].numpy(), logp=logp[0].numpy(), values_norm=values_norm,
            values=np.asarray(self.value_norms[group].denormalize(values_norm), dtype=np.float32),
            h_actor=h_a.numpy(), h_critic=h_c.numpy(),
        )

    @torch.inference_mode()
    def value(self, group, critic_in, h_critic, episode_start):
        starts = torch.as_tensor(episode_start, dtype=torch.float32)[None]
        values_norm, _ = self.policies[group].critic(torch.as_tensor(critic_in)[None], torch.as_tensor(h_critic), starts)
        return np.asarray(self.value_norms[group].denormalize(values_norm[0].numpy()), dtype=np.float32)


class RandomPolicyBackend(InferenceBackend):
    """Uniform random actions over the valid ones, zero values: the baseline every learner must beat."""

    def __init__(self, cfg: Config, groups: list[GroupLayout]):
        self.groups = {g.name: g for g in groups}

    def set_weights(self, weights, version):
        self.version = version

    def initial_state(self, group, batch):
        return np.zeros((batch, 0), np.float32), np.zeros((batch, 0), np.float32)

    def act(self, group, obs, critic_in, action_mask, h_actor, h_critic, episode_start, deterministic, generator):
        action = self.groups[group].action
        batch = obs.shape[0]
        if action.kind in ("discrete", "multi_discrete"):
            mask = np.ones((batch, action.dim), bool) if action_mask is None else np.asarray(action_mask, bool)
            scores = torch.rand(mask.shape, generator=generator).numpy() * mask
            sizes = [action.n] if action.kind == "discrete" else list(action.nvec)
            cuts = np.cumsum(sizes)[:-1]  # one component per slice of the mask
            actions = np.stack([part.argmax(-1) for part in np.split(scores, cuts, axis=-1)], -1)
            logp = -sum(np.log(part.sum(-1)) for part in np.split(mask, cuts, axis=-1))
            if action.kind == "discrete":
                actions = actions[:, 0]
        else:
            low, high = np.asarray(action.low, np.float32), np.asarray(action.high, np.float32)
            actions = low + (high - low) * torch.rand((batch, action.dim), generator=generator).numpy()
            logp = -np.log(high - low).sum() * np.ones(batch)
        zeros = np.zeros(batch, np.float32)
        return ActOutput(actions, logp.astype(np.float32), zeros, zeros, h_actor, h_critic)

    def value(self, group, critic_in, h_critic, episode_start):
        return np.zeros(critic_in.shape[0], np.float32)


BACKENDS = {"torch": TorchPolicyBackend, "random": RandomPolicyBackend}


def make_backend(cfg: Config, groups: list[GroupLayout]) -> InferenceBackend:
    return BACKENDS[cfg.rollout.backend](cfg, groups)
