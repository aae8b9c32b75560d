"""The rollout-engine simulator (benchmarks.scale_sim) at small sizes: the balancing policy
beats a static round-robin split under skew, makespans never beat the lower bounds, runs repeat."""

import pytest

from benchmarks.scale_sim import POLICIES, ScaleSimSettings, make_batch, run_load_trace, \
    run_scale_simulation, simulate

SKEWED = dict(instances=24, agents=4, zipf_s=1.2, calls=6_000, slots=4, reload_s=5.0)


def test_ours_beats_round_robin_under_skew():
    result = run_scale_simulation(**SKEWED)
    assert result["lb_makespan_over_lower_bound"] < 0.75 * result["lb_makespan_round_robin"]
    assert result["lb_makespan_over_lower_bound"] < 0.75 * result["lb_makespan_static"]
    assert result["settings"]["instances"] == 24 and result["instance_moves"] > 0


@pytest.mark.parametrize("overrides", [
    SKEWED,
    dict(SKEWED, length_dist="pareto", pareto_alpha=1.2, seed=3),
    dict(SKEWED, zipf_s=0.0, length_estimate_error=1.0, seed=1),  # uniform popularity, exact estimates
    dict(SKEWED, instances=5, agents=5, slots=1, calls=500, seed=2),  # one instance per agent: no moves
])
def test_no_policy_beats_the_lower_bounds_and_every_call_finishes(overrides):
    settings = ScaleSimSettings(**overrides)
    batch = make_batch(settings)
    for policy in POLICIES:
        run = simulate(settings, policy, batch)
        assert run["calls_finished"] == settings.calls
        assert run["makespan_s"] >= run["lower_bound_s"] * (1 - 1e-9)
        assert run["makespan_s"] >= run["tail_lower_bound_s"] * (1 - 1e-9)


def test_same_seed_same_result_other_seed_other_batch():
    first, again = run_scale_simulation(**SKEWED), run_scale_simulation(**SKEWED)
    assert first == again
    assert run_scale_simulation(**dict(SKEWED, seed=1))["lower_bound_s"] != first["lower_bound_s"]


def test_load_trace_accounts_for_every_instance():
    trace = run_load_trace(instances=8, calls=600)
    for policy in ("ours", "static"):
        points = trace[policy]["trace"]
        assert points and points[0]["t"] == 0.0
        for point in points:
            assert sum(agent["instances"] for agent in point["agents"].values()) == 8
        outstanding = [sum(a["outstanding_calls"] for a in p["agents"].values()) for p in points]
        assert outstanding[0] == 600 and outstanding == sorted(outstanding, reverse=True)
