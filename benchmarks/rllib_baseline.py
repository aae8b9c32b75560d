"""RLlib (2.60, new API stack) multi-agent PPO on MPE simple_spread: the baseline of `bench throughput`.

One shared policy for all agents (parameter sharing, as our MAPPO run), the given fully connected
widths, `num_env_runners` rollout workers with `num_envs_per_env_runner` env copies each, and a local
learner on the driver. RLlib counts the train batch in env steps by default (`count_steps_by="env_steps"`),
so `train_batch_size_per_learner` equals our `run.batch_env_steps`. One minibatch per epoch (RLlib
requires minibatch_size <= train batch size, in the same units: minibatch = whole batch), as our
`num_minibatches: 1`.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


def _make_env(config: dict):
    from mpe2 import simple_spread_v3
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv

    return ParallelPettingZooEnv(simple_spread_v3.parallel_env(
        N=config["num_agents"], max_cycles=config["max_cycles"], continuous_actions=False))


def run_rllib_ppo(*, num_agents: int = 3, max_cycles: int = 25, rollout_workers: int = 1,
                  envs_per_worker: int = 16, train_batch_env_steps: int = 3200,
                  hidden_sizes: tuple[int, ...] = (64, 64), epochs: int = 5, minibatch_size: int | None = None,
                  lr: float = 7e-4, duration_s: float = 60.0, seed: int = 0) -> dict:
    """Train for `duration_s` after one warm-up iteration; env steps per wall second over the timed part."""
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN, NUM_ENV_STEPS_SAMPLED_LIFETIME
    from ray.tune.registry import register_env

    owns_ray = not ray.is_initialized()
    if owns_ray:
        ray.init(num_cpus=rollout_workers + 1, include_dashboard=False)
    env_config = {"num_agents": num_agents, "max_cycles": max_cycles}
    register_env("flexmarl_bench_simple_spread", _make_env)
    minibatch = minibatch_size or train_batch_env_steps
    config = (
        PPOConfig()
        .environment("flexmarl_bench_simple_spread", env_config=env_config)
        .env_runners(num_env_runners=rollout_workers, num_envs_per_env_runner=envs_per_worker,
                     num_cpus_per_env_runner=1)
        .learners(num_learners=0)
        .multi_agent(policies={"shared"}, policy_mapping_fn=lambda agent_id, *args, **kwargs: "shared")
        .rl_module(rl_module_spec=MultiRLModuleSpec(rl_module_specs={"shared": RLModuleSpec(
            model_config=DefaultModelConfig(fcnet_hiddens=list(hidden_sizes), vf_share_layers=False))}))
        .training(train_batch_size_per_learner=train_batch_env_steps, minibatch_size=minibatch,
                  num_epochs=epochs, lr=lr, gamma=0.99, lambda_=0.95)
        .debugging(seed=seed)
    )
    algo = config.build_algo()
    try:
        first = algo.train()  # warm-up: env runner start, first compile of everything
        steps0 = first[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME]
        start, iterations, result = time.perf_counter(), 0, first
        while time.perf_counter() - start < duration_s:
            result = algo.train()
            iterations += 1
        wall = time.perf_counter() - start
        steps = result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED_LIFETIME] - steps0
        episode_return = result[ENV_RUNNER_RESULTS].get(EPISODE_RETURN_MEAN)
    finally:
        algo.stop()
        if owns_ray:
            ray.shutdown()
    return {
        "env_steps_per_s": steps / wall, "iterations": iterations, "env_steps": steps, "wall_s": wall,
        "episode_return_mean": None if episode_return is None else float(episode_return),
        "settings": {"num_agents": num_agents, "max_cycles": max_cycles, "rollout_workers": rollout_workers,
                     "envs_per_worker": envs_per_worker, "train_batch_env_steps": train_batch_env_steps,
                     "hidden_sizes": list(hidden_sizes), "epochs": epochs, "minibatch_size": minibatch,
                     "lr": lr, "ray_version": ray.__version__, "api_stack": "new (RLModule/Learner/EnvRunner)"},
    }
