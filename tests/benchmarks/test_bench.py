"""The benchmark code paths run (no timing is asserted: performance lives in benchmarks/results)."""

import json

import pytest

from benchmarks.pipeline import WORKLOADS, draw_timelines, summarize
from benchmarks.throughput import raw_env_steps_per_s
from orchestrator.core import make_orchestrator
from orchestrator.runtime import SerialRuntime
from tests.flexmarl.llm.conftest import tiny_task_models  # noqa: F401  (shared session fixture)


def test_timeline_of_a_recorded_iteration_is_drawn(make_cfg, tmp_path):
    orch = make_orchestrator(make_cfg(pipeline={"mode": "microbatch"}), SerialRuntime())
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
    from benchmarks import aggregators

    monkeypatch.setitem(aggregators.SETTINGS, "maps", ["3m"])
    for key, value in {"envs_per_worker": 4, "fragment_length": 20, "rounds": 1, "updates_per_round": 1}.items():
        monkeypatch.setitem(aggregators.SETTINGS, key, value)
    result = aggregators.run_aggregator_bench(out=tmp_path / "agg.json")
    assert set(result["3m"]["ratio_to_mean"]) == set(aggregators.AGGREGATORS) and result["3m"]["agents"] == 3
    assert (tmp_path / "agg.json").exists()


def test_every_suite_definition_builds_valid_run_configs(tmp_path):
    from benchmarks.suite import builtin_suites, load_suite, run_config

    for name in builtin_suites():
        suite = load_suite(name)
        for task in suite.tasks:
            for algorithm in suite.algorithms:
                cfg = run_config(suite, task, algorithm, suite.seeds[0], tmp_path, None)
                assert cfg.run.iterations * cfg.run.batch_env_steps >= suite.budget_env_steps


def _tiny_model_overrides(models: dict) -> list[str]:
    """bench llm / bench scale on the tests' tiny speaker-listener models, HF engines, small batches."""
    return [f"llm.models={json.dumps({k: str(v) for k, v in models.items()})}", "llm.backend=hf",
            "llm.group_size=2", "llm.queries_per_iteration=2", "llm.max_new_tokens=3", "llm.concurrent_requests=1"]


@pytest.mark.slow
def test_llm_bench_alternates_both_pipelines_on_one_orchestrator(tiny_task_models, tmp_path):
    from benchmarks.llm import run_llm_bench

    result = run_llm_bench(iterations=1, out=tmp_path / "llm.json", overrides=_tiny_model_overrides(tiny_task_models),
                           engine_numbers=False)
    assert [h["mode"] for h in result["history"]] == ["sync", "microbatch"] * 2
    assert result["policy_lag_max_microbatch"] == 0 and result["logprob_max_abs_diff"] < 1e-4
    assert json.loads((tmp_path / "llm.json").read_text())["settings"]["config"]["backend"] == "hf"


@pytest.mark.slow
def test_scale_bench_set_ups_switch_pipeline_and_balancing_by_fresh_configs(tiny_task_models):
    from benchmarks.scale import BENCH_CONFIG, MODES, real_engine_ablation
    from flexmarl.config import config_from_dict

    cfg = config_from_dict(BENCH_CONFIG, _tiny_model_overrides(tiny_task_models))
    result, traces = real_engine_ablation(cfg, rounds=1)
    assert [h["mode"] for h in result["history"]] == list(MODES) * 2 and set(traces) == set(MODES)
    assert all(h["llm/engine_moves"] == 0 for h in result["history"])  # moves happen only between iterations
    assert cfg.pipeline.mode == "microbatch" and cfg.llm.load_balancing  # the caller's config is untouched


def test_the_bench_commands_do_not_load_llvmlite_before_a_vllm_engine_starts():
    """`bench llm` starts a vLLM engine in its own process; vLLM's CPU start-up scans every loaded module and
    fails on numba's llvmlite objects, which the suites' statistics (rliable) load: suites import them lazily."""
    import subprocess
    import sys

    code = "import sys, benchmarks.commands; assert 'llvmlite' not in sys.modules, 'llvmlite loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_measure_swap_reports_seconds_per_mb(ray_cluster):
    from benchmarks.scale import measure_swap

    result = measure_swap([1 << 20, 4 << 20], repeats=1)
    for key in ("swap_s_per_mb", "remote_swap_s_per_mb", "memcpy_s_per_mb"):
        assert result[key] > 0
    assert [size["nbytes"] for size in result["sizes"]] == [1 << 20, 4 << 20]
