"""Agent-centric trainer: one per agent group, owning its model, optimizer and value-normaliser state.

Contract: `accumulate(micro_batch)` runs forward/backward on one micro-batch and adds its share of the
gradient; `step()` applies the accumulated gradient; `update(micro_batches)` runs the PPO plan (epochs x
minibatches, each minibatch a list of micro-batches); `get_state`/`set_state` checkpoint everything.

Normalisation rules (they make a micro-batch self-contained, so it can be consumed as soon as it exists):
- advantages are normalised within each micro-batch (CleanRL normalises per minibatch, MAPPO per batch);
- in epoch 0 a micro-batch's value targets are normalised with the running statistics of the previous
  batches plus its own returns; the whole batch's returns update the statistics (in sample_id order)
  before epoch 1. Neither depends on arrival order, so streamed and synchronous updates agree.
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
from flexmarl.per_agent_grads import PerAgentGradients

_TENSOR_FIELDS = ("agent_index", "obs", "critic_in", "actions", "logp", "values_norm", "active", "episode_start",
                  "h0_actor", "h0_critic", "advantages", "returns", "action_mask")


def _to_tensors(row: dict) -> dict:
    return {k: torch.tensor(np.asarray(v)) for k, v in row.items() if k in _TENSOR_FIELDS}


def _active_returns(mb: dict) -> np.ndarray:
    return mb["returns"][mb["active"] > 0].numpy()


class GroupTrainer:
    def __init__(self, cfg: Config, group: GroupLayout, seed: int):
        self.cfg, self.group, self.seed = cfg, group, seed
        torch.manual_seed(seed)
        self.policy = GroupPolicy.for_group(group, cfg.model)
        a = cfg.algo
        self.actor_opt = torch.optim.Adam(self.policy.actor.parameters(), lr=a.lr_actor, eps=a.adam_eps)
        self.critic_opt = torch.optim.Adam(self.policy.critic.parameters(), lr=a.lr_critic, eps=a.adam_eps)
        self.value_norm = ValueNorm(enabled=a.value_norm)
        self.policy_loss = POLICY_LOSSES[a.policy_loss]
        self.value_loss = VALUE_LOSSES[a.value_loss]
        # A shared actor with a non-mean aggregator needs each agent's own gradient (GRASP and ablations).
        self.per_agent = None
        if a.gradient_aggregator != "mean" and len(group.agents) > 1:
            self.per_agent = PerAgentGradients(list(self.policy.actor.parameters()), len(group.agents), a.gradient_aggregator)
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
    def accumulate(self, mb: dict, value_norm: ValueNorm) -> float:
        """Backward of the micro-batch's loss summed over its active samples; returns that sample count.

        Gradients add up across calls; `step(denominator)` divides by the minibatch's active count, so
        a minibatch's update does not depend on how it was cut into micro-batches.
        """
        a = self.cfg.algo
        active = mb["active"]
        n_active = active.sum().clamp(min=1.0)
        advantages = mb["advantages"]
        if a.advantage_norm:
            mean = (advantages * active).sum() / n_active
            std = (((advantages - mean) ** 2 * active).sum() / n_active).sqrt()
            advantages = (advantages - mean) / (std + 1e-8)
        targets = value_norm.normalize(mb["returns"])
        values, _ = self.policy.critic(mb["critic_in"], mb["h0_critic"], mb["episode_start"])
        value_loss = self.value_loss(values, mb["values_norm"], targets, a.value_clip_eps, a.huber_delta)
        critic_loss = a.value_coef * (value_loss * active).sum()

        if self.per_agent is None:
            logp, entropy, policy_loss = self._policy_terms(mb, advantages)
            actor_loss = ((policy_loss - a.entropy_coef * entropy) * active).sum()
            (actor_loss + critic_loss).backward()
            old_logp, actor_active = mb["logp"], active
        else:  # GRASP and other aggregators: each agent's gradient of its own surrogate
            critic_loss.backward()
            logp, entropy, policy_loss, old_logp, actor_active = self._per_agent_backward(mb, advantages)

        with torch.no_grad():
            log_ratio = logp - old_logp
            ratio = log_ratio.exp()
            for name, value in [
                ("losses/policy", (policy_loss * actor_active).sum() / n_active),
                ("losses/value", (value_loss * active).sum() / n_active),
                ("losses/entropy", (entropy * actor_active).sum() / n_active),
                ("losses/approx_kl", (((ratio - 1) - log_ratio) * actor_active).sum() / n_active),
                ("losses/clip_frac", (((ratio - 1).abs() > a.clip_eps).float() * actor_active).sum() / n_active),
            ]:
                self._stats.setdefault(name, []).append(float(value))
        return float(active.sum())

    def _policy_terms(self, mb: dict, advantages: torch.Tensor):
        """(log-prob, entropy, per-sample policy loss) of the current actor on a (sub-)micro-batch."""
        dist, _ = self.policy.actor.distribution(mb["obs"], mb["h0_actor"], mb["episode_start"], mb.get("action_mask"))
        logp = dist.log_prob(mb["actions"])
        return logp, dist.entropy(), self.policy_loss(logp, mb["logp"], advantages, self.cfg.algo.clip_eps)

    def _per_agent_backward(self, mb: dict, advantages: torch.Tensor):
        """Each agent's own surrogate on its own samples, one backward per agent.

        Columns (time-major rows) or packed samples are split by `agent_index`, so every sample goes
        through one forward and one backward, as in the ordinary update; only the number of (smaller)
        backward calls grows with the agents. Returns the concatenated terms for the loss statistics.
        """
        ent_coef = self.cfg.algo.entropy_coef
        parts = []
        for agent in range(self.per_agent.num_agents):
            cols = mb["agent_index"][0] == agent
            if not bool(cols.any()):
                continue
            sub = {k: (v[cols] if k.startswith("h0") else v[:, cols]) for k, v in mb.items()
                   if k in ("obs", "actions", "logp", "episode_start", "action_mask", "active", "h0_actor")}
            logp, entropy, policy_loss = self._policy_terms(sub, advantages[:, cols])
            loss = ((policy_loss - ent_coef * entropy) * sub["active"]).sum()
            self.per_agent.add(agent, loss, float(sub["active"].sum()))
            parts.append((logp.detach(), entropy.detach(), policy_loss.detach(), sub["logp"], sub["active"]))
        return tuple(torch.cat(list(column), dim=1) for column in zip(*parts))

    def step(self, denominator: float) -> None:
        """Average the accumulated gradient over `denominator` samples, clip, and apply it."""
        max_norm = self.cfg.algo.max_grad_norm
        scale = 1.0 / max(denominator, 1.0)
        if self.per_agent is not None:  # the actor's gradient is the aggregate of per-agent means
            for name, value in self.per_agent.apply().items():
                self._stats.setdefault(name, []).append(value)
        for name, module, opt in [("actor", self.policy.actor, self.actor_opt), ("critic", self.policy.critic, self.critic_opt)]:
            if not (name == "actor" and self.per_agent is not None):
                for p in module.parameters():
                    if p.grad is not None:
                        p.grad.mul_(scale)
            if max_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
                self._stats.setdefault(f"losses/grad_norm_{name}", []).append(float(norm))
            opt.step()
            opt.zero_grad(set_to_none=True)

    # -- one iteration, streamed ------------------------------------------------------------------
    def begin_update(self, num_micro_batches: int) -> None:
        """Start global batch `self.version`, which arrives as `num_micro_batches` micro-batches."""
        if num_micro_batches % self.cfg.algo.num_minibatches:
            raise ValueError(f"{num_micro_batches} micro-batches do not split into {self.cfg.algo.num_minibatches} minibatches")
        self._batch: list[tuple[str, dict]] = []
        self._lags: list[int] = []
        self._per_minibatch = num_micro_batches // self.cfg.algo.num_minibatches
        self._minibatch = 0  # epoch-0 minibatch being accumulated
        self._waiting: dict[int, list[dict]] = {}  # micro-batches of later minibatches, held until their turn
        self._done_in_minibatch = 0
        self._pending_active = 0.0
        self._held_back = 0  # micro-batches that arrived before their minibatch's turn
        self._stats, self._compute_s, self._spans = {}, 0.0, []

    def consume(self, sample_id: str, version: int, micro_batch: dict, slot: int | None = None) -> None:
        """Epoch 0: forward/backward on a micro-batch as soon as it arrives.

        `slot` (its index in the batch; default: arrival order) fixes its minibatch, slot // per_minibatch,
        so streaming and sync use the same partition. A micro-batch of a later minibatch waits until the
        earlier minibatches have stepped: only arrival order inside a minibatch can differ from sync.
        """
        t0 = time.time()
        slot = len(self._batch) if slot is None else slot
        mb = _to_tensors(micro_batch)
        self._batch.append((sample_id, mb))
        self._lags.append(self.version - version)
        self._held_back += int(slot // self._per_minibatch > self._minibatch)
        self._waiting.setdefault(slot // self._per_minibatch, []).append(mb)
        while self._waiting.get(self._minibatch):
            mb = self._waiting[self._minibatch].pop(0)
            self._pending_active += self.accumulate(mb, self.value_norm.updated(_active_returns(mb)))
            self._done_in_minibatch += 1
            if self._done_in_minibatch == self._per_minibatch:
                self.step(self._pending_active)
                self._pending_active, self._done_in_minibatch = 0.0, 0
                self._minibatch += 1
        self._record("consume", t0)

    def finish_update(self) -> dict:
        """Epochs 1.. on the complete batch, then version += 1.

        Later epochs order the micro-batches by sample_id and shuffle them with a generator seeded by
        (seed, version, epoch): the same partition whatever order they arrived in, and on resume.
        """
        t0 = time.time()
        a = self.cfg.algo
        expected = self._per_minibatch * a.num_minibatches
        if len(self._batch) != expected:
            raise RuntimeError(f"trainer {self.group.name!r}: {len(self._batch)} of {expected} micro-batches consumed")
        tensors = [mb for _, mb in sorted(self._batch, key=lambda item: item[0])]
        for mb in tensors:
            self.value_norm.update(_active_returns(mb))
        for epoch in range(1, a.epochs):
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.version * 101 + epoch)
            order = torch.randperm(len(tensors), generator=gen).tolist()
            for m in range(a.num_minibatches):
                chosen = order[m * self._per_minibatch : (m + 1) * self._per_minibatch]
                self.step(sum(self.accumulate(tensors[i], self.value_norm) for i in chosen))
        self.version += 1
        self._batch = []
        self._record("finish", t0)
        metrics = {name: float(np.mean(values)) for name, values in self._stats.items()}
        if self.per_agent is not None:
            metrics.update(self.per_agent.pop_times())
        metrics.update({
            "perf/train_s": self._compute_s,
            "perf/policy_lag_min": float(min(self._lags)),
            "perf/policy_lag_mean": float(np.mean(self._lags)),
            "perf/policy_lag_max": float(max(self._lags)),
            "perf/held_back": float(self._held_back),
        })
        return metrics

    def _record(self, kind: str, t0: float) -> None:
        t1 = time.time()
        self._compute_s += t1 - t0
        self._spans.append((kind, t0, t1))

    def spans(self) -> list[tuple[str, float, float]]:
        """(kind, start, end) wall-clock spans of the last update's compute, for timelines."""
        return list(self._spans)

    def update(self, sample_ids: list[str], versions: list[int], *micro_batches: dict) -> dict:
        """The whole batch at once (sync pipeline): the same calls as streaming, in sample_id order."""
        self.begin_update(len(micro_batches))
        ordered = sorted(zip(sample_ids, versions, micro_batches), key=lambda x: x[0])
        for slot, (sample_id, version, mb) in enumerate(ordered):
            self.consume(sample_id, version, mb, slot)
        return self.finish_update()
