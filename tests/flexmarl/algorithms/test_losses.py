import math

import numpy as np
import pytest
import torch

from flexmarl.algorithms import POLICY_LOSSES, VALUE_LOSSES, ValueNorm, register_policy_loss


def test_ppo_clip_hand_values():
    loss = POLICY_LOSSES["ppo_clip"]
    logp = torch.tensor([math.log(1.5), math.log(1.5), math.log(0.5)])
    adv = torch.tensor([2.0, -2.0, 2.0])
    out = loss(logp, torch.zeros(3), adv, clip_eps=0.2)
    # ratio 1.5, A=+2 -> clipped 1.2*2; A=-2 -> unclipped 1.5*-2; ratio .5, A=+2 -> unclipped .5*2
    assert out.tolist() == pytest.approx([-2.4, 3.0, -1.0], rel=1e-6)


def test_clipped_huber_takes_the_worse_of_clipped_and_raw():
    loss = VALUE_LOSSES["clipped_huber"]
    out = loss(torch.tensor([3.0, 0.5]), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 2.0]), clip_eps=0.2, huber_delta=1.0)
    # sample 0: raw err 3 -> 2.5, clipped pred 1.2 -> 0.7; sample 1: raw err 1.5 -> 1.0, clipped 0.8 -> 0.7
    assert out.tolist() == pytest.approx([2.5, 1.0])


def test_clipped_mse():
    out = VALUE_LOSSES["clipped_mse"](torch.tensor([3.0]), torch.tensor([1.0]), torch.tensor([0.0]), 0.2, 1.0)
    assert out.item() == pytest.approx(4.5)


def test_value_norm_moments_and_round_trip():
    norm = ValueNorm()
    norm.update(np.array([1.0, 3.0]))
    assert norm.mean_var() == pytest.approx((2.0, 1.0), rel=1e-4)
    assert norm.normalize(np.array(3.0)) == pytest.approx(1.0, rel=1e-4)
    assert norm.denormalize(norm.normalize(np.array(7.0))) == pytest.approx(7.0)
    other = ValueNorm()
    other.set_state(norm.get_state())
    assert other.mean_var() == norm.mean_var()


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_policy_loss("ppo_clip")(lambda *a: None)
