"""Small helpers shared by sampling and evaluation: critic input and the win flag of an episode."""

from __future__ import annotations

import numpy as np

from envs import EnvSpec

WIN_KEYS = ("win", "battle_won", "won")


def critic_input(env, spec: EnvSpec, flat_obs: dict, use_state: bool, global_state: str) -> np.ndarray | None:
    """Global state of one env for a centralised critic; None for local critics (IPPO)."""
    if not use_state:
        return None
    if global_state == "concat_obs" or spec.state_dim is None:
        return np.concatenate([flat_obs.get(a, np.zeros(spec.per_agent[a].obs_dim, np.float32)) for a in spec.agents])
    return np.asarray(env.state(), dtype=np.float32).ravel()


def win_flag(infos: dict) -> float | None:
    """1.0 / 0.0 where any agent's info reports a win key, else None."""
    for info in infos.values():
        if isinstance(info, dict):
            for key in WIN_KEYS:
                if key in info:
                    return float(bool(info[key]))
    return None
