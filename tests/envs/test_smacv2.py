import os

import numpy as np
import pytest

from envs import describe_env, make_env

HAVE_SC2 = bool(os.environ.get("SC2PATH"))


def test_without_starcraft_the_error_says_what_to_install(monkeypatch):
    monkeypatch.delenv("SC2PATH", raising=False)
    with pytest.raises(RuntimeError, match=r"SMACv2 needs StarCraft II: set SC2PATH.*smax/\*"):
        make_env("smacv2/protoss_5_vs_5")


def test_unknown_scenario_lists_valid_ones():
    from envs.smacv2 import SMACv2ParallelEnv

    with pytest.raises(ValueError, match=r"unknown SMACv2 scenario 'protoss_3_vs_3'; valid scenarios: protoss_5_vs_5"):
        SMACv2ParallelEnv("protoss_3_vs_3")


@pytest.mark.skipif(not HAVE_SC2, reason="StarCraft II not installed (SC2PATH unset)")
def test_random_episode_on_the_real_game():
    pytest.importorskip("smacv2", reason="smacv2 not installed")
    env = make_env("smacv2/protoss_5_vs_5")
    try:
        spec = describe_env(env)
        assert len(spec.agents) == 5 and spec.per_agent["agent_0"].has_action_mask and spec.state_dim
        obs, _ = env.reset()
        rng = np.random.default_rng(0)
        for _ in range(400):
            actions = {a: int(rng.choice(np.flatnonzero(obs[a]["action_mask"]))) for a in env.agents}
            obs, rewards, terms, _, infos = env.step(actions)
            if not env.agents:
                break
        assert all(terms.values()) and isinstance(infos["agent_0"]["win"], bool)
    finally:
        env.close()
