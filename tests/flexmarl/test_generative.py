import numpy as np
import pytest
import torch

from envs import make_env
from flexmarl.generative import GenerativeConfig, GenerativeRecommender


@pytest.fixture(scope="module")
def env():
    return make_env("recsys/movielens", num_envs=8)


def test_invalid_codes_get_the_format_penalty(env):
    model = GenerativeRecommender(env, GenerativeConfig(iterations=1, format_penalty=-3.0))
    valid_code = model.ids.codes[5]
    invalid = valid_code.copy()
    invalid[-1] = model.ids.vocab - 1 + 10  # beyond every leaf
    reward, valid = model.rewards(np.array([0]), np.array([1]), np.stack([valid_code, invalid])[None])
    assert valid.tolist() == [[True, False]] and reward[0, 1] == -3.0
    assert reward[0, 0] == pytest.approx(env.expected_reward(np.array(0), np.array(1), np.array(5)))


@pytest.mark.parametrize("loss", ["grpo", "sa_gcpo", "gbpo"])
def test_training_learns_to_emit_valid_codes(env, loss):
    model = GenerativeRecommender(env, GenerativeConfig(loss=loss, iterations=25, requests=64, seed=1, pretrain_steps=0))
    history = model.train()
    assert history[-1]["valid_rate"] > history[0]["valid_rate"] + 0.3
    assert history[-1]["reward_mean"] > history[0]["reward_mean"]
    scores = model.scores(None, 0, np.array([1, 2]), np.array([[3, 4, 5], [6, 7, 8]]))
    assert scores.shape == (2, 3) and np.isfinite(scores).all()


def test_pretraining_learns_logged_likes_and_becomes_the_frozen_kl_reference(env):
    from flexmarl.recsys_eval import offline_metrics

    model = GenerativeRecommender(env, GenerativeConfig(iterations=6, requests=32, pretrain_steps=60, seed=2))
    untrained = offline_metrics(env, model.scores, users=300)["home_feed"]["hit_rate_at_10"]
    history = model.pretrain()
    assert history[-1]["nll"] < history[0]["nll"] - 1.0
    assert offline_metrics(env, model.scores, users=300)["home_feed"]["hit_rate_at_10"] > untrained + 0.1
    reference = {k: v.clone() for k, v in model.reference.state_dict().items()}
    rows = model.train()
    assert all(torch.equal(v, model.reference.state_dict()[k]) for k, v in reference.items())
    assert 0.0 <= rows[0]["kl"] < rows[-1]["kl"]  # RL moves away from the reference, the penalty measures it


def test_unknown_loss_is_named(env):
    with pytest.raises(ValueError, match=r"generative loss 'ppo'; registered: gbpo, grpo, ppo_clip, sa_gcpo"):
        GenerativeRecommender(env, GenerativeConfig(loss="ppo"))
    with pytest.raises(ValueError, match=r"generative loss 'ppo'"):
        GenerativeRecommender(env, GenerativeConfig(pretrain_steps=0)).with_loss("ppo")


def test_with_loss_copies_the_model_but_shares_the_env(env):
    model = GenerativeRecommender(env, GenerativeConfig(pretrain_steps=2, pretrain_batch=8))
    model.pretrain()
    other = model.with_loss("gbpo")
    assert other.env is env and other.cfg.loss == "gbpo" and model.cfg.loss == "grpo"
    assert other.policy is not model.policy and other.reference is not model.reference


def test_every_loss_continuing_one_model_serves_the_same_request_stream(env):
    """The suite compares losses from one pretrained model on one request stream: SA-GCPO's extra draws
    (engaged items) must not shift the requests it sees afterwards."""
    model = GenerativeRecommender(env, GenerativeConfig(iterations=2, requests=8, group_size=2, epochs=1,
                                                        pretrain_steps=2, pretrain_batch=8))
    model.pretrain()
    streams = {}
    for loss in ("grpo", "sa_gcpo", "gbpo"):
        copy = model.with_loss(loss)
        copy.train()
        streams[loss] = copy.sample_requests(8)  # what iteration 3 would serve
    for loss in ("sa_gcpo", "gbpo"):
        assert all(np.array_equal(a, b) for a, b in zip(streams[loss], streams["grpo"]))
