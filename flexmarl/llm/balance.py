"""Hierarchical load balancing of rollout engine instances, as pure functions of observed loads.

FlexMARL (arXiv:2602.09578) balances skewed multi-agent rollout load at two levels:
- inter-agent: resize the number of inference instances each agent holds so that it follows the agent's
  request load (`plan_allocation`, `allocate`, `moves`);
- intra-agent: spread one agent's calls over that agent's instances (`pick_instance`).

Everything here is a pure function of numbers the caller observed (queue lengths, in-flight calls,
expected tokens), with no clock, no I/O and no engine handles, so the discrete-event simulator at 1,000
instances (`benchmarks/scale_sim.py`) and the real engines run exactly the same code.

A "load" is any non-negative amount of outstanding work in one unit for all agents: calls waiting +
in flight, or better their expected tokens (calls x the agent's mean response length), since agents
whose responses are longer need more instances for the same number of calls.

Disparity (our reading: the paper triggers inter-agent rebalancing at "load disparity threshold 5" but
does not publish the formula). With `n_a` instances and load `L_a` for agent a, the per-instance load
is `p_a = L_a / n_a`, and

    disparity = max_a p_a / max(min_a p_a, floor),   floor = floor_fraction * (sum_a L_a / sum_a n_a)

i.e. how many times more work an instance of the busiest agent has than an instance of the idlest one.
The floor (1% of the pool-wide mean per-instance load by default) keeps an idle agent (p_a = 0) from
making the ratio infinite; it is relative, so the value does not depend on the load's unit. An agent
with load but no instance has disparity infinity. No load at all gives disparity 1.
"""

from __future__ import annotations

import math
import random
from typing import Mapping, Sequence

DEFAULT_THRESHOLD = 5.0
"""FlexMARL's trigger: rebalance across agents when the load disparity exceeds 5 (arXiv:2602.09578)."""
DEFAULT_FLOOR_FRACTION = 0.01
"""Floor of the disparity's denominator, as a fraction of the pool-wide mean per-instance load."""


def pick_instance(loads: Sequence[float], rng: random.Random | None = None) -> int:
    """Intra-agent choice: the index of the least loaded of one agent's instances.

    `loads[i]` is instance i's observed load (e.g. calls in flight + waiting, as `engine.load()`
    reports). Ties go to the lowest index, or to a uniformly random one of the tied instances when
    `rng` is given (a seeded `random.Random` keeps it deterministic)."""
    if not loads:
        raise ValueError("pick_instance: the agent has no instances")
    lowest = min(loads)
    if rng is None:  # list.index scans in C: this runs once per call routed (1e5-1e6 in the simulator)
        return (loads if isinstance(loads, (list, tuple)) else list(loads)).index(lowest)
    return rng.choice([i for i, load in enumerate(loads) if load == lowest])


def load_disparity(agent_loads: Mapping[str, float], current: Mapping[str, int],
                   floor_fraction: float = DEFAULT_FLOOR_FRACTION) -> float:
    """max over agents of per-instance load / max(min over agents of per-instance load, floor); see the
    module docstring. Agents with neither load nor instances are ignored."""
    _check_loads(agent_loads)
    total_load = sum(agent_loads.values())
    total_instances = sum(current.get(agent, 0) for agent in agent_loads)
    if total_load <= 0:
        return 1.0
    if any(load > 0 and current.get(agent, 0) <= 0 for agent, load in agent_loads.items()):
        return math.inf
    per_instance = [load / current[agent] for agent, load in agent_loads.items() if current.get(agent, 0) > 0]
    floor = floor_fraction * total_load / total_instances
    denominator = max(min(per_instance), floor)
    if denominator <= 0:  # loads so small that the division underflowed
        return 1.0 if max(per_instance) <= 0 else math.inf
    return max(per_instance) / denominator


