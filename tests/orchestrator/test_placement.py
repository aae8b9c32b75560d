"""Placement plans: one bundle per actor, demands from defaults and per-group overrides, and the checks
against the cluster's nodes that fail before anything starts."""

import pytest

from flexmarl.config import ConfigError
from flexmarl.actors import llm_actors, marl_actors
from orchestrator.placement import GIB, Node, PlacementError, check_plan, plan_placement
from orchestrator.runtime import SerialRuntime


def _node(name: str, cpus: float, gpus: float = 0, memory_gib: float = 16, head: bool = False) -> Node:
    resources = {"CPU": cpus, "memory": memory_gib * GIB}
    if gpus:
        resources["GPU"] = gpus
    return Node(name * 8, resources, head)


def _bundles(plan, pool):
    return {b.actor.key: b.resources() for b in plan.pools[pool].bundles}


def test_defaults_reproduce_the_shared_pool_cpus(make_cfg):
    cfg = make_cfg(env={"groups": "independent"}, rollout={"num_workers": 2},
                   resources={"rollout_cpus": 1, "trainer_cpus": 1.5})
    plan = plan_placement(cfg, marl_actors(["agent_0", "agent_1", "agent_2"], 2))
    assert _bundles(plan, "rollout") == {"worker/0": {"CPU": 0.5}, "worker/1": {"CPU": 0.5}}
    assert _bundles(plan, "trainer") == {f"trainer/agent_{i}": {"CPU": 0.5} for i in range(3)}
    assert plan.pools["rollout"].strategy == "PACK" and plan.total("CPU") == 2.5


def test_per_group_demands_override_the_role_defaults_key_by_key(make_cfg):
    cfg = make_cfg(run={"workload": "llm"}, resources={
        "strategy": "SPREAD", "trainer": {"cpus": 2, "memory_gib": 1}, "engine": {"gpus": 0.5},
        "per_group": {"listener": {"trainer": {"gpus": 1}, "engine": {"cpus": 3}}}})
    plan = plan_placement(cfg, llm_actors(["speaker", "listener"], 1, 1))
    assert _bundles(plan, "trainer") == {"trainer/speaker": {"CPU": 2, "memory": GIB},
                                         "trainer/listener": {"CPU": 2, "GPU": 1, "memory": GIB}}
    assert _bundles(plan, "rollout") == {"engine/speaker/0": {"CPU": 0.3333, "GPU": 0.5},
                                         "engine/listener/0": {"CPU": 3, "GPU": 0.5},
                                         "worker/0": {"CPU": 0.3333}}
    assert plan.pools["trainer"].strategy == "SPREAD"
    assert plan.locate("trainer/listener")[:2] == ("trainer", 1)


@pytest.mark.parametrize("resources, key", [
    ({"strategy": "SCATTER"}, "resources.strategy"),
    ({"trainer": {"gpus": -1}}, "resources.trainer.gpus"),
    ({"trainer": {"gpu": 1}}, "resources.trainer.gpu"),
    ({"per_group": {"shared": {"critic": {}}}}, "resources.per_group.shared.critic"),
    ({"per_group": {"shared": {"trainer": {"memory_gib": -2}}}}, "resources.per_group.shared.trainer.memory_gib"),
    ({"per_group": {"shared": {"trainer": {"cpu": 2}}}}, "resources.per_group.shared.trainer.cpu"),
])
def test_bad_resource_keys_are_config_errors_naming_the_key(make_cfg, resources, key):
    with pytest.raises(ConfigError) as info:
        make_cfg(resources=resources)
    assert info.value.path == key


def test_per_group_for_an_unknown_group_or_engines_without_llm_is_refused(make_cfg):
    with pytest.raises(ConfigError, match="resources.per_group.nobody.*a group of this run: shared"):
        plan_placement(make_cfg(resources={"per_group": {"nobody": {"trainer": {"gpus": 1}}}}), marl_actors(["shared"], 1))
    with pytest.raises(ConfigError, match="resources.per_group.shared.engine.*run.workload: llm"):
        plan_placement(make_cfg(resources={"per_group": {"shared": {"engine": {"gpus": 1}}}}), marl_actors(["shared"], 1))


