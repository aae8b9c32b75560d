"""SMACv2 (StarCraft Multi-Agent Challenge v2) as a PettingZoo ParallelEnv.

Adapter over the real `smacv2` API (github.com/oxwhirl/smacv2):
`StarCraftCapabilityEnvWrapper(capability_config=..., map_name="10gen_<race>", ...)`, SMACv2's
procedurally generated teams and start positions, then `get_obs()`, `get_state()`,
`get_avail_agent_actions(i)` and `step(actions) -> (reward, terminated, info)` with `info["battle_won"]`.

Mapping onto our contract:
- agents `agent_0 .. agent_{n_units-1}`; Dict observations {"observation", "action_mask"}; Discrete actions
  (no-op, stop, 4 moves, one attack per enemy);
- the shared team reward is given to every agent;
- dead agents stay present (as in SMAC) with their zero observation and the no-op-only mask; an action sent
  for a dead agent is replaced by the no-op, an unavailable action for a live agent raises ValueError;
- the episode ends for everyone when SMAC says `terminated` (battle over, or the episode limit, which SMAC
  and SMACv2's MAPPO set-ups treat as terminal, like our SMAX); at the end `infos[agent]` carries
  `win` (= battle_won), `dead_allies` and `dead_enemies`;
- `state()` = SMAC's global state (`get_state()`).

Seeding: the seed of the first `reset(seed=...)` becomes StarCraft II's game seed (SMAC's `seed=` argument,
applied when the game is launched at that reset); every seeded reset also re-seeds SMACv2's scenario
generator (team compositions and start positions), so those are a function of the seed. The game's own
randomness after launch is one stream per SC2 process, so later episodes are not bit-reproducible.

StarCraft II cannot be installed on our CI machine; this adapter runs where SMACv2, the game (4.10) and the
SMAC maps are installed and `SC2PATH` points at the game (docs/environments.md). SMAX (`smax/*`) is the
StarCraft-free stand-in that runs everywhere.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np

_RACES = {
    # race: (map_name, unit types, weights, types that may not make up a whole team) as in smacv2's
    # examples/configs/sc2_gen_<race>.yaml
    "protoss": ("10gen_protoss", ["stalker", "zealot", "colossus"], [0.45, 0.45, 0.1], ["colossus"]),
    "terran": ("10gen_terran", ["marine", "marauder", "medivac"], [0.45, 0.45, 0.1], ["medivac"]),
    "zerg": ("10gen_zerg", ["zergling", "baneling", "hydralisk"], [0.45, 0.1, 0.45], ["baneling"]),
}
_SIZES = ((5, 5), (10, 10), (20, 20), (10, 11), (20, 23))
"""(n_units, n_enemies) of the scenarios in SMACv2's README."""
SCENARIOS = {f"{race}_{a}_vs_{e}": (race, a, e) for race in _RACES for a, e in _SIZES}

MAP_FILE = os.path.join("Maps", "SMAC_Maps", "32x32_flat.SC2Map")
"""The map all `10gen_*` scenarios play on, relative to SC2PATH."""

_INSTALL_HINT = "see docs/environments.md; use smax/* where StarCraft II is not installed"


class SMACv2Unavailable(RuntimeError):
    """SMACv2, StarCraft II or the SMAC maps are missing on this machine."""


def capability_config(race: str, n_units: int, n_enemies: int) -> dict:
    """SMACv2's standard distribution config: weighted team compositions, surrounded-or-reflected starts."""
    _, unit_types, weights, exceptions = _RACES[race]
    return {
        "n_units": n_units,
        "n_enemies": n_enemies,
        "team_gen": {"dist_type": "weighted_teams", "unit_types": list(unit_types), "weights": list(weights),
                     "exception_unit_types": list(exceptions), "observe": True},
        "start_positions": {"dist_type": "surrounded_and_reflect", "p": 0.5, "map_x": 32, "map_y": 32},
    }


def _require_smacv2():
    """The wrapper class, or one error naming everything that is missing."""
    missing = []
    wrapper_cls = None
    try:
        from smacv2.env import StarCraftCapabilityEnvWrapper as wrapper_cls
    except ImportError as exc:
        missing.append(f"the smacv2 package ({exc}): pip install git+https://github.com/oxwhirl/smacv2.git")
    sc2path = os.environ.get("SC2PATH")
    if not sc2path:
        missing.append("StarCraft II 4.10: install it and set SC2PATH to the game's directory")
    elif not os.path.isdir(sc2path):
        missing.append(f"StarCraft II: SC2PATH={sc2path} is not a directory")
    elif not os.path.isdir(os.path.join(sc2path, "Versions")):
        missing.append(f"StarCraft II: SC2PATH={sc2path} holds no game (no Versions/ directory)")
    elif not os.path.isfile(os.path.join(sc2path, MAP_FILE)):
        missing.append(f"the SMACv2 maps: {os.path.join(sc2path, MAP_FILE)} not found (unzip SMACv2's "
                       "SMAC_Maps.zip, whose files sit at its top level, into $SC2PATH/Maps/SMAC_Maps/)")
    if missing:
        raise SMACv2Unavailable("SMACv2 needs StarCraft II and the smacv2 package; missing: "
                                + "; ".join(missing) + f" ({_INSTALL_HINT})")
    return wrapper_cls


