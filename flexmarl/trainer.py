"""Agent-centric trainer: one per agent group, owning its model, optimizer and value-normaliser state.

Contract: `accumulate(micro_batch)` runs forward/backward on one micro-batch and adds its share of the
gradient; `step()` applies the accumulated gradient; `update(micro_batches)` runs the PPO plan (epochs x
minibatches, each minibatch a list of micro-batches); `get_state`/`set_state` checkpoint everything.

Normalisation rules (they make a micro-batch self-contained, so it can be consumed as soon as it exists):
- advantages are normalised within each micro-batch (CleanRL normalises per minibatch, MAPPO per batch);
- value targets update the running ValueNorm once per micro-batch, in consumption order, in epoch 0.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from flexmarl.algorithms import POLICY_LOSSES, VALUE_LOSSES, ValueNorm
from flexmarl.config import Config
from flexmarl.groups import GroupLayout
from flexmarl.models import GroupPolicy, to_numpy_state

_TENSOR_FIELDS = ("obs", "critic_in", "actions", "logp", "values_norm", "active", "episode_start",
                  "h0_actor", "h0_critic", "advantages", "returns", "action_mask")


def _to_tensors(row: dict) -> dict:
    return {k: torch.tensor(np.asarray(v)) for k, v in row.items() if k in _TENSOR_FIELDS}


class GroupTrainer:
    def __init__(self, cfg: Config, group: GroupLayout, seed: int):
        self.cfg, self.group, self.seed = cfg, group, seed
        torch.manual_seed(seed)
        self.policy = GroupPolicy(group.obs_dim, group.critic_dim, group.action, cfg.model)
        a = cfg.algo
        self.actor_opt = torch.optim.Adam(self.policy.actor.parameters(), lr=a.lr_actor, eps=a.adam_eps)
        self.critic_opt = torch.optim.Adam(self.policy.critic.parameters(), lr=a.lr_critic, eps=a.adam_eps)
        self.value_norm = ValueNorm(enabled=a.value_norm)
        self.policy_loss = POLICY_LOSSES[a.policy_loss]
        self.value_loss = VALUE_LOSSES[a.value_loss]
        self.version = 0
        self._stats: dict[str, list[float]] = {}

    # -- weights and checkpoint state -----------------------------------------------------------
    def get_weights(self) -> dict:
        return {"policy": to_numpy_state(self.policy), "value_norm": self.value_norm.get_state()}

    def get_state(self) -> dict:
        """A deep copy: later steps must not change a state that was already handed out."""
        return copy.deepcopy({
            "version": self.version,
            "policy": self.policy.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "value_norm": self.value_norm.get_state(),
        })

    def set_state(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.value_norm.set_state(state["value_norm"])
        self.version = int(state["version"])

    # -- micro-batch primitives -----------------------------------------------------------------
    def accumulate(self, mb: dict, denominator: float, update_value_norm: bool) -> None:
        """Add this micro-batch's share of the minibatch gradient: sum over its active samples / denominator."""
        a = self.cfg.algo
        active = mb["active"]
        n_active = active.sum().clamp(min=1.0)
        advantages = mb["advantages"]
        if a.advantage_norm:
            mean = (advantages * active).sum() / n_active
            std = (((advantages - mean) ** 2 * active).sum() / n_active).sqrt()
            advantages = (advantages - mean) / (std + 1e-8)
        dist, _ = self.policy.actor.distribution(mb["obs"], mb["h0_actor"], mb["episode_start"], mb.get("action_mask"))
        logp = dist.log_prob(mb["actions"])
        entropy = dist.entropy()
        policy_loss = self.policy_loss(logp, mb["logp"], advantages, a.clip_eps)

        if update_value_norm:
            self.value_norm.update(mb["returns"][active > 0].numpy())
        targets = self.value_norm.normalize(mb["returns"])
        values, _ = self.policy.critic(mb["critic_in"], mb["h0_critic"], mb["episode_start"])
        value_loss = self.value_loss(values, mb["values_norm"], targets, a.value_clip_eps, a.huber_delta)

        actor_loss = ((policy_loss - a.entropy_coef * entropy) * active).sum() / denominator
        critic_loss = a.value_coef * (value_loss * active).sum() / denominator
        (actor_loss + critic_loss).backward()

        with torch.no_grad():
            log_ratio = logp - mb["logp"]
            ratio = log_ratio.exp()
            for name, value in [
                ("losses/policy", (policy_loss * active).sum() / n_active),
                ("losses/value", (value_loss * active).sum() / n_active),
                ("losses/entropy", (entropy * active).sum() / n_active),
                ("losses/approx_kl", (((ratio - 1) - log_ratio) * active).sum() / n_active),
                ("losses/clip_frac", (((ratio - 1).abs() > a.clip_eps).float() * active).sum() / n_active),
            ]:
                self._stats.setdefault(name, []).append(float(value))

    def step(self) -> None:
        max_norm = self.cfg.algo.max_grad_norm
        for name, module, opt in [("actor", self.policy.actor, self.actor_opt), ("critic", self.policy.critic, self.critic_opt)]:
            if max_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
                self._stats.setdefault(f"losses/grad_norm_{name}", []).append(float(norm))
            opt.step()
            opt.zero_grad(set_to_none=True)

    # -- one iteration --------------------------------------------------------------------------
    def update(self, versions: list[int], *micro_batches: dict) -> dict:
        """PPO over one global batch given as micro-batches in consumption order; bumps the version.

        `versions[i]` is the policy version that produced micro-batch i (policy lag = version - it).

        Epoch 0 consumes the micro-batches in the given order; later epochs reshuffle them with a
        generator seeded by (seed, version, epoch), so a resumed run repeats the same partition.
        """
        start = time.perf_counter()
        a = self.cfg.algo
        if len(micro_batches) % a.num_minibatches:
            raise ValueError(f"{len(micro_batches)} micro-batches do not split into {a.num_minibatches} minibatches")
        lags = [self.version - v for v in versions]
        tensors = [_to_tensors(mb) for mb in micro_batches]
        per_minibatch = len(tensors) // a.num_minibatches
        self._stats = {}
        for epoch in range(a.epochs):
            if epoch == 0:
                order = list(range(len(tensors)))
            else:
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.version * 101 + epoch)
                order = torch.randperm(len(tensors), generator=gen).tolist()
            for m in range(a.num_minibatches):
                chosen = [tensors[i] for i in order[m * per_minibatch : (m + 1) * per_minibatch]]
                denominator = float(sum(mb["active"].sum() for mb in chosen)) or 1.0
                for mb in chosen:
                    self.accumulate(mb, denominator, update_value_norm=(epoch == 0))
                self.step()
        self.version += 1
        metrics = {name: float(np.mean(values)) for name, values in self._stats.items()}
        metrics.update({
            "perf/train_s": time.perf_counter() - start,
            "perf/policy_lag_max": float(max(lags, default=0)),
            "perf/policy_lag_mean": float(np.mean(lags)) if lags else 0.0,
        })
        return metrics
