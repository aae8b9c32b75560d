"""SMAX (JaxMARL's StarCraft-free SMAC re-implementation), many copies stepped in one jitted call.

`make_env("smax/3m", num_envs=256)` builds a `BatchedEnv` over `HeuristicEnemySMAX`: our agents are the
allies, the enemies follow JaxMARL's built-in heuristic (attack the closest unit), as SMAC's built-in AI
does. Reset, step, auto-reset, available actions, global state and the win flag run inside one
`jax.jit(jax.vmap(...))`; one Python call steps all copies.

Conventions (SMAC's): every ally receives the same team reward (enemy health removed, normalised, plus
1.0 for a won battle); an episode ends when one side is dead (terminal) or after `max_steps` (100)
steps, a time limit reported as `truncated` (the sampler bootstraps it from the final observation, as
MAPPO's SMAC code does with its `bad_masks`); `won` is 1.0 when all enemies are dead and an ally is
alive. Dead allies stay in the arrays with only the stop action available.
Randomness is a pure function of the reset seed, so a request is reproducible.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from envs.batched import BatchedEnv, BatchedObs, BatchedStep, batched_factory

MAPS = ("3m", "2s3z", "5m_vs_6m", "3s5z", "8m", "3s_vs_5z", "6h_vs_8z", "smacv2_5_units", "smacv2_10_units")
"""SMAC map names (and JaxMARL's smacv2-style 5- and 10-unit scenarios) offered as `smax/<map>`."""


class SMAXBatched(BatchedEnv):
    shared_reward = True
    reports_win = True

    def __init__(self, map_name: str, num_envs: int = 1, **env_kwargs: Any):
        if map_name not in MAPS:
            raise ValueError(f"unknown SMAX map {map_name!r}; valid maps: {', '.join(MAPS)}")
        # One XLA thread per process: rollout workers are placed one per CPU.
        os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
        import jax
        import jax.numpy as jnp
        from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario

        self.map_name, self.num_envs = map_name, int(num_envs)
        self._env = env = HeuristicEnemySMAX(scenario=map_name_to_scenario(map_name), **env_kwargs)
        self.possible_agents = tuple(env.agents)
        self.num_allies = env.num_allies
        self.state_dim = int(env.state_size)
        self._jax = jax
        agents = self.possible_agents

        def observe(obs, state):
            masks = env.get_avail_actions(state)
            return (jnp.stack([obs[a] for a in agents]), obs["world_state"],
                    jnp.stack([masks[a] for a in agents]).astype(bool), state.state.unit_alive[: env.num_allies])

        def reset_one(key):
            obs, state = env.reset(key)
            return state, observe(obs, state)

        def step_one(key, state, actions):
            step_key, reset_key = jax.random.split(key)
            obs, next_state, rewards, dones, _ = env.step_env(step_key, state, {a: actions[i] for i, a in enumerate(agents)})
            alive = next_state.state.unit_alive
            enemies_dead, allies_dead = jnp.all(~alive[env.num_allies:]), jnp.all(~alive[: env.num_allies])
            won = enemies_dead & ~allies_dead
            done = dones["__all__"]
            truncated = done & ~enemies_dead & ~allies_dead
            reset_obs, reset_state = env.reset(reset_key)
            pick = lambda fresh, cont: jax.lax.select(done, fresh, cont)  # noqa: E731
            state_out = jax.tree.map(pick, reset_state, next_state)
            obs_out = jax.tree.map(pick, reset_obs, obs)
            return (state_out, observe(obs_out, state_out), jnp.stack([rewards[a] for a in agents]), done, won,
                    truncated, observe(obs, next_state))

        self._reset = jax.jit(jax.vmap(reset_one))
        self._step = jax.jit(jax.vmap(step_one))
        self._key = jax.random.PRNGKey(0)
        self._state = None

    def observation_space(self, agent: str):
        from gymnasium import spaces

        size = int(self._env.observation_spaces[agent].shape[0])
        n = int(self._env.action_spaces[agent].n)
        return spaces.Dict({
            "observation": spaces.Box(-np.inf, np.inf, (size,), np.float32),
            "action_mask": spaces.MultiBinary(n),
        })

    def action_space(self, agent: str):
        from gymnasium import spaces

        return spaces.Discrete(int(self._env.action_spaces[agent].n))

    def reset(self, seed: int) -> BatchedObs:
        jax = self._jax
        self._key, reset_key = jax.random.split(jax.random.PRNGKey(int(seed)))
        self._state, observed = self._reset(jax.random.split(reset_key, self.num_envs))
        return _to_numpy(observed)

    def step(self, actions: np.ndarray) -> BatchedStep:
        if self._state is None:
            raise RuntimeError("SMAX: step() before reset()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs, len(self.possible_agents)):
            raise ValueError(f"SMAX {self.map_name}: actions have shape {actions.shape}, "
                             f"expected (num_envs, agents) = {(self.num_envs, len(self.possible_agents))}")
        jax = self._jax
        self._key, step_key = jax.random.split(self._key)
        self._state, observed, rewards, done, won, truncated, final = self._step(
            jax.random.split(step_key, self.num_envs), self._state, actions.astype(np.int32))
        return BatchedStep(next=_to_numpy(observed), rewards=np.asarray(rewards, np.float32),
                           done=np.asarray(done, bool), won=np.asarray(won, np.float32),
                           truncated=np.asarray(truncated, bool), final=_to_numpy(final))


def _to_numpy(observed) -> BatchedObs:
    obs, state, masks, alive = observed
    return BatchedObs(obs=np.asarray(obs, np.float32), state=np.asarray(state, np.float32),
                      action_mask=np.asarray(masks, bool), alive=np.asarray(alive, bool))


def _factory(map_name: str):
    @batched_factory
    def make(num_envs: int = 1, **kwargs: Any) -> SMAXBatched:
        return SMAXBatched(map_name, num_envs=num_envs, **kwargs)

    make.__name__ = f"make_smax_{map_name}"
    return make


FACTORIES = {f"smax/{name}": _factory(name) for name in MAPS}
