"""Hierarchical load balancing (flexmarl.llm.balance): properties and examples."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flexmarl.llm.balance import allocate, load_disparity, moves, pick_instance, plan_allocation

# No deadline: the machine is shared and a slow example is not a failure.
SETTINGS = settings(max_examples=200, deadline=None)
AGENT_NAMES = [f"agent{i}" for i in range(6)]
loads_strategy = st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=6).map(
    lambda values: dict(zip(AGENT_NAMES, values)))


@st.composite
def allocation_problem(draw):
    """(loads, capacity, min_per_agent) with enough capacity for the minimum."""
    loads = draw(loads_strategy)
    min_per_agent = draw(st.integers(0, 3))
    capacity = draw(st.integers(max(1, min_per_agent * len(loads)), 200))
    return loads, capacity, min_per_agent


@SETTINGS
@given(allocation_problem())
def test_allocation_fills_the_pool_and_respects_the_minimum(problem):
    loads, capacity, min_per_agent = problem
    target = allocate(loads, capacity, min_per_agent)
    assert set(target) == set(loads)
    assert sum(target.values()) == capacity
    assert all(count >= min_per_agent for count in target.values())


@SETTINGS
@given(allocation_problem(), st.data())
def test_allocation_is_monotone_in_an_agents_load(problem, data):
    loads, capacity, min_per_agent = problem
    agent = data.draw(st.sampled_from(sorted(loads)))
    raised = {**loads, agent: loads[agent] + data.draw(st.floats(0, 1e6, allow_nan=False))}
    assert allocate(raised, capacity, min_per_agent)[agent] >= allocate(loads, capacity, min_per_agent)[agent]


@SETTINGS
@given(allocation_problem())
def test_allocation_is_within_one_instance_of_the_quota_when_no_minimum_binds(problem):
    loads, capacity, _ = problem
    total = sum(loads.values())
    target = allocate(loads, capacity, 0)
    for agent, load in loads.items():
        quota = capacity * load / total if total > 0 else capacity / len(loads)
        assert abs(target[agent] - quota) < 1


@SETTINGS
@given(allocation_problem(), st.lists(st.integers(0, 50), min_size=6, max_size=6))
def test_no_change_at_or_below_the_threshold(problem, counts):
    loads, capacity, min_per_agent = problem
    current = {agent: count + 1 for agent, count in zip(loads, counts)}
    capacity = sum(current.values())
    if capacity < min_per_agent * len(loads):
        return
    plan = plan_allocation(loads, current, capacity, min_per_agent, threshold=5.0)
    if load_disparity(loads, current) <= 5.0:
        assert plan is None
    if plan is not None:
        assert sum(plan.values()) == capacity and plan != current


@SETTINGS
@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=30), st.integers(0, 10))
def test_pick_instance_returns_an_argmin(loads, seed):
    assert loads[pick_instance(loads)] == min(loads)
    assert pick_instance(loads) == loads.index(min(loads))
    assert loads[pick_instance(loads, random.Random(seed))] == min(loads)


@SETTINGS
@given(st.dictionaries(st.sampled_from(AGENT_NAMES), st.integers(0, 20), min_size=1), st.data())
def test_moves_turn_current_into_target_with_the_fewest_moves(current, data):
    capacity = sum(current.values())
    target = allocate({agent: data.draw(st.floats(0, 10)) for agent in current}, capacity, 0)
    plan = moves(current, target)
    after = dict(current)
    for donor, receiver in plan:
        assert donor != receiver
        after[donor] -= 1
        after[receiver] += 1
    assert after == target
    assert len(plan) == sum(max(0, current[a] - target[a]) for a in current)


def test_disparity_examples():
    # per-instance loads 100/2 = 50 and 10/1 = 10: disparity 5 (not above the threshold 5)
    assert load_disparity({"a": 100, "b": 10}, {"a": 2, "b": 1}) == pytest.approx(5.0)
    assert plan_allocation({"a": 100, "b": 10}, {"a": 2, "b": 1}, 3) is None
    # an idle agent: the floor (1% of the mean per-instance load, 110/3) bounds the ratio
    assert load_disparity({"a": 110, "b": 0}, {"a": 2, "b": 1}) == pytest.approx(55 / (0.01 * 110 / 3))
    assert load_disparity({"a": 0, "b": 0}, {"a": 2, "b": 1}) == 1.0
    assert load_disparity({"a": 1, "b": 0}, {"b": 3}) == math.inf


def test_plan_follows_skewed_load():
    # Zipf-like load over 4 agents that start with 4 instances each
    loads = {"a": 800.0, "b": 400.0, "c": 100.0, "d": 20.0}
    current = {agent: 4 for agent in loads}
    plan = plan_allocation(loads, current, 16)
    assert plan == {"a": 9, "b": 5, "c": 1, "d": 1}
    assert moves(current, plan) == [("c", "a"), ("c", "a"), ("c", "a"), ("d", "a"), ("d", "a"), ("d", "b")]
    assert plan_allocation(loads, plan, 16) is None  # already proportional: nothing to do


def test_minimum_pins_small_agents_and_the_rest_is_proportional():
    assert allocate({"big": 1000.0, "tiny": 1.0, "small": 9.0}, 10, min_per_agent=2) == \
        {"big": 6, "tiny": 2, "small": 2}
    assert allocate({"a": 0.0, "b": 0.0, "c": 0.0}, 7) == {"a": 3, "b": 2, "c": 2}


def test_a_resized_pool_is_replanned_and_bad_input_refused():
    assert plan_allocation({"a": 1.0, "b": 1.0}, {"a": 1, "b": 1}, 4) == {"a": 2, "b": 2}
    with pytest.raises(ValueError, match="capacity 3"):
        allocate({"a": 1.0, "b": 1.0}, 3, min_per_agent=2)
    with pytest.raises(ValueError, match="agent 'a'"):
        allocate({"a": -1.0}, 3)
    with pytest.raises(ValueError, match="report no load"):
        plan_allocation({"a": 1.0}, {"a": 1, "ghost": 1}, 2)
    with pytest.raises(ValueError):
        pick_instance([])
