"""The benchmark code paths run (no timing is asserted: performance lives in benchmarks/results)."""

from orchestrator.bench.pipeline import WORKLOADS, draw_timelines, summarize
from orchestrator.bench.throughput import raw_env_steps_per_s
from orchestrator.orchestrator import JointOrchestrator
from orchestrator.runtime import SerialRuntime


def test_timeline_of_a_recorded_iteration_is_drawn(make_cfg, tmp_path):
    orch = JointOrchestrator(make_cfg(pipeline={"mode": "microbatch"}), SerialRuntime())
    rows = [orch.step() for _ in range(2)]
    timeline = orch.timeline
    assert len(timeline["rollout"]) == 2 and timeline["train"]["shared"]
    assert timeline["start"] <= min(start for _, _, start, _ in timeline["rollout"]) <= timeline["end"]
    summary = summarize(rows, timeline, refused=0)
    assert summary["policy_lag_max"] == 0 and summary["iterations"] == 2
    draw_timelines({"microbatch": timeline}, tmp_path / "t.png", "test")
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_benchmark_workloads_are_valid_configs_and_raw_rate_is_positive():
    from flexmarl.config import config_from_dict

    for name, workload in WORKLOADS.items():
        config_from_dict(workload)
    assert raw_env_steps_per_s(0.2) > 0


def test_aggregator_bench_writes_one_ratio_per_aggregator(tmp_path, monkeypatch):
    from orchestrator.bench import aggregators

    monkeypatch.setitem(aggregators.SETTINGS, "maps", ["3m"])
    for key, value in {"envs_per_worker": 4, "fragment_length": 20, "rounds": 1, "updates_per_round": 1}.items():
        monkeypatch.setitem(aggregators.SETTINGS, key, value)
    result = aggregators.run_aggregator_bench(out=tmp_path / "agg.json")
    assert set(result["3m"]["ratio_to_mean"]) == set(aggregators.AGGREGATORS) and result["3m"]["agents"] == 3
    assert (tmp_path / "agg.json").exists()


def test_every_suite_definition_builds_valid_run_configs(tmp_path):
    from orchestrator.bench.suite import builtin_suites, load_suite, run_config

    for name in builtin_suites():
        suite = load_suite(name)
        for task in suite.tasks:
            for algorithm in suite.algorithms:
                cfg = run_config(suite, task, algorithm, suite.seeds[0], tmp_path, None)
                assert cfg.run.iterations * cfg.run.batch_env_steps >= suite.budget_env_steps
