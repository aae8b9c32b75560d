"""The serial pipeline end to end: iterations, run directory, resume, checkpoints, bad env output."""

import csv
import json

import numpy as np
import pytest

from orchestrator.core import make_orchestrator
from orchestrator.run_dir import CheckpointError, latest_checkpoint, load_checkpoint, new_run_dir
from orchestrator.runtime import SerialRuntime
from orchestrator.train import TrainingError, evaluate_checkpoint, train


def _policy(state, group="shared"):
    return {k: v.numpy() for k, v in state["trainers"][group]["policy"].items()}


def test_serial_iteration_consumes_the_whole_batch_at_version_k(make_cfg):
    cfg = make_cfg()
    orch = make_orchestrator(cfg, SerialRuntime())
    metrics = orch.step()
    assert metrics["iteration"] == 1 and metrics["env_steps"] == 200
    assert metrics["perf/policy_lag_max"] == 0.0
    assert orch.store.ready_rows("shared") == []  # consumed and evicted
    assert orch.iteration == 1 and orch.runtime.get(orch.runtime.call(orch.workers[0], "health"))["version"] == 1


def test_run_directory_has_config_metrics_tensorboard_and_checkpoints(make_cfg, tmp_path):
    cfg = make_cfg(run={"output_dir": str(tmp_path), "iterations": 3, "checkpoint_every": 2, "eval_every": 2,
                        "eval_episodes": 3})
    run_dir = new_run_dir(cfg)
    train(cfg, run_dir)
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3]
    # each evaluation's episodes are kept beside its mean (per-episode statistics, marl-eval's layout)
    (episodes,) = [json.loads(line) for line in (run_dir / "eval_episodes.jsonl").read_text().splitlines()]
    assert episodes["iteration"] == 2 and episodes["env_steps"] == 400 and len(episodes["return"]) == 3
    assert episodes["length"] == [25, 25, 25]  # env steps per episode (simple_spread: max_cycles 25)
    assert np.isclose(np.mean(episodes["return"]), float(rows[1]["eval/return_mean"]))
    for column in ("env_steps", "episode_return_mean", "env_steps_per_s", "losses/shared/policy", "perf/policy_lag_max"):
        assert column in rows[0]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["iter_000002", "iter_000003"]
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "config.yaml").exists()
    result = evaluate_checkpoint(latest_checkpoint(run_dir), episodes=2)
    assert result["iteration"] == 3 and np.isfinite(result["eval/return_mean"])


def test_interrupted_and_resumed_run_ends_with_the_same_parameters(make_cfg, tmp_path):
    full_cfg = make_cfg(run={"output_dir": str(tmp_path / "a"), "iterations": 4, "checkpoint_every": 2})
    full_dir = new_run_dir(full_cfg)
    train(full_cfg, full_dir)

    cut_cfg = make_cfg(run={"output_dir": str(tmp_path / "b"), "iterations": 3, "checkpoint_every": 2})
    cut_dir = new_run_dir(cut_cfg)
    train(cut_cfg, cut_dir)  # "interrupted" after iteration 3; last checkpoint is iteration 2 ... and 3 (end)
    # drop the end-of-run checkpoint so resume really starts mid-way, from iteration 2
    for f in (cut_dir / "checkpoints" / "iter_000003").iterdir():
        f.unlink()
    (cut_dir / "checkpoints" / "iter_000003").rmdir()
    resumed_cfg = make_cfg(run={"output_dir": str(tmp_path / "b"), "iterations": 4, "checkpoint_every": 2})
    train(resumed_cfg, cut_dir, resume=True)

    a = _policy(load_checkpoint(latest_checkpoint(full_dir))["state"])
    b = _policy(load_checkpoint(latest_checkpoint(cut_dir))["state"])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    rows = list(csv.DictReader((cut_dir / "metrics.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]


def test_corrupt_and_mismatched_checkpoints_are_refused(make_cfg, tmp_path):
    cfg = make_cfg(run={"output_dir": str(tmp_path), "iterations": 1})
    run_dir = new_run_dir(cfg)
    train(cfg, run_dir)
    ckpt = latest_checkpoint(run_dir)
    other = make_orchestrator(make_cfg(env={"groups": "independent"}), SerialRuntime())
    with pytest.raises(CheckpointError, match="does not match this run"):
        load_checkpoint(ckpt, other.groups)
    blob = bytearray((ckpt / "state.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (ckpt / "state.pt").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupt: its sha256"):
        load_checkpoint(ckpt)
    (ckpt / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json is corrupt"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path)


def test_bad_env_output_stops_the_run_and_keeps_what_was_written(make_cfg, tmp_path):
    # each env copy steps 2 requests x 25 steps per iteration: step 110 falls in iteration 3
    cfg = make_cfg(
        run={"output_dir": str(tmp_path), "iterations": 5, "checkpoint_every": 1},
        env={"name": "tests.faulty_envs:make", "kwargs": {"fault": "nan_reward", "at_step": 110, "N": 3}},
    )
    run_dir = new_run_dir(cfg)
    with pytest.raises(TrainingError, match=r"agent 'agent_1' at step \d+ .*reward is nan"):
        train(cfg, run_dir)
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [1, 2]
    assert (run_dir / "checkpoints" / "iter_000002" / "state.pt").exists()
    assert "reward is nan" in (run_dir / "error.txt").read_text()
    meta = json.loads((run_dir / "checkpoints" / "iter_000002" / "meta.json").read_text())
    assert meta["iteration"] == 2


def test_grasp_on_smax_trains_end_to_end_and_evaluates_win_rate(make_cfg, tmp_path):
    cfg = make_cfg(env={"name": "smax/3m", "kwargs": {}, "global_state": "env"},
                   rollout={"envs_per_worker": 8, "fragment_length": 40},
                   run={"batch_env_steps": 640, "output_dir": str(tmp_path), "eval_every": 2, "eval_episodes": 4},
                   algo={"gradient_aggregator": "grasp"}, trainer={"num_minibatches": 2})
    run_dir = new_run_dir(cfg)
    last = train(cfg, run_dir)
    assert last["iteration"] == 2 and 0.0 <= last["eval/win_rate"] <= 1.0 and last["eval/episodes"] == 4
    assert -1.0 <= last["grasp/shared/cosine_min"] <= 1.0 and last["perf/shared/aggregate_s"] > 0
    assert "charts/train_win_rate" in last
    result = evaluate_checkpoint(latest_checkpoint(run_dir), episodes=3)
    assert result["eval/episodes"] == 3
