"""Multi-scenario recommendation environments (each scenario is an agent) on a MovieLens-1M user model."""

from typing import Any

from envs.batched import batched_factory
from envs.recsys.scenarios import BUILTIN_SCENARIOS, Scenario, ScenarioError, UserContext


@batched_factory
def make_movielens(num_envs: int = 1, **kwargs: Any):
    """`recsys/movielens`: the multi-scenario env; kwargs: scenarios, session_length, move_prob, rank."""
    from envs.recsys.env import MultiScenarioRecEnv

    return MultiScenarioRecEnv(num_envs=num_envs, **kwargs)


FACTORIES = {"recsys/movielens": make_movielens}

__all__ = ["BUILTIN_SCENARIOS", "FACTORIES", "Scenario", "ScenarioError", "UserContext", "make_movielens"]
