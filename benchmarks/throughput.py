"""Training throughput on MPE simple_spread: FlexMARL MAPPO vs RLlib multi-agent PPO vs the raw env.

All run in one process, one after another (FlexMARL twice: sync and microbatch pipelines), with the same env, the same rollout CPUs (one rollout
worker on one CPU), the same train batch in env steps, the same network widths and PPO epochs. Each system
gets one warm-up iteration, then is timed for `duration_s` of wall clock. Env steps are steps of the
parallel env (all agents act once), not agent steps.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from envs import make_env
from flexmarl.config import config_from_dict
from orchestrator.core import make_orchestrator
from orchestrator.runtime import RayRuntime

log = logging.getLogger(__name__)

SETTINGS = {
    "env": "mpe/simple_spread", "num_agents": 3, "max_cycles": 25, "rollout_workers": 1, "envs_per_worker": 16,
    "train_batch_env_steps": 3200, "hidden_sizes": [64, 64], "epochs": 5, "lr": 7e-4,
    "rollout_cpus": 1, "trainer_cpus": 1,
}


def raw_env_steps_per_s(duration_s: float, seed: int = 0) -> float:
    """Random actions, one env, one process: the env's own speed limit."""
    env = make_env(SETTINGS["env"], N=SETTINGS["num_agents"], max_cycles=SETTINGS["max_cycles"])
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    spaces = {a: env.action_space(a).n for a in env.possible_agents}
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < duration_s:
        env.step({a: int(rng.integers(spaces[a])) for a in env.agents})
        steps += 1
        if not env.agents:
            env.reset()
    return steps / (time.perf_counter() - start)


def flexmarl_env_steps_per_s(duration_s: float, pipeline: str = "microbatch") -> dict:
    s = SETTINGS
    cfg = config_from_dict({
        "pipeline": {"mode": pipeline},
        "run": {"mode": "ray", "batch_env_steps": s["train_batch_env_steps"], "progress": False},
        "env": {"name": s["env"], "kwargs": {"N": s["num_agents"], "max_cycles": s["max_cycles"]},
                "global_state": "concat_obs"},
        "model": {"hidden_sizes": s["hidden_sizes"]},
        "algo": {"name": "mappo", "lr_actor": s["lr"], "lr_critic": s["lr"]},
        "trainer": {"epochs": s["epochs"], "num_minibatches": 1},
        "rollout": {"num_workers": s["rollout_workers"], "envs_per_worker": s["envs_per_worker"],
                    "fragment_length": s["max_cycles"]},
        "resources": {"rollout_cpus": s["rollout_cpus"], "trainer_cpus": s["trainer_cpus"]},
    })
    orch = make_orchestrator(cfg, RayRuntime(cfg))
    try:
        orch.step()  # warm-up: actor start, first weight sync
        steps, iterations, start = 0, 0, time.perf_counter()
        breakdown = {"perf/rollout_s": 0.0, "perf/train_s": 0.0}
        while time.perf_counter() - start < duration_s:
            metrics = orch.step()
            steps += cfg.run.batch_env_steps
            iterations += 1
            for key in breakdown:
                breakdown[key] += metrics[key]
            last_return = metrics["episode_return_mean"]
        wall = time.perf_counter() - start
    finally:
        orch.shutdown()
    return {"env_steps_per_s": steps / wall, "iterations": iterations, "env_steps": steps, "wall_s": wall,
            "rollout_s": breakdown["perf/rollout_s"], "train_s": breakdown["perf/train_s"],
            "episode_return_mean": last_return}


def run_throughput_bench(duration_s: float = 60.0, out: Path | None = None, skip_rllib: bool = False) -> dict:
    import ray

    out = out or Path("benchmarks/results/throughput.json")
    raw = raw_env_steps_per_s(min(duration_s, 20.0))
    log.info("raw env: %.0f env steps/s", raw)
    ray.init(num_cpus=SETTINGS["rollout_cpus"] + SETTINGS["trainer_cpus"], include_dashboard=False,
             object_store_memory=300 * 1024 * 1024)
    try:
        ours_sync = flexmarl_env_steps_per_s(duration_s, pipeline="sync")
        log.info("flexmarl (sync pipeline): %.0f env steps/s", ours_sync["env_steps_per_s"])
        ours = flexmarl_env_steps_per_s(duration_s, pipeline="microbatch")
        log.info("flexmarl (microbatch pipeline): %.0f env steps/s", ours["env_steps_per_s"])
        rllib = None
        if not skip_rllib:
            from benchmarks.rllib_baseline import run_rllib_ppo

            rllib = run_rllib_ppo(
                num_agents=SETTINGS["num_agents"], max_cycles=SETTINGS["max_cycles"],
                rollout_workers=SETTINGS["rollout_workers"], envs_per_worker=SETTINGS["envs_per_worker"],
                train_batch_env_steps=SETTINGS["train_batch_env_steps"], hidden_sizes=tuple(SETTINGS["hidden_sizes"]),
                epochs=SETTINGS["epochs"], minibatch_size=None, lr=SETTINGS["lr"], duration_s=duration_s,
            )
            log.info("rllib: %.0f env steps/s", rllib["env_steps_per_s"])
    finally:
        ray.shutdown()
    result = {
        "flexmarl_env_steps_per_s": ours["env_steps_per_s"],
        "rllib_env_steps_per_s": rllib["env_steps_per_s"] if rllib else None,
        "raw_env_steps_per_s": raw,
        "ratio_vs_rllib": ours["env_steps_per_s"] / rllib["env_steps_per_s"] if rllib else None,
        "efficiency_vs_raw": ours["env_steps_per_s"] / raw,
        "flexmarl_sync_env_steps_per_s": ours_sync["env_steps_per_s"],
        "flexmarl": ours,
        "flexmarl_sync": ours_sync,
        "rllib": rllib,
        "settings": {**SETTINGS, "duration_s": duration_s, "pipeline": "microbatch (headline); sync also measured",
                     "machine": "2 CPU cores, no GPU", "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result
