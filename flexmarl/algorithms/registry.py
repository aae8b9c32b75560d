"""Name-keyed registries (verl style)."""

from __future__ import annotations

from typing import Callable

ADVANTAGE_ESTIMATORS: dict[str, Callable] = {}
POLICY_LOSSES: dict[str, Callable] = {}
VALUE_LOSSES: dict[str, Callable] = {}
GRADIENT_AGGREGATORS: dict[str, Callable] = {}


def _register(table: dict[str, Callable], kind: str):
    def decorator_factory(name: str):
        def decorator(fn: Callable) -> Callable:
            if name in table:
                raise ValueError(f"{kind} {name!r} is already registered")
            table[name] = fn
            return fn

        return decorator

    return decorator_factory


register_advantage_estimator = _register(ADVANTAGE_ESTIMATORS, "advantage estimator")
register_policy_loss = _register(POLICY_LOSSES, "policy loss")
register_value_loss = _register(VALUE_LOSSES, "value loss")
register_gradient_aggregator = _register(GRADIENT_AGGREGATORS, "gradient aggregator")
