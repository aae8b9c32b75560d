import numpy as np
import pytest

from flexmarl.rollout import RolloutRequest, RolloutWorker
from flexmarl.trainer import GroupTrainer


def _smax_cfg(make_cfg, **algo):
    return make_cfg(env={"name": "smax/3m", "kwargs": {}, "global_state": "env"},
                    rollout={"envs_per_worker": 8, "fragment_length": 40}, run={"batch_env_steps": 320},
                    algo=algo, trainer={"epochs": 2})


@pytest.fixture(scope="module")
def worker():
    from tests.conftest import small_config

    cfg = _smax_cfg(small_config)
    worker = RolloutWorker(cfg)
    worker.set_weights({g.name: GroupTrainer(cfg, g, seed=0).get_weights() for g in worker.groups}, 0)
    return worker


def test_batched_rows_match_the_row_contract(worker):
    result = worker.sample(RolloutRequest("r0", 0, seed=1, num_steps=40))
    row = result.rows["shared"]
    n = result.num_active["shared"]
    assert result.env_steps == 8 * 40 and 0 < n <= 8 * 40 * 3
    assert row["obs"].shape == (1, n, worker.groups[0].obs_dim) and row["critic_in"].shape == (1, n, worker.spec.state_dim)
    assert row["agent_index"].shape == (1, n) and set(np.unique(row["agent_index"])) == {0, 1, 2}
    assert row["action_mask"][0, np.arange(n), row["actions"][0]].all()  # sampled actions were available
    assert len(result.wins) == len(result.episode_returns) > 0
    assert np.all(np.isfinite(row["advantages"]))


def test_batched_request_is_a_pure_function_of_its_seed(worker):
    a = worker.sample(RolloutRequest("a", 0, seed=5, num_steps=40))
    b = worker.sample(RolloutRequest("b", 0, seed=5, num_steps=40))
    for key in ("obs", "actions", "advantages"):
        np.testing.assert_array_equal(a.rows["shared"][key], b.rows["shared"][key])
    assert a.episode_returns == b.episode_returns


def test_greedy_evaluation_plays_one_episode_per_copy(worker):
    out = worker.evaluate(episodes=6, seed=0)
    assert out["eval/episodes"] == 6 and 0.0 <= out["eval/win_rate"] <= 1.0
    # each copy's length stops counting when its episode ends, while others play on
    assert len(out["episodes/length"]) == 6 and all(0 < n <= 10_000 for n in out["episodes/length"])
