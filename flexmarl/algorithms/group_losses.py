"""Group-based policy optimisation for generative policies: advantages and losses (GRPO, SA-GCPO, GBPO).

A request x gets G sampled outputs o_1..o_G (item semantic-ID sequences, LLM completions); each has a
mapped reward. Every registered loss has one signature: `loss(logp, old_logp, mask, advantages, **hparams)`
with token log-probs `logp`, `old_logp` [G, T], a token mask [G, T], per-output advantages [G] and the
hyper-parameters as keywords (clip_eps, tau_pos, tau_neg; a loss ignores the others); it returns the
per-token loss [G, T] to minimise, before aggregation. `aggregate_token_loss` turns it into a sum and a
denominator, so a caller accumulating several micro-batches divides once by the minibatch's total:
- token_mean: sum over valid tokens / valid tokens (DAPO, arXiv:2503.14476);
- seq_mean_token_mean: each output's token mean, summed / outputs (the GRPO paper's (1/G) sum_i 1/|o_i| sum_t).
Formulas from the team's reference notes (sections 3 and 4):

- GRPO (DeepSeekMath, arXiv:2402.03300): PPO's clipped ratio per token, token-mean per output, mean over
  the group; no value function.
- SA-GCPO (OxygenREC, arXiv:2512.22386, from a public reproduction, not the authors' code): a soft gate
  f(r; tau) = (4 / tau) sigmoid(tau (r - 1)) instead of the hard clip, tau_pos for positive advantages and
  tau_neg (> tau_pos) for negative ones; group clip of advantages against the engaged item's reward.
- GBPO (OneRec-V2): ratio to pi'_old = max(pi_old, sg(pi)) for A >= 0 and max(pi_old, 1 - sg(pi)) for
  A < 0, nothing clipped, so negative-sample gradients stay bounded like binary cross-entropy.
"""

from __future__ import annotations

import torch

from flexmarl.algorithms.registry import GROUP_LOSSES, register_group_loss  # noqa: F401  (re-exported)


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """[..., G] rewards -> advantages normalised within each group: (R - mean) / (std + eps)."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, unbiased=False, keepdim=True)
    return (rewards - mean) / (std + eps)


def group_clip(advantages: torch.Tensor, rewards: torch.Tensor, target_reward: torch.Tensor) -> torch.Tensor:
    """SA-GCPO's group clip: a positive advantage is zeroed when the output's reward is below the reward
    of the item the user actually engaged with (`target_reward`, one per group)."""
    return torch.where((advantages > 0) & (rewards < target_reward[..., None]), torch.zeros_like(advantages), advantages)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate on samples from pi (GRPO's unbiased, non-negative k3 estimator):
    pi_ref / pi - log(pi_ref / pi) - 1."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


def _token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per output: mean over its valid tokens (1 / |o_i| sum_t)."""
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean")


def aggregate_token_loss(per_token: torch.Tensor, mask: torch.Tensor, mode: str) -> tuple[torch.Tensor, float]:
    """(summed loss, denominator) of a per-token loss [G, T] over the valid tokens of `mask`.

    The loss is `summed / denominator`; over several micro-batches of one minibatch it is
    `sum(summed) / sum(denominator)`, which equals the loss of the minibatch taken at once.
    token_mean: denominator = valid tokens; seq_mean_token_mean: denominator = outputs with at least one
    valid token (an all-padding row counts in neither mode).
    """
    if mode == "token_mean":
        return (per_token * mask).sum(), float(mask.sum())
    if mode == "seq_mean_token_mean":
        return _token_mean(per_token, mask).sum(), float((mask.sum(-1) > 0).sum())
    raise ValueError(f"loss aggregation {mode!r}; one of {', '.join(LOSS_AGGREGATIONS)}")


def grpo(logp, old_logp, mask, advantages, clip_eps: float = 0.2, **_) -> torch.Tensor:
    ratio = torch.exp(logp - old_logp)
    a = advantages[:, None]
    return -torch.min(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)


def soft_gate(ratio: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """f(r; tau) = (4 / tau) sigmoid(tau (r - 1)): slope 1 at r = 1 (the on-policy gradient), flat far away."""
    return 4.0 / tau * torch.sigmoid(tau * (ratio - 1.0))


def sa_gcpo(logp, old_logp, mask, advantages, tau_pos: float = 1.0, tau_neg: float = 1.05, **_) -> torch.Tensor:
    ratio = torch.exp(logp - old_logp)
    tau = torch.where(advantages > 0, torch.as_tensor(tau_pos), torch.as_tensor(tau_neg))[:, None]
    return -advantages[:, None] * soft_gate(ratio, tau)


def gbpo(logp, old_logp, mask, advantages, **_) -> torch.Tensor:
    prob, old_prob = logp.exp(), old_logp.exp()
    detached = prob.detach()
    positive = (advantages >= 0)[:, None]
    reference = torch.where(positive, torch.maximum(old_prob, detached), torch.maximum(old_prob, 1.0 - detached))
    return -advantages[:, None] * (prob / reference)
