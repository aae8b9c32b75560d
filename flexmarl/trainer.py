"""Agent-centric trainer: one per agent group, owning its model, optimizer and value-normaliser state.

Contract: `accumulate(micro_batch, value_norm)` runs forward/backward on one micro-batch and adds its
share of the gradient; `step(denominator)` applies the accumulated gradient; the streamed PPO plan (epochs x
minibatches: `begin_update` / `consume` / `finish_update`, or `update` for a whole batch) comes from
`flexmarl.streaming.StreamingTrainer`; `get_state`/`set_state` checkpoint everything.

Normalisation rules (they make a micro-batch self-contained, so it can be consumed as soon as it exists):
- advantages are normalised within each micro-batch (CleanRL normalises per minibatch, MAPPO per batch);
- in epoch 0 a micro-batch's value targets are normalised with the running statistics of the previous
  batches plus its own returns; the whole batch's returns update the statistics (in sample_id order)
  before epoch 1. Neither depends on arrival order, so streamed and synchronous updates agree.
"""

from __future__ import annotations

import numpy as np
import torch

from flexmarl.algorithms import POLICY_LOSSES, VALUE_LOSSES, ValueNorm, loss_hparams
from flexmarl.config import Config
from flexmarl.devices import resolve_device, state_to_cpu
from flexmarl.groups import GroupLayout
from flexmarl.models import GroupPolicy, to_numpy_state
from flexmarl.per_agent_grads import PerAgentGradients
from flexmarl.streaming import StreamingTrainer

_TENSOR_FIELDS = ("agent_index", "obs", "critic_in", "actions", "logp", "values_norm", "active", "episode_start",
                  "h0_actor", "h0_critic", "advantages", "returns", "action_mask")


def to_tensors(row: dict, device: torch.device | str = "cpu") -> dict:
    """A rollout row's training fields as tensors on `device`: the micro-batch `accumulate` takes."""
    return {k: torch.as_tensor(np.asarray(v)).to(device) for k, v in row.items() if k in _TENSOR_FIELDS}


def _active_returns(mb: dict) -> np.ndarray:
    return mb["returns"][mb["active"] > 0].cpu().numpy()


class GroupTrainer(StreamingTrainer):
    def __init__(self, cfg: Config, group: GroupLayout, seed: int, device: str = "cpu"):
        """device: where the model and its micro-batches live ("cuda" when the trainer's placement
        bundle asks for one: `Runtime.device_for`); weights and checkpoints leave it as CPU tensors."""
        super().__init__(group.name, seed, cfg.trainer.epochs, cfg.trainer.num_minibatches)
        self.cfg, self.group = cfg, group
        self.device = resolve_device(device)
        torch.manual_seed(seed)  # initial weights drawn on the CPU: the same on every device
        self.policy = GroupPolicy.for_group(group, cfg.model).to(self.device)
        a = cfg.algo
        self.actor_opt = torch.optim.Adam(self.policy.actor.parameters(), lr=a.lr_actor, eps=a.adam_eps)
        self.critic_opt = torch.optim.Adam(self.policy.critic.parameters(), lr=a.lr_critic, eps=a.adam_eps)
        self.value_norm = ValueNorm(enabled=a.value_norm)
        self.policy_loss = POLICY_LOSSES[a.policy_loss]
        self.loss_hparams = loss_hparams(cfg.trainer)
        self.value_loss = VALUE_LOSSES[a.value_loss]
        # A shared actor with a non-mean aggregator needs each agent's own gradient (GRASP and ablations).
        self.per_agent = None
        if a.gradient_aggregator != "mean" and len(group.agents) > 1:
            self.per_agent = PerAgentGradients(list(self.policy.actor.parameters()), len(group.agents), a.gradient_aggregator)

    # -- weights and checkpoint state -----------------------------------------------------------
    def get_weights(self) -> dict:
        return {"policy": to_numpy_state(self.policy), "value_norm": self.value_norm.get_state()}

    def get_state(self) -> dict:
        """A copy on the CPU: later steps must not change a state that was already handed out."""
        return state_to_cpu({
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
        value_loss = self.value_loss(values, mb["values_norm"], targets, clip_eps=a.value_clip_eps, huber_delta=a.huber_delta)
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
            clipped = ((ratio - 1).abs() > self.cfg.trainer.clip_eps).float()
            for name, value in [
                ("losses/policy", (policy_loss * actor_active).sum() / n_active),
                ("losses/value", (value_loss * active).sum() / n_active),
                ("losses/entropy", (entropy * actor_active).sum() / n_active),
                ("losses/approx_kl", (((ratio - 1) - log_ratio) * actor_active).sum() / n_active),
                ("losses/clip_frac", (clipped * actor_active).sum() / n_active),
            ]:
                self.record_stat(name, float(value))
        return float(active.sum())

    def _policy_terms(self, mb: dict, advantages: torch.Tensor):
        """(log-prob, entropy, per-sample policy loss) of the current actor on a (sub-)micro-batch."""
        dist, _ = self.policy.actor.distribution(mb["obs"], mb["h0_actor"], mb["episode_start"], mb.get("action_mask"))
        logp = dist.log_prob(mb["actions"])
        return logp, dist.entropy(), self.policy_loss(logp, mb["logp"], advantages, **self.loss_hparams)

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
        max_norm = self.cfg.trainer.max_grad_norm
        scale = 1.0 / max(denominator, 1.0)
        if self.per_agent is not None:  # the actor's gradient is the aggregate of per-agent means
            for name, value in self.per_agent.apply().items():
                self.record_stat(name, value)
        for name, module, opt in [("actor", self.policy.actor, self.actor_opt), ("critic", self.policy.critic, self.critic_opt)]:
            if not (name == "actor" and self.per_agent is not None):
                for p in module.parameters():
                    if p.grad is not None:
                        p.grad.mul_(scale)
            if max_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
                self.record_stat(f"losses/grad_norm_{name}", float(norm))
            opt.step()
            opt.zero_grad(set_to_none=True)

    # -- hooks of the streamed plan (flexmarl.streaming) --------------------------------------------
    def micro_batch_tensors(self, payload: dict) -> dict:
        return to_tensors(payload, self.device)

    def train_micro_batch(self, mb: dict, first_epoch: bool) -> float:
        """Epoch 0 normalises value targets with the statistics so far plus the micro-batch's own returns
        (it may arrive before the rest of the batch); later epochs with the whole batch's statistics."""
        value_norm = self.value_norm.updated(_active_returns(mb)) if first_epoch else self.value_norm
        return self.accumulate(mb, value_norm)

    def batch_complete(self, ordered: list[dict]) -> None:
        """The whole batch's returns update the value normaliser, in sample_id order."""
        for mb in ordered:
            self.value_norm.update(_active_returns(mb))

    def update_metrics(self) -> dict:
        return self.per_agent.pop_times() if self.per_agent is not None else {}
