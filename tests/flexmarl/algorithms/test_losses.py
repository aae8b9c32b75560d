import math

import numpy as np
import pytest
import torch

from flexmarl.algorithms import POLICY_LOSSES, VALUE_LOSSES, ValueNorm, register_policy_loss
from flexmarl.algorithms.losses import LOSS_AGGREGATIONS, aggregate_token_loss, kl_penalty, ppo_clip, soft_gate

TOKEN_LOSSES = ["grpo", "sa_gcpo", "gbpo"]


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
    out = VALUE_LOSSES["clipped_mse"](torch.tensor([3.0]), torch.tensor([1.0]), torch.tensor([0.0]), clip_eps=0.2)
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


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_one_signature_for_actions_and_tokens(name):
    """Every policy loss takes per-action advantages (MARL) and per-output advantages broadcast over
    tokens (generated sequences), with the same keyword hyper-parameters."""
    hparams = {"clip_eps": 0.2, "tau_pos": 1.0, "tau_neg": 1.05}
    actions = POLICY_LOSSES[name](torch.log(torch.rand(5)), torch.log(torch.rand(5)), torch.randn(5), **hparams)
    tokens = POLICY_LOSSES[name](torch.log(torch.rand(3, 4)), torch.log(torch.rand(3, 4)), torch.randn(3, 1), **hparams)
    assert actions.shape == (5,) and tokens.shape == (3, 4)


def test_grpo_is_the_ppo_clip_surrogate_per_token():
    assert POLICY_LOSSES["grpo"] is ppo_clip


