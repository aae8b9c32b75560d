import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from flexmarl.config import config_from_dict  # noqa: E402


def small_config(**sections) -> "Config":  # noqa: F821
    """A fast MAPPO-on-simple_spread config; sections override per key, e.g. run={"mode": "ray"}."""
    base = {
        "run": {"name": "test", "seed": 0, "iterations": 2, "batch_env_steps": 200, "mode": "serial",
                "checkpoint_every": 1, "progress": False},
        "env": {"name": "mpe/simple_spread", "kwargs": {"N": 3, "max_cycles": 25}, "global_state": "concat_obs"},
        "model": {"hidden_sizes": [32]},
        "trainer": {"epochs": 2},
        "rollout": {"num_workers": 1, "envs_per_worker": 4, "fragment_length": 25},
        "resources": {"rollout_cpus": 1, "trainer_cpus": 1},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return config_from_dict(base)


@pytest.fixture
def make_cfg():
    return small_config


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance (2 CPUs) for a test module: always a private one (address "local"), never a
    cluster whose address Ray left on this machine (a test's `ray.cluster_utils.Cluster` writes it)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024)
    yield
    ray.shutdown()


def policy_params(orch) -> dict:
    """{group: {parameter name: numpy array}} of every trainer of an orchestrator."""
    state = orch.get_state()["trainers"]
    return {g: {k: v.numpy() for k, v in s["policy"].items()} for g, s in state.items()}


def same_params(a: dict, b: dict) -> bool:
    """Whether two `policy_params` results are equal bit for bit."""
    import numpy as np

    return a.keys() == b.keys() and all(np.array_equal(a[g][k], b[g][k]) for g in a for k in a[g])


_TORCH_THREADS = None


@pytest.fixture(autouse=True)
def _restore_process_threads():
    """In-process inference engines bind threads and set torch's process-wide thread count; tests that
    compare serial and Ray results bit for bit must not inherit that from an earlier test."""
    import torch

    global _TORCH_THREADS
    if _TORCH_THREADS is None:
        _TORCH_THREADS = torch.get_num_threads()
    affinity = os.sched_getaffinity(0)
    yield
    torch.set_num_threads(_TORCH_THREADS)
    os.sched_setaffinity(0, affinity)


def descendant_pids(pid: int) -> list[int]:
    """Processes under `pid` (this test's own Ray instance only, never another session's)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
