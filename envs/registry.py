"""Name -> ParallelEnv factory registry.

Adding an env family means adding its factories to `ENV_REGISTRY` (see `envs/mpe.py`); users can also
point at any factory as `module.path:callable` without touching this package.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from envs import grf, mpe, recsys, smacv2, smax
from envs.wrappers import HeavyTailEpisodes, turn_based_reason

EnvFactory = Callable[..., Any]


class UnknownEnvError(ValueError):
    """An env name that is neither registered nor an importable `module:callable`."""


def heavy_tail(env: str, env_kwargs: dict | None = None, **wrapper_kwargs: Any) -> HeavyTailEpisodes:
    """`wrappers/heavy_tail`: kwargs {env: registered name, env_kwargs: {...}, min_length, alpha, max_length}.
    It lives here, not in envs/wrappers.py, because it builds the wrapped env by name through this registry."""
    return HeavyTailEpisodes(make_env(env, **(env_kwargs or {})), **wrapper_kwargs)


def aec_to_parallel(env: str, env_kwargs: dict | None = None) -> Any:
    """`wrappers/aec_to_parallel`: kwargs {env: an AEC env factory as 'module:callable' or a registered name,
    env_kwargs: {...}}; PettingZoo's aec_to_parallel around it, for AEC envs whose agents act once per cycle."""
    from pettingzoo.utils.conversions import aec_to_parallel as convert

    aec_env = make_env(env, **(env_kwargs or {}))
    reason = turn_based_reason(aec_env)
    if reason is not None:
        aec_env.close()
        raise ValueError(f"{env!r} cannot run as a ParallelEnv: {reason}")
    return convert(aec_env)


# The one list to edit when adding an env family.
ENV_REGISTRY: dict[str, EnvFactory] = {
    **mpe.FACTORIES, **smax.FACTORIES, **grf.FACTORIES, **smacv2.FACTORIES, **recsys.FACTORIES,
    "wrappers/heavy_tail": heavy_tail, "wrappers/aec_to_parallel": aec_to_parallel,
}


def register_env(name: str, factory: EnvFactory) -> None:
    """Register `factory(**kwargs) -> ParallelEnv` under `name` (e.g. "myfamily/task")."""
    if name in ENV_REGISTRY and ENV_REGISTRY[name] is not factory:
        raise ValueError(f"env name {name!r} is already registered")
    ENV_REGISTRY[name] = factory


def registered_names() -> list[str]:
    return sorted(ENV_REGISTRY)


def resolve_factory(name: str) -> EnvFactory:
    if name in ENV_REGISTRY:
        return ENV_REGISTRY[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnknownEnvError(f"env {name!r}: cannot import module {module_name!r}: {exc}") from exc
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise UnknownEnvError(f"env {name!r}: {module_name!r} has no callable {attr!r}")
        return factory
    raise UnknownEnvError(
        f"unknown env {name!r}; registered: {', '.join(registered_names())}; "
        "or give any ParallelEnv factory as 'module.path:callable'"
    )


def make_env(name: str, **kwargs: Any) -> Any:
    """Build a PettingZoo ParallelEnv from a registered name or a `module:callable` path."""
    return resolve_factory(name)(**kwargs)
