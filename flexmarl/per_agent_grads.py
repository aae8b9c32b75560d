"""Per-agent gradients on a shared actor, combined by a registered gradient aggregator.

GRASP (arXiv:2604.00717) and the other aggregators need each agent's gradient of its own surrogate, not
the sum that one backward pass gives. The trainer splits a micro-batch by agent and calls `add` with each
agent's loss; `PerAgentGradients` adds the gradients up over the micro-batches of a minibatch, and at the
optimizer step writes the aggregated direction into the actor's `.grad`.
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
        device = self.params[0].device
        self.sums = torch.zeros(num_agents, sum(p.numel() for p in self.params), device=device)
        self.counts = torch.zeros(num_agents, device=device)
        self.grad_s = self.aggregate_s = 0.0

    def add(self, agent: int, loss: torch.Tensor, num_samples: float) -> None:
        """Add the gradient of `loss` (agent's surrogate summed over its `num_samples` active samples)."""
        t0 = time.perf_counter()
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        self.sums[agent] += torch.cat([torch.zeros(p.numel(), device=p.device) if g is None else g.reshape(-1)
                                       for g, p in zip(grads, self.params)])
        self.counts[agent] += num_samples
        self.grad_s += time.perf_counter() - t0

    def apply(self) -> dict[str, float]:
        """Aggregate the accumulated per-agent mean gradients into the actor's `.grad`; reset."""
        t0 = time.perf_counter()
        present = self.counts > 0
        info: dict[str, float] = {}
        direction = torch.zeros(self.sums.shape[1], device=self.sums.device)
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
