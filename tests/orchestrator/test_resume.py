"""Stopping and continuing a run: corrupt latest checkpoint, TensorBoard after resume, Ctrl-C, parameters
after a CLI resume, a dead trainer actor on Ray, resume equality on Ray."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import descendant_pids

from orchestrator.cli import main
from orchestrator.run_dir import latest_checkpoint, load_checkpoint, new_run_dir
from orchestrator.train import TrainingError, train

ROOT = Path(__file__).resolve().parents[2]
TINY = ["run.mode=serial", "run.batch_env_steps=200", "rollout.envs_per_worker=8", "run.checkpoint_every=1",
        "run.eval_episodes=2", "run.progress=false", "trainer.num_minibatches=1"]


def _params(checkpoint: Path) -> dict:
    return {k: v.numpy() for k, v in load_checkpoint(checkpoint)["state"]["trainers"]["shared"]["policy"].items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_cli_resume_ends_with_the_parameters_of_an_uninterrupted_run(tmp_path):
    demo = str(ROOT / "configs/demo.yaml")
    assert main(["train", demo, f"run.output_dir={tmp_path / 'full'}", "run.iterations=3", *TINY]) == 0
    assert main(["train", demo, f"run.output_dir={tmp_path / 'cut'}", "run.iterations=2", *TINY]) == 0
    (full,), (cut,) = (tmp_path / "full").iterdir(), (tmp_path / "cut").iterdir()
    assert main(["train", "--resume", str(cut), "run.iterations=3"]) == 0
    assert _same(_params(full / "checkpoints/iter_000003"), _params(cut / "checkpoints/iter_000003"))
    assert not _same(_params(cut / "checkpoints/iter_000002"), _params(cut / "checkpoints/iter_000003"))


def test_corrupt_latest_checkpoint_names_the_intact_one_and_how_to_use_it(tmp_path, capsys):
    demo = str(ROOT / "configs/demo.yaml")
    assert main(["train", demo, f"run.output_dir={tmp_path}", "run.iterations=3", *TINY]) == 0
    (run_dir,) = tmp_path.iterdir()
    latest = run_dir / "checkpoints/iter_000003/state.pt"
    latest.write_bytes(latest.read_bytes()[:-10])
    capsys.readouterr()
    assert main(["train", "--resume", str(run_dir), "run.iterations=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "latest checkpoint iter_000003 is unusable" in err[0]
    assert "newest intact checkpoint is iter_000002" in err[0]
    command = err[0].split("resume again: ")[1].split(";")[0]
    assert command.startswith("mv ")
    subprocess.run(command.split(), check=True)  # the advice works as given
    assert main(["train", "--resume", str(run_dir), "run.iterations=4"]) == 0
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "corrupt-iter_000003", "iter_000001", "iter_000002", "iter_000003", "iter_000004"]


def _scalar_steps(run_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_tensorboard_holds_one_point_per_step_after_a_resume(make_cfg, tmp_path):
    cfg = make_cfg(run={"output_dir": str(tmp_path), "iterations": 3, "checkpoint_every": 2})
    run_dir = new_run_dir(cfg)
    train(cfg, run_dir)  # checkpoints at 2 and 3
    for f in (run_dir / "checkpoints/iter_000003").iterdir():
        f.unlink()
    (run_dir / "checkpoints/iter_000003").rmdir()
    train(make_cfg(run={"output_dir": str(tmp_path), "iterations": 4, "checkpoint_every": 2}), run_dir, resume=True)
    steps = _scalar_steps(run_dir, "episode_return_mean")
    assert steps == [200, 400, 600, 800]  # iteration 3 written twice, shown once


def test_ctrl_c_prints_the_run_directory_and_the_resume_command(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "train", str(ROOT / "configs/demo.yaml"),
         f"run.output_dir={tmp_path}", "run.iterations=100000", *TINY],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # as from an interactive shell: a parent started in the background (`make test &`) ignores SIGINT,
        # and its children would inherit that and never see the Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not list(tmp_path.glob("*/checkpoints/iter_000001")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    (run_dir,) = tmp_path.iterdir()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert f"flexmarl train --resume {run_dir}" in err


def _kill_trainer_after(run_dir: Path, checkpoint: str, killed: list) -> None:
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / checkpoint).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in descendant_pids(os.getpid()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith("ray::GroupTrainer"):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)


def test_trainer_dying_as_its_checkpoint_is_read_stops_the_run_the_same_way(make_cfg, tmp_path, ray_cluster,
                                                                            monkeypatch):
    import ray

    from orchestrator.core import Orchestrator

    read_state = Orchestrator.get_state
    calls: list = []

    def kill_trainer_then_read(orch):  # the race CI once hit: the trainer dies after its step, before the save
        calls.append(orch.iteration)
        if len(calls) == 2:
            ray.kill(orch.trainers["shared"], no_restart=True)
        return read_state(orch)

    monkeypatch.setattr(Orchestrator, "get_state", kill_trainer_then_read)
    cfg = make_cfg(run={"mode": "ray", "output_dir": str(tmp_path), "iterations": 3})
    run_dir = new_run_dir(cfg)
    with pytest.raises(TrainingError, match="a trainer actor died: the trainer of group 'shared'") as info:
        train(cfg, run_dir)
    assert calls == [1, 2]
    assert latest_checkpoint(run_dir).name == "iter_000001"
    assert "Continue from iter_000001" in str(info.value)
    assert "trainer actor died" in (run_dir / "error.txt").read_text()


@pytest.mark.slow
def test_dead_trainer_stops_with_error_txt_and_resume_continues_exactly(make_cfg, tmp_path, ray_cluster):
    cfg = make_cfg(run={"mode": "ray", "output_dir": str(tmp_path / "a"), "iterations": 60})
    run_dir = new_run_dir(cfg)
    killed: list = []
    killer = threading.Thread(target=_kill_trainer_after, args=(run_dir, "iter_000002", killed))
    killer.start()
    with pytest.raises(TrainingError, match="a trainer actor died") as info:
        train(cfg, run_dir)
    killer.join()
    assert killed
    assert f"flexmarl train --resume {run_dir}" in str(info.value)
    assert "trainer actor died" in (run_dir / "error.txt").read_text()
    assert "a trainer actor died: the trainer of group 'shared' (" in str(info.value)  # which one
    stopped_at = latest_checkpoint(run_dir)
    n = int(stopped_at.name.split("_")[1])
    train(make_cfg(run={"mode": "ray", "output_dir": str(tmp_path / "a"), "iterations": n + 1}), run_dir, resume=True)

    reference_cfg = make_cfg(run={"mode": "ray", "output_dir": str(tmp_path / "b"), "iterations": n + 1})
    reference = new_run_dir(reference_cfg)
    train(reference_cfg, reference)  # resume on Ray equals an uninterrupted Ray run
    assert _same(_params(latest_checkpoint(run_dir)), _params(latest_checkpoint(reference)))
