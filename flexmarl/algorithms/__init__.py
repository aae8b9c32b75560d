"""Small pure functions in name-keyed registries: advantage estimators, policy and value losses, gradient
aggregators.

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

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "GRADIENT_AGGREGATORS",
    "POLICY_LOSSES",
    "VALUE_LOSSES",
    "ValueNorm",
    "register_advantage_estimator",
    "register_gradient_aggregator",
    "register_policy_loss",
    "register_value_loss",
]
