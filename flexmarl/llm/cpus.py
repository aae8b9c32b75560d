"""Which cores the rollout pool and the training pool use on a CPU node.

vLLM on CPU binds its OpenMP threads to cores, and a trainer's torch threads spread over every core: on a
small node the two fight, and whoever loses stalls the pipeline. So the rollout pool takes the first
ceil(resources.rollout_cpus) cores (engines are spread over them) and trainers the next
ceil(resources.trainer_cpus). Where the node has fewer cores than that, nothing is bound.
"""

from __future__ import annotations

import math
import os

from flexmarl.config import Config


def pool_cores(cfg: Config) -> tuple[list[int], list[int]] | None:
    """(rollout cores, trainer cores) of this node, or None when binding is off or does not fit."""
    if not cfg.resources.bind_cpus:
        return None
    rollout = max(1, math.ceil(cfg.resources.rollout_cpus))
    trainer = max(1, math.ceil(cfg.resources.trainer_cpus))
    if rollout + trainer > (os.cpu_count() or 1):
        return None
    return list(range(rollout)), list(range(rollout, rollout + trainer))


def _cpu_list(cores: list[int]) -> str:
    return ",".join(map(str, cores))


def engine_binding(cfg: Config, index: int) -> str:
    """`omp_threads_bind` of the index-th engine: one rollout core, or 'nobind'."""
    cores = pool_cores(cfg)
    return "nobind" if cores is None else str(cores[0][index % len(cores[0])])


def trainer_binding(cfg: Config) -> str:
    """Cores of the training pool as a CPU list ('1', '2,3'), or 'nobind'. In serial mode trainers
    share the process with the engines, so nothing is bound there."""
    cores = pool_cores(cfg)
    return "nobind" if cores is None or cfg.run.mode == "serial" else _cpu_list(cores[1])


def bind_process(cpu_list: str) -> None:
    """Pin every thread of this process (and the threads they start) to `cpu_list`; 'nobind': no-op."""
    if cpu_list == "nobind":
        return
    import torch

    cores = [int(c) for c in cpu_list.split(",")]
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # a thread that ended meanwhile
            pass
    torch.set_num_threads(len(cores))
