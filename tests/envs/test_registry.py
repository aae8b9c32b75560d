import pytest

from envs import UnknownEnvError, describe_env, make_env, register_env, registered_names


def test_mpe_names_are_registered():
    assert "mpe/simple_spread" in registered_names()


def test_simple_spread_spec_has_agents_spaces_and_state():
    spec = describe_env(make_env("mpe/simple_spread", N=3, max_cycles=25))
    assert spec.agents == ("agent_0", "agent_1", "agent_2")
    assert spec.per_agent["agent_0"].obs_dim == 18
    assert spec.per_agent["agent_0"].action.kind == "discrete" and spec.per_agent["agent_0"].action.n == 5
    assert spec.state_dim == 54


def test_box_actions_are_described():
    spec = describe_env(make_env("mpe/simple_spread", N=2, continuous_actions=True))
    action = spec.per_agent["agent_0"].action
    assert action.kind == "box" and action.shape == (5,) and action.low[0] == 0.0 and action.high[0] == 1.0


def test_module_callable_factory_without_registration():
    env = make_env("tests.faulty_envs:make", fault="raise", at_step=99, N=2)
    assert len(describe_env(env).agents) == 2


def test_unknown_env_lists_registered_names():
    with pytest.raises(UnknownEnvError, match="mpe/simple_spread"):
        make_env("mpe/does_not_exist")
    with pytest.raises(UnknownEnvError, match="cannot import"):
        make_env("no_such_module_xyz:make")


def test_register_refuses_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        register_env("mpe/simple_spread", lambda: None)


def test_heavy_tail_wrapper_gives_long_tailed_episode_lengths():
    env = make_env("wrappers/heavy_tail", env="mpe/simple_spread", env_kwargs={"N": 2, "max_cycles": 300},
                   min_length=5, alpha=1.2, max_length=300)
    lengths = []
    for episode in range(150):
        env.reset(seed=episode)
        steps = 0
        while env.agents:
            _, _, _, truncs, _ = env.step({a: 0 for a in env.agents})
            steps += 1
        assert all(truncs.values())
        lengths.append(steps)
    assert min(lengths) >= 5 and max(lengths) <= 300
    assert max(lengths) > 8 * sorted(lengths)[len(lengths) // 2]  # the tail is far from the median


def test_heavy_tail_rejects_bad_parameters():
    with pytest.raises(ValueError, match="min_length <= max_length"):
        make_env("wrappers/heavy_tail", env="mpe/simple_spread", min_length=50, max_length=10)


def test_aec_env_acting_once_per_cycle_runs_through_the_aec_to_parallel_wrapper():
    env = make_env("wrappers/aec_to_parallel", env="pettingzoo.classic.rps_v2:env", env_kwargs={"num_actions": 5})
    spec = describe_env(env)
    assert spec.agents == ("player_0", "player_1") and spec.per_agent["player_0"].action.n == 5
    _, rewards, _, _, _ = env.step({"player_0": 0, "player_1": 1})
    assert set(rewards) == {"player_0", "player_1"}


def test_aec_to_parallel_wrapper_refuses_a_turn_based_game():
    with pytest.raises(ValueError, match=r"tictactoe_v3:env' cannot run as a ParallelEnv: its agents act in turn"):
        make_env("wrappers/aec_to_parallel", env="pettingzoo.classic.tictactoe_v3:env")
