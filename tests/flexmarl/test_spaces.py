"""Envs a user brings: non-Box observation spaces, MultiDiscrete actions, image observations through a CNN."""

import numpy as np
import pytest
from gymnasium import spaces

from envs import describe_env, split_observation
from flexmarl.config import ConfigError
from flexmarl.groups import build_groups
from flexmarl.models import GroupPolicy
from orchestrator.run_dir import latest_checkpoint, load_checkpoint, new_run_dir
from orchestrator.train import evaluate_checkpoint, train
from tests.user_envs import BrightSide, MatchGame


@pytest.mark.parametrize("obs_kind, dim, one_hot", [
    ("discrete", 4, [0, 0, 1, 0]), ("multi_binary", 4, [0, 0, 1, 0]),
    ("dict", 6, None), ("tuple", 6, [0, 0, 1, 0]),
])
def test_non_box_observations_are_one_hot_and_concatenated(obs_kind, dim, one_hot):
    env = MatchGame(obs_kind=obs_kind)
    agent = describe_env(env).per_agent["a0"]
    obs, _ = env.reset(seed=1)
    flat, mask = split_observation(obs["a0"], agent)
    assert agent.obs_dim == dim and flat.shape == (dim,) and flat.dtype == np.float32 and mask is None
    target = env._targets["a0"]
    if one_hot is not None:
        assert flat[:4].tolist() == np.eye(4)[target].tolist()
    else:  # Dict parts in key order: noise (Box 2), target (one-hot 4)
        assert flat[2:].tolist() == np.eye(4)[target].tolist()


def test_multi_discrete_observation_and_action():
    agent = describe_env(MatchGame(obs_kind="multi_discrete", action_kind="multi_discrete")).per_agent["a0"]
    assert agent.obs_dim == 5 and agent.action.kind == "multi_discrete" and agent.action.nvec == (3, 2)
    assert agent.action.dim == 5


@pytest.mark.parametrize("space", [spaces.Discrete(3, start=1), spaces.MultiDiscrete([[2, 2], [2, 2]])])
def test_unsupported_action_spaces_say_what_is_supported(space):
    from envs import UnsupportedSpaceError
    from envs.spec import _action_spec

    with pytest.raises(UnsupportedSpaceError, match="agent 'x'"):
        _action_spec(space, "x")


@pytest.mark.parametrize("channels_first", [False, True])
def test_image_observations_get_a_cnn_whose_size_does_not_grow_with_the_image(make_cfg, channels_first):
    cfg = make_cfg(algo={"name": "ippo"}, env={"name": "tests.user_envs:bright_side", "kwargs": {}})
    small = build_groups(cfg, describe_env(BrightSide(channels_first=channels_first)))[0]
    large = build_groups(cfg, describe_env(BrightSide(280, 480, channels_first=channels_first)))[0]
    assert large.obs_image.height == 280 and large.obs_image.channels == 3 and large.obs_image.scale == 255.0
    sizes = {}
    for name, group in (("small", small), ("large", large)):
        policy = GroupPolicy.for_group(group, cfg.model)
        sizes[name] = sum(p.numel() for p in policy.parameters())
        obs = np.random.default_rng(0).integers(0, 255, (1, 3, group.obs_dim)).astype(np.float32)
        import torch

        dist, _ = policy.actor.distribution(torch.as_tensor(obs), torch.zeros(3, 0), torch.zeros(1, 3))
        assert dist.probs.shape == (1, 3, 2)
    # flattened, the 280x480x3 image alone would need 403,200 x 32 weights in the first layer
    assert sizes["large"] < 100_000 and sizes["small"] < 100_000


def test_encoder_can_be_forced_or_refused(make_cfg):
    spec = describe_env(BrightSide())
    flat = build_groups(make_cfg(algo={"name": "ippo"}, model={"encoder": "mlp"}), spec)[0]
    assert flat.obs_image is None and flat.critic_image is None
    with pytest.raises(ConfigError, match="model.encoder.*image observations"):
        build_groups(make_cfg(model={"encoder": "cnn"}), describe_env(MatchGame()))


def test_mappo_critic_stacks_the_agents_images(make_cfg):
    class TwoEyes(BrightSide):
        def __init__(self):
            super().__init__()
            self.possible_agents = ["eye", "eye2"]

    group = build_groups(make_cfg(env={"global_state": "concat_obs"}), describe_env(TwoEyes()))[0]
    assert group.critic_image.frames == 2 and group.critic_dim == 2 * group.obs_dim


def _learn(make_cfg, tmp_path, name, kwargs, iterations, **sections):
    cfg = make_cfg(run={"output_dir": str(tmp_path), "iterations": iterations, "batch_env_steps": 320,
                        "checkpoint_every": 0},
                   env={"name": name, "kwargs": kwargs, "groups": "shared"},
                   algo={"name": "ippo", "lr_actor": 3e-3, "lr_critic": 3e-3}, trainer={"epochs": 4},
                   rollout={"envs_per_worker": 8, "fragment_length": 20}, **sections)
    run_dir = new_run_dir(cfg)
    train(cfg, run_dir)
    return run_dir, evaluate_checkpoint(latest_checkpoint(run_dir), episodes=20)


@pytest.mark.slow
@pytest.mark.parametrize("obs_kind, action_kind, chance", [
    ("discrete", "discrete", 2 * 5 / 4), ("dict", "discrete", 2 * 5 / 4), ("tuple", "discrete", 2 * 5 / 4),
    ("multi_binary", "discrete", 2 * 5 / 4), ("multi_discrete", "multi_discrete", 2 * 5 / 6),
])
def test_policies_learn_to_read_every_space(make_cfg, tmp_path, obs_kind, action_kind, chance):
    # reward 1 per step for echoing the observed target: only a policy that reads the observation scores
    _, result = _learn(make_cfg, tmp_path, "tests.user_envs:match_game",
                       {"obs_kind": obs_kind, "action_kind": action_kind}, iterations=12)
    assert result["eval/return_mean"] >= 0.9 * 10, (result, chance)


def test_cnn_policy_learns_from_pixels_and_checkpoints_stay_small(make_cfg, tmp_path):
    run_dir, result = _learn(make_cfg, tmp_path, "tests.user_envs:bright_side", {}, iterations=8,
                             model={"hidden_sizes": [32]})
    assert result["eval/return_mean"] >= 0.9 * 4  # chance: 2 of 4
    ckpt = latest_checkpoint(run_dir)
    assert (ckpt / "state.pt").stat().st_size < 2_000_000
    assert load_checkpoint(ckpt)["groups"]["shared"]["obs_image"] == [1, 3, 24, 32, True]
