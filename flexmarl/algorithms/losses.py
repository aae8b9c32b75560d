"""Policy and value losses: small pure functions, one signature per kind, one registry per kind
(`registry.py`), in the spirit of verl's `core_algos`.

Policy losses: `loss(logp, old_logp, advantages, *, clip_eps, tau_pos, tau_neg) -> per-element loss` to
minimise, the shape of `logp`. `advantages` broadcasts against `logp`: one per action for MARL ([N] with
[N]), one per output for generated sequences ([G, 1] with token log-probs [G, T]). A loss reads the
hyper-parameters it needs and ignores the others. Masking and averaging are the caller's: MARL trainers
sum over active agent-steps, token trainers call `aggregate_token_loss`.

- ppo_clip (Schulman et al. 2017): -min(r A, clip(r, 1-eps, 1+eps) A). GRPO's token loss (DeepSeekMath,
  arXiv:2402.03300) is this surrogate per token with group-normalised advantages, so `grpo` names the same
  function (GRPO = the `group_norm` advantage estimator + ppo_clip + seq_mean_token_mean aggregation).
- sa_gcpo (OxygenREC, arXiv:2512.22386, from a public reproduction, not the authors' code): a soft gate
  f(r; tau) = (4 / tau) sigmoid(tau (r - 1)) instead of the hard clip, tau_pos for positive advantages and
  tau_neg (> tau_pos) for negative ones (its group clip of advantages is `advantages.group_clip`).
- gbpo (OneRec-V2): ratio to pi'_old = max(pi_old, sg(pi)) for A >= 0 and max(pi_old, 1 - sg(pi)) for
  A < 0, nothing clipped, so negative-sample gradients stay bounded like binary cross-entropy.

Value losses: `loss(values, old_values, targets, *, clip_eps, huber_delta) -> per-sample loss`.
"""

from __future__ import annotations

import torch


# -- policy losses ------------------------------------------------------------------------------------
def ppo_clip(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, *, clip_eps: float = 0.2,
             **_) -> torch.Tensor:
    """PPO clipped surrogate (negated, so lower is better): -min(r A, clip(r, 1-eps, 1+eps) A)."""
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return -torch.min(ratio * advantages, clipped * advantages)


def soft_gate(ratio: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """f(r; tau) = (4 / tau) sigmoid(tau (r - 1)): slope 1 at r = 1 (the on-policy gradient), flat far away."""
    return 4.0 / tau * torch.sigmoid(tau * (ratio - 1.0))


def sa_gcpo(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, *, tau_pos: float = 1.0,
            tau_neg: float = 1.05, **_) -> torch.Tensor:
    ratio = torch.exp(logp - old_logp)
    tau = torch.where(advantages > 0, torch.as_tensor(tau_pos), torch.as_tensor(tau_neg))
    return -advantages * soft_gate(ratio, tau)


def gbpo(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, **_) -> torch.Tensor:
    prob, old_prob = logp.exp(), old_logp.exp()
    detached = prob.detach()
    reference = torch.where(advantages >= 0, torch.maximum(old_prob, detached),
                            torch.maximum(old_prob, 1.0 - detached))
    return -advantages * (prob / reference)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate on samples from pi (GRPO's unbiased, non-negative k3 estimator):
    pi_ref / pi - log(pi_ref / pi) - 1."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


# -- aggregation of per-token losses ----------------------------------------------------------------
LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean")


def aggregate_token_loss(per_token: torch.Tensor, mask: torch.Tensor, mode: str) -> tuple[torch.Tensor, float]:
    """(summed loss, denominator) of a per-token loss [G, T] over the valid tokens of `mask`.

    The loss is `summed / denominator`; over several micro-batches of one minibatch it is
    `sum(summed) / sum(denominator)`, which equals the loss of the minibatch taken at once.
    - token_mean: sum over valid tokens / valid tokens (DAPO, arXiv:2503.14476);
    - seq_mean_token_mean: each output's token mean, summed / outputs with at least one valid token (the
      GRPO paper's (1/G) sum_i 1/|o_i| sum_t). An all-padding row counts in neither mode.
    """
    if mode == "token_mean":
        return (per_token * mask).sum(), float(mask.sum())
    if mode == "seq_mean_token_mean":
        per_output = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_output.sum(), float((mask.sum(-1) > 0).sum())
    raise ValueError(f"loss aggregation {mode!r}; one of {', '.join(LOSS_AGGREGATIONS)}")


# -- value losses ---------------------------------------------------------------------------------------
def huber(error: torch.Tensor, delta: float) -> torch.Tensor:
    abs_err = error.abs()
    return torch.where(abs_err <= delta, 0.5 * error**2, delta * (abs_err - 0.5 * delta))


def clipped_huber(values: torch.Tensor, old_values: torch.Tensor, targets: torch.Tensor, *, clip_eps: float,
                  huber_delta: float, **_) -> torch.Tensor:
    """MAPPO value loss: max of the Huber losses of the clipped and unclipped predictions."""
    clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    return torch.max(huber(targets - values, huber_delta), huber(targets - clipped, huber_delta))


def clipped_mse(values: torch.Tensor, old_values: torch.Tensor, targets: torch.Tensor, *, clip_eps: float,
                **_) -> torch.Tensor:
    """PPO value loss with squared error: 0.5 * max((V - R)^2, (V_clip - R)^2)."""
    clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    return 0.5 * torch.max((targets - values) ** 2, (targets - clipped) ** 2)
