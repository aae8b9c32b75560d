"""MAPPO on simple_spread beats the uniform random policy by a clear margin within ~40k env steps."""

import numpy as np
import pytest
import ray

from orchestrator.core import make_orchestrator
from orchestrator.runtime import RayRuntime, SerialRuntime
from orchestrator.train import random_policy_baseline
from tests.conftest import small_config

ITERATIONS = 25  # x 1,600 env steps


def _config(mode):
    return small_config(
        run={"mode": mode, "batch_env_steps": 1600, "seed": 0},
        rollout={"envs_per_worker": 16},
        model={"hidden_sizes": [64, 64]},
        algo={"lr_actor": 2e-3, "lr_critic": 2e-3}, trainer={"epochs": 10, "num_minibatches": 2},
    )


def _learn(orch):
    returns = [orch.step()["episode_return_mean"] for _ in range(ITERATIONS)]
    return float(np.mean(returns[-3:]))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["serial", "ray"])
def test_mappo_beats_random_on_simple_spread(mode):
    cfg = _config(mode)
    random_return = random_policy_baseline(cfg, episodes=200)["eval/return_mean"]
    if mode == "ray":
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024)
    orch = make_orchestrator(cfg, RayRuntime(cfg) if mode == "ray" else SerialRuntime())
    try:
        trained_return = _learn(orch)
    finally:
        orch.shutdown()
        if mode == "ray":
            ray.shutdown()
    # random: about -79 (team return, 3 agents x 25 steps); trained here: about -62
    assert trained_return > random_return + 8.0, (trained_return, random_return)
