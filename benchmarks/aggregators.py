"""`flexmarl bench aggregators`: the time of one actor-critic minibatch update per gradient aggregator.

Side by side in one process: the same micro-batch (sampled once per map from SMAX with the same
weights) is trained on by a fresh trainer per aggregator, rounds interleaved so machine noise hits every
aggregator alike. Reports seconds per minibatch update (forward, backward, aggregation, optimizer step)
and the ratio to `mean` (= MAPPO).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from flexmarl.config import config_from_dict
from flexmarl.rollout import RolloutRequest, RolloutWorker
from flexmarl.trainer import GroupTrainer, to_tensors

AGGREGATORS = ("mean", "grasp", "pcgrad", "cagrad")
SETTINGS = {"maps": ["3m", "2s3z"], "envs_per_worker": 32, "fragment_length": 100, "hidden_sizes": [64, 64],
            "rounds": 5, "updates_per_round": 3}


def _config(map_name: str, aggregator: str):
    return config_from_dict({
        "run": {"mode": "serial", "batch_env_steps": SETTINGS["envs_per_worker"] * SETTINGS["fragment_length"]},
        "env": {"name": f"smax/{map_name}", "global_state": "env"},
        "model": {"hidden_sizes": SETTINGS["hidden_sizes"]},
        "algo": {"gradient_aggregator": aggregator},
        "rollout": {"envs_per_worker": SETTINGS["envs_per_worker"], "fragment_length": SETTINGS["fragment_length"]},
    })


def run_aggregator_bench(out: Path | None = None) -> dict:
    torch.set_num_threads(1)
    result: dict = {"settings": SETTINGS, "unit": "seconds per minibatch update (one micro-batch)"}
    for map_name in SETTINGS["maps"]:
        worker = RolloutWorker(_config(map_name, "mean"))
        trainers = {name: GroupTrainer(_config(map_name, name), worker.groups[0], seed=0) for name in AGGREGATORS}
        worker.set_weights({worker.groups[0].name: trainers["mean"].get_weights()}, 0)
        row = worker.sample(RolloutRequest("bench", 0, seed=0, num_steps=SETTINGS["fragment_length"])).rows
        batch = to_tensors(row[worker.groups[0].name])
        times: dict[str, list[float]] = {name: [] for name in AGGREGATORS}
        for _ in range(SETTINGS["rounds"]):
            for name, trainer in trainers.items():
                start = time.perf_counter()
                for _ in range(SETTINGS["updates_per_round"]):
                    trainer.step(trainer.accumulate(batch, trainer.value_norm))
                times[name].append((time.perf_counter() - start) / SETTINGS["updates_per_round"])
        median = {name: float(np.median(t)) for name, t in times.items()}
        result[map_name] = {
            "agents": len(worker.groups[0].agents), "samples": int(batch["active"].sum()),
            "seconds": median, "ratio_to_mean": {name: median[name] / median["mean"] for name in AGGREGATORS},
        }
    out = out or Path("benchmarks/results/aggregators.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result
