"""Small pure functions in name-keyed registries: advantage estimators, policy and value losses, gradient
aggregators. One policy-loss contract serves MARL actions and generated tokens (losses.py).

Register a new one with the decorators in `registry.py`; a config then selects it by name. Importing this
package imports no torch: the built-ins load on first use.
"""

from flexmarl.algorithms.registry import (
    ADVANTAGE_ESTIMATORS,
    GRADIENT_AGGREGATORS,
    POLICY_LOSSES,
    VALUE_LOSSES,
    register_advantage_estimator,
    register_gradient_aggregator,
    register_policy_loss,
    register_value_loss,
)
from flexmarl.algorithms.value_norm import ValueNorm


def loss_hparams(trainer) -> dict:
    """The policy losses' keyword hyper-parameters from the `trainer` config section (a loss reads its own)."""
    return {"clip_eps": trainer.clip_eps, "tau_pos": trainer.tau_pos, "tau_neg": trainer.tau_neg}


__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "GRADIENT_AGGREGATORS",
    "POLICY_LOSSES",
    "VALUE_LOSSES",
    "ValueNorm",
    "loss_hparams",
    "register_advantage_estimator",
    "register_gradient_aggregator",
    "register_policy_loss",
    "register_value_loss",
]
