"""The workload seam: `make_orchestrator` picks the workload by `run.workload`, each counts in its own
unit, and checkpoints keep their layout (an LLM checkpoint written before the seam still resumes)."""

from flexmarl.llm.workload import LLMWorkload
from flexmarl.marl.workload import MARLWorkload
from orchestrator.core import make_orchestrator
from orchestrator.runtime import SerialRuntime
from tests.flexmarl.llm.conftest import tiny_task_models  # noqa: F401  (the shared session fixture)
from tests.orchestrator.test_llm import llm_config


def test_marl_runs_count_env_steps_and_episodes(make_cfg):
    orch = make_orchestrator(make_cfg(), SerialRuntime())
    assert isinstance(orch.workload, MARLWorkload)
    metrics = orch.step()
    assert metrics["env_steps"] == orch.progress == 200 and metrics["env_steps_per_s"] > 0
    assert metrics["episodes"] > 0 and "episode_return_mean" in metrics and "trajectories" not in metrics
    assert set(orch.get_state()) == {"iteration", "env_steps", "trainers"}  # the layout old checkpoints have


def test_llm_runs_count_trajectories_not_fake_env_steps(tiny_task_models):
    cfg = llm_config(tiny_task_models, pipeline={"mode": "sync"})
    orch = make_orchestrator(cfg, SerialRuntime())
    assert isinstance(orch.workload, LLMWorkload)
    metrics = orch.step()
    trajectories = cfg.llm.queries_per_iteration * cfg.llm.group_size
    assert metrics["trajectories"] == orch.progress == trajectories and metrics["trajectories_per_s"] > 0
    assert 0.0 <= metrics["charts/success_rate"] <= 1.0 and metrics["perf/tokens_per_s"] > 0
    assert not {"env_steps", "episodes", "episode_return_mean", "episode_length_mean",
                "charts/train_win_rate"} & set(metrics)
    state = orch.get_state()
    assert set(state) == {"iteration", "trajectories", "trainers"}

    # a checkpoint from before the seam counted trajectories as env steps: it resumes with that count
    legacy = {"iteration": state["iteration"], "env_steps": state["trajectories"], "trainers": state["trainers"]}
    resumed = make_orchestrator(cfg, SerialRuntime())
    resumed.set_state(legacy)
    assert (resumed.iteration, resumed.progress) == (1, trajectories)
    rt = resumed.runtime
    assert rt.get([rt.call(e, "version") for es in resumed.workload.engines.values() for e in es]) == [1, 1]


def test_a_marl_run_does_not_import_the_llm_stack():
    """The CLI, the run loop and the core import the LLM workload only for LLM runs (transformers alone
    costs seconds at every start)."""
    import subprocess
    import sys

    code = ("import sys, orchestrator.cli, orchestrator.train, orchestrator.core; "
            "print(sorted(m for m in ('transformers', 'vllm', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
