"""Name-keyed registries (verl style). The built-ins are named here and imported on first use, so a config
can check a name without importing torch; `register_*` adds one from user code."""

from __future__ import annotations

from flexmarl.registry import Registry

ADVANTAGE_ESTIMATORS = Registry("advantage estimator", {
    name: f"flexmarl.algorithms.advantages:{name}" for name in ("gae", "group_norm")})
"""gae for policies with a critic; group_norm for groups of generated outputs (flexmarl/algorithms/advantages.py)."""
POLICY_LOSSES = Registry("policy loss", {
    "ppo_clip": "flexmarl.algorithms.losses:ppo_clip",
    "grpo": "flexmarl.algorithms.losses:ppo_clip",  # GRPO's token loss is PPO's clipped surrogate per token
    "sa_gcpo": "flexmarl.algorithms.losses:sa_gcpo",
    "gbpo": "flexmarl.algorithms.losses:gbpo",
})
"""One signature for MARL actions and generated tokens alike (flexmarl/algorithms/losses.py has the contract)."""
VALUE_LOSSES = Registry("value loss", {"clipped_huber": "flexmarl.algorithms.losses:clipped_huber",
                                       "clipped_mse": "flexmarl.algorithms.losses:clipped_mse"})
GRADIENT_AGGREGATORS = Registry("gradient aggregator", {
    name: f"flexmarl.algorithms.aggregators:{name}" for name in ("mean", "grasp", "pcgrad", "cagrad")})

register_advantage_estimator = ADVANTAGE_ESTIMATORS.register
register_policy_loss = POLICY_LOSSES.register
register_value_loss = VALUE_LOSSES.register
register_gradient_aggregator = GRADIENT_AGGREGATORS.register
