"""CPU pinning, all of it: which cores the rollout pool and the training pool use on a CPU node, and
the calls that pin a thread (an engine's model thread) or a whole process (a trainer) to them.

vLLM on CPU binds its OpenMP threads to cores, and a trainer's torch threads spread over every core: on a
small node the two fight, and whoever loses stalls the pipeline. So the rollout pool takes the first
ceil(resources.rollout_cpus) cores (engines are spread over them) and trainers the next
ceil(resources.trainer_cpus). Where the node has fewer cores than that, nothing is bound.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the engines import this module: no config (nor torch) at import time
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


def parse_cpu_list(spec: str) -> list[int]:
    """'0' -> [0]; '0-2,5' -> [0, 1, 2, 5]."""
    cpus = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def bind_this_thread(cpu_list: str) -> None:
    """'nobind': leave threads alone. A CPU list ('0', '0-1'): pin the calling thread (the OpenMP threads it
    starts inherit the mask) and set torch's thread count to its size. torch's count is process-wide, so
    an engine that binds should have its own process (a Ray actor)."""
    if cpu_list == "nobind":
        return
    import torch

    cores = parse_cpu_list(cpu_list)
    os.sched_setaffinity(0, cores)  # pid 0 = the calling thread only
    torch.set_num_threads(len(cores))


def bind_process(cpu_list: str) -> None:
    """Pin every thread of this process (and the threads they start) to `cpu_list`; 'nobind': no-op."""
    if cpu_list == "nobind":
        return
    import torch

    cores = parse_cpu_list(cpu_list)
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # a thread that ended meanwhile
            pass
    torch.set_num_threads(len(cores))
