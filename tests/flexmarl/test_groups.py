"""Group layouts on envs PettingZoo ships: the critic's input width, a broken state(), mixed agent spaces."""

import pytest

from envs import describe_env
from flexmarl.config import ConfigError
from flexmarl.groups import build_groups, groups_by_spaces


def _pursuit_spec():
    from pettingzoo.sisl import pursuit_v5

    return describe_env(pursuit_v5.parallel_env())


@pytest.mark.parametrize("global_state, critic_dim, frames", [("concat_obs", 8 * 147, 8), ("env", 768, 1)])
def test_critic_width_follows_global_state_when_the_env_has_a_state(make_cfg, global_state, critic_dim, frames):
    # pursuit: 8 agents with 7x7x3 images and a 16x16x3 state(); concat_obs stacks the 8 observations
    spec = _pursuit_spec()
    assert spec.state_dim == 768
    (group,) = build_groups(make_cfg(env={"global_state": global_state}), spec)
    assert group.critic_dim == critic_dim and group.critic_image.frames == frames
    assert group.critic_image.height == (7 if global_state == "concat_obs" else 16)


def test_a_broken_state_is_refused_only_where_the_critic_would_read_it(make_cfg):
    # rock-paper-scissors keeps a dict in `self.state`, so PettingZoo's wrappers' state() raises TypeError
    from pettingzoo.classic import rps_v2

    spec = describe_env(rps_v2.parallel_env())
    assert spec.state_dim is None and "TypeError" in spec.state_problem
    shared = build_groups(make_cfg(env={"global_state": "concat_obs"}), spec)[0]
    assert shared.critic_dim == 2 * 4 + 2 * shared.critic_agent_id  # both one-hot observations (+ the agent id)
    assert build_groups(make_cfg(algo={"name": "ippo"}, env={"global_state": "env"}), spec)[0].critic_dim == 4
    with pytest.raises(ConfigError, match=r"'env.global_state'.*'concat_obs' for .*state\(\) raised TypeError"):
        build_groups(make_cfg(env={"global_state": "env"}), spec)


def test_mixed_spaces_in_one_shared_group_are_refused_with_groupings_that_work(make_cfg):
    from mpe2 import simple_world_comm_v3

    spec = describe_env(simple_world_comm_v3.parallel_env())
    suggested = groups_by_spaces(spec)
    assert suggested == {"leadadversary": ["leadadversary_0"], "adversary": [f"adversary_{i}" for i in range(3)],
                         "agent": ["agent_0", "agent_1"]}
    with pytest.raises(ConfigError) as refused:
        build_groups(make_cfg(env={"groups": "shared"}), spec)
    assert "env.groups=independent or env.groups='{leadadversary: [leadadversary_0], adversary: [adversary_0, " \
           "adversary_1, adversary_2], agent: [agent_0, agent_1]}'" in str(refused.value)
    assert [g.name for g in build_groups(make_cfg(env={"groups": suggested}), spec)] == list(suggested)


def test_grouping_by_spaces_keeps_group_names_unique(make_cfg):
    from mpe2 import simple_speaker_listener_v4

    spec = describe_env(simple_speaker_listener_v4.parallel_env())
    renamed = spec.__class__(("speaker_0", "speaker_1"), {"speaker_0": spec.per_agent["speaker_0"],
                                                          "speaker_1": spec.per_agent["listener_0"]}, None)
    assert groups_by_spaces(renamed) == {"speaker": ["speaker_0"], "speaker_1": ["speaker_1"]}
