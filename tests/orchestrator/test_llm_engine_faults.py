"""Replacing a dead LLM engine when its replacement fails too (its node died with it), engine deaths during a
weight push, and the per-node checkpoint check: serial runtime, real HF engines and trainers. The same on
two Ray nodes with the node killed: tests/orchestrator/test_multinode.py."""

import shutil

import pytest

from flexmarl.llm.fleet import EngineFailure
from flexmarl.llm.engines.hf import HFEngine
from flexmarl.llm.engines.registry import ENGINES
from flexmarl.llm.setup import check_nodes_read_models
from flexmarl.llm.workflow import EngineDiedError
from flexmarl.config import ConfigError
from flexmarl.workload import WorkerDiedError
from orchestrator.core import make_orchestrator
from orchestrator.runtime import SerialRuntime
from tests.flexmarl.llm.conftest import tiny_task_models  # noqa: F401  (shared session fixture)
from tests.orchestrator.test_llm import llm_config


class DiesOnLoad(HFEngine):
    """A real HF engine whose next `dying` weight loads fail as a call to an actor on a dead node does
    (WorkerDiedError: Ray cannot reach it), e.g. a replacement put in the bundle of a node that died."""

    dying = 0

    def load_weights(self, weights, version, adapter=None):
        if DiesOnLoad.dying > 0:
            DiesOnLoad.dying -= 1
            raise WorkerDiedError(f"engine {self.engine_name}: simulated, its node died")
        return super().load_weights(weights, version, adapter)


@pytest.fixture
def orch(tiny_task_models):
    ENGINES["dies_on_load"] = DiesOnLoad
    DiesOnLoad.dying = 0
    cfg = llm_config(tiny_task_models, pipeline={"mode": "sync"},
                     llm={"backend": "dies_on_load", "engine_replace_timeout_s": 30})
    try:
        yield make_orchestrator(cfg, SerialRuntime())
    finally:
        del ENGINES["dies_on_load"]


def _versions(orch) -> dict:
    rt = orch.runtime
    return {g: [rt.get(rt.call(e, "version")) for e in es] for g, es in orch.workload.engines.items()}


def test_a_replacement_whose_first_weight_load_fails_is_retried(orch):
    orch.step()  # version 1 pushed
    fleet = orch.workload.fleet
    dead = fleet.engines["listener"][0]
    DiesOnLoad.dying = 1  # the first replacement dies loading version 1; the second starts
    fleet.repair(EngineDiedError("listener", 0, 0, "killed"))
    assert fleet.restarts == 1 and fleet.engines["listener"][0] is not dead
    assert fleet.incarnations["listener"] == [1]
    assert _versions(orch) == {"speaker": [1], "listener": [1]}
    results = orch.collect(orch.dispatch())  # the replacement serves: every request's rows arrive
    assert sorted(r.request_id for r in results) == [f"it000001-req{r:04d}" for r in range(4)]
    assert len(orch.store.ready_rows("listener", policy_version=1)) == 4
    assert orch.workload.metrics(results)["perf/engine_restarts"] == 1


def test_an_engine_that_dies_during_the_weight_push_is_replaced_with_those_weights(orch):
    orch.step()
    DiesOnLoad.dying = 1  # the push to the speaker engine (pushed first)
    orch.iteration += 1
    orch.sync_weights()
    assert orch.workload.fleet.restarts == 1
    assert _versions(orch) == {"speaker": [2], "listener": [2]}


def test_a_replacement_that_never_starts_stops_the_run_naming_the_engine(orch, caplog):
    orch.step()
    orch.cfg.llm.engine_replace_timeout_s = 1.5
    DiesOnLoad.dying = 1000
    with pytest.raises(EngineFailure) as info:
        orch.workload.fleet.repair(EngineDiedError("speaker", 0, 0, "killed"))
    message = str(info.value)
    assert message.startswith("engine/speaker/0: inference engine 0 of model group 'speaker'")
    assert "did not start within llm.engine_replace_timeout_s = 1.5 s" in message
    assert "trying again" in caplog.text


def test_a_node_that_cannot_read_a_checkpoint_is_a_config_error_naming_node_and_path(tiny_task_models, tmp_path):
    models = {agent: shutil.copytree(path, tmp_path / agent) for agent, path in tiny_task_models.items()}
    cfg = llm_config(models)
    orch = make_orchestrator(cfg, SerialRuntime())
    for weights in (tmp_path / "listener").glob("*.safetensors"):
        weights.unlink()  # as a node without the shared folder's weights sees it
    workload = orch.workload
    with pytest.raises(ConfigError) as info:
        check_nodes_read_models(cfg, orch.runtime, workload.groups, workload.actors())
    text = str(info.value)
    assert "llm.models.listener" in text and str(tmp_path / "listener") in text
    assert "on node this process" in text and "no *.safetensors weights" in text
