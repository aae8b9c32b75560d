import numpy as np
import pytest

from envs import describe_env, make_env
from envs.batched import is_batched, random_legal_actions
from envs.registry import resolve_factory


@pytest.fixture(scope="module")
def env():
    return make_env("smax/3m", num_envs=8)


def test_spaces_and_shapes(env):
    assert is_batched(resolve_factory("smax/3m")) and is_batched(env)
    spec = describe_env(env)
    assert spec.agents == ("ally_0", "ally_1", "ally_2") and spec.state_dim == env.state_dim
    agent = spec.per_agent["ally_0"]
    assert agent.has_action_mask and agent.action.n == 8  # 5 moves/stop + 3 enemies to attack
    ob = env.reset(seed=0)
    assert ob.obs.shape == (8, 3, agent.obs_dim) and ob.state.shape == (8, spec.state_dim)
    assert ob.action_mask.shape == (8, 3, 8) and ob.alive.all()


def test_episodes_end_with_win_flags_and_the_won_bonus(env):
    rng = np.random.default_rng(0)
    ob = env.reset(seed=1)
    ended = 0
    for _ in range(150):  # > SMAX's 100-step limit: every copy ends at least once
        st = env.step(random_legal_actions(ob.action_mask, rng))
        assert np.isfinite(st.rewards).all() and (st.rewards == st.rewards[:, :1]).all()  # shared team reward
        won = st.won[st.done] > 0
        assert (st.rewards[st.done][won, 0] >= 1.0).all()  # the won-battle bonus is part of the last reward
        ended += int(st.done.sum())
        ob = st.next
        assert ob.alive[st.done].all()  # ended copies were reset inside the step
    assert ended >= 8


def test_dead_allies_may_only_stop(env):
    rng = np.random.default_rng(2)
    ob = env.reset(seed=2)
    for _ in range(60):
        dead = ~ob.alive
        if dead.any():
            masks = ob.action_mask[dead]
            assert (masks.sum(-1) == 1).all() and masks[:, 4].all()
            return
        ob = env.step(random_legal_actions(ob.action_mask, rng)).next
    pytest.fail("no ally died in 60 random steps")


def test_same_seed_same_trajectory():
    a, b = make_env("smax/2s3z", num_envs=3), make_env("smax/2s3z", num_envs=3)
    oa, ob = a.reset(seed=7), b.reset(seed=7)
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    for _ in range(20):
        sa, sb = a.step(random_legal_actions(oa.action_mask, rng_a)), b.step(random_legal_actions(ob.action_mask, rng_b))
        np.testing.assert_array_equal(sa.next.obs, sb.next.obs)
        np.testing.assert_array_equal(sa.rewards, sb.rewards)
        oa, ob = sa.next, sb.next


def test_bad_map_and_bad_action_shape_are_named(env):
    from envs import UnknownEnvError
    from envs.smax import SMAXBatched

    with pytest.raises(ValueError, match=r"unknown SMAX map 'nope'; valid maps: 3m, 2s3z"):
        SMAXBatched("nope")
    with pytest.raises(UnknownEnvError, match=r"unknown env 'smax/nope'; registered: .*smax/2s3z, smax/3m"):
        make_env("smax/nope")
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions have shape \(8,\), expected .* \(8, 3\)"):
        env.step(np.zeros(8, int))
