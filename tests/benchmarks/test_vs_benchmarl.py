"""`flexmarl bench benchmarl` end to end at two iterations, where BenchMARL's virtualenv exists
(`make benchmarl`; not part of `make test`, whose set-up does not install BenchMARL)."""

import json

import pytest

from benchmarks.vs_benchmarl import BENCHMARL_PYTHON, run_vs_benchmarl
from orchestrator.cli import main


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


def test_a_missing_benchmarl_virtualenv_is_one_error_line(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)  # BENCHMARL_PYTHON is relative to the checkout
    assert main(["bench", "benchmarl", "--seeds", "0", "--out", str(tmp_path / "vs.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "make benchmarl" in err[0]
    assert not (tmp_path / "vs.json").exists()