def test_a_pool_spans_nodes_when_no_single_node_holds_it(make_cfg):
    cfg = make_cfg(rollout={"num_workers": 4}, resources={"rollout_cpus": 4, "trainer_cpus": 1, "strategy": "SPREAD"})
    plan = plan_placement(cfg, marl_actors(["shared"], 4))
    placed = check_plan(plan, [_node("a", 2, head=True), _node("b", 2), _node("c", 1)])
    assert len(set(placed["rollout"])) >= 2  # one bundle per worker: no node needs all 4 CPUs


def test_a_gpu_demand_on_a_cpu_cluster_names_the_group_the_demand_and_the_nodes(make_cfg):
    cfg = make_cfg(env={"groups": "independent"}, resources={"per_group": {"agent_1": {"trainer": {"gpus": 1}}}})
    plan = plan_placement(cfg, marl_actors(["agent_0", "agent_1", "agent_2"], 1))
    with pytest.raises(PlacementError) as info:
        check_plan(plan, [_node("a", 8, head=True), _node("b", 8)])
    message = str(info.value)
    assert info.value.path == "resources.per_group.agent_1.trainer"
    assert "trainer of group 'agent_1' asks for 0.3333 CPUs, 1 GPU" in message
    assert "node aaaaaaaa (head): 8 CPUs, 0 GPUs, 16 GiB memory; node bbbbbbbb: 8 CPUs" in message


def test_total_demand_beyond_the_cluster_is_refused_with_the_totals(make_cfg):
    cfg = make_cfg(rollout={"num_workers": 3}, resources={"rollout_worker": {"cpus": 2}, "trainer_cpus": 1})
    plan = plan_placement(cfg, marl_actors(["shared"], 3))
    with pytest.raises(PlacementError, match=r"rollout worker \d asks for 2 CPUs.*ask for 7 CPUs.*has 6 CPUs"):
        check_plan(plan, [_node("a", 3), _node("b", 3)])


def test_strict_spread_needs_a_node_per_actor(make_cfg):
    cfg = make_cfg(rollout={"num_workers": 3}, resources={"strategy": "STRICT_SPREAD", "rollout_cpus": 1.5})
    plan = plan_placement(cfg, marl_actors(["shared"], 3))
    with pytest.raises(PlacementError, match="STRICT_SPREAD puts each of the rollout pool's 3 actors on a different "
                                             "node, and the cluster has 2 nodes"):
        check_plan(plan, [_node("a", 8), _node("b", 8)])
    assert len(set(check_plan(plan, [_node("a", 8), _node("b", 8), _node("c", 8)])["rollout"])) == 3


def test_memory_is_checked_per_node(make_cfg):
    cfg = make_cfg(resources={"trainer": {"memory_gib": 12}})
    plan = plan_placement(cfg, marl_actors(["shared"], 1))
    with pytest.raises(PlacementError, match="asks for 1 CPU, 12 GiB memory; no node of this cluster has that much"):
        check_plan(plan, [_node("a", 4, memory_gib=8), _node("b", 4, memory_gib=8)])


def test_serial_runtime_accepts_the_plan_and_ignores_it(make_cfg):
    cfg = make_cfg(resources={"trainer": {"gpus": 4, "memory_gib": 1000}})
    runtime = SerialRuntime()
    runtime.place(plan_placement(cfg, marl_actors(["shared"], 1)))
    assert runtime.create(dict, actor="trainer/shared", a=1) == {"a": 1}
    assert check_plan(runtime.plan, []) == {}


def test_a_gpu_demand_on_this_cpu_machine_fails_before_any_actor_starts(tmp_path, capsys):
    """Through the CLI on a local Ray instance: exit 2, one line naming the group, its demand and the node."""
    from pathlib import Path

    from orchestrator.cli import main

    root = Path(__file__).resolve().parents[2]
    code = main(["train", str(root / "configs/demo.yaml"), f"run.output_dir={tmp_path}", "run.mode=ray",
                 "run.progress=false", "resources.per_group={shared: {trainer: {gpus: 1}}}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: placement (resources.per_group.shared.trainer): the trainer of group 'shared' "
                             "asks for 1 CPU, 1 GPU; no node of this cluster has that much: node ")
    assert "(head): 2 CPUs, 0 GPUs" in err[0]
