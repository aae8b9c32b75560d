import numpy as np
import pytest
import torch

from flexmarl.algorithms import ADVANTAGE_ESTIMATORS
from flexmarl.algorithms.advantages import group_clip

gae = ADVANTAGE_ESTIMATORS["gae"]
R = np.array([[1.0], [2.0], [3.0]], np.float32)
V = np.array([[0.5], [1.0], [1.5]], np.float32)
NEXT_V = np.array([[1.0], [1.5], [2.0]], np.float32)
ZERO = np.zeros((3, 1), np.float32)


def test_gae_matches_hand_computation():
    adv, ret = gae(R, V, NEXT_V, ZERO, ZERO, gamma=0.9, lam=0.8)
    # deltas 1.4, 2.35, 3.3; A2 = 3.3, A1 = 2.35 + .72 * 3.3, A0 = 1.4 + .72 * A1
    assert adv[:, 0] == pytest.approx([4.80272, 4.726, 3.3], rel=1e-5)
    assert ret[:, 0] == pytest.approx(adv[:, 0] + V[:, 0])


def test_termination_zeroes_bootstrap_and_cuts_recursion():
    term = np.array([[0.0], [1.0], [0.0]], np.float32)
    adv, _ = gae(R, V, NEXT_V, term, term, gamma=0.9, lam=0.8)
    assert adv[:, 0] == pytest.approx([2.12, 1.0, 3.3], rel=1e-5)


def test_truncation_bootstraps_but_cuts_recursion():
    end = np.array([[0.0], [1.0], [0.0]], np.float32)
    adv, _ = gae(R, V, NEXT_V, ZERO, end, gamma=0.9, lam=0.8)
    assert adv[:, 0] == pytest.approx([3.092, 2.35, 3.3], rel=1e-5)


def test_columns_are_independent():
    r2 = np.concatenate([R, 2 * R], axis=1)
    v2, nv2, z2 = (np.concatenate([x, x], axis=1) for x in (V, NEXT_V, ZERO))
    adv, _ = gae(r2, v2, nv2, z2, z2, gamma=0.9, lam=0.8)
    single, _ = gae(2 * R, V, NEXT_V, ZERO, ZERO, gamma=0.9, lam=0.8)
    assert adv[:, 1] == pytest.approx(single[:, 0])


group_norm = ADVANTAGE_ESTIMATORS["group_norm"]


def test_group_norm_advantages_are_normalised_per_group():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 1.0, 1.0]])
    adv = group_norm(rewards)
    assert torch.allclose(adv.mean(-1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(adv.std(-1, unbiased=False), torch.ones(2), atol=1e-4)


def test_group_clip_zeroes_positive_advantages_below_the_engaged_items_reward():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    adv = group_norm(rewards)
    clipped = group_clip(adv, rewards, torch.tensor([4.0]))
    assert clipped[0, 2] == 0 and clipped[0, 3] == adv[0, 3] and (clipped[0, :2] == adv[0, :2]).all()