def _batch(G=4, T=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(G, T, generator=gen, requires_grad=True)
    logp = torch.log_softmax(torch.stack([logits, torch.zeros(G, T)], -1), -1)[..., 0]
    mask = torch.ones(G, T)
    mask[0, -1] = 0
    return logits, logp, mask


def _loss(name, logp, old_logp, mask, advantages, mode="seq_mean_token_mean", **hparams):
    """The scalar loss: the registered per-token loss, aggregated."""
    per_token = POLICY_LOSSES[name](logp, old_logp, advantages[:, None], **hparams)
    assert per_token.shape == logp.shape
    summed, denominator = aggregate_token_loss(per_token, mask, mode)
    return summed / denominator


def test_soft_gate_has_the_on_policy_slope_at_ratio_one():
    ratio = torch.ones(3, requires_grad=True)
    tau = torch.tensor([1.0, 2.0, 5.0])
    soft_gate(ratio, tau).sum().backward()
    assert torch.allclose(ratio.grad, torch.ones(3))


@pytest.mark.parametrize("name", TOKEN_LOSSES)
def test_on_policy_gradient_equals_the_policy_gradient(name):
    """At pi = pi_old every loss's gradient is -(1/G) sum_i A_i (1/|o_i|) sum_t grad log pi (GBPO: for A >= 0)."""
    logits, logp, mask = _batch()
    advantages = torch.tensor([1.0, 0.5, 0.2, 0.3]) if name == "gbpo" else torch.tensor([1.0, -0.5, 0.2, -0.7])
    loss = _loss(name, logp, logp.detach(), mask, advantages)
    (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
    reference = -(advantages[:, None] * logp * mask / mask.sum(-1, keepdim=True)).sum() / len(advantages)
    (expected,) = torch.autograd.grad(reference, logits)
    assert torch.allclose(grad, expected, atol=1e-6)


def test_grpo_clips_and_sa_gcpo_damps_far_off_policy_tokens():
    logits, logp, mask = _batch()
    old = logp.detach() - 1.0  # ratio e > 1 + clip everywhere
    advantages = torch.ones(4)
    (g_grpo,) = torch.autograd.grad(_loss("grpo", logp, old, mask, advantages), logits, retain_graph=True)
    assert torch.allclose(g_grpo, torch.zeros_like(g_grpo))  # clipped: no gradient
    (g_sa,) = torch.autograd.grad(_loss("sa_gcpo", logp, old, mask, advantages, tau_pos=5.0), logits,
                                  retain_graph=True)
    (g_on,) = torch.autograd.grad(_loss("sa_gcpo", logp, logp.detach(), mask, advantages, tau_pos=5.0), logits)
    assert 0 < g_sa.abs().sum() < 0.5 * g_on.abs().sum()  # soft: damped, not cut


def test_gbpo_negative_gradients_stay_bounded():
    logits = torch.tensor([[8.0]], requires_grad=True)  # pi ~ 1 for a negative sample
    logp = torch.log_softmax(torch.stack([logits, torch.zeros(1, 1)], -1), -1)[..., 0]
    old = torch.log(torch.tensor([[1e-4]]))  # pi_old tiny: a plain ratio would explode
    (grad,) = torch.autograd.grad(_loss("gbpo", logp, old, torch.ones(1, 1), torch.tensor([-1.0])), logits)
    assert np.isfinite(grad.item()) and abs(grad.item()) <= 1.0


def test_kl_penalty_is_zero_at_the_reference_and_positive_elsewhere():
    logp = torch.log(torch.tensor([[0.5, 0.2], [0.1, 0.9]]))
    assert torch.allclose(kl_penalty(logp, logp), torch.zeros(2, 2))
    assert (kl_penalty(logp, logp - 0.3) > 0).all() and (kl_penalty(logp, logp + 0.3) > 0).all()


@pytest.mark.parametrize("mode", LOSS_AGGREGATIONS)
@pytest.mark.parametrize("name", TOKEN_LOSSES)
def test_aggregating_two_halves_equals_aggregating_the_whole(name, mode):
    """Micro-batches of unequal token counts: summed losses and denominators add up to the whole batch's."""
    gen = torch.Generator().manual_seed(1)
    logits, logp, _ = _batch(G=6, T=5)
    mask = torch.ones(6, 5)
    mask[:3, 2:] = 0  # the first half has 2 tokens per output, the second 5
    old = (logp + 0.2 * torch.randn(6, 5, generator=gen)).detach()
    advantages = torch.randn(6, generator=gen)
    whole = _loss(name, logp, old, mask, advantages, mode)
    parts = [aggregate_token_loss(POLICY_LOSSES[name](logp[h], old[h], advantages[h][:, None]), mask[h], mode)
             for h in (slice(0, 3), slice(3, 6))]
    halves = sum(s for s, _ in parts) / sum(d for _, d in parts)
    assert torch.allclose(halves, whole, atol=1e-6)
    (g_whole,) = torch.autograd.grad(whole, logits, retain_graph=True)
    (g_halves,) = torch.autograd.grad(halves, logits)
    assert torch.allclose(g_halves, g_whole, atol=1e-6)
    # averaging the halves' own means would weight tokens differently (the normalisation this avoids)
    if mode == "token_mean":
        assert not torch.allclose(sum(s / d for s, d in parts) / 2, whole, atol=1e-4)


def test_aggregation_denominators_count_valid_tokens_or_outputs():
    per_token = torch.arange(6.0).view(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    summed, tokens = aggregate_token_loss(per_token, mask, "token_mean")
    assert tokens == 5 and summed == 0 + 1 + 3 + 4 + 5
    summed, outputs = aggregate_token_loss(per_token, mask, "seq_mean_token_mean")
    assert outputs == 2 and torch.isclose(summed, torch.tensor(0.5 + 4.0))
    padded = torch.cat([mask, torch.zeros(1, 3)])  # an all-padding row counts in neither mode
    assert aggregate_token_loss(torch.cat([per_token, torch.ones(1, 3)]), padded, "seq_mean_token_mean")[1] == 2
    assert aggregate_token_loss(torch.cat([per_token, torch.ones(1, 3)]), padded, "token_mean")[1] == 5
    with pytest.raises(ValueError, match="'sum'; one of token_mean, seq_mean_token_mean"):
        aggregate_token_loss(per_token, mask, "sum")
