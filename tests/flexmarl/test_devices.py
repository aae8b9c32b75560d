"""Trainer devices: the auto rule, CPU checkpoints from any device, a clear error without a GPU."""

import numpy as np
import pytest
import torch

from flexmarl.devices import resolve_device, state_to_cpu
from orchestrator.core import make_orchestrator
from orchestrator.run_dir import new_run_dir
from orchestrator.runtime import SerialRuntime
from orchestrator.train import train

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible)")


def test_state_to_cpu_copies_every_tensor_and_keeps_the_structure():
    weight = torch.ones(3)
    state = {"policy": {"w": weight}, "opt": {"state": {0: {"step": torch.tensor(2.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}}
    copied = state_to_cpu(state)
    weight.add_(1.0)  # the trainer keeps training: a state already handed out must not change
    assert torch.equal(copied["policy"]["w"], torch.ones(3)) and copied["policy"]["w"].device.type == "cpu"
    assert copied["opt"]["param_groups"] == [{"lr": 0.1, "params": [0]}] and float(copied["opt"]["state"][0]["step"]) == 2.0


@no_gpu
def test_cuda_without_a_gpu_names_the_problem():
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible"):
        resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"


def test_one_device_rule_for_every_actor_the_bundle_decides(make_cfg):
    """auto = cuda exactly when the actor's placement bundle asks for a GPU, whatever this machine has;
    the serial runtime answers like the Ray one (same plan, same rule); an explicit device passes through."""
    from flexmarl.actors import llm_actors, marl_actors
    from orchestrator.placement import plan_placement

    cfg = make_cfg(resources={"trainer": {"gpus": 1}})
    runtime, slotted = SerialRuntime(), SerialRuntime()
    runtime.place(plan_placement(cfg, marl_actors(["shared"], 2)))
    slotted.place(plan_placement(cfg, llm_actors(["speaker", "listener"], 1, 1, trainer_slots=1)))
    assert runtime.device_for("trainer/shared", "auto") == "cuda" and slotted.device_for("trainer-slot/0", "auto") == "cuda"
    assert runtime.device_for("worker/1", "auto") == "cpu" and slotted.device_for("engine/speaker/0", "auto") == "cpu"
    assert runtime.device_for("trainer/shared", "cpu") == "cpu"
    assert SerialRuntime().device_for("trainer/shared", "auto") == "cpu"  # nothing placed: nothing asked for a GPU


@no_gpu
def test_marl_trainer_asking_for_a_gpu_goes_to_cuda(make_cfg):
    """trainer.device auto follows the trainer's demand (serial as on Ray): a GPU demand means cuda, which this
    machine refuses clearly; without the demand the trainer stays on the CPU."""
    assert make_orchestrator(make_cfg(), SerialRuntime()).trainers["shared"].device.type == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible"):
        make_orchestrator(make_cfg(resources={"trainer": {"gpus": 1}}), SerialRuntime())


@needs_gpu
def test_marl_trainer_on_cuda_trains_and_checkpoints_cpu_tensors(make_cfg, tmp_path):
    cfg = make_cfg(run={"output_dir": str(tmp_path), "iterations": 2, "checkpoint_every": 2},
                   resources={"trainer": {"gpus": 1}})
    orch = make_orchestrator(cfg, SerialRuntime())
    assert next(orch.trainers["shared"].policy.parameters()).device.type == "cuda"
    metrics = orch.step()
    assert np.isfinite(metrics["losses/shared/policy"])
    state = orch.trainers["shared"].get_state()
    tensors = list(state["policy"].values()) + [t for s in state["actor_opt"]["state"].values() for t in s.values()]
    assert all(t.device.type == "cpu" for t in tensors if isinstance(t, torch.Tensor))
    run_dir = new_run_dir(cfg)
    train(cfg, run_dir)  # checkpoints written from the GPU trainer
    assert (run_dir / "checkpoints" / "iter_000002").exists()
