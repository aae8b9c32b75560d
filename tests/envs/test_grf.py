import numpy as np
import pytest

from envs import describe_env, make_env
from envs.grf import checkpoints_reached

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
    assert all(term or truncs[a] for a, term in terms.items()) and not env.agents
    info = infos["player_0"]
    assert info["win"] == (info["score"] > 0) and isinstance(info["win"], bool)


def _play(env, seed, steps=40):
    obs, _ = env.reset(seed=seed)
    out = [obs["player_0"]]
    for t in range(steps):
        obs = env.step({a: (t * 7 + i) % 19 for i, a in enumerate(env.agents)})[0]
        out.append(obs["player_0"])
        if not env.agents:
            break
    return np.stack(out)


def test_an_episode_is_a_function_of_seed_and_actions():
    """GRF re-seeds its engine at each reset: same seed -> same episode whatever the copy played before;
    another seed -> another episode (the engine's randomness is not frozen at the first seed)."""
    env = make_env("grf/academy_3_vs_1_with_keeper", rewards="scoring")
    first, other, again = _play(env, 3), _play(env, 4), _play(env, 3)
    env.close()
    fresh = make_env("grf/academy_3_vs_1_with_keeper", rewards="scoring")
    in_fresh_copy = _play(fresh, 3)
    fresh.close()
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, in_fresh_copy)
    assert first.shape != other.shape or not np.array_equal(first, other)


def test_team_reward_sum_gives_every_player_the_sum_of_the_players_rewards():
    own = make_env("grf/academy_3_vs_1_with_keeper", rewards="scoring,checkpoints")
    team = make_env("grf/academy_3_vs_1_with_keeper", rewards="scoring,checkpoints", team_reward="sum")
    assert describe_env(team, seed=0).shared_reward and not describe_env(own, seed=0).shared_reward
    own.reset(seed=5), team.reset(seed=5)
    paid = 0.0
    for t in range(200):  # 12 = short pass, 5 = move right, 16 = sprint: the attackers run for the goal
        actions = {a: (5, 16, 12)[(t + i) % 3] for i, a in enumerate(own.possible_agents)}
        own_rewards, team_rewards = own.step(actions)[1], team.step(actions)[1]
        total = sum(own_rewards.values())
        assert team_rewards == pytest.approx({a: total for a in own_rewards})
        paid += abs(total)
        if not own.agents:
            break
    own.close(), team.close()
    assert paid > 0  # a checkpoint or a goal was paid, so the sums were tested on non-zero rewards


def test_checkpoint_zones_are_reached_in_order_by_distance_to_goal():
    assert checkpoints_reached(0, (0.0, 0.0)) == 0  # 1.0 from goal: outside the first zone (0.99)
    assert checkpoints_reached(0, (0.7, -0.28)) == 7  # pass_and_shoot's attackers start 0.41 from goal
    assert checkpoints_reached(7, (0.7, -0.28)) == 7  # nothing twice
    assert checkpoints_reached(3, (1.0, 0.0)) == 10
    with pytest.raises(ValueError, match="team_reward 'max'; allowed: false, true, 'sum', 'first'"):
        make_env("grf/academy_pass_and_shoot_with_keeper", team_reward="max")


def test_team_reward_pays_each_checkpoint_zone_once_per_team():
    """`team_reward=True`: the same reward for every agent, at most 1.0 of checkpoints per episode before the
    goal, where the per-player sum pays the zones again after a pass (random play finds such a pass)."""
    summed = make_env("grf/academy_pass_and_shoot_with_keeper", team_reward="sum")
    team = make_env("grf/academy_pass_and_shoot_with_keeper", team_reward=True)
    assert describe_env(team, seed=0).shared_reward
    paid_twice = False
    for seed in range(30):
        summed.reset(seed=seed), team.reset(seed=seed)
        rng, sum_total, team_total = np.random.default_rng(seed), 0.0, 0.0
        while team.agents:
            actions = {a: int(rng.integers(19)) for a in team.agents}
            sum_rewards = summed.step(actions)[1]
            _, team_rewards, _, _, infos = team.step(actions)
            assert len(set(team_rewards.values())) == 1
            sum_total, team_total = sum_total + sum_rewards["player_0"], team_total + team_rewards["player_0"]
        score = infos["player_0"]["score"]
        assert team_total - score <= 1.0 + 1e-6
        paid_twice |= sum_total - 2 * score > 1.0 + 1e-6
        if paid_twice and seed >= 5:
            break
    summed.close(), team.close()
    assert paid_twice


