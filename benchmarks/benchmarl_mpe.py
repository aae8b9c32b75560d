"""BenchMARL's MAPPO on PettingZoo MPE simple_spread at the settings of our demo (configs/demo.yaml), run
by `benchmarks/vs_benchmarl.py` in BenchMARL's own virtualenv (`make benchmarl`: BenchMARL 1.5.2, torchrl
0.11.1, PettingZoo 1.25.0's MPE), never imported by the project.

Matched: 3 agents, 25-step episodes, discrete actions; one shared actor and one shared centralised critic,
MLP [64, 64] ReLU; batches of 3,200 env steps from 16 env copies, 10 epochs x 4 minibatches of 800, lr
1e-3, gamma 0.99, clip 0.2; `--max-frames` env steps (352,000); the final policy evaluated greedily on 50
episodes, on the CPU. BenchMARL's own defaults otherwise (they are written to the result: entropy 0, GAE
lambda 0.9, squared-error critic loss, no value normalisation; BenchMARL also evaluates once after the first
iteration, which is inside its wall time).

Returns are team returns, as ours: per episode, the sum over steps and over the 3 agents of each agent's
reward (BenchMARL logs the mean over agents, i.e. a third of it).

    .venv-benchmarl/bin/python -P benchmarks/benchmarl_mpe.py --seed 0 --out result.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch
from benchmarl.algorithms import MappoConfig
from benchmarl.environments import PettingZooTask
from benchmarl.experiment import Experiment, ExperimentConfig
from benchmarl.experiment.callback import Callback
from benchmarl.models.mlp import MlpConfig

BATCH_ENV_STEPS = 3200


def _episode_ends(td, group: str) -> torch.Tensor:
    done = td.get(("next", "done"), None)
    return (td.get(("next", group, "done")).any(-2) if done is None else done).squeeze(-1)


class TeamReturns(Callback):
    """Team returns of the episodes that ended in each training batch, and of each evaluation."""

    def __init__(self):
        super().__init__()
        self.train: list[float] = []
        self.evaluations: list[list[float]] = []

    def on_setup(self):
        (self.group,) = self.experiment.group_map  # simple_spread's three agents form one group

    def on_batch_collected(self, batch):
        ended = batch.get(("next", self.group, "episode_reward")).sum(dim=(-2, -1))[_episode_ends(batch, self.group)]
        if ended.numel():
            self.train.append(float(ended.mean()))

    def on_evaluation_end(self, rollouts):
        returns = []
        for episode in rollouts:
            ends = _episode_ends(episode, self.group).nonzero(as_tuple=True)[0]
            if ends.numel():
                episode = episode[: int(ends[0]) + 1]
            returns.append(float(episode.get(("next", self.group, "reward")).sum()))
        self.evaluations.append(returns)


def build_experiment(seed: int, max_frames: int, save_folder: str, recorder: TeamReturns) -> Experiment:
    task = PettingZooTask.SIMPLE_SPREAD.get_from_yaml()
    task.config.update({"N": 3, "max_cycles": 25, "local_ratio": 0.5})
    algorithm = MappoConfig.get_from_yaml()
    algorithm.share_param_critic, algorithm.clip_epsilon = True, 0.2
    actor, critic = MlpConfig.get_from_yaml(), MlpConfig.get_from_yaml()
    for model in (actor, critic):
        model.num_cells, model.activation_class = [64, 64], torch.nn.ReLU
    cfg = ExperimentConfig.get_from_yaml()
    cfg.sampling_device = cfg.train_device = cfg.buffer_device = "cpu"
    cfg.share_policy_params, cfg.prefer_continuous_actions = True, False
    cfg.gamma, cfg.lr = 0.99, 1e-3
    cfg.max_n_iters, cfg.max_n_frames = None, max_frames
    cfg.on_policy_collected_frames_per_batch = BATCH_ENV_STEPS
    cfg.on_policy_n_envs_per_worker = 16
    cfg.on_policy_n_minibatch_iters, cfg.on_policy_minibatch_size = 10, 800
    cfg.evaluation, cfg.evaluation_episodes, cfg.evaluation_deterministic_actions = True, 50, True
    cfg.evaluation_interval = max_frames  # the final evaluation (and BenchMARL's fixed one after iteration 1)
    cfg.render, cfg.loggers, cfg.save_folder = False, ["csv"], save_folder
    cfg.checkpoint_interval, cfg.checkpoint_at_end = 0, False
    return Experiment(task=task, algorithm_config=algorithm, model_config=actor, critic_model_config=critic,
                      seed=seed, config=cfg, callbacks=[recorder])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-frames", type=int, default=352_000, help="env steps, a multiple of 3,200")
    parser.add_argument("--out", required=True, help="result JSON")
    args = parser.parse_args()
    recorder = TeamReturns()
    with tempfile.TemporaryDirectory(prefix="benchmarl-") as save_folder:
        experiment = build_experiment(args.seed, args.max_frames, save_folder, recorder)
        start = time.perf_counter()
        experiment.run()
        run_s = time.perf_counter() - start
    final = recorder.evaluations[-1]
    result = {
        "seed": args.seed, "env_steps": args.max_frames, "run_s": run_s,
        "final_greedy_return": sum(final) / len(final), "final_greedy_episodes": len(final),
        "train_return_last3": sum(recorder.train[-3:]) / len(recorder.train[-3:]),
        "versions": {p: metadata.version(p) for p in ("benchmarl", "torch", "torchrl", "tensordict", "pettingzoo")},
        "torch_threads": torch.get_num_threads(),
        "algorithm": {k: v for k, v in vars(experiment.algorithm_config).items() if isinstance(v, (int, float, str, bool))},
    }
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
