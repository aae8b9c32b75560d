"""The stale pipeline on the LLM workload (tiny local models, serial): bounded staleness with its lag
metrics and refusals, as tests/orchestrator/test_pipeline.py checks it for MARL.

Engines take weights only when idle, so the requests still in flight when an update ends finish on the
old weights and are carried into the next iteration, one version behind: admitted with lag 1 when
`max_staleness` >= 1, refused and counted when it is 0. Serially every request runs as it is sent, so
the two workers' top-up requests are exactly the ones carried over each push."""

import pytest

from orchestrator.core import make_orchestrator
from orchestrator.runtime import SerialRuntime
from tests.flexmarl.llm.conftest import tiny_task_models  # noqa: F401  (the shared session fixture)
from tests.orchestrator.test_llm import llm_config


@pytest.mark.parametrize("staleness", [0, 1])
def test_stale_pipeline_admits_only_rows_within_the_bound(tiny_task_models, staleness):
    cfg = llm_config(tiny_task_models, pipeline={"mode": "stale", "max_staleness": staleness},
                     rollout={"num_workers": 2})
    orch = make_orchestrator(cfg, SerialRuntime())
    metrics = [orch.step() for _ in range(3)]
    lags = [m["perf/policy_lag_max"] for m in metrics]
    refused = [m["store/stale_rows_refused"] for m in metrics]  # cumulative, rows of every group
    assert max(lags) <= staleness and orch.iteration == 3
    carried = 2 * len(orch.groups)  # per push: one request per worker, one row per model group
    if staleness == 0:
        assert lags == [0, 0, 0] and refused == [0, carried, 2 * carried]
    else:
        assert lags == [0, 1, 1] and refused == [0, 0, 0]
    rt = orch.runtime
    assert rt.get([rt.call(e, "version") for es in orch.workload.engines.values() for e in es]) == [3, 3]
    assert all(m["trajectories"] == (i + 1) * cfg.llm.queries_per_iteration * cfg.llm.group_size
               for i, m in enumerate(metrics))


def test_use_config_never_switches_into_or_out_of_stale(tiny_task_models):
    orch = make_orchestrator(llm_config(tiny_task_models, pipeline={"mode": "stale"}), SerialRuntime())
    with pytest.raises(ValueError, match="only pipeline.mode"):
        orch.use_config(llm_config(tiny_task_models, pipeline={"mode": "sync"}))
