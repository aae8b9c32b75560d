"""Small helpers shared by sampling and evaluation: critic input, team reward and the win flag of an episode."""

from __future__ import annotations

import numpy as np

from envs import EnvSpec
from flexmarl.groups import GroupLayout

WIN_KEYS = ("win", "battle_won", "won")


def critic_input(env, spec: EnvSpec, flat_obs: dict, use_state: bool, global_state: str) -> np.ndarray | None:
    """Global state of one env for a centralised critic; None for local critics (IPPO)."""
    if not use_state:
        return None
    if global_state == "concat_obs" or spec.state_dim is None:
        return np.concatenate([flat_obs.get(a, np.zeros(spec.per_agent[a].obs_dim, np.float32)) for a in spec.agents])
    return np.asarray(env.state(), dtype=np.float32).ravel()


def group_critic_rows(group: GroupLayout, state_row: np.ndarray | None, own_obs: np.ndarray) -> np.ndarray:
    """A group's critic inputs in one env copy, [k, critic_dim]: the global state for every agent (or each
    agent's own observation for local critics), then its one-hot agent id where the group's critic takes one."""
    rows = own_obs if state_row is None else np.repeat(state_row[None], len(group.agents), axis=0)
    return with_agent_id(rows, group)


def with_agent_id(critic_in: np.ndarray, group: GroupLayout) -> np.ndarray:
    """[E * k, S] critic inputs (columns env-major) -> [E * k, S + k] with each column's agent one-hot."""
    if not group.critic_agent_id:
        return critic_in
    k = len(group.agents)
    ids = np.tile(np.eye(k, dtype=np.float32), (critic_in.shape[0] // k, 1))
    return np.concatenate([critic_in.astype(np.float32, copy=False), ids], axis=1)


def team_step_reward(rewards: list[float], shared: bool) -> float:
    """One step's team reward from the agents' rewards: their sum, or the common reward of a shared-reward
    env (where summing would count the team's reward once per agent)."""
    if not rewards:
        return 0.0
    return float(np.mean(rewards)) if shared else float(np.sum(rewards))


def win_flag(infos: dict) -> float | None:
    """1.0 / 0.0 where any agent's info reports a win key, else None."""
    for info in infos.values():
        if isinstance(info, dict):
            for key in WIN_KEYS:
                if key in info:
                    return float(bool(info[key]))
    return None
