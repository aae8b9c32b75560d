"""`flexmarl bench benchmarl` end to end at two iterations, where BenchMARL's virtualenv exists
(`make benchmarl`; not part of `make test`, whose set-up does not install BenchMARL)."""

import json

import pytest

from benchmarks.vs_benchmarl import BENCHMARL_PYTHON, run_vs_benchmarl


@pytest.mark.skipif(not BENCHMARL_PYTHON.exists(), reason="BenchMARL's virtualenv not built (make benchmarl)")
def test_both_systems_train_the_same_budget_and_report_greedy_returns(tmp_path):
    summary = run_vs_benchmarl([0], out=tmp_path / "vs.json", env_steps=6400)
    run = json.loads((tmp_path / "vs.json").read_text())["runs"][0]
    assert run["ours"]["env_steps"] == run["benchmarl"]["env_steps"] == 6400
    for who in ("ours", "benchmarl"):
        assert -200 < run[who]["final_greedy_return"] < 0  # simple_spread's team return: distances, always < 0
        assert run[who]["wall_s"] > 0
    assert summary["wall_ratio_benchmarl_over_ours"]["mean"] == pytest.approx(run["wall_ratio_benchmarl_over_ours"])
    assert run["benchmarl"]["final_greedy_episodes"] == 50


def test_a_missing_benchmarl_virtualenv_is_named(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # BENCHMARL_PYTHON is relative to the checkout
    with pytest.raises(FileNotFoundError, match="make benchmarl"):
        run_vs_benchmarl([0], out=tmp_path / "vs.json", env_steps=6400)
