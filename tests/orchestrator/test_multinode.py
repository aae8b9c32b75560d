"""Two Ray nodes on this machine: a training job submitted with `ray job submit` whose rollout pool spans
both nodes, and the second node stopped mid-run. The test starts its own head and second node (each with
`ray start --block` in a session of its own) and stops only the processes under them, never `ray stop`."""

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import descendant_pids
from tests.flexmarl.llm.conftest import tiny_task_models  # noqa: F401  (shared session fixture)

from orchestrator.run_dir import latest_checkpoint, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
FLEXMARL = str(Path(sys.executable).parent / "flexmarl")
# Rollout workers (0.5 CPU each, SPREAD: one per node); the trainer (1.5 CPUs) fits only on the head
# (3 CPUs), which keeps 1 CPU spare so that a lost worker bundle can be placed again there.
JOB = ["run.mode=ray", "run.batch_env_steps=200", "rollout.envs_per_worker=4", "rollout.num_workers=2",
       "run.checkpoint_every=1", "run.progress=false", "run.eval_every=0", "run.eval_episodes=2", "trainer.num_minibatches=1", "trainer.epochs=2",
       "model.hidden_sizes=[32]", "resources.strategy=SPREAD", "resources.rollout_cpus=1", "resources.trainer_cpus=1.5"]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalNode:
    """One `ray start --block` process and everything it starts (raylet, workers, agents)."""

    def __init__(self, args: list[str], env: dict, log: Path):
        self.log = log.open("w")
        self.proc = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL the node's processes, children first seen included (by pid: only this node's)."""
        for _ in range(3):  # a dying raylet may still spawn a process: sweep again
            for pid in [*descendant_pids(self.proc.pid), self.proc.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture
def two_nodes(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled",
           # notice a dead node within ~10 s (default: ~30 s)
           "RAY_health_check_period_ms": "2000", "RAY_health_check_failure_threshold": "5"}
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="flexmarl-2n-", dir="/tmp")  # short: Ray's socket paths must fit

    def common() -> list[str]:  # every node its own agent and metrics ports
        return ["--num-gpus=0", "--object-store-memory=150000000", f"--temp-dir={temp_dir}",
                f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}"]

    nodes = []
    try:
        for attempt in range(2):  # a port picked here may be taken by one Ray picks itself before its owner binds it
            port, dashboard = _free_port(), _free_port()
            head = LocalNode(["--head", "--num-cpus=3", f"--port={port}", "--dashboard-host=127.0.0.1",
                              f"--dashboard-port={dashboard}", *common()], env, tmp_path / f"head-{attempt}.log")
            nodes.append(head)
            _wait_for(lambda: _job_api_up(dashboard, env) or head.proc.poll() is not None, 120, "head",
                      tmp_path / f"head-{attempt}.log")
            if _job_api_up(dashboard, env):
                break
            head.kill()
        else:
            raise AssertionError(f"head did not come up twice: {(tmp_path / 'head-1.log').read_text()[-2000:]}")
        for attempt in range(2):  # on a loaded machine the raylet may miss `ray start`'s 30 s deadline once
            second = LocalNode([f"--address=127.0.0.1:{port}", "--num-cpus=1", '--resources={"node2": 1}',
                                f"--node-manager-port={_free_port()}", *common()], env, tmp_path / f"node2-{attempt}.log")
            nodes.append(second)
            _wait_for(lambda: len(_alive_nodes(dashboard)) == 2 or second.proc.poll() is not None, 120,
                      "second node", tmp_path / f"node2-{attempt}.log")
            if second.proc.poll() is None:
                break
            second.kill()
        yield {"env": {**env, "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard}"}, "dashboard": dashboard,
               "second": second}
    finally:
        for node in reversed(nodes):
            if node.proc.poll() is None:
                node.kill()
        subprocess.run(["rm", "-rf", temp_dir], timeout=60)


def _wait_for(ready, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what} did not come up: {log.read_text()[-2000:]}"
        time.sleep(1)


def _job_api_up(dashboard: int, env: dict) -> bool:
    done = subprocess.run([RAY, "list", "nodes", f"--address=http://127.0.0.1:{dashboard}", "--format=json"],
                          env=env, capture_output=True, text=True, timeout=60)
    return done.returncode == 0


def _alive_nodes(dashboard: int) -> list:
    from ray.util.state import list_nodes

    try:
        return [n for n in list_nodes(address=f"http://127.0.0.1:{dashboard}", detail=True) if n.state == "ALIVE"]
    except Exception:
        return []


def _actors(dashboard: int) -> dict[str, list]:
    from ray.util.state import list_actors

    out: dict[str, list] = {}
    for a in list_actors(address=f"http://127.0.0.1:{dashboard}", detail=True, limit=1000):
        if a.state == "ALIVE":
            out.setdefault(a.class_name, []).append(a.node_id)
    return out


def _submit(cluster: dict, args: list[str], log: Path) -> subprocess.Popen:
    cmd = [RAY, "job", "submit", "--working-dir", str(ROOT), "--", FLEXMARL, "train", *args]
    return subprocess.Popen(cmd, env=cluster["env"], stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)


def _running_on_both(cluster: dict, job: subprocess.Popen, job_log: Path, out: Path, checkpoint: str,
                     timeout: float) -> tuple[dict, str]:
    """Once the job has written `checkpoint`: (actor class -> node ids of its live actors, the second
    node's id)."""
    deadline = time.monotonic() + timeout
    while not list(out.glob(f"*/checkpoints/{checkpoint}")):
        assert job.poll() is None and time.monotonic() < deadline, job_log.read_text()[-3000:]
        time.sleep(0.3)
    nodes = {n.node_id: n for n in _alive_nodes(cluster["dashboard"])}
    return _actors(cluster["dashboard"]), next(i for i, n in nodes.items() if "node2" in n.resources_total)


def _params(checkpoint: Path) -> dict:
    return {k: v.numpy() for k, v in load_checkpoint(checkpoint)["state"]["trainers"]["shared"]["policy"].items()}


def _serial_reference(tmp_path: Path, iterations: int) -> dict:
    from orchestrator.cli import main

    out = tmp_path / "reference"
    job = [a for a in JOB if not a.startswith(("run.mode", "resources."))]
    assert main(["train", str(ROOT / "configs/demo.yaml"), f"run.output_dir={out}", "run.mode=serial",
                 f"run.iterations={iterations}", *job]) == 0
    (run_dir,) = out.iterdir()
    return _params(latest_checkpoint(run_dir))


@pytest.mark.slow
def test_a_job_spans_two_nodes_and_survives_losing_one(two_nodes, tmp_path):
    """Rollout workers land on both nodes; killing the second node mid-run either lets the run go on (the lost
    worker's rows regenerated on the head) or stops it with a checkpoint that `--resume` continues. Either way
    the final parameters equal an undisturbed run's: no accepted row lost or counted twice."""
    iterations = 8
    out = tmp_path / "runs"
    job_log = tmp_path / "job.log"
    job = _submit(two_nodes, ["configs/demo.yaml", f"run.output_dir={out}", f"run.iterations={iterations}", *JOB],
                  job_log)
    actors, second = _running_on_both(two_nodes, job, job_log, out, "iter_000002", timeout=240)
    assert len(set(actors["RolloutWorker"])) == 2, actors  # the rollout pool spans both nodes
    assert second in actors["RolloutWorker"] and actors["GroupTrainer"] != [second]

    two_nodes["second"].kill()  # mid-run: the run is at iteration 2 or 3 of 8
    assert job.wait(timeout=300) in (0, 1), job_log.read_text()[-3000:]
    (run_dir,) = out.iterdir()
    text = job_log.read_text()
    if "succeeded" not in text:  # stopped with a clear error: continue from its checkpoint on the head alone
        assert (run_dir / "error.txt").exists(), text[-3000:]  # neither succeeded nor stopped clearly: show why
        assert "flexmarl train --resume" in (run_dir / "error.txt").read_text(), text[-3000:]
        resume = _submit(two_nodes, ["--resume", str(run_dir)], tmp_path / "resume.log")
        assert resume.wait(timeout=300) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == list(range(1, iterations + 1))
    print(json.dumps({"worker_restarts": rows[-1]["perf/worker_restarts"],
                      "aborted_rows": rows[-1]["store/aborted_rows"], "continued": "succeeded" in text}))
    reference = _serial_reference(tmp_path, iterations)
    final = _params(run_dir / f"checkpoints/iter_{iterations:06d}")
    assert final.keys() == reference.keys() and all(np.array_equal(final[k], reference[k]) for k in final)


def _llm_job(models: dict, out: Path, iterations: int) -> dict:
    """Tiny speaker-listener run with HF engines, two per agent. SPREAD puts the rollout pool (4 engines and
    the workflow worker, 0.1 CPU each) on both nodes; each trainer (1.1 CPUs) fits only on the head (3 CPUs),
    which keeps at least as many CPUs spare as the second node's share of the rollout pool, so that its
    lost bundles can be placed again there."""
    return {
        "run": {"name": "llm-2n", "workload": "llm", "mode": "ray", "seed": 0, "iterations": iterations,
                "progress": False, "checkpoint_every": 1, "output_dir": str(out)},
        "llm": {"task": "speaker_listener", "models": {k: str(v) for k, v in models.items()}, "backend": "hf",
                "group_size": 4, "queries_per_request": 1, "queries_per_iteration": 4, "max_new_tokens": 4,
                "concurrent_requests": 2, "engines_per_agent": 2, "load_balancing": False,
                "engine_replace_timeout_s": 180},
        "rollout": {"num_workers": 1},
        "trainer": {"num_minibatches": 1},
        "pipeline": {"mode": "microbatch"},
        "resources": {"strategy": "SPREAD", "engine": {"cpus": 0.1}, "rollout_worker": {"cpus": 0.1},
                      "trainer": {"cpus": 1.1}},
    }


@pytest.mark.slow
def test_an_llm_run_replaces_the_engines_of_a_lost_node_and_finishes(two_nodes, tmp_path, tiny_task_models):
    """Engines land on both nodes; the second node is SIGKILLed mid-run. Its engines' replacements (the
    first may be put in a bundle of the dead node before Ray declares it dead, and is started again) take
    the current weights, the requests that used the dead engines go again, and the run finishes every
    iteration with every trajectory: none lost."""
    import yaml

    iterations = 6
    out = tmp_path / "runs"
    config = tmp_path / "llm-2n.yaml"
    config.write_text(yaml.safe_dump(_llm_job(tiny_task_models, out, iterations)))
    job_log = tmp_path / "job.log"
    job = _submit(two_nodes, [str(config)], job_log)
    actors, second = _running_on_both(two_nodes, job, job_log, out, "iter_000001", timeout=420)
    assert second in actors["HFEngine"] and len(set(actors["HFEngine"])) == 2, actors  # engines on both nodes
    assert second not in actors["LLMGroupTrainer"], actors

    two_nodes["second"].kill()  # mid-run: iteration 1 or 2 of 6
    assert job.wait(timeout=600) == 0, job_log.read_text()[-5000:]
    (run_dir,) = out.iterdir()
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == list(range(1, iterations + 1))
    per_iteration = 4 * 4  # queries_per_iteration x group_size trajectories, every iteration
    assert [int(float(r["trajectories"])) for r in rows] == [per_iteration * i for i in range(1, iterations + 1)]
    assert int(float(rows[-1]["perf/engine_restarts"])) >= 1, rows[-1]
    print(json.dumps({k: rows[-1][k] for k in ("perf/engine_restarts", "perf/worker_restarts", "store/aborted_rows")}))
