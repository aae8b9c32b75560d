"""Build the configured env once and read its spec, turning every way that can fail into a `ConfigError`.

The CLI calls `probe_env` before Ray starts and before a run directory exists, so a bad `env.name`, bad
`env.kwargs`, an unsupported space, an AEC env or a misspelt scenario option is one `error:` line with
the key path, like any other config error. The orchestrator uses the same probe.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from envs import EnvSpec, UnknownEnvError, describe_env
from envs.batched import is_batched
from envs.registry import resolve_factory
from envs.spec import EnvContractError, UnsupportedSpaceError
from envs.wrappers import turn_based_reason
from flexmarl.config import Config, ConfigError
from flexmarl.groups import GroupLayout, build_groups


class EnvConfigError(ConfigError):
    """An env that cannot be built or used as configured; names the key path and the problem."""

    def __init__(self, path: str, value: Any, problem: str):
        self.path, self.value, self.allowed = path, value, problem
        ValueError.__init__(self, f"config key '{path}': {problem}")


_AEC_HINT = ("FlexMARL needs a PettingZoo ParallelEnv (all agents act at once: reset() -> (obs, infos), "
             "step(actions) -> (obs, rewards, terminations, truncations, infos)). An AEC env whose agents all act "
             "once per cycle runs through PettingZoo's aec_to_parallel: env.name=wrappers/aec_to_parallel "
             "env.kwargs.env=module:callable (and env.kwargs.env_kwargs for its arguments)")


def _is_aec(env: Any) -> bool:
    try:
        from pettingzoo import AECEnv
        from pettingzoo.utils.wrappers import BaseWrapper
    except ImportError:  # pragma: no cover - pettingzoo is a dependency
        AECEnv = BaseWrapper = ()  # type: ignore[assignment]
    if isinstance(env, (AECEnv, BaseWrapper)):
        return True
    return hasattr(env, "agent_selection") and callable(getattr(env, "last", None))


def _check_parallel(env: Any, name: str) -> None:
    """Refuse an AEC env or another object before `describe_env` fails on it in a less helpful way."""
    if _is_aec(env):
        reason = turn_based_reason(env)
        if reason is not None:
            raise EnvConfigError("env.name", name, f"{name!r} builds an AEC env ({type(env).__name__}) that FlexMARL "
                                 f"cannot train: {reason}")
        raise EnvConfigError("env.name", name, f"{name!r} builds an AEC env ({type(env).__name__}), not a ParallelEnv; "
                             f"its agents act once per cycle, so env.name=wrappers/aec_to_parallel "
                             f"env.kwargs.env={name} runs it through PettingZoo's aec_to_parallel")
    missing = [attr for attr in ("possible_agents", "reset", "step", "observation_space", "action_space")
               if not hasattr(env, attr)]
    if missing:
        raise EnvConfigError("env.name", name, f"{name!r} builds a {type(env).__name__}, which is not a PettingZoo "
                             f"ParallelEnv (it has no {', '.join(missing)}). {_AEC_HINT}")


def _check_kwargs(factory, name: str, kwargs: dict) -> None:
    """Unknown keyword arguments, found from the factory's signature where it lists them."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return  # forwards **kwargs: only calling it can tell
    accepted = [p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise EnvConfigError(f"env.kwargs.{unknown[0]}", kwargs[unknown[0]],
                             f"{name!r} takes no argument {unknown[0]!r}; it accepts: {', '.join(accepted) or 'none'}")


def build_probe_env(cfg: Config) -> Any:
    """The configured env (one copy), or EnvConfigError saying which key is wrong."""
    name, kwargs = cfg.env.name, dict(cfg.env.kwargs)
    try:
        factory = resolve_factory(name)
    except UnknownEnvError as exc:
        raise EnvConfigError("env.name", name, str(exc)) from None
    _check_kwargs(factory, name, kwargs)
    try:
        env = factory(**kwargs)
    except ImportError as exc:
        raise EnvConfigError("env.name", name, f"{name!r} needs a module that is not installed: {exc}") from None
    except Exception as exc:  # a constructor refusing its arguments (unknown scenario, bad value, ...)
        path = "env.kwargs" if kwargs else "env.name"
        raise EnvConfigError(path, kwargs, f"{name!r} could not be built with kwargs {kwargs}: "
                             f"{type(exc).__name__}: {exc}") from None
    if not is_batched(env):
        _check_parallel(env, name)
    return env


def batch_bytes(cfg: Config, groups: list[GroupLayout]) -> int:
    """Bytes of one iteration's observations and critic inputs as float32 (the bulk of its samples)."""
    return 4 * cfg.run.batch_env_steps * sum(len(g.agents) * (g.obs_dim + g.critic_dim) for g in groups)


def _check_batch_memory(cfg: Config, groups: list[GroupLayout]) -> None:
    """Refuse a batch that cannot fit: it is held at least twice (the rollout worker's rows, then the trainer's
    batch), so half this machine's memory is the most it may take. Many image agents with a centralised
    critic get there fast: every agent's row carries all the agents' images."""
    need, have = batch_bytes(cfg, groups), os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if 2 * need <= have:
        return
    widths = ", ".join(f"group {g.name!r}: {len(g.agents)} x ({g.obs_dim:,} + {g.critic_dim:,})" for g in groups)
    raise EnvConfigError("run.batch_env_steps", cfg.run.batch_env_steps, f"one iteration of {cfg.env.name!r} "
                         f"takes {need / 2**30:.1f} GiB as float32 (per env step, agents x (observation + critic "
                         f"input) floats: {widths}), held at least twice; this machine has {have / 2**30:.1f} GiB. "
                         "Use a smaller run.batch_env_steps, or algo.name=ippo (each critic reads its own "
                         "observation, not every agent's)")


def probe_env(cfg: Config) -> tuple[EnvSpec, list[GroupLayout]]:
    """Build the env once, describe it and resolve the agent groups; closes the env."""
    env = build_probe_env(cfg)
    try:
        try:
            spec = describe_env(env, seed=cfg.run.seed)
        except UnsupportedSpaceError as exc:
            raise EnvConfigError("env.name", cfg.env.name, str(exc)) from None
        except EnvContractError as exc:  # e.g. reset() returning None, as an AEC env does
            raise EnvConfigError("env.name", cfg.env.name, f"{cfg.env.name!r} does not follow the ParallelEnv "
                                 f"API: {exc}. {_AEC_HINT}") from None
        except ConfigError:
            raise
        except Exception as exc:  # reset() raising on a fresh env: usually its arguments
            path = "env.kwargs" if cfg.env.kwargs else "env.name"
            raise EnvConfigError(path, cfg.env.kwargs, f"{cfg.env.name!r} built, then raised in its first reset: "
                                 f"{type(exc).__name__}: {exc}") from None
        groups = build_groups(cfg, spec)
        _check_batch_memory(cfg, groups)
        return spec, groups
    finally:
        if hasattr(env, "close"):
            env.close()
