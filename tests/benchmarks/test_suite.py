"""The benchmark suite runner: runs, resume of an interrupted suite, report files, config errors."""

import json

import pytest
import yaml

from benchmarks.suite import SuiteError, builtin_suites, load_suite, run_config
from benchmarks.suite_run import run_suite
from orchestrator.cli import main


def _suite_file(tmp_path, **changes):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "run": {"batch_env_steps": 200, "mode": "serial", "checkpoint_every": 1, "progress": False,
                "eval_every": 1, "eval_episodes": 2},
        "env": {"name": "mpe/simple_spread", "kwargs": {"N": 3, "max_cycles": 25}, "global_state": "concat_obs"},
        "model": {"hidden_sizes": [16]}, "trainer": {"epochs": 1},
        "rollout": {"num_workers": 1, "envs_per_worker": 4, "fragment_length": 25},
    }))
    suite = {"suite": "tiny", "base": str(base), "metric": "return", "target": -1000.0, "budget_env_steps": 400,
             "seeds": [0, 1], "tasks": {"spread": {"env.name": "mpe/simple_spread"}},
             "algorithms": {"mappo": {"algo.name": "mappo"}, "ippo": {"algo.name": "ippo"}},
             "pass_criteria": "anything", **changes}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))  # algorithm order matters (analysis)
    return path


LEARNED = ("final_return_mean", "final_return_std", "final_return_per_seed", "env_steps", "seeds",
           "complete_seeds", "steps_to_target_mean", "steps_to_target_reached")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The tiny suite run in one go: 1 task x 2 algorithms x 2 seeds x 2 iterations of 200 env steps."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    path = _suite_file(tmp)
    return path, tmp / "runs", tmp / "out", run_suite(load_suite(str(path)), tmp / "runs", tmp / "out")


def test_suite_writes_table_curves_and_summary(uninterrupted):
    _, runs, out, summary = uninterrupted
    assert set(summary) == {"spread"} and set(summary["spread"]) == {"mappo", "ippo"}
    entry = summary["spread"]["mappo"]
    assert entry["seeds"] == [0, 1] and entry["complete_seeds"] == [0, 1] and entry["env_steps"] == 400
    assert entry["final_return_mean"] < 0 and entry["final_return_std"] >= 0
    assert entry["steps_to_target_reached"] == 2 and entry["steps_to_target_mean"] == 200.0
    assert entry["train_s_per_iteration_mean"] > 0 and entry["wall_s"] > 0
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "curves_spread.png").stat().st_size > 0
    table = (out / "table.md").read_text()
    assert "| spread | ippo |" in table and "| spread | mappo |" in table and "anything" in table
    header = (out / "runs/spread/ippo/seed1.csv").read_text().splitlines()[0]
    assert header.startswith("iteration,env_steps,eval/return_mean,episode_return_mean,perf/train_s")
    assert len((out / "runs/spread/ippo/seed1.csv").read_text().splitlines()) == 3  # header + 2 iterations
    settings = json.loads((out / "suite.json").read_text())
    assert settings["pass_criteria"] == "anything" and settings["budget_env_steps"] == {"spread": 400}
    marl_eval = json.loads((out / "marl_eval.json").read_text())  # env -> task -> algorithm -> run -> step
    run = marl_eval["mpe"]["spread"]["mappo"]["seed_1"]
    assert [run[f"step_{i}"]["step_count"] for i in range(2)] == [200, 400]
    assert len(run["step_1"]["return"]) == 2  # the evaluation's two episodes, one value each
    assert (runs / "spread/ippo/seed1/checkpoints/iter_000002").exists()


def test_interrupted_suite_resumes_and_skips_finished_runs(tmp_path, capsys, uninterrupted):
    path = _suite_file(tmp_path)
    runs, out = tmp_path / "runs", tmp_path / "out"
    common = [str(path), "--mode", "serial", "--runs-dir", str(runs), "--output", str(out)]
    # "interrupted": (spread, mappo, seed 0) finished, (spread, ippo, seed 0) stopped after iteration 1 of 2
    assert main(["bench", "suite", *common, "--seeds", "0", "--only-algorithms", "mappo"]) == 0
    assert main(["bench", "suite", *common, "--seeds", "0", "--only-algorithms", "ippo", "--budget", "200"]) == 0
    first = (runs / "spread/mappo/seed0/metrics.csv").read_text()
    capsys.readouterr()
    summary = run_suite(load_suite(str(path)), runs, out)
    log = capsys.readouterr().out
    assert "spread / mappo / seed 0: done already, skipped" in log
    assert "spread / ippo / seed 0: resuming from iter_000001" in log and log.count("starting") == 2
    assert log.count("trained in") == 3
    assert (runs / "spread/mappo/seed0/metrics.csv").read_text() == first
    expected = uninterrupted[3]
    for algorithm in ("mappo", "ippo"):  # same training results as the suite run in one go
        got, want = summary["spread"][algorithm], expected["spread"][algorithm]
        assert {k: got[k] for k in LEARNED} == {k: want[k] for k in LEARNED}


