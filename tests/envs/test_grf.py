import numpy as np
import pytest

from envs import describe_env, make_env

pytest.importorskip("gfootball", reason="Google Research Football not built (run `make grf`)")


@pytest.fixture(scope="module")
def env():
    env = make_env("grf/academy_3_vs_1_with_keeper")
    yield env
    env.close()


def test_spaces_agents_and_state(env):
    spec = describe_env(env, seed=0)
    assert spec.agents == ("player_0", "player_1", "player_2") and spec.state_dim == 3 * 115
    assert spec.per_agent["player_0"].obs_dim == 115 and spec.per_agent["player_0"].action.n == 19


def test_random_episode_ends_with_score_and_win_flags(env):
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(401):  # academy episodes last at most 400 steps
        obs, rewards, terms, truncs, infos = env.step({a: int(rng.integers(19)) for a in env.agents})
        assert set(rewards) == {"player_0", "player_1", "player_2"} and np.isfinite(list(rewards.values())).all()
        if not env.agents:
            break
    assert all(terms.values()) and not env.agents
    info = infos["player_0"]
    assert info["win"] == (info["score"] > 0) and isinstance(info["win"], bool)


def test_same_actions_same_trajectory():
    def play():
        env = make_env("grf/academy_3_vs_1_with_keeper", rewards="scoring")
        env.reset(seed=3)
        out = [env.step({a: (t * 7 + i) % 19 for i, a in enumerate(env.agents)})[0]["player_0"] for t in range(30)]
        env.close()
        return np.stack(out)

    np.testing.assert_array_equal(play(), play())


def test_unknown_scenario_lists_valid_ones():
    from envs.grf import FootballParallelEnv

    with pytest.raises(ValueError, match=r"unknown GRF scenario '11_vs_11'; valid scenarios: academy_3_vs_1"):
        FootballParallelEnv("11_vs_11")