def allocate(agent_loads: Mapping[str, float], capacity: int, min_per_agent: int = 1) -> dict[str, int]:
    """Instances per agent proportional to load, at least `min_per_agent` each, summing to `capacity`.

    Quotas `q_a = C * L_a / sum L` over the agents not yet pinned at the minimum; an agent whose quota is
    below the minimum is pinned there and the rest re-divide what is left (repeated until stable).
    Rounding is by largest remainder (Hamilton): each agent gets floor(q_a), the instances left go to
    the largest fractional parts (ties: larger load, then agent name). With no load at all, instances
    are split evenly. Monotone: raising one agent's load never lowers its allocation (property-tested)."""
    _check_loads(agent_loads)
    if not agent_loads:
        raise ValueError("allocate: no agents")
    if min_per_agent < 0 or capacity < min_per_agent * len(agent_loads):
        raise ValueError(f"allocate: capacity {capacity} cannot give {len(agent_loads)} agents "
                         f"min_per_agent={min_per_agent} each")
    pinned: dict[str, int] = {}
    while True:
        free_agents = [agent for agent in agent_loads if agent not in pinned]
        free_capacity = capacity - sum(pinned.values())
        free_load = sum(agent_loads[agent] for agent in free_agents)
        if free_load > 0:
            quotas = {agent: free_capacity * agent_loads[agent] / free_load for agent in free_agents}
        else:
            quotas = {agent: free_capacity / len(free_agents) for agent in free_agents}
        below = [agent for agent, quota in quotas.items() if quota < min_per_agent]
        if not below:
            break
        pinned.update({agent: min_per_agent for agent in below})
    counts = {agent: math.floor(quota) for agent, quota in quotas.items()}
    left_over = free_capacity - sum(counts.values())
    by_remainder = sorted(quotas, key=lambda a: (-(quotas[a] - counts[a]), -agent_loads[a], a))
    for agent in by_remainder[:left_over]:
        counts[agent] += 1
    return {agent: pinned.get(agent, counts.get(agent, 0)) for agent in agent_loads}


def plan_allocation(agent_loads: Mapping[str, float], current: Mapping[str, int], capacity: int,
                    min_per_agent: int = 1, threshold: float = DEFAULT_THRESHOLD,
                    floor_fraction: float = DEFAULT_FLOOR_FRACTION) -> dict[str, int] | None:
    """Inter-agent rebalancing: a new {agent: instances} following the loads, or None for "no change".

    None when the load disparity (module docstring) is at most `threshold`, or when the proportional
    allocation equals `current`. A pool whose size changed (sum(current) != capacity) is always
    re-planned. Agents in `current` must all appear in `agent_loads`; an agent missing from `current`
    holds no instance yet."""
    unknown = set(current) - set(agent_loads)
    if unknown:
        raise ValueError(f"plan_allocation: agents {sorted(unknown)} hold instances but report no load")
    resized = sum(current.values()) != capacity
    if not resized and load_disparity(agent_loads, current, floor_fraction) <= threshold:
        return None
    target = allocate(agent_loads, capacity, min_per_agent)
    if all(target[agent] == current.get(agent, 0) for agent in agent_loads):
        return None
    return target


def moves(current: Mapping[str, int], target: Mapping[str, int]) -> list[tuple[str, str]]:
    """The instances to hand over, as (from_agent, to_agent) pairs, one per instance: donors (agents
    with more than their target) give to receivers in agent order, so the number of moves is the
    minimum, sum of max(0, current - target).

    Only counts are planned here. The caller picks which instance of a donor moves (e.g. the least
    loaded one, via `pick_instance`), stops routing the donor's calls to it, lets its in-flight calls
    finish, and must reload it with the receiving agent's CURRENT weights and policy version before it
    serves that agent (an engine holding another agent's model or an older version would produce wrong
    samples; the engines' version check refuses a mismatched version). Both sides must sum alike."""
    if sum(current.values()) != sum(target.values()):
        raise ValueError(f"moves: current holds {sum(current.values())} instances, target {sum(target.values())}")
    agents = list(dict.fromkeys([*current, *target]))
    surplus = [(agent, current.get(agent, 0) - target.get(agent, 0)) for agent in agents]
    donors = [agent for agent, extra in surplus for _ in range(max(extra, 0))]
    receivers = [agent for agent, extra in surplus for _ in range(max(-extra, 0))]
    return list(zip(donors, receivers))


def _check_loads(agent_loads: Mapping[str, float]) -> None:
    for agent, load in agent_loads.items():
        if not (load >= 0 and math.isfinite(load)):
            raise ValueError(f"load of agent {agent!r} must be finite and >= 0, got {load}")
