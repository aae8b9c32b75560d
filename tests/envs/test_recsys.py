"""The multi-scenario recommendation env: contract, reward mapping, plug-ins (the docs' example), bad plug-ins."""

import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from envs import describe_env, make_env
from envs.batched import random_legal_actions
from envs.recsys import Scenario, ScenarioError

DOC = Path(__file__).resolve().parents[2] / "docs" / "recsys.md"


@pytest.fixture(scope="module")
def env():
    return make_env("recsys/movielens", num_envs=32)


def test_one_acting_scenario_per_user_and_its_mask(env):
    spec = describe_env(env)
    assert spec.agents == ("home_feed", "genre_comedy", "more_like_this")
    ob = env.reset(seed=0)
    assert ob.obs.shape == (32, 3, spec.per_agent["home_feed"].obs_dim)
    assert (ob.alive.sum(1) == 1).all()
    inactive = ~ob.alive
    assert ob.action_mask[inactive][:, 0].all() and not ob.action_mask[inactive][:, 1:].any()
    assert ob.action_mask[ob.alive].all()  # 20 candidates each
    assert not ob.obs[inactive].any()


def test_only_the_acting_scenario_is_rewarded_and_sessions_end(env):
    ob = env.reset(seed=1)
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(40):
        st = env.step(random_legal_actions(ob.action_mask, rng))
        assert (st.rewards[~ob.alive] == 0).all() and (st.rewards >= 0).all()
        assert np.allclose(env.team_reward(st.rewards), st.rewards.sum(1))
        ended += int(st.done.sum())
        ob = st.next
    assert ended > 0


def test_same_seed_same_sessions():
    a, b = make_env("recsys/movielens", num_envs=4), make_env("recsys/movielens", num_envs=4)
    oa, ob = a.reset(seed=3), b.reset(seed=3)
    for t in range(15):
        actions = np.full((4, 3), t % 20)
        sa, sb = a.step(actions), b.step(actions)
        np.testing.assert_array_equal(sa.rewards, sb.rewards)
        np.testing.assert_array_equal(sa.next.obs, sb.next.obs)


def _load_doc_example() -> str:
    """Execute the docs' plug-in example as the module `my_recsys.new_releases`."""
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[0]
    package = types.ModuleType("my_recsys")
    package.__path__ = []
    module = types.ModuleType("my_recsys.new_releases")
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    sys.modules["my_recsys"], sys.modules["my_recsys.new_releases"] = package, module
    return "my_recsys.new_releases:NewReleases"


def test_docs_plugin_example_composes_with_the_built_ins():
    path = _load_doc_example()
    env = make_env("recsys/movielens", num_envs=16, scenarios=[
        "home_feed", {"type": "genre_channel", "genre": "Comedy"}, "more_like_this",
        {"type": path, "reward_weights": {"conversion": 3.0}}])
    assert env.possible_agents[-1] == "new_releases"
    assert env.scenarios[-1].reward_weights == {"click": 1.0, "watch": 1.0, "conversion": 3.0}
    ob = env.reset(seed=0)
    rng = np.random.default_rng(1)
    acted = 0
    for _ in range(30):
        acted += int(ob.alive[:, 3].sum())
        ob = env.step(random_legal_actions(ob.action_mask, rng)).next
    assert acted > 0


class _BadShape(Scenario):
    name = "bad_shape"

    def candidates(self, ctx, rng):
        return np.zeros((len(ctx.seen), 3), int)


class _BadItem(Scenario):
    name = "bad_item"

    def candidates(self, ctx, rng):
        return np.full((len(ctx.seen), self.num_candidates), 10**7)


class _BadSignal(Scenario):
    name = "bad_signal"
    reward_weights = {"click": 1.0, "margin": 1.0}
    signal_ranges = {"margin": (0.0, 1.0)}

    def candidates(self, ctx, rng):
        return np.tile(np.arange(self.num_candidates), (len(ctx.seen), 1))

    def signals(self, ctx, items, clicked):
        return {"margin": np.full(len(items), 7.0)}


@pytest.mark.parametrize("bad, pattern", [
    (_BadShape, r"scenario 'bad_shape': candidates have shape \(\d+, 3\).*expected"),
    (_BadItem, r"scenario 'bad_item': unknown item id 10000000"),
    (_BadSignal, r"scenario 'bad_signal': signal 'margin' must be .* in \[0.0, 1.0\]"),
])
def test_broken_plugins_fail_naming_the_scenario(bad, pattern):
    env = make_env("recsys/movielens", num_envs=8, scenarios=[bad(), "home_feed"], move_prob=0.0)
    with pytest.raises(ScenarioError, match=pattern):
        ob = env.reset(seed=0)
        for _ in range(5):
            ob = env.step(np.zeros((8, 2), int)).next


def test_broken_plugin_fails_the_whole_request_before_rows_are_written(make_cfg):
    from flexmarl.rollout import EnvStepError, RolloutRequest, RolloutWorker

    cfg = make_cfg(env={"name": "recsys/movielens", "kwargs": {"scenarios": ["home_feed", "tests.envs.test_recsys:_BadItem"]},
                        "global_state": "env"}, rollout={"envs_per_worker": 8, "fragment_length": 10},
                   run={"batch_env_steps": 80})
    with pytest.raises((ScenarioError, EnvStepError), match="bad_item"):
        RolloutWorker(cfg).sample(RolloutRequest("r0", None, seed=0, num_steps=10))


def test_bad_scenario_specs_are_named():
    with pytest.raises(ScenarioError, match=r"unknown scenario 'nope'; built-in: home_feed, genre_channel"):
        make_env("recsys/movielens", scenarios=["nope"])
    with pytest.raises(ScenarioError, match=r"unknown genre 'Cartoons'"):
        make_env("recsys/movielens", scenarios=[{"type": "genre_channel", "genre": "Cartoons"}])
    with pytest.raises(ScenarioError, match=r"names must be unique"):
        make_env("recsys/movielens", scenarios=["home_feed", "home_feed"])
    with pytest.raises(ScenarioError, match=r"reward weights for undeclared signals \['clicks'\]"):
        make_env("recsys/movielens", scenarios=[{"type": "home_feed", "reward_weights": {"clicks": 1.0}}])


def test_a_package_entry_point_registers_a_scenario(tmp_path, monkeypatch):
    # An installed distribution as importlib.metadata sees it: a dist-info folder with entry_points.txt.
    (tmp_path / "shop_scenarios.py").write_text(
        "import numpy as np\nfrom envs.recsys import Scenario\n\n"
        "class Deals(Scenario):\n    name = 'deals'\n    num_candidates = 5\n"
        "    def candidates(self, ctx, rng):\n        return np.tile(np.arange(5), (len(ctx.seen), 1))\n")
    info = tmp_path / "shop_scenarios-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shop-scenarios\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[flexmarl.scenarios]\ndeals = shop_scenarios:Deals\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    env = make_env("recsys/movielens", num_envs=4, scenarios=["home_feed", {"type": "deals", "num_candidates": 5}])
    assert env.possible_agents == ("home_feed", "deals")
    with pytest.raises(ScenarioError, match=r"unknown scenario 'dealz'.*installed plug-ins: deals"):
        make_env("recsys/movielens", scenarios=["dealz"])
