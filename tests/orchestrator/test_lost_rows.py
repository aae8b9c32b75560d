"""A node dies after its rollout rows were published but before a trainer read them. Ray does not rebuild
an actor's results, so the rows are produced again from the same requests (same ids, seeds and slots) on a
live node, and the update equals an undisturbed run's. Two Ray nodes in this process (ray.cluster_utils);
rows travel through the object store, as rows over Ray's inline limit (100 KiB) do."""

import dataclasses

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster

from orchestrator.core import make_orchestrator
from orchestrator.pipelines import Training
from orchestrator.runtime import DataLostError, RayRuntime, SerialRuntime
from tests.conftest import policy_params, same_params

# 4 requests per iteration over 2 workers, one per node (SPREAD; the trainer's 1.5 CPUs fit only the head,
# which keeps 1 CPU for the lost worker's replacement); 2 micro-batches per minibatch, so that the order
# they arrive in cannot change a sum (a + b == b + a): parameters compare bit for bit.
SECTIONS = dict(run={"mode": "ray", "batch_env_steps": 400, "iterations": 3}, rollout={"num_workers": 2},
                trainer={"num_minibatches": 2},
                resources={"strategy": "SPREAD", "rollout_cpus": 1, "trainer_cpus": 1.5})


@pytest.fixture
def two_nodes():
    """A head (3 CPUs) and a second node (1 CPU) that the test removes; objects over 1 KiB go to the
    object store of the node that made them (not inline to their owner), and a dead node is noticed in ~3 s."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "_system_config": {
        "health_check_period_ms": 1000, "health_check_failure_threshold": 3, "max_direct_call_object_size": 1024}})
    second = cluster.add_node(num_cpus=1, resources={"node2": 1})
    try:
        yield cluster, second
    finally:
        ray.shutdown()
        cluster.shutdown()


def _run(cfg, address: str, steps: int, patch) -> tuple[dict, list[dict]]:
    orch = make_orchestrator(cfg, RayRuntime(cfg, address))
    try:
        patch(orch)
        metrics = [orch.step() for _ in range(steps)]
        return policy_params(orch), metrics
    finally:
        orch.shutdown()


def _reference(cfg, steps: int) -> dict:
    orch = make_orchestrator(cfg, SerialRuntime())
    for _ in range(steps):
        orch.step()
    return policy_params(orch)


def _worker_on(orch, node_id: str) -> int:
    (index,) = [i for i in range(len(orch.workers)) if orch.runtime.node_of(f"worker/{i}") == node_id]
    return index


def test_rows_lost_before_the_trainer_read_them_are_produced_again_microbatch(make_cfg, two_nodes, monkeypatch):
    cluster, second = two_nodes
    cfg = make_cfg(**SECTIONS, pipeline={"mode": "microbatch"})
    removed = []

    def patch(orch):
        on_second = _worker_on(orch, second.node_id)
        feed = Training.feed

        def remove_the_node_first(training, flight):  # iteration 1: the node dies between publish and read
            if orch.iteration == 1 and flight.worker == on_second and not removed:
                cluster.remove_node(second, allow_graceful=False)
                removed.append(flight.request.request_id)
            feed(training, flight)

        monkeypatch.setattr(Training, "feed", remove_the_node_first)

    params, metrics = _run(cfg, cluster.address, 3, patch)
    assert removed and metrics[0]["store/lost_rows"] == 0
    assert metrics[1]["store/lost_rows"] >= 1 and metrics[1]["perf/worker_restarts"] >= 1
    assert [m["env_steps"] for m in metrics] == [400, 800, 1200]  # nothing counted twice
    assert same_params(params, _reference(cfg, 3))


def test_rows_lost_before_the_trainer_read_them_are_produced_again_sync(make_cfg, two_nodes, monkeypatch):
    cluster, second = two_nodes
    cfg = make_cfg(**SECTIONS, pipeline={"mode": "sync"})
    removed = []

    def patch(orch):
        train_batch = Training.train_batch

        def remove_the_node_first(training, version):  # iteration 1: the node dies before the update reads
            if version == 1 and not removed:
                cluster.remove_node(second, allow_graceful=False)
                removed.append(version)
            return train_batch(training, version)

        monkeypatch.setattr(Training, "train_batch", remove_the_node_first)

    params, metrics = _run(cfg, cluster.address, 3, patch)
    assert removed and metrics[0]["store/lost_rows"] == 0
    assert metrics[1]["store/lost_rows"] == 2  # both of the second node's rows, one per try (Ray names one)
    assert [m["env_steps"] for m in metrics] == [400, 800, 1200]
    assert same_params(params, _reference(cfg, 3))


def test_only_the_groups_that_lost_a_row_get_it_again(make_cfg, two_nodes, monkeypatch):
    """One policy per agent: the first group's trainer has read the request's row when the node dies, the
    other two have not; only those two rows are produced again and handed to their trainers."""
    cluster, second = two_nodes
    # 3 trainers of 0.6 CPU: none fits beside the second node's worker
    cfg = make_cfg(**{**SECTIONS, "resources": {**SECTIONS["resources"], "trainer_cpus": 1.8}},
                   env={"groups": "independent"}, pipeline={"mode": "microbatch"})
    removed = []

    def patch(orch):
        on_second = _worker_on(orch, second.node_id)
        feed = Training.feed

        def first_group_reads_then_the_node_dies(training, flight):
            if orch.iteration == 1 and flight.worker == on_second and not removed:
                first, *rest = flight.groups
                feed(training, dataclasses.replace(flight, groups=(first,)))
                ray.get(training._consume_refs[-1][2])  # the first group's trainer has read its row
                cluster.remove_node(second, allow_graceful=False)
                removed.append(first)
                flight = dataclasses.replace(flight, groups=tuple(rest))
            feed(training, flight)

        monkeypatch.setattr(Training, "feed", first_group_reads_then_the_node_dies)

    params, metrics = _run(cfg, cluster.address, 3, patch)
    assert removed and metrics[1]["store/lost_rows"] == 2
    assert [m["env_steps"] for m in metrics] == [400, 800, 1200]
    assert same_params(params, _reference(cfg, 3))


def test_a_row_produced_again_is_the_same_row_and_one_lost_too_often_stops_the_run(make_cfg):
    """Serial mode (no node can die): what the recovery does with the store and the requests."""
    orch = make_orchestrator(make_cfg(rollout={"max_worker_restarts": 1}), SerialRuntime())
    orch.collect(orch.dispatch())
    first = orch.store.ready_rows("shared")[0]
    (again,) = orch.requests.send_lost_rows_again([("shared", first.sample_id)])
    assert again.request == first.meta["request"] and again.slot == first.meta["slot"]
    orch.collect([again])
    (row,) = [r for r in orch.store.ready_rows("shared") if r.sample_id == first.sample_id]
    assert row is not first and orch.store.tables["shared"].lost == 1
    before, after = (orch.runtime.get(r.fields["payload"]) for r in (first, row))
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    with pytest.raises(DataLostError, match=f"row '{first.sample_id}' of group 'shared' was lost 2 times"):
        orch.requests.send_lost_rows_again([("shared", first.sample_id)])
