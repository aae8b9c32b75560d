"""SMACv2 (StarCraft Multi-Agent Challenge v2) as a PettingZoo ParallelEnv.

Adapter over the real `smacv2` API: `StarCraftCapabilityEnvWrapper(capability_config=..., map_name=...)`
with SMACv2's procedurally generated teams and start positions, then `get_obs()`, `get_state()`,
`get_avail_agent_actions(i)`, `step(actions) -> (reward, terminated, info)` with `info["battle_won"]`.
Mapping onto our contract: Dict observations {"observation", "action_mask"}; the shared team reward is
given to every agent; dead agents stay present with their (zero) observation and the no-op-only mask, as
in SMAC; `infos[agent]["win"]` = battle_won at the end; `state()` = SMAC's global state.

StarCraft II cannot be installed on our CI machine; this adapter runs where SMACv2 and the game are
installed (see docs/environments.md) and `SC2PATH` points at the game. SMAX (`smax/*`) is the
StarCraft-free stand-in that runs everywhere.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

_RACES = {
    # race: (map_name, unit types, weights, types that may not make up a whole team)
    "protoss": ("10gen_protoss", ["stalker", "zealot", "colossus"], [0.45, 0.45, 0.1], ["colossus"]),
    "terran": ("10gen_terran", ["marine", "marauder", "medivac"], [0.45, 0.45, 0.1], ["medivac"]),
    "zerg": ("10gen_zerg", ["zergling", "baneling", "hydralisk"], [0.45, 0.1, 0.45], ["baneling"]),
}
SCENARIOS = {f"{race}_{n}_vs_{n}": (race, n) for race in _RACES for n in (5, 10)}


def capability_config(race: str, n_units: int, n_enemies: int) -> dict:
    """SMACv2's standard distribution config: weighted team compositions, surrounded-or-reflected starts."""
    _, unit_types, weights, exceptions = _RACES[race]
    return {
        "n_units": n_units,
        "n_enemies": n_enemies,
        "team_gen": {"dist_type": "weighted_teams", "unit_types": unit_types, "weights": weights,
                     "exception_unit_types": exceptions, "observe": True},
        "start_positions": {"dist_type": "surrounded_and_reflect", "p": 0.5, "n_enemies": n_enemies,
                            "map_x": 32, "map_y": 32},
    }


class SMACv2ParallelEnv:
    metadata = {"name": "smacv2", "render_modes": []}

    def __init__(self, scenario: str, **env_kwargs: Any):
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown SMACv2 scenario {scenario!r}; valid scenarios: {', '.join(SCENARIOS)}")
        if not os.environ.get("SC2PATH"):
            raise RuntimeError("SMACv2 needs StarCraft II: set SC2PATH to the game's directory "
                               "(see docs/environments.md; use smax/* where StarCraft II is not installed)")
        try:
            from smacv2.env.starcraft2.wrapper import StarCraftCapabilityEnvWrapper
        except ImportError as exc:
            raise ImportError("smacv2 is not installed: pip install git+https://github.com/oxwhirl/smacv2.git "
                              "(see docs/environments.md)") from exc
        race, n = SCENARIOS[scenario]
        options = {"conic_fov": False, "obs_own_pos": True, "use_unit_ranges": True, "min_attack_range": 2,
                   **env_kwargs}
        self._env = StarCraftCapabilityEnvWrapper(capability_config=capability_config(race, n, n),
                                                  map_name=_RACES[race][0], **options)
        info = self._env.get_env_info()
        self.n_actions, self.obs_dim, self.state_dim = info["n_actions"], info["obs_shape"], info["state_shape"]
        self.possible_agents = [f"agent_{i}" for i in range(info["n_agents"])]
        self.agents: list[str] = []
        from gymnasium import spaces

        self._obs_space = spaces.Dict({
            "observation": spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32),
            "action_mask": spaces.MultiBinary(self.n_actions),
        })
        self._act_space = spaces.Discrete(self.n_actions)

    def observation_space(self, agent: str):
        return self._obs_space

    def action_space(self, agent: str):
        return self._act_space

    def _observations(self) -> dict:
        obs = self._env.get_obs()
        return {a: {"observation": np.asarray(obs[i], np.float32),
                    "action_mask": np.asarray(self._env.get_avail_agent_actions(i), np.int8)}
                for i, a in enumerate(self.possible_agents)}

    def reset(self, seed: int | None = None, options: dict | None = None):
        self._env.reset()  # SMACv2 seeds at construction (`seed=` in env kwargs), not per reset
        self.agents = list(self.possible_agents)
        return self._observations(), {a: {} for a in self.agents}

    def step(self, actions: dict):
        reward, terminated, info = self._env.step([int(actions[a]) for a in self.possible_agents])
        agents = self.agents
        observations = self._observations()
        infos = {a: {} for a in agents}
        if terminated:
            infos = {a: {"win": bool(info.get("battle_won", False))} for a in agents}
            self.agents = []
        return (observations, {a: float(reward) for a in agents}, {a: bool(terminated) for a in agents},
                {a: False for a in agents}, infos)

    def state(self) -> np.ndarray:
        return np.asarray(self._env.get_state(), np.float32)

    def close(self) -> None:
        self._env.close()


def _factory(scenario: str):
    def make(**kwargs: Any) -> SMACv2ParallelEnv:
        return SMACv2ParallelEnv(scenario, **kwargs)

    make.__name__ = f"make_smacv2_{scenario}"
    return make


FACTORIES = {f"smacv2/{name}": _factory(name) for name in SCENARIOS}