def test_finished_runs_are_archived_with_the_results_and_restored_on_another_machine(tmp_path, capsys, uninterrupted):
    """A fresh runs directory (another machine, a new session) continues from the archived finished runs:
    nothing is retrained and the report is the same."""
    path, _, out, summary = uninterrupted
    archived = out / "archive/spread/mappo/seed0"
    assert sorted(p.name for p in archived.iterdir()) == ["config.yaml", "eval_episodes.jsonl", "metrics.csv"]
    capsys.readouterr()
    assert run_suite(load_suite(str(path)), tmp_path / "fresh_runs", out) == summary
    log = capsys.readouterr().out
    assert "trained in" not in log and log.count("restored from") == 4


def test_report_only_rebuilds_the_report_from_the_run_dirs(tmp_path, capsys, uninterrupted):
    path, runs, out, summary = uninterrupted
    again = tmp_path / "again"
    assert main(["bench", "suite", str(path), "--report-only", "--runs-dir", str(runs), "--output", str(again)]) == 0
    assert "starting" not in capsys.readouterr().out
    assert json.loads((again / "summary.json").read_text()) == summary
    assert (again / "table.md").read_text() == (out / "table.md").read_text()
    assert (again / "curves_spread.png").exists() and (again / "runs/spread/mappo/seed0.csv").exists()
    # a smaller budget reports the runs up to it
    assert main(["bench", "suite", str(path), "--report-only", "--budget", "200", "--seeds", "1",
                 "--runs-dir", str(runs), "--output", str(tmp_path / "small")]) == 0
    small = json.loads((tmp_path / "small/summary.json").read_text())["spread"]["mappo"]
    assert small["env_steps"] == 200 and small["seeds"] == [1]
    assert len((tmp_path / "small/runs/spread/mappo/seed1.csv").read_text().splitlines()) == 2


def test_bad_override_names_the_task_and_algorithm(tmp_path):
    path = _suite_file(tmp_path, algorithms={"broken": {"trainer.epochs": 0}})
    with pytest.raises(SuiteError, match=r"task 'spread' x algorithm 'broken'.*trainer.epochs"):
        run_suite(load_suite(str(path)), tmp_path / "runs", tmp_path / "out")


def test_unknown_suite_lists_the_built_in_ones(capsys):
    assert main(["bench", "suite", "nope"]) == 2
    assert "unknown suite 'nope'; built-in suites: grasp, grasp_grf, grasp_pilot, grf, mpe, recsys, smax" in capsys.readouterr().err


def test_missing_base_config_is_named(tmp_path):
    path = _suite_file(tmp_path, base="configs/no_such_base.yaml")
    with pytest.raises(SuiteError, match=r"tiny.yaml: base config configs/no_such_base.yaml does not exist"):
        load_suite(str(path))


def test_recsys_suite_reports_methods_with_baselines_and_offline_metrics(tmp_path, monkeypatch):
    from benchmarks import recsys
    from benchmarks.recsys import run_recsys_suite

    monkeypatch.setattr(recsys, "THROUGHPUT_SECONDS", 0.2)
    base = tmp_path / "recsys.yaml"
    base.write_text(yaml.safe_dump({
        "run": {"batch_env_steps": 160, "mode": "serial", "checkpoint_every": 1, "progress": False,
                "eval_every": 1, "eval_episodes": 4},
        "env": {"name": "recsys/movielens", "kwargs": {"session_length": 10}, "global_state": "env"},
        "model": {"hidden_sizes": [16]}, "trainer": {"epochs": 1},
        "rollout": {"num_workers": 1, "envs_per_worker": 16, "fragment_length": 10},
    }))
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "suite": "recsys_tiny", "kind": "recsys", "base": str(base), "metric": "return", "target": 0.0,
        "budget_env_steps": 160, "seeds": [0], "tasks": {"movielens": {}},
        "algorithms": {"independent": {"env.groups": "independent"}, "shared": {}},
        "generative": {"losses": ["sa_gcpo", "gbpo"], "iterations": 2, "requests": 8, "group_size": 4,
                       "pretrain_steps": 3, "pretrain_batch": 16}}))
    suite = load_suite(str(path))
    result = run_recsys_suite(suite, tmp_path / "runs", tmp_path / "out")
    methods = result["methods"]
    assert set(methods) == {"random", "most_popular", "independent", "shared", "generative_pretrained",
                            "generative_sa_gcpo", "generative_gbpo"}
    assert methods["generative_sa_gcpo"]["env_steps"] == 2 * 8 * 4 and methods["generative_gbpo"]["logged_pairs"] == 48
    for m in methods.values():
        assert set(m["scenario_reward"]) == {"home_feed", "genre_comedy", "more_like_this"}
        assert 0.0 <= m["hit_rate_at_10"] <= 1.0 and 0.0 <= m["ndcg_at_10"] <= m["hit_rate_at_10"]
    assert methods["shared"]["env_steps"] == 160 and methods["most_popular"]["env_steps"] == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == result
    assert "| most_popular |" in (tmp_path / "out" / "table.md").read_text()
    rates = json.loads((tmp_path / "out" / "throughput.json").read_text())["env_steps_per_s"]
    assert set(rates) == {"1", "16", "128", "512"} and all(r > 0 for r in rates.values())
    assert (tmp_path / "out" / "training" / "curves_movielens.png").exists()

    # one family re-run, the others kept from summary.json (and in the report's order)
    again = run_recsys_suite(suite, tmp_path / "runs", tmp_path / "out", rows=["baselines"])["methods"]
    assert list(again) == list(methods) and again["generative_gbpo"] == methods["generative_gbpo"]
    assert again["random"]["team_reward_mean"] == methods["random"]["team_reward_mean"]  # same seeds, same sessions
    speed = (tmp_path / "out" / "throughput.json").read_text()
    regenerated = run_recsys_suite(suite, tmp_path / "runs", tmp_path / "out", rows=["generative"])["methods"]
    assert regenerated["random"] == again["random"] and set(regenerated) == set(methods)
    assert (tmp_path / "out" / "throughput.json").read_text() == speed  # measured with the baselines only
    with pytest.raises(SuiteError, match="unknown row family 'mappo'"):
        run_recsys_suite(suite, tmp_path / "runs", tmp_path / "out", rows=["mappo"])
    with pytest.raises(SuiteError, match="does not exist to keep the others"):
        run_recsys_suite(suite, tmp_path / "runs", tmp_path / "elsewhere", rows=["llm"])


