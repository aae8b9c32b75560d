"""The critic's input (agent id) and how episodes cut by a time limit are bootstrapped, per sampler."""

from dataclasses import replace

import numpy as np
import pytest
from gymnasium import spaces

from envs import describe_env, make_env
from envs.batched import BatchedEnv, BatchedObs, BatchedStep, batched_factory
from flexmarl.config import ConfigError
from flexmarl.groups import build_groups
from flexmarl.rollout import RolloutRequest, RolloutWorker
from flexmarl.trainer import GroupTrainer
from tests.conftest import small_config

LENGTH, CRITIC_VALUE, GAMMA = 3, 5.0, 0.9


class Countdown:
    """Two agents, reward 1 per step, every episode ends after LENGTH steps: a truncation (time limit) or,
    with `terminal=True`, a terminal state."""

    metadata: dict = {}
    possible_agents = ["a", "b"]

    def __init__(self, terminal: bool = False):
        self.terminal, self.agents, self.t = terminal, [], 0

    def observation_space(self, agent):
        return spaces.Box(0.0, 1.0, (2,), np.float32)

    def action_space(self, agent):
        return spaces.Discrete(2)

    def _obs(self):
        return {a: np.array([self.t / LENGTH, i], np.float32) for i, a in enumerate(self.possible_agents)}

    def reset(self, seed=None, options=None):
        self.t, self.agents = 0, list(self.possible_agents)
        return self._obs(), {a: {} for a in self.agents}

    def step(self, actions):
        self.t += 1
        done, agents = self.t >= LENGTH, self.agents
        self.agents = [] if done else agents
        obs = self._obs()
        return (obs, {a: 1.0 for a in agents}, {a: done and self.terminal for a in agents},
                {a: done and not self.terminal for a in agents}, {a: {} for a in agents})

    def state(self):
        return np.full(3, self.t / LENGTH, np.float32)


class BatchedCountdown(BatchedEnv):
    """`Countdown` under the batched contract: copies reset inside the step that ends them."""

    possible_agents = ("a", "b")
    state_dim = 3

    def __init__(self, num_envs: int = 1, terminal: bool = False):
        self.num_envs, self.terminal = num_envs, terminal
        self.t = np.zeros(num_envs, int)

    def observation_space(self, agent):
        return spaces.Box(0.0, 1.0, (2,), np.float32)

    def action_space(self, agent):
        return spaces.Discrete(2)

    def _observe(self, t):
        obs = np.stack([np.stack([t / LENGTH, np.full(len(t), i)], 1) for i in range(2)], 1).astype(np.float32)
        state = np.repeat((t / LENGTH)[:, None], 3, 1).astype(np.float32)
        return BatchedObs(obs, state, np.ones((len(t), 2, 2), bool), np.ones((len(t), 2), bool))

    def reset(self, seed):
        self.t[:] = 0
        return self._observe(self.t)

    def step(self, actions):
        self.t += 1
        done = self.t >= LENGTH
        final = self._observe(self.t)
        self.t[done] = 0
        return BatchedStep(self._observe(self.t), np.ones((self.num_envs, 2), np.float32), done,
                           np.zeros(self.num_envs, np.float32), truncated=done & (not self.terminal), final=final)


def make_countdown(terminal: bool = False):
    return Countdown(terminal)


@batched_factory
def make_batched_countdown(num_envs: int = 1, terminal: bool = False):
    return BatchedCountdown(num_envs, terminal)


def _constant_critic_worker(cfg) -> RolloutWorker:
    """A worker whose critic predicts CRITIC_VALUE everywhere (so bootstrapped returns are easy to read)."""
    worker = RolloutWorker(cfg)
    weights = {}
    for g in worker.groups:
        w = GroupTrainer(cfg, g, seed=0).get_weights()
        w["policy"]["critic.head.weight"][:] = 0.0
        w["policy"]["critic.head.bias"][:] = CRITIC_VALUE
        weights[g.name] = w
    worker.set_weights(weights, 0)
    return worker


