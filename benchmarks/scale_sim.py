"""Discrete-event simulation of rollout engines at cluster scale (default 1,000 instances), to check
FlexMARL's hierarchical load balancing (arXiv:2602.09578) where we cannot run it for real. The policy
under test calls the SAME pure functions as the real engines (`flexmarl.llm.balance`).

Model (all times in seconds of simulated time):
- One global batch of calls (one RL step) is known at t = 0. Each call is for one of A agents, drawn
  with Zipf popularity `p_k ~ 1 / k**zipf_s`; agents also differ in typical response length (medians
  spread log-uniformly by `length_spread`, assigned independently of popularity), and each response
  length is heavy-tailed (lognormal, or Pareto) and cut at `max_tokens` like a real generation limit.
- An instance holds one agent's model and decodes up to `slots` calls at once, each at
  `tokens_per_s_per_slot` (decoding is memory-bound: a sequence's speed barely depends on how many
  others share the batch, up to the engine's batch limit). A call takes tokens / tokens_per_s_per_slot.
- Lower bound of any schedule: total tokens / (instances x slots x tokens_per_s_per_slot). A second one,
  reported beside it, is the longest single call (`tail_lower_bound_s`): no policy can split a call.

Policies:
- `ours`: instances per agent from `allocate` on expected work (calls x the agent's mean response
  length as believed at t = 0, off by up to `length_estimate_error`), then corrected from finished
  calls (a running mean). Each agent's calls wait at a router and go to the instance that
  `pick_instance` names among the agent's instances (load = calls in flight) as soon as it has a free
  slot: pull-based, so routing follows observed loads (sending the whole batch at t = 0 to the least
  loaded instance would just deal it out by count, like round-robin). Every `rebalance_every_s` the
  expected work of each agent's waiting calls (what more instances can still speed up) goes through
  `plan_allocation`; a moved instance (the donor's least loaded, by `pick_instance`) stops taking the
  donor's calls, finishes the ones in flight, then pays `reload_s` (loading the receiver's current
  weights and version) before it serves the receiver.
- `round_robin`: instances split equally between agents, each agent's calls dealt round-robin over its
  instances at t = 0 (a static split, like MARTI's).
- `static`: equal split, with least-loaded routing as in `ours` but no inter-agent rebalancing.
- ablation `ours_without_rebalancing` (in run_scale_simulation): `ours`' allocation at t = 0 only.

Deterministic given the seed. `run_scale_simulation` returns makespan / lower bound per policy;
`run_load_trace` records per-agent load over time at a small scale, for a figure.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from flexmarl.llm.balance import DEFAULT_THRESHOLD, allocate, moves, pick_instance, plan_allocation

POLICIES = ("ours", "round_robin", "static")


@dataclass(frozen=True)
class ScaleSimSettings:
    """One simulated rollout step."""

    instances: int = 1000
    """Inference engine instances in the rollout pool."""
    agents: int = 8
    """Number of agents, each with its own model."""
    zipf_s: float = 1.0
    """Zipf exponent of agent popularity (share of calls of the k-th agent ~ 1 / k**zipf_s); 0 = uniform."""
    calls: int = 400_000
    """Calls in the global batch (all known at t = 0)."""
    slots: int = 8
    """Calls an instance decodes concurrently (its batch limit)."""
    tokens_per_s_per_slot: float = 30.0
    """Decode speed of one call."""
    length_dist: Literal["lognormal", "pareto"] = "lognormal"
    """Response-length distribution (heavy-tailed), cut at `max_tokens`."""
    median_tokens: float = 300.0
    """Median response length of a typical agent (geometric middle of the agents' medians)."""
    length_sigma: float = 1.0
    """lognormal: sigma of log(length)."""
    pareto_alpha: float = 1.5
    """pareto: tail index (smaller = heavier tail)."""
    max_tokens: int = 2048
    """Generation limit: longer responses are cut here."""
    length_spread: float = 4.0
    """Ratio between the longest and the shortest agent median response length."""
    length_estimate_error: float = 1.5
    """The policy's prior mean length per agent is the true mean times a factor drawn log-uniformly in
    [1/e, e] (lengths drift between RL steps); 1 = exact. `ours` then corrects it from finished calls."""
    prior_weight_calls: int = 100
    """ours: the prior mean length counts as this many finished calls in the running estimate."""
    planner_load: Literal["queued", "outstanding"] = "queued"
    """ours: the load plan_allocation sees: expected work of calls not yet started (what more
    instances can still speed up), or of started ones too."""
    reload_s: float = 10.0
    """Time for a moved instance to load another agent's weights."""
    rebalance_every_s: float = 5.0
    """ours: how often observed loads go through plan_allocation."""
    threshold: float = DEFAULT_THRESHOLD
    """ours: load-disparity threshold of plan_allocation."""
    min_per_agent: int = 1
    """Instances every agent keeps."""
    seed: int = 0
    """Seed of the batch (agents and lengths of calls) and of the length estimate."""


@dataclass(frozen=True)
class Batch:
    """The calls of one step and what the policy may know about them."""

    agent_of_call: np.ndarray
    """Agent index of each call (in arrival order)."""
    tokens_of_call: np.ndarray
    """Response length of each call (unknown to the policies until it finishes)."""
    true_mean_tokens: np.ndarray
    """Mean response length per agent (the policies do not see it)."""
    prior_mean_tokens: np.ndarray
    """What the policy believes at t = 0: the true mean times the estimate error."""


def make_batch(s: ScaleSimSettings) -> Batch:
    rng = np.random.default_rng(s.seed)
    popularity = 1.0 / np.arange(1, s.agents + 1) ** s.zipf_s
    agent_of_call = rng.choice(s.agents, size=s.calls, p=popularity / popularity.sum())
    # agents' medians spread log-uniformly, shuffled so that length is unrelated to popularity
    spread = np.exp(np.linspace(-0.5, 0.5, s.agents) * math.log(s.length_spread)) if s.agents > 1 else np.ones(1)
    medians = s.median_tokens * rng.permutation(spread)
    tokens_of_call = _lengths(rng, medians[agent_of_call], s)
    estimate_rng = np.random.default_rng([s.seed, 1])
    true_mean = np.array([_lengths(estimate_rng, np.full(20_000, m), s).mean() for m in medians])
    error = np.exp(estimate_rng.uniform(-1, 1, s.agents) * math.log(s.length_estimate_error))
    return Batch(agent_of_call, tokens_of_call, true_mean, true_mean * error)


def _lengths(rng: np.random.Generator, medians: np.ndarray, s: ScaleSimSettings) -> np.ndarray:
    if s.length_dist == "lognormal":
        raw = medians * np.exp(s.length_sigma * rng.standard_normal(len(medians)))
    else:  # Pareto with minimum x_m and median x_m * 2**(1/alpha)
        raw = medians / 2 ** (1 / s.pareto_alpha) * (1 + rng.pareto(s.pareto_alpha, len(medians)))
    return np.clip(np.round(raw), 1, s.max_tokens)


class _Pool:
    """Event-driven state of the instances under one policy."""

    def __init__(self, s: ScaleSimSettings, batch: Batch, policy: str):
        self.s, self.batch, self.policy = s, batch, policy
        self.call_time = batch.tokens_of_call / s.tokens_per_s_per_slot
        self.events: list = []  # (time, sequence, kind, instance, call)
        self.sequence = 0
        self.now = 0.0
        self.in_flight = [0] * s.instances
        self.local_queue = [deque() for _ in range(s.instances)]  # round_robin: calls dealt at t = 0
        self.in_flight_by_agent = np.zeros(s.agents, dtype=int)
        self.router = [deque() for _ in range(s.agents)]  # calls not yet sent, per agent
        self.outstanding = np.bincount(batch.agent_of_call, minlength=s.agents).astype(int)
        self.members: list[list[int]] = [[] for _ in range(s.agents)]  # instances routing each agent
        self.member_loads: list[list[int]] = [[] for _ in range(s.agents)]  # in-flight, aligned
        self.draining_to: dict[int, int] = {}  # moved instance -> receiving agent, until it serves it
        self.ready_at: dict[int, float] = {}  # moved instance -> end of its reload (a redirect restarts it)
        self.held = [0] * s.agents  # instances per agent, counting those moving to it
        self.instance_agent = [-1] * s.instances  # -1: not yet placed, -2: moving between agents
        self.moves = 0
        self.finished_calls = np.zeros(s.agents)
        self.finished_tokens = np.zeros(s.agents)
        self.trace: list[dict] = []

    def push(self, time: float, kind: str, instance: int = -1, call: int = -1) -> None:
        self.sequence += 1  # ties in time pop in push order: deterministic
        heapq.heappush(self.events, (time, self.sequence, kind, instance, call))

    def start(self) -> None:
        s, loads = self.s, self.outstanding * self._mean_tokens()  # every call is still waiting
        shares = loads if self.policy == "ours" else np.ones(s.agents)
        target = allocate({str(a): float(x) for a, x in enumerate(shares)}, s.instances, s.min_per_agent)
        instance = 0
        for agent in range(s.agents):
            for _ in range(target[str(agent)]):
                self._join(instance, agent)
                instance += 1
        calls_by_agent = [np.flatnonzero(self.batch.agent_of_call == a) for a in range(s.agents)]
        for agent, calls in enumerate(calls_by_agent):
            if self.policy == "round_robin":
                for position, call in enumerate(calls):
                    self.local_queue[self.members[agent][position % len(self.members[agent])]].append(call)
            else:
                self.router[agent].extend(calls.tolist())
        for i in range(s.instances):
            self._fill(i)
        for agent in range(s.agents):
            self._route(agent)
        if self.policy == "ours":
            self.push(s.rebalance_every_s, "rebalance")

    def run(self, trace_every_s: float | None = None) -> float:
        self.start()
        if trace_every_s:
            self.push(0.0, "trace")
        makespan = 0.0
        while self.events:
            self.now, _, kind, instance, call = heapq.heappop(self.events)
            if kind == "done":
                makespan = self.now
                self._finish(instance, call)
            elif kind == "ready" and self.ready_at.get(instance) == self.now:
                del self.ready_at[instance]
                receiver = self.draining_to.pop(instance)
                self._join(instance, receiver)
                self._route(receiver)
            elif kind == "rebalance" and self.outstanding.sum() > 0:
                self._rebalance()
                self.push(self.now + self.s.rebalance_every_s, "rebalance")
            elif kind == "trace" and self.outstanding.sum() > 0:
                self._record()
                self.push(self.now + trace_every_s, "trace")
        return makespan

    def _mean_tokens(self) -> np.ndarray:
        """Running mean response length per agent: the prior, weighted as `prior_weight_calls` calls,
        plus the calls finished so far (what engines report as generated tokens and calls)."""
        weight = self.s.prior_weight_calls
        return (weight * self.batch.prior_mean_tokens + self.finished_tokens) / (weight + self.finished_calls)

    def _expected_work(self) -> np.ndarray:
        if self.s.planner_load == "queued":
            waiting = np.array([len(queue) for queue in self.router])
            return waiting * self._mean_tokens()
        return self.outstanding * self._mean_tokens()

    def _join(self, instance: int, agent: int) -> None:
        if self.instance_agent[instance] == -1:  # a moved instance was counted when the move was planned
            self.held[agent] += 1
        self.instance_agent[instance] = agent
        self.members[agent].append(instance)
        self.member_loads[agent].append(self.in_flight[instance])

    def _fill(self, instance: int) -> None:
        """Start calls from the instance's own queue (round_robin) while it has free slots."""
        queue = self.local_queue[instance]
        while queue and self.in_flight[instance] < self.s.slots:
            self._begin(instance, queue.popleft())

    def _route(self, agent: int) -> None:
        """Send the agent's waiting calls to its least loaded instances while one has a free slot."""
        router, loads, members = self.router[agent], self.member_loads[agent], self.members[agent]
        while router and members:
            position = pick_instance(loads)
            if loads[position] >= self.s.slots:
                return
            loads[position] += 1
            self._begin(members[position], router.popleft(), counted=True)

    def _begin(self, instance: int, call: int, counted: bool = False) -> None:
        self.in_flight[instance] += 1
        if not counted:
            agent = self.instance_agent[instance]
            self.member_loads[agent][self.members[agent].index(instance)] += 1
        self.in_flight_by_agent[self.batch.agent_of_call[call]] += 1
        self.push(self.now + self.call_time[call], "done", instance, call)

    def _finish(self, instance: int, call: int) -> None:
        agent = self.batch.agent_of_call[call]
        self.in_flight[instance] -= 1
        self.in_flight_by_agent[agent] -= 1
        self.outstanding[agent] -= 1
        self.finished_calls[agent] += 1
        self.finished_tokens[agent] += self.batch.tokens_of_call[call]
        if instance in self.draining_to:
            if self.in_flight[instance] == 0:
                self._reload(instance)
            return
        members = self.members[agent]
        self.member_loads[agent][members.index(instance)] -= 1
        if self.policy == "round_robin":
            self._fill(instance)
        else:
            self._route(agent)

    def _rebalance(self) -> None:
        names = [str(a) for a in range(self.s.agents)]
        loads = {n: float(x) for n, x in zip(names, self._expected_work())}
        current = dict(zip(names, self.held))
        target = plan_allocation(loads, current, self.s.instances, self.s.min_per_agent, self.s.threshold)
        if target is None:
            return
        for donor_name, receiver_name in moves(current, target):
            donor, receiver = int(donor_name), int(receiver_name)
            self.held[donor] -= 1
            self.held[receiver] += 1
            self.moves += 1
            incoming = [i for i, agent in self.draining_to.items() if agent == donor]
            if incoming:  # still on its way to the donor: send it on, loading the receiver's weights
                instance = incoming[0]
                self.draining_to[instance] = receiver
                if instance in self.ready_at:
                    self._reload(instance)
                continue
            position = pick_instance(self.member_loads[donor])  # the least loaded drains soonest
            instance = self.members[donor].pop(position)
            self.member_loads[donor].pop(position)
            self.instance_agent[instance] = -2  # between agents: not counted again by _join
            self.draining_to[instance] = receiver
            if self.in_flight[instance] == 0:
                self._reload(instance)

    def _reload(self, instance: int) -> None:
        self.ready_at[instance] = self.now + self.s.reload_s
        self.push(self.ready_at[instance], "ready", instance)

    def _record(self) -> None:
        self.trace.append({"t": round(self.now, 3), "agents": {
            str(a): {"outstanding_calls": int(self.outstanding[a]), "in_flight": int(self.in_flight_by_agent[a]),
                     "instances": int(self.held[a])} for a in range(self.s.agents)}})


def simulate(s: ScaleSimSettings, policy: str, batch: Batch | None = None,
             trace_every_s: float | None = None) -> dict:
    """One policy on one batch: makespan, lower bounds, moves, and the trace when asked."""
    if policy not in POLICIES:
        raise ValueError(f"policy {policy!r}; available: {', '.join(POLICIES)}")
    batch = batch or make_batch(s)
    pool = _Pool(s, batch, policy)
    makespan = pool.run(trace_every_s)
    lower_bound = float(batch.tokens_of_call.sum()) / (s.instances * s.slots * s.tokens_per_s_per_slot)
    return {"makespan_s": makespan, "lower_bound_s": lower_bound,
            "tail_lower_bound_s": float(batch.tokens_of_call.max()) / s.tokens_per_s_per_slot,
            "moves": pool.moves, "calls_finished": int(pool.finished_calls.sum()), "trace": pool.trace}


def run_scale_simulation(out: Path | None = None, **overrides) -> dict:
    """Makespan / lower bound of each policy on the same batch; keyword arguments override
    ScaleSimSettings fields (e.g. instances=1000, agents=8, zipf_s=1.0)."""
    s = replace(ScaleSimSettings(), **overrides)
    batch = make_batch(s)
    runs = {policy: simulate(s, policy, batch) for policy in POLICIES}
    # ablation: the allocation at t = 0 only (shows what rebalancing during the step adds)
    runs["ours_without_rebalancing"] = simulate(replace(s, threshold=math.inf), "ours", batch)
    lower_bound = runs["ours"]["lower_bound_s"]
    result = {
        "lb_makespan_over_lower_bound": float(runs["ours"]["makespan_s"] / lower_bound),
        "lb_makespan_round_robin": float(runs["round_robin"]["makespan_s"] / lower_bound),
        "lb_makespan_static": float(runs["static"]["makespan_s"] / lower_bound),
        "lb_makespan_without_rebalancing": float(runs["ours_without_rebalancing"]["makespan_s"] / lower_bound),
        "makespan_s": {policy: float(run["makespan_s"]) for policy, run in runs.items()},
        "lower_bound_s": lower_bound,
        "tail_lower_bound_s": runs["ours"]["tail_lower_bound_s"],
        "instance_moves": runs["ours"]["moves"],
        "calls_per_agent": np.bincount(batch.agent_of_call, minlength=s.agents).tolist(),
        "mean_tokens_per_agent": [round(float(x), 1) for x in batch.true_mean_tokens],
        "prior_mean_tokens_per_agent": [round(float(x), 1) for x in batch.prior_mean_tokens],
        "settings": asdict(s),
    }
    _write(out, result)
    return result


TRACE_SETTINGS = dict(instances=16, agents=3, zipf_s=1.0, calls=2_000, slots=8, reload_s=10.0,
                      rebalance_every_s=5.0)
"""A config at the scale we actually run (a handful of engines), for the load-over-time figure."""


def run_load_trace(out: Path | None = None, trace_every_s: float = 5.0, **overrides) -> dict:
    """Per-agent outstanding calls, calls in flight and instances held over time, for `ours` and
    `static`, on a small config (TRACE_SETTINGS, overridable)."""
    s = replace(ScaleSimSettings(), **{**TRACE_SETTINGS, **overrides})
    batch = make_batch(s)
    result = {"settings": asdict(s), "trace_every_s": trace_every_s}
    for policy in ("ours", "static"):
        run = simulate(s, policy, batch, trace_every_s)
        result[policy] = {"makespan_s": run["makespan_s"], "lower_bound_s": run["lower_bound_s"],
                          "moves": run["moves"], "trace": run["trace"]}
    _write(out, result)
    return result


def _write(out: Path | None, result: dict) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")


BATCH_SWEEP_CALLS = (50_000, 100_000, 200_000)
"""Smaller batches at 1,000 instances: the fewer calls per slot, the more the longest calls (which no
policy can split) dominate the makespan, for every policy."""


def main(out_dir: Path = Path("benchmarks/results")) -> dict:
    """`python -m benchmarks.scale_sim`: scale_sim.json (default settings + a batch-size
    sweep) and scale_sim_trace.json (the small-config load trace)."""
    summary = run_scale_simulation()
    summary["batch_size_sweep"] = [
        {"calls": calls, **{key: value for key, value in run_scale_simulation(calls=calls).items()
                            if key.startswith("lb_") or key.endswith("lower_bound_s")}}
        for calls in BATCH_SWEEP_CALLS]
    _write(out_dir / "scale_sim.json", summary)
    run_load_trace(out_dir / "scale_sim_trace.json")
    return summary


if __name__ == "__main__":
    print(json.dumps({k: v for k, v in main().items() if k != "settings"}, indent=1))