def _reseed_generators(obj: Any, seq: np.random.SeedSequence) -> None:
    """Give every numpy Generator inside one of SMACv2's distribution objects (and the distributions it
    holds, e.g. surrounded_and_reflect's two position generators) a fresh stream from `seq`."""
    for name, value in sorted(vars(obj).items()):
        if isinstance(value, np.random.Generator):
            setattr(obj, name, np.random.default_rng(seq.spawn(1)[0]))
        elif type(value).__module__ == type(obj).__module__ and hasattr(value, "__dict__"):
            _reseed_generators(value, seq)


class SMACv2ParallelEnv:
    metadata = {"name": "smacv2", "render_modes": []}

    def __init__(self, scenario: str, n_units: int | None = None, n_enemies: int | None = None,
                 **env_kwargs: Any):
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown SMACv2 scenario {scenario!r}; valid scenarios: {', '.join(SCENARIOS)}")
        self._wrapper_cls = _require_smacv2()
        race, default_units, default_enemies = SCENARIOS[scenario]
        self.scenario = scenario
        self.n_units = int(n_units or default_units)
        self.n_enemies = int(n_enemies or default_enemies)
        self._map_name = _RACES[race][0]
        self._race = race
        # smacv2's example settings (sc2_gen_<race>.yaml): unit ranges, own position observed, no conic FOV.
        self._kwargs = {"conic_fov": False, "obs_own_pos": True, "use_unit_ranges": True, "min_attack_range": 2,
                        **env_kwargs}
        self._env = self._build(self._kwargs.get("seed"))  # building does not start the game
        info = self._env.get_env_info()
        self.n_actions, self.obs_dim = int(info["n_actions"]), int(info["obs_shape"])
        self.state_dim, self.episode_limit = int(info["state_shape"]), int(info["episode_limit"])
        self.possible_agents = [f"agent_{i}" for i in range(int(info["n_agents"]))]
        self.agents: list[str] = []
        self._masks = np.zeros((len(self.possible_agents), self.n_actions), np.int8)
        self._launched = False
        from gymnasium import spaces

        self._obs_space = spaces.Dict({
            "observation": spaces.Box(-np.inf, np.inf, (self.obs_dim,), np.float32),
            "action_mask": spaces.MultiBinary(self.n_actions),
        })
        self._act_space = spaces.Discrete(self.n_actions)

    def _build(self, seed: int | None):
        kwargs = {**self._kwargs, "seed": seed}
        return self._wrapper_cls(capability_config=capability_config(self._race, self.n_units, self.n_enemies),
                                 map_name=self._map_name, **kwargs)

    def observation_space(self, agent: str):
        return self._obs_space

    def action_space(self, agent: str):
        return self._act_space

    def _observations(self) -> dict:
        obs = self._env.get_obs()
        self._masks = np.asarray(self._env.get_avail_actions(), np.int8).reshape(len(self.possible_agents), -1)
        return {a: {"observation": np.asarray(obs[i], np.float32), "action_mask": self._masks[i].copy()}
                for i, a in enumerate(self.possible_agents)}

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            if not self._launched and seed != self._kwargs.get("seed"):
                self._env = self._build(int(seed))  # SC2's game seed is taken when the game launches
            seq = np.random.SeedSequence(int(seed) % 2**63)
            for _, distribution in sorted(self._env.env_key_to_distribution_map.items()):
                _reseed_generators(distribution, seq)
            # the team generator also shuffles with Python's `random`: seed it for this reset only
            saved = random.getstate()
            random.seed(int(seq.generate_state(1)[0]))
            try:
                self._env.reset()
            finally:
                random.setstate(saved)
        else:
            self._env.reset()
        self._launched = True
        self.agents = list(self.possible_agents)
        return self._observations(), {a: {} for a in self.agents}

    def step(self, actions: dict):
        missing = [a for a in self.agents if a not in actions]
        if missing:
            raise ValueError(f"SMACv2 {self.scenario}: no action for {', '.join(missing)}")
        joint = []
        for i, agent in enumerate(self.possible_agents):
            mask = self._masks[i]
            if mask[1:].sum() == 0:  # dead: the no-op is its only action
                joint.append(0)
                continue
            action = int(actions[agent])
            if not (0 <= action < self.n_actions and mask[action]):
                raise ValueError(f"SMACv2 {self.scenario}: {agent} cannot take action {action}; available: "
                                 f"{np.flatnonzero(mask).tolist()}")
            joint.append(action)
        reward, terminated, info = self._env.step(joint)
        agents = self.agents
        observations = self._observations()
        terminated = bool(terminated)
        infos: dict[str, dict] = {a: {} for a in agents}
        if terminated:
            end = {"win": bool(info.get("battle_won", False)), "dead_allies": int(info.get("dead_allies", 0)),
                   "dead_enemies": int(info.get("dead_enemies", 0))}
            infos = {a: dict(end) for a in agents}
            self.agents = []
        return (observations, {a: float(reward) for a in agents}, {a: terminated for a in agents},
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
