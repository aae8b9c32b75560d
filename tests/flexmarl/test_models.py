import pytest
import torch

from envs import ActionSpec
from flexmarl.config import ModelConfig
from flexmarl.models import Actor, CandidateScorer, Critic, GroupPolicy


def test_masked_actions_are_never_sampled():
    actor = Actor(4, ActionSpec(kind="discrete", n=5), ModelConfig())
    obs = torch.randn(1, 64, 4)
    mask = torch.zeros(1, 64, 5, dtype=torch.bool)
    mask[..., 3] = True
    mask[:32, :, 1] = True
    dist, _ = actor.distribution(obs, torch.zeros(64, 0), torch.zeros(1, 64), mask)
    samples = dist.sample((50,))
    assert set(samples.unique().tolist()) <= {1, 3}
    assert torch.all(actor.greedy(dist) >= 0)


def test_gru_step_by_step_equals_sequence_with_resets():
    cfg = ModelConfig(use_gru=True, gru_hidden=8, hidden_sizes=[16])
    critic = Critic(6, cfg)
    T, B = 7, 3
    x = torch.randn(T, B, 6)
    starts = torch.zeros(T, B)
    starts[0] = 1
    starts[4, 1] = 1
    h0 = critic.trunk.initial_state(B)
    seq, _ = critic(x, h0, starts)
    h, steps = h0, []
    for t in range(T):
        v, h = critic(x[t : t + 1], h, starts[t : t + 1])
        steps.append(v)
    assert torch.allclose(seq, torch.cat(steps), atol=1e-6)


def test_box_actor_log_prob_sums_dimensions():
    actor = Actor(3, ActionSpec(kind="box", shape=(2,), low=(-1, -1), high=(1, 1)), ModelConfig())
    dist, _ = actor.distribution(torch.randn(1, 4, 3), torch.zeros(4, 0), torch.zeros(1, 4))
    assert dist.log_prob(torch.zeros(1, 4, 2)).shape == (1, 4)


def test_candidate_scorer_scores_a_candidate_the_same_in_any_slot():
    K, item, context = 5, 3, 4
    actor = CandidateScorer(context + K * item, ActionSpec(kind="discrete", n=K), ModelConfig(hidden_sizes=[16]), item)
    obs = torch.randn(1, 8, context + K * item)
    perm = torch.tensor([3, 0, 4, 1, 2])
    blocks = obs[..., context:].unflatten(-1, (K, item))
    shuffled = torch.cat([obs[..., :context], blocks[..., perm, :].flatten(-2)], -1)
    logits, _ = actor.head_output(obs, torch.zeros(8, 0), torch.zeros(1, 8))
    shuffled_logits, _ = actor.head_output(shuffled, torch.zeros(8, 0), torch.zeros(1, 8))
    assert torch.allclose(shuffled_logits, logits[..., perm], atol=1e-6)
    mask = torch.ones(1, 8, K, dtype=torch.bool)
    mask[..., 2] = False
    dist, _ = actor.distribution(obs, torch.zeros(8, 0), torch.zeros(1, 8), mask)
    assert (dist.sample((20,)) != 2).all()


def test_candidate_scorer_needs_an_env_with_a_candidate_layout():
    from envs import make_env
    from flexmarl.config import ConfigError, config_from_dict
    from flexmarl.groups import build_groups
    from envs import describe_env

    cfg = config_from_dict({"env": {"name": "mpe/simple_spread"}, "model": {"actor": "candidate_scorer"}})
    with pytest.raises(ConfigError, match="model.actor.*env.candidate_dim"):
        build_groups(cfg, describe_env(make_env("mpe/simple_spread")))
    recsys = make_env("recsys/movielens", num_envs=2)
    cfg = config_from_dict({"env": {"name": "recsys/movielens"}, "model": {"actor": "candidate_scorer"}})
    (group,) = build_groups(cfg, describe_env(recsys))
    assert isinstance(GroupPolicy.for_group(group, cfg.model).actor, CandidateScorer)


def test_hidden_layer_norm_normalises_each_hidden_layer():
    from flexmarl.models import Trunk

    plain, normed = Trunk(6, ModelConfig(hidden_sizes=[16, 8])), Trunk(6, ModelConfig(hidden_sizes=[16, 8], hidden_layer_norm=True))
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in plain.mlp) == 1  # the input's only
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in normed.mlp) == 3
    features, _ = normed(5 * torch.randn(2, 4, 6), torch.zeros(4, 0), torch.zeros(2, 4))
    assert torch.allclose(features.mean(-1), torch.zeros(2, 4), atol=1e-5)
    assert torch.allclose(features.var(-1, unbiased=False), torch.ones(2, 4), atol=1e-3)