def _countdown_cfg(factory: str, terminal: bool, **algo):
    return small_config(env={"name": f"tests.flexmarl.rollout.test_critic_inputs:{factory}",
                             "kwargs": {"terminal": terminal}, "global_state": "env"},
                        rollout={"envs_per_worker": 2, "fragment_length": 2 * LENGTH},
                        run={"batch_env_steps": 4 * LENGTH},
                        algo={"gamma": GAMMA, "gae_lambda": 1.0, "value_norm": False, **algo})


@pytest.mark.parametrize("factory", ["make_countdown", "make_batched_countdown"])
@pytest.mark.parametrize("terminal", [False, True])
def test_both_samplers_bootstrap_a_truncated_episode_and_not_a_terminated_one(factory, terminal):
    worker = _constant_critic_worker(_countdown_cfg(factory, terminal))
    row = worker.sample(RolloutRequest("r", 0, seed=0, num_steps=2 * LENGTH)).rows["shared"]
    returns = row["returns"].reshape(2 * LENGTH, 4)  # [T, envs * agents], time-major
    last_step = 1.0 + (0.0 if terminal else GAMMA * CRITIC_VALUE)
    # lambda = 1: each step's return is the discounted rewards to the episode's end, then the bootstrap
    expected = [sum(GAMMA**i for i in range(LENGTH - 1 - t)) + GAMMA ** (LENGTH - 1 - t) * last_step
                for t in range(LENGTH)]
    np.testing.assert_allclose(returns[:LENGTH], np.repeat(np.array(expected)[:, None], 4, 1), rtol=1e-5)
    # the second episode of each copy ends with the fragment, the same way
    np.testing.assert_allclose(returns[LENGTH:], returns[:LENGTH], rtol=1e-5)


def test_the_critic_input_ends_with_the_agents_one_hot():
    worker = _constant_critic_worker(small_config())  # MPE: per-agent rewards, centralised critic
    row = worker.sample(RolloutRequest("r", 0, seed=1, num_steps=25)).rows["shared"]
    one_hot = row["critic_in"][0, :, -3:]
    np.testing.assert_array_equal(one_hot, np.eye(3, dtype=np.float32)[row["agent_index"][0]])
    off = RolloutWorker(small_config(algo={"critic_agent_id": False}))
    assert off.groups[0].critic_dim == 54 and worker.groups[0].critic_dim == 57


def test_batched_sampler_appends_the_agent_id_too():
    worker = _constant_critic_worker(_countdown_cfg("make_batched_countdown", False, critic_agent_id=True))
    row = worker.sample(RolloutRequest("r", 0, seed=0, num_steps=LENGTH)).rows["shared"]
    assert row["critic_in"].shape[-1] == 3 + 2
    np.testing.assert_array_equal(row["critic_in"][0, :, 3:], np.eye(2, dtype=np.float32)[row["agent_index"][0]])


@pytest.mark.parametrize("algo, groups, shared_reward, expected", [
    ({"name": "mappo"}, "shared", False, True),        # centralised critic, agents' rewards differ
    ({"name": "ippo"}, "shared", False, False),        # local critic: each reads its own observation
    ({"name": "mappo"}, "independent", False, False),  # one agent per critic
    ({"name": "mappo"}, "shared", True, False),        # one team reward: one value per state
    ({"name": "mappo", "critic_agent_id": True}, "shared", True, True),
    ({"name": "mappo", "critic_agent_id": False}, "shared", False, False),
])
def test_the_default_agent_id_rule(algo, groups, shared_reward, expected):
    cfg = small_config(algo=algo, env={"groups": groups})
    spec = describe_env(make_env(cfg.env.name, **cfg.env.kwargs))
    layouts = build_groups(cfg, replace(spec, shared_reward=shared_reward))
    assert all(g.critic_agent_id == expected for g in layouts)


def test_a_bad_agent_id_choice_is_a_config_error():
    with pytest.raises(ConfigError, match="algo.critic_agent_id"):
        small_config(algo={"critic_agent_id": "sometimes"})
