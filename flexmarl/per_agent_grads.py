"""Per-agent gradients on a shared actor, combined by a registered gradient aggregator.

GRASP (arXiv:2604.00717) and the other aggregators need each agent's gradient of its own surrogate, not
the sum that one backward pass gives. `PerAgentGradients` gets all of them from one batched backward
(`is_grads_batched`, a vmap over the one-hot output gradients), adds them up over the micro-batches of a
minibatch, and at the optimizer step writes the aggregated direction into the actor's `.grad`.
"""

from __future__ import annotations

import time

import torch

from flexmarl.algorithms import GRADIENT_AGGREGATORS


class PerAgentGradients:
    def __init__(self, params: list[torch.nn.Parameter], num_agents: int, aggregator: str):
        self.params = [p for p in params if p.requires_grad]
        self.num_agents = num_agents
        self.aggregate = GRADIENT_AGGREGATORS[aggregator]
        size = sum(p.numel() for p in self.params)
        self.sums = torch.zeros(num_agents, size)
        self.counts = torch.zeros(num_agents)
        self.batched = True  # falls back to one backward per agent if an op cannot be vmapped
        self.grad_s = self.aggregate_s = 0.0

    def accumulate(self, sample_losses: torch.Tensor, agent_index: torch.Tensor, active: torch.Tensor) -> None:
        """Add the gradients of the per-agent sums of `sample_losses` (already masked by `active`)."""
        t0 = time.perf_counter()
        index = agent_index.reshape(-1).long()
        losses = torch.zeros(self.num_agents).index_add(0, index, sample_losses.reshape(-1))
        self.counts.index_add_(0, index, active.reshape(-1).float())
        self.sums += self._jacobian(losses)
        self.grad_s += time.perf_counter() - t0

    def _jacobian(self, losses: torch.Tensor) -> torch.Tensor:
        if self.batched:
            try:
                grads = torch.autograd.grad(losses, self.params, grad_outputs=torch.eye(self.num_agents),
                                            is_grads_batched=True, allow_unused=True, retain_graph=True)
                return self._flatten(grads, batch=self.num_agents)
            except RuntimeError:
                self.batched = False
        rows = []
        for i in range(self.num_agents):
            grads = torch.autograd.grad(losses[i], self.params, allow_unused=True,
                                        retain_graph=i < self.num_agents - 1)
            rows.append(self._flatten(grads, batch=None))
        return torch.stack(rows)

    def _flatten(self, grads, batch: int | None) -> torch.Tensor:
        parts = []
        for g, p in zip(grads, self.params):
            shape = (p.numel(),) if batch is None else (batch, p.numel())
            parts.append(torch.zeros(shape) if g is None else g.reshape(shape))
        return torch.cat(parts, dim=-1)

    def apply(self) -> dict[str, float]:
        """Aggregate the accumulated per-agent mean gradients into the actor's `.grad`; reset."""
        t0 = time.perf_counter()
        present = self.counts > 0
        info: dict[str, float] = {}
        direction = torch.zeros(self.sums.shape[1])
        if present.any():
            grads = self.sums[present] / self.counts[present, None]
            weights = self.counts[present] / self.counts[present].sum()
            direction, info = self.aggregate(grads, weights)
        offset = 0
        for p in self.params:
            p.grad = direction[offset : offset + p.numel()].reshape(p.shape).clone()
            offset += p.numel()
        self.sums.zero_()
        self.counts.zero_()
        self.aggregate_s += time.perf_counter() - t0
        return {k: float(v) for k, v in info.items()}

    def pop_times(self) -> dict[str, float]:
        """Seconds spent in per-agent backward passes and in aggregation since the last call."""
        times = {"perf/per_agent_grad_s": self.grad_s, "perf/aggregate_s": self.aggregate_s}
        self.grad_s = self.aggregate_s = 0.0
        return times
