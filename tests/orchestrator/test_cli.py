"""The command line as a user runs it: train, resume, eval, errors; and `ray job submit` on a local head."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from orchestrator.cli import main, parse_args

ROOT = Path(__file__).resolve().parents[2]
TINY = ["run.mode=serial", "run.iterations=2", "run.batch_env_steps=200", "rollout.envs_per_worker=8",
        "run.checkpoint_every=1", "run.eval_episodes=2", "run.progress=false", "trainer.num_minibatches=1"]


def test_train_then_resume_then_eval(tmp_path, capsys):
    assert main(["train", str(ROOT / "configs/demo.yaml"), f"run.output_dir={tmp_path}", *TINY]) == 0
    out = capsys.readouterr().out
    assert "uniform random policy" in out
    (run_dir,) = tmp_path.iterdir()
    assert main(["train", "--resume", str(run_dir), "run.iterations=3"]) == 0
    assert (run_dir / "checkpoints" / "iter_000003").exists()
    capsys.readouterr()
    checkpoint = str(run_dir / "checkpoints" / "iter_000003")
    assert main(["eval", checkpoint, "--episodes", "2"]) == 0
    greedy = capsys.readouterr().out
    assert "checkpoint iteration 3 (greedy): mean return" in greedy
    sampled = []
    for _ in range(2):
        assert main(["eval", checkpoint, "--episodes", "2", "--sample", "--seed", "7"]) == 0
        sampled.append(capsys.readouterr().out)
    assert "(sampled actions)" in sampled[0] and sampled[0] == sampled[1]  # seeded: reproducible
    assert main(["eval", checkpoint, "--episodes", "2", "--seed", "7"]) == 0
    assert capsys.readouterr().out.split(":")[1] != sampled[0].split(":")[1]  # not the greedy policy's return


def test_overrides_may_follow_options_in_any_order(tmp_path, capsys):
    args = parse_args(["train", "cfg.yaml", "--address", "10.0.0.1:6379", "a.b=1", "c=2"])
    assert (args.config, args.address, args.overrides) == ("cfg.yaml", "10.0.0.1:6379", ["a.b=1", "c=2"])
    args = parse_args(["train", "cfg.yaml", "a.b=1", "--address", "10.0.0.1:6379", "c=2"])
    assert args.overrides == ["a.b=1", "c=2"]  # in the order given: later overrides win
    with pytest.raises(SystemExit):
        parse_args(["train", "cfg.yaml", "--adress", "10.0.0.1:6379"])
    with pytest.raises(SystemExit):
        parse_args(["eval", "ckpt", "extra"])
    capsys.readouterr()
    # a serial run ignores the address: the command line is what is checked here
    assert main(["train", str(ROOT / "configs/demo.yaml"), "--address", "10.0.0.1:6379", f"run.output_dir={tmp_path}",
                 *TINY]) == 0
    (run_dir,) = tmp_path.iterdir()
    assert "iterations: 2" in (run_dir / "config.yaml").read_text()


def test_a_stopped_cluster_run_names_its_address_and_a_resume_archives_its_error(tmp_path, capsys, ray_cluster):
    import ray

    address = ray.get_runtime_context().gcs_address  # joined, as `--address` joins a cluster
    faulty = ["env.name=tests.faulty_envs:make", "env.kwargs={fault: nan_reward, at_step: 60, N: 3}"]
    assert main(["train", str(ROOT / "configs/demo.yaml"), "--address", address, f"run.output_dir={tmp_path}",
                 *TINY, "run.mode=ray", "run.iterations=4", *faulty]) == 1
    (run_dir,) = tmp_path.iterdir()
    err = capsys.readouterr().err
    assert f"flexmarl train --resume {run_dir} --address {address}" in err
    error = (run_dir / "error.txt").read_text()
    assert "EnvOutputError" in error and f"--address {address}" in error
    assert main(["train", "--resume", str(run_dir), "--address", address, "env.kwargs.fault=none"]) == 0
    assert not (run_dir / "error.txt").exists()
    (archived,) = run_dir.glob("error.*.txt")
    assert archived.read_text() == error
    assert (run_dir / "checkpoints" / "iter_000004").exists()


def test_invalid_config_fails_before_anything_starts(tmp_path, capsys):
    assert main(["train", str(ROOT / "configs/demo.yaml"), f"run.output_dir={tmp_path}", "trainer.epochs=0"]) == 2
    assert "config key 'trainer.epochs': got 0; allowed: > 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_eval_refuses_a_non_checkpoint(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "is not a checkpoint" in capsys.readouterr().err


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ray_job_submit_on_a_local_head(tmp_path):
    ray_bin = Path(sys.executable).parent / "ray"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    # A private temp dir names every process of this head, so teardown stops only them: `ray stop` would
    # also kill any other Ray instance on the machine (a training run beside the tests).
    temp_dir = tempfile.mkdtemp(prefix="flexmarl-ray-", dir="/tmp")
    head = [str(ray_bin), "start", "--head", "--num-cpus=2", "--num-gpus=0", "--object-store-memory=200000000",
            "--port=6390", "--dashboard-host=127.0.0.1", "--dashboard-port=8275", "--disable-usage-stats",
            f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={_free_port()}"]  # 52365 may be taken
    subprocess.run(head, check=True, env=env, capture_output=True, timeout=120)
    try:
        job_env = {**env, "RAY_API_SERVER_ADDRESS": "http://127.0.0.1:8275"}
        flexmarl = shutil.which("flexmarl", path=str(Path(sys.executable).parent)) or "flexmarl"
        submit = [str(ray_bin), "job", "submit", "--working-dir", str(ROOT), "--",
                  flexmarl, "train", "configs/demo.yaml", f"run.output_dir={tmp_path}", *TINY[1:]]
        deadline = time.monotonic() + 180
        while True:  # the head's job agent can take a while to come up on a busy machine
            done = subprocess.run(submit, env=job_env, capture_output=True, text=True, timeout=300)
            if "No available agent to submit job" not in done.stdout + done.stderr or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "succeeded" in done.stdout
        (run_dir,) = tmp_path.iterdir()
        assert (run_dir / "checkpoints" / "iter_000002").exists()
        # the default relative output_dir would land in Ray's temporary copy of the working dir: refused
        relative = [a for a in submit if not a.startswith("run.output_dir=")]
        refused = subprocess.run(relative, env=job_env, capture_output=True, text=True, timeout=300)
        assert refused.returncode != 0 and "error: config key 'run.output_dir': got 'runs'" in refused.stdout, \
            refused.stdout[-3000:] + refused.stderr[-3000:]
    finally:
        subprocess.run(["pkill", "-9", "-f", temp_dir], capture_output=True, timeout=60)
        time.sleep(1)
        shutil.rmtree(temp_dir, ignore_errors=True)
