"""Name-keyed registries (verl style). The built-ins are named here and imported on first use, so a config
can check a name without importing torch; `register_*` adds one from user code."""

from __future__ import annotations

from flexmarl.registry import Registry

ADVANTAGE_ESTIMATORS = Registry("advantage estimator", {"gae": "flexmarl.algorithms.advantages:gae"})
POLICY_LOSSES = Registry("policy loss", {"ppo_clip": "flexmarl.algorithms.losses:ppo_clip"})
VALUE_LOSSES = Registry("value loss", {"clipped_huber": "flexmarl.algorithms.losses:clipped_huber",
                                       "clipped_mse": "flexmarl.algorithms.losses:clipped_mse"})
GRADIENT_AGGREGATORS = Registry("gradient aggregator", {
    name: f"flexmarl.algorithms.aggregators:{name}" for name in ("mean", "grasp", "pcgrad", "cagrad")})
GROUP_LOSSES = Registry("group loss", {
    name: f"flexmarl.algorithms.group_losses:{name}" for name in ("grpo", "sa_gcpo", "gbpo")})
"""Token losses of group-based optimisation (flexmarl/algorithms/group_losses.py has the contract)."""

register_advantage_estimator = ADVANTAGE_ESTIMATORS.register
register_policy_loss = POLICY_LOSSES.register
register_value_loss = VALUE_LOSSES.register
register_gradient_aggregator = GRADIENT_AGGREGATORS.register
register_group_loss = GROUP_LOSSES.register