def test_final_evaluation_random_row_and_per_task_budget_and_seeds(tmp_path):
    path = _suite_file(tmp_path, final_eval_episodes=3, random_baseline=True, algorithms={"mappo": {}},
                       tasks={"spread": {"env.name": "mpe/simple_spread", "budget_env_steps": 200, "seeds": [1]}})
    suite = load_suite(str(path))
    assert suite.budget("spread") == 200 and suite.seeds_of("spread") == [1] and suite.tasks["spread"] == {
        "env.name": "mpe/simple_spread"}
    summary = run_suite(suite, tmp_path / "runs", tmp_path / "out")
    entry = summary["spread"]["mappo"]
    assert entry["seeds"] == [1] and entry["env_steps"] == 200 and entry["final_eval_episodes"] == 3
    final = json.loads((tmp_path / "runs/spread/mappo/seed1/final_eval.json").read_text())
    random = json.loads((tmp_path / "runs/spread/random/final_eval.json").read_text())
    assert final["episodes"] == random["episodes"] == 3 and len(final["episodes/return"]) == 3
    assert entry["final_return_mean"] == final["eval/return_mean"]  # the final value is the final evaluation
    assert summary["spread"]["random"]["final_return_mean"] == random["eval/return_mean"]
    assert "| spread | uniform random |" in (tmp_path / "out/table.md").read_text()
    marl_eval = json.loads((tmp_path / "out/marl_eval.json").read_text())
    assert marl_eval["mpe"]["spread"]["mappo"]["seed_1"]["absolute_metrics"]["return"] == final["episodes/return"]


def test_paired_comparison_of_two_arms(tmp_path):
    analysis = {"primary": "auc"}
    path = _suite_file(tmp_path, analysis=analysis, seeds=[0, 1],
                       algorithms={"mappo": {"algo.name": "mappo"}, "ippo": {"algo.name": "ippo"}})
    run_suite(load_suite(str(path)), tmp_path / "runs", tmp_path / "out")
    comparison = json.loads((tmp_path / "out/comparison.json").read_text())
    assert comparison["treatment"] == "ippo" and comparison["control"] == "mappo" and comparison["tasks"] == ["spread"]
    diff = comparison["auc"]["difference"]
    assert diff["aggregate"]["low"] <= diff["aggregate"]["point"] <= diff["aggregate"]["high"]
    assert diff["verdict"] in ("win", "loss", "no difference detected")
    assert "## Paired comparison" in (tmp_path / "out/table.md").read_text()
    with pytest.raises(SuiteError, match="two algorithms"):
        load_suite(str(_suite_file(tmp_path, analysis=analysis, algorithms={"a": {}, "b": {}, "c": {}})))


@pytest.mark.parametrize("name", builtin_suites())
def test_every_builtin_suite_resolves_each_runs_config(name, tmp_path):
    """A suite file's overrides are config keys: a renamed key fails here, not hours into a suite."""
    suite = load_suite(name)
    for task in suite.tasks:
        for algorithm in suite.algorithms:
            cfg = run_config(suite, task, algorithm, suite.seeds_of(task)[0], tmp_path, None)
            assert cfg.run.iterations * cfg.run.batch_env_steps >= suite.budget(task)
