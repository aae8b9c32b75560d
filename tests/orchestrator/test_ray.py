"""The same pipeline on real Ray actors: parity with serial mode, dead workers, pools."""

import time

import pytest
import ray

from orchestrator.core import make_orchestrator
from orchestrator.dispatch import WorkerFailure
from orchestrator.runtime import RayRuntime, SerialRuntime, WorkerDiedError
from tests.conftest import policy_params, same_params


@pytest.fixture(autouse=True)
def _cluster(ray_cluster):
    yield


def test_ray_mode_equals_serial_mode(make_cfg):
    cfg = make_cfg(run={"mode": "ray"}, rollout={"num_workers": 2}, env={"groups": "independent"})
    serial = make_orchestrator(cfg, SerialRuntime())
    distributed = make_orchestrator(cfg, RayRuntime(cfg))
    try:
        for _ in range(2):
            m_serial, m_ray = serial.step(), distributed.step()
            assert m_serial["episode_return_mean"] == m_ray["episode_return_mean"]
        assert same_params(policy_params(serial), policy_params(distributed))
        assert m_ray["perf/policy_lag_max"] == 0.0
    finally:
        distributed.shutdown()


def test_workers_and_trainers_run_on_separate_pools(make_cfg):
    cfg = make_cfg(run={"mode": "ray"})
    orch = make_orchestrator(cfg, RayRuntime(cfg))
    try:
        pools = orch.runtime.pools
        assert pools["rollout"].id != pools["trainer"].id
        table = ray.util.placement_group_table()
        assert table[pools["rollout"].id.hex()]["bundles"][0] == {"CPU": 1.0}
        worker_pid = ray.get(orch.workers[0].health.remote())["pid"]
        assert worker_pid != __import__("os").getpid()
    finally:
        orch.shutdown()


def test_a_dead_actor_is_named_by_kind_group_and_index(make_cfg):
    cfg = make_cfg(run={"mode": "ray"}, rollout={"num_workers": 2})
    orch = make_orchestrator(cfg, RayRuntime(cfg))
    rt = orch.runtime
    try:
        for handle, method, key, named in ((orch.trainers["shared"], "get_weights", "trainer/shared", "trainer of group 'shared'"),
                                           (orch.workers[1], "health", "worker/1", "rollout worker 1")):
            ray.kill(handle, no_restart=True)
            deadline = time.monotonic() + 30
            with pytest.raises(WorkerDiedError) as info:
                while time.monotonic() < deadline:  # ray.kill is asynchronous: a call may still be served first
                    rt.get(rt.call(handle, method))
                    time.sleep(0.1)
            assert info.value.actor.key == key and info.value.actor.describe() == named, str(info.value)
    finally:
        orch.shutdown()


def test_killed_worker_rows_are_regenerated_without_duplicates(make_cfg):
    cfg = make_cfg(run={"mode": "ray", "batch_env_steps": 400}, rollout={"num_workers": 2})
    reference = make_orchestrator(cfg, SerialRuntime())
    reference.step()
    orch = make_orchestrator(cfg, RayRuntime(cfg))
    try:
        in_flight = orch.dispatch()
        ray.kill(orch.workers[1], no_restart=True)
        results = orch.collect(in_flight)
        assert orch.requests.worker_restarts == 1
        assert sorted(r.request_id for r in results) == [f"it000000-req{i:04d}" for i in range(4)]
        rows = orch.store.ready_rows("shared", policy_version=0)
        assert len(rows) == 4 and len({r.sample_id for r in rows}) == 4
        assert orch.store.tables["shared"].aborted >= 1
        orch.training.train_batch(orch.iteration)
        orch.iteration += 1
        # requests are pure functions of (weights, seed): the regenerated batch trains identically
        assert same_params(policy_params(orch), policy_params(reference))
    finally:
        orch.shutdown()


def test_worker_that_keeps_dying_fails_the_run_with_a_clear_error(make_cfg):
    cfg = make_cfg(
        run={"mode": "ray"}, rollout={"max_worker_restarts": 1},
        env={"name": "tests.faulty_envs:make", "kwargs": {"fault": "die", "at_step": 3, "N": 3}},
    )
    orch = make_orchestrator(cfg, RayRuntime(cfg))
    try:
        with pytest.raises(WorkerFailure, match=r"rollout worker 0 died .*max_worker_restarts = 1"):
            orch.step()
    finally:
        orch.shutdown()


FAULT_SECTIONS = dict(run={"mode": "ray", "batch_env_steps": 400}, rollout={"num_workers": 2}, pipeline={"mode": "sync"})
"""Two workers, 2 requests x 25 steps per env copy each: step 30 falls inside a worker's second request,
after its first request's rows were published."""


def _reference_params_and_faulty_env(make_cfg, fault: str, flag) -> tuple[dict, dict]:
    """Parameters after one undisturbed serial iteration of FAULT_SECTIONS, and the env config whose first
    worker to reach step 30 hits `fault` once (`flag` records that it did)."""
    reference = make_orchestrator(make_cfg(**FAULT_SECTIONS), SerialRuntime())
    reference.step()
    env = {"name": "tests.faulty_envs:make", "kwargs": {"fault": fault, "at_step": 30, "flag": str(flag), "N": 3,
                                                         "max_cycles": 25}}
    return policy_params(reference), env


def test_worker_killed_while_producing_rows_is_replaced_and_its_rows_regenerated(make_cfg, tmp_path):
    # the first worker to reach step 30 exits mid-request
    reference, env = _reference_params_and_faulty_env(make_cfg, "die_once", tmp_path / "died")
    cfg = make_cfg(env=env, **FAULT_SECTIONS)
    orch = make_orchestrator(cfg, RayRuntime(cfg))
    try:
        metrics = orch.step()
        assert (tmp_path / "died").exists()
        assert metrics["perf/worker_restarts"] == 1 and metrics["store/aborted_rows"] >= 1
        assert metrics["env_steps"] == 400
        assert same_params(policy_params(orch), reference)
    finally:
        orch.shutdown()


def test_hung_worker_times_out_is_replaced_and_its_rows_regenerated(make_cfg, tmp_path):
    reference, env = _reference_params_and_faulty_env(make_cfg, "hang_once", tmp_path / "hung")
    cfg = make_cfg(env=env, **{**FAULT_SECTIONS, "rollout": {"num_workers": 2, "request_timeout_s": 15.0}})
    orch = make_orchestrator(cfg, RayRuntime(cfg))
    try:
        metrics = orch.step()  # without the timeout this would wait an hour
        assert (tmp_path / "hung").exists()
        assert metrics["rollout/worker_timeouts"] == 1 and metrics["perf/worker_restarts"] == 1
        assert metrics["store/aborted_rows"] >= 1
        assert same_params(policy_params(orch), reference)
    finally:
        orch.shutdown()