def test_team_reward_first_gives_every_agent_the_first_players_reward():
    """`team_reward="first"` (HARL's `rew[0]`): slot 0 drives the keeper while slot 1's attacker has the ball,
    then the receiver, so the pass pays the receiver's zones to everyone and the goal pays slot 0's rest."""
    own = make_env("grf/academy_pass_and_shoot_with_keeper")
    first = make_env("grf/academy_pass_and_shoot_with_keeper", team_reward="first")
    assert describe_env(first, seed=0).shared_reward
    own.reset(seed=3)
    observations, _ = first.reset(seed=3)
    driven = lambda obs: [int(np.argmax(obs[a][97:108])) for a in first.possible_agents]  # noqa: E731 (active one-hot)
    assert driven(observations) == [0, 2]  # slot 0: the keeper; slot 1: the attacker next to the ball
    t, first_total = 0, 0.0
    while first.agents:
        actions = {a: 11 if t < 2 else 12 for a in first.possible_agents}  # short pass, then shoot
        own_rewards = own.step(actions)[1]
        observations, first_rewards, *_ = first.step(actions)
        assert first_rewards == pytest.approx({a: own_rewards["player_0"] for a in own_rewards})
        if first_rewards["player_0"] > 0 and first_total == 0:  # the pass arrived: slot 0 drives the receiver
            assert driven(observations) == [1, 2]
        first_total, t = first_total + first_rewards["player_1"], t + 1
    own.close(), first.close()
    assert first_total == pytest.approx(2.0)  # the pass (the receiver's 7 zones), then the goal (1 + 3 zones)


def test_running_out_of_game_time_is_a_truncation():
    env = make_env("grf/academy_3_vs_1_with_keeper")
    env.reset(seed=0)
    env._env.unwrapped._env._env.config.game_duration = 10  # the engine's clock (the scenario sets 400)
    for _ in range(11):  # GRF ends the episode on the step after the clock reaches game_duration
        _, _, terms, truncs, _ = env.step({a: 0 for a in env.agents})  # idle: nothing else ends the episode
    env.close()
    assert not env.agents and all(truncs.values()) and not any(terms.values())


def test_a_terminal_time_limit_ends_the_episode_and_puts_the_clock_in_the_state():
    env = make_env("grf/academy_3_vs_1_with_keeper", time_limit="terminal")
    env.reset(seed=0)
    assert env.state().shape == (3 * 115 + 1,) and env.state()[-1] == 1.0
    env._env.unwrapped._env._env.config.game_duration = 10  # the engine's clock (the scenario sets 400)
    for step in range(11):
        _, _, terms, truncs, _ = env.step({a: 0 for a in env.agents})
        if step == 4:
            halfway = env.state()[-1]
    env.close()
    assert not env.agents and all(terms.values()) and not any(truncs.values())
    assert 0.0 < halfway < 1.0 and env.state()[-1] == 0.0
    with pytest.raises(ValueError, match="time_limit 'never'; allowed: 'truncation', 'terminal'"):
        make_env("grf/academy_3_vs_1_with_keeper", time_limit="never")


def test_unknown_scenario_lists_valid_ones():
    from envs.grf import FootballParallelEnv

    with pytest.raises(ValueError, match=r"unknown GRF scenario '11_vs_11'; valid scenarios: academy_3_vs_1"):
        FootballParallelEnv("11_vs_11")


def test_missing_gfootball_names_make_grf(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gfootball.env", None)  # import gfootball.env now raises ImportError
    env = make_env("grf/academy_3_vs_1_with_keeper")  # building is lazy: the engine starts at reset
    with pytest.raises(ImportError, match="run `make grf`"):
        env.reset(seed=0)
