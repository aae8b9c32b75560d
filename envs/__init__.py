"""Environments behind one contract: the PettingZoo ParallelEnv API.

`make_env("mpe/simple_spread", N=3)` builds a registered env; any ParallelEnv factory can also be used
without new code as `make_env("my_pkg.my_mod:make_env", **kwargs)`. `describe_env` reads the per-agent
spaces, the optional global state and action masks into an `EnvSpec`.

This package depends on no other FlexMARL package.
"""

from envs.registry import ENV_REGISTRY, UnknownEnvError, make_env, register_env, registered_names
from envs.spec import (ActionSpec, AgentSpec, EnvContractError, EnvSpec, UnsupportedSpaceError, describe_env,
                        split_observation)

__all__ = [
    "ENV_REGISTRY",
    "ActionSpec",
    "AgentSpec",
    "EnvContractError",
    "EnvSpec",
    "UnknownEnvError",
    "UnsupportedSpaceError",
    "describe_env",
    "make_env",
    "register_env",
    "registered_names",
    "split_observation",
]
