import os
import sys
import types

import numpy as np
import pytest

from envs import describe_env, make_env
from envs.smacv2 import SMACv2ParallelEnv, SMACv2Unavailable

HAVE_SC2 = bool(os.environ.get("SC2PATH"))


def test_without_starcraft_the_error_says_what_to_install(monkeypatch):
    monkeypatch.delenv("SC2PATH", raising=False)
    with pytest.raises(SMACv2Unavailable, match=r"StarCraft II 4.10: install it and set SC2PATH.*smax/\*"):
        make_env("smacv2/protoss_5_vs_5")


def test_without_the_package_the_error_names_it(monkeypatch):
    for name in ("smacv2", "smacv2.env"):
        monkeypatch.setitem(sys.modules, name, None)  # `from smacv2.env import ...` now raises ImportError
    monkeypatch.delenv("SC2PATH", raising=False)
    with pytest.raises(SMACv2Unavailable, match=r"pip install git\+https://github.com/oxwhirl/smacv2.git.*SC2PATH"):
        make_env("smacv2/terran_10_vs_10")


def test_unknown_scenario_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown SMACv2 scenario 'protoss_3_vs_3'; valid scenarios: protoss_5_vs_5"):
        SMACv2ParallelEnv("protoss_3_vs_3")


class _FakeSMAC:
    """Just enough of smacv2's StarCraftCapabilityEnvWrapper to check the mapping (no StarCraft II): 3 agents,
    7 actions (no-op, stop, 4 moves, 1 attack); agent 2 dies at step 1; the battle is won at step 3."""

    instances: list = []

    def __init__(self, capability_config, map_name, **kwargs):
        self.capability_config, self.map_name, self.kwargs = capability_config, map_name, kwargs
        self.env_key_to_distribution_map = {}
        self.t, self.sent = 0, []
        _FakeSMAC.instances.append(self)

    def get_env_info(self):
        return {"n_agents": 3, "n_actions": 7, "obs_shape": 4, "state_shape": 9, "episode_limit": 10}

    def reset(self):
        self.t = 0

    def _dead(self, i):
        return i == 2 and self.t >= 1

    def get_obs(self):
        return [np.zeros(4) if self._dead(i) else np.full(4, i + 1.0) for i in range(3)]

    def get_avail_actions(self):
        return [[1, 0, 0, 0, 0, 0, 0] if self._dead(i) else [0, 1, 1, 1, 1, 1, 1] for i in range(3)]

    def get_state(self):
        return np.arange(9.0) + self.t

    def step(self, actions):
        self.sent.append(list(actions))
        self.t += 1
        info = {"battle_won": self.t == 3, "dead_allies": int(self.t >= 1), "dead_enemies": int(self.t == 3)}
        return 0.5, self.t == 3, info

    def close(self):
        pass


@pytest.fixture
def fake_smacv2(monkeypatch, tmp_path):
    module = types.ModuleType("smacv2.env")
    module.StarCraftCapabilityEnvWrapper = _FakeSMAC
    monkeypatch.setitem(sys.modules, "smacv2", types.ModuleType("smacv2"))
    monkeypatch.setitem(sys.modules, "smacv2.env", module)
    (tmp_path / "Versions").mkdir()
    (tmp_path / "Maps" / "SMAC_Maps").mkdir(parents=True)
    (tmp_path / "Maps" / "SMAC_Maps" / "32x32_flat.SC2Map").write_bytes(b"")
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    _FakeSMAC.instances.clear()
    return _FakeSMAC


def test_mapping_onto_the_parallel_env_contract(fake_smacv2):
    env = make_env("smacv2/zerg_10_vs_11", seed=5)
    smac = fake_smacv2.instances[-1]
    config = smac.capability_config
    assert smac.map_name == "10gen_zerg" and (config["n_units"], config["n_enemies"]) == (10, 11)
    assert config["team_gen"]["unit_types"] == ["zergling", "baneling", "hydralisk"]
    assert config["start_positions"]["dist_type"] == "surrounded_and_reflect" and smac.kwargs["seed"] == 5

    spec = describe_env(env, seed=5)
    assert spec.agents == ("agent_0", "agent_1", "agent_2") and spec.state_dim == 9
    assert spec.per_agent["agent_0"].has_action_mask and spec.per_agent["agent_0"].action.n == 7
    obs, _ = env.reset(seed=5)
    assert obs["agent_1"]["observation"].tolist() == [2.0] * 4 and obs["agent_1"]["action_mask"][0] == 0

    obs, rewards, terms, truncs, infos = env.step({a: 1 for a in env.agents})
    assert rewards == {"agent_0": 0.5, "agent_1": 0.5, "agent_2": 0.5}  # the team reward, to everyone
    assert set(obs) == set(env.agents) == {"agent_0", "agent_1", "agent_2"}  # the dead agent stays present
    assert obs["agent_2"]["action_mask"].tolist() == [1, 0, 0, 0, 0, 0, 0] and not obs["agent_2"]["observation"].any()
    assert not any(terms.values()) and infos["agent_0"] == {}

    with pytest.raises(ValueError, match="agent_0 cannot take action 0"):
        env.step({"agent_0": 0, "agent_1": 1, "agent_2": 0})
    env.step({"agent_0": 6, "agent_1": 2, "agent_2": 4})  # a dead agent's action becomes the no-op
    assert smac.sent[-1] == [6, 2, 0]
    np.testing.assert_array_equal(env.state(), np.arange(9.0) + 2)

    obs, rewards, terms, truncs, infos = env.step({"agent_0": 1, "agent_1": 1, "agent_2": 0})
    assert all(terms.values()) and not any(truncs.values()) and not env.agents
    assert infos["agent_1"] == {"win": True, "dead_allies": 1, "dead_enemies": 1}


def test_first_seed_becomes_the_game_seed(fake_smacv2):
    env = make_env("smacv2/protoss_5_vs_5")
    assert fake_smacv2.instances[-1].kwargs["seed"] is None
    env.reset(seed=11)  # before the game is launched: rebuilt with SC2's seed
    assert fake_smacv2.instances[-1].kwargs["seed"] == 11 and env._env is fake_smacv2.instances[-1]
    built = len(fake_smacv2.instances)
    env.reset(seed=12)  # the game is running: only the scenario generator is re-seeded
    assert len(fake_smacv2.instances) == built


@pytest.mark.skipif(not HAVE_SC2, reason="StarCraft II not installed (SC2PATH unset)")
def test_random_episode_on_the_real_game():
    pytest.importorskip("smacv2", reason="StarCraft II not installed (SC2PATH unset) or smacv2 not importable")
    env = make_env("smacv2/protoss_5_vs_5")
    try:
        spec = describe_env(env)
        assert len(spec.agents) == 5 and spec.per_agent["agent_0"].has_action_mask and spec.state_dim
        obs, _ = env.reset(seed=0)
        rng = np.random.default_rng(0)
        for _ in range(env.episode_limit + 1):
            actions = {a: int(rng.choice(np.flatnonzero(obs[a]["action_mask"]))) for a in env.agents}
            obs, rewards, terms, _, infos = env.step(actions)
            assert len(set(rewards.values())) == 1 and np.asarray(env.state()).shape == (spec.state_dim,)
            if not env.agents:
                break
        assert all(terms.values()) and isinstance(infos["agent_0"]["win"], bool)
    finally:
        env.close()
