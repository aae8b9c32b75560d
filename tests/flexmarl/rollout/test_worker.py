import numpy as np
import pytest

from envs import ActionSpec

from flexmarl.rollout import EnvOutputError, EnvStepError, RolloutRequest, RolloutWorker
from flexmarl.trainer import GroupTrainer


def _worker(cfg):
    worker = RolloutWorker(cfg)
    weights = {g.name: GroupTrainer(cfg, g, seed=i).get_weights() for i, g in enumerate(worker.groups)}
    worker.set_weights(weights, 0)
    return worker


def test_rows_pack_active_samples_for_feed_forward_policies(make_cfg):
    worker = _worker(make_cfg())
    result = worker.sample(RolloutRequest("r0", 0, seed=1, num_steps=25))
    row = result.rows["shared"]
    # MPE's agents get different rewards, so the shared critic reads the state and a one-hot agent id
    assert row["obs"].shape == (1, 300, 18) and row["critic_in"].shape == (1, 300, 54 + 3)
    assert row["actions"].shape == (1, 300) and row["advantages"].shape == (1, 300)
    assert row["h0_actor"].shape == (300, 0) and row["active"].all()
    assert result.env_steps == 100 and len(result.episode_returns) == 4
    assert result.num_active["shared"] == 25 * 12
    assert np.all(np.isfinite(row["returns"]))
    # concat_obs global state is the agents' observations side by side (columns env-major, 12 per step)
    assert np.allclose(row["critic_in"][0, 36, :54], np.concatenate(row["obs"][0, 36:39]))


def test_a_request_is_a_pure_function_of_weights_and_seed(make_cfg):
    a, b = _worker(make_cfg()), _worker(make_cfg())
    ra = a.sample(RolloutRequest("r0", 0, seed=7, num_steps=25))
    a.sample(RolloutRequest("r1", 0, seed=8, num_steps=25))
    rb = b.sample(RolloutRequest("r0", 0, seed=7, num_steps=25))
    for key in ra.rows["shared"]:
        assert np.array_equal(ra.rows["shared"][key], rb.rows["shared"][key]), key
    assert ra.episode_returns == rb.episode_returns


def test_version_mismatch_is_refused(make_cfg):
    worker = _worker(make_cfg())
    with pytest.raises(RuntimeError, match="holds policy version 0"):
        worker.sample(RolloutRequest("r0", 3, seed=1, num_steps=5))


def test_independent_groups_and_ippo_critic(make_cfg):
    worker = _worker(make_cfg(env={"groups": "independent"}, algo={"name": "ippo"}))
    result = worker.sample(RolloutRequest("r0", 0, seed=1, num_steps=10))
    assert sorted(result.rows) == ["agent_0", "agent_1", "agent_2"]
    assert result.rows["agent_1"]["critic_in"].shape == (1, 40, 18)


def test_box_actions_are_sampled_and_clipped_for_the_env(make_cfg):
    worker = _worker(make_cfg(env={"kwargs": {"N": 2, "continuous_actions": True}}))
    row = worker.sample(RolloutRequest("r0", 0, seed=1, num_steps=10)).rows["shared"]
    assert row["actions"].shape == (1, 80, 5) and np.all(np.isfinite(row["logp"]))


def test_gru_policy_records_initial_states(make_cfg):
    worker = _worker(make_cfg(model={"use_gru": True, "gru_hidden": 8}))
    row = worker.sample(RolloutRequest("r0", 0, seed=1, num_steps=10)).rows["shared"]
    assert row["h0_actor"].shape == (12, 8) and row["episode_start"][0].all()


@pytest.mark.parametrize(
    "fault, error, pattern",
    [
        ("nan_reward", EnvOutputError, r"agent 'agent_1' at step 6 .*reward is nan"),
        ("nan_obs", EnvOutputError, r"agent 'agent_1' at step 7 .*NaN"),
        ("wrong_obs_shape", EnvOutputError, r"agent 'agent_1' at step 7 .*3 values.*declares 18"),
        ("raise", EnvStepError, r"env copy 0 raised at step 6 .*0 env restarts.*physics engine exploded"),
    ],
)
def test_bad_env_output_names_agent_step_and_problem(make_cfg, fault, error, pattern):
    cfg = make_cfg(env={"name": "tests.faulty_envs:make", "kwargs": {"fault": fault, "at_step": 7, "N": 3}},
                   rollout={"max_env_restarts": 0})
    worker = _worker(cfg)
    with pytest.raises(error, match=pattern):
        worker.sample(RolloutRequest("r0", 0, seed=1, num_steps=25))


def test_out_of_space_action_is_refused():
    from flexmarl.rollout.checks import check_actions

    with pytest.raises(EnvOutputError, match=r"agent 'b' at step 4 \(env copy 1.*outside the action space Discrete\(5\)"):
        check_actions(np.array([0, 1, 2, 7]), ActionSpec("discrete", n=5), ("a", "b"), 4, "r9")
    with pytest.raises(EnvOutputError, match=r"agent 'a' at step 0 \(env copy 0.*MultiDiscrete\(\[3, 2\]\)"):
        check_actions(np.array([[2, 2], [0, 1]]), ActionSpec("multi_discrete", nvec=(3, 2)), ("a", "b"), 0, "r9")


def test_greedy_evaluation_reports_return(make_cfg):
    worker = _worker(make_cfg())
    out = worker.evaluate(episodes=2, seed=0)
    assert np.isfinite(out["eval/return_mean"]) and "eval/win_rate" not in out


def test_action_masks_from_dict_observations_are_respected(make_cfg):
    cfg = make_cfg(env={"name": "tests.faulty_envs:make_masked", "kwargs": {"banned": 0, "N": 3}})
    worker = _worker(cfg)
    assert worker.groups[0].has_action_mask
    row = worker.sample(RolloutRequest("r0", 0, seed=1, num_steps=25)).rows["shared"]
    assert row["action_mask"].shape == (1, 300, 5)
    assert not row["action_mask"][..., 0].any() and row["action_mask"][..., 1:].all()
    assert np.all(row["actions"] != 0)
    assert np.isfinite(worker.evaluate(episodes=1, seed=0)["eval/return_mean"])


def test_episodes_request_unit_plays_one_episode_per_env_copy(make_cfg):
    cfg = make_cfg(
        env={"name": "wrappers/heavy_tail",
             "kwargs": {"env": "mpe/simple_spread", "env_kwargs": {"N": 3, "max_cycles": 200},
                        "min_length": 3, "alpha": 1.2, "max_length": 200}},
        rollout={"request_unit": "episodes", "fragment_length": 200}, run={"batch_env_steps": 800},
    )
    worker = _worker(cfg)
    result = worker.sample(RolloutRequest("r0", 0, seed=3, num_steps=200))
    assert len(result.episode_lengths) == 4 and result.env_steps == sum(result.episode_lengths)
    row = result.rows["shared"]
    assert row["obs"].shape[1] == 3 * sum(result.episode_lengths)  # only steps actually played
    assert result.num_active["shared"] == 3 * sum(result.episode_lengths)


def test_crashed_env_is_rebuilt_and_its_unfinished_episode_discarded(make_cfg):
    # Every copy raises at its 7th step, so each copy crashes at steps 6, 13 and 20 of a 25-step request.
    cfg = make_cfg(env={"name": "tests.faulty_envs:make", "kwargs": {"fault": "raise", "at_step": 7, "N": 3}},
                   rollout={"max_env_restarts": 12})
    result = _worker(cfg).sample(RolloutRequest("r0", 0, seed=1, num_steps=25))
    assert result.env_restarts == 12
    assert result.discarded_steps == 4 * 21 * 3  # 3 discarded 7-step episodes per copy, 3 agents each
    row = result.rows["shared"]
    assert result.num_active["shared"] == 4 * 4 * 3 and row["obs"].shape == (1, 48, 18)  # steps 21..24 kept
    assert np.all(np.isfinite(row["advantages"])) and not result.episode_returns


def test_env_restarts_are_bounded_per_request(make_cfg):
    cfg = make_cfg(env={"name": "tests.faulty_envs:make", "kwargs": {"fault": "raise", "at_step": 7, "N": 3}},
                   rollout={"max_env_restarts": 11})
    with pytest.raises(EnvStepError, match=r"env copy 3 raised at step 20 .*after 11 env restarts"):
        _worker(cfg).sample(RolloutRequest("r0", 0, seed=1, num_steps=25))


def test_each_agents_own_return_is_reported_per_episode(make_cfg):
    """Per-agent returns (for recommendation: per scenario) add up to the team return of each episode."""
    from flexmarl.rollout import RolloutRequest, RolloutWorker

    cfg = make_cfg()
    worker = RolloutWorker(cfg, 0)
    result = worker.sample(RolloutRequest("r0", None, 7, cfg.rollout.fragment_length))
    assert set(result.agent_returns) == set(worker.spec.agents)
    per_episode = np.sum([result.agent_returns[a] for a in worker.spec.agents], axis=0)
    assert np.allclose(per_episode, result.episode_returns)


@pytest.mark.parametrize("chunk", [0, 4])
def test_gru_rows_replay_the_rollout_whole_or_in_chunks(make_cfg, chunk):
    """Trained on the rows, the unchanged GRU policy recomputes the rollout's log-probs and values, from the
    fragment's start (chunk 0) or from the hidden state stored at each chunk's first step (rMAPPO's chunks)."""
    import torch

    from flexmarl.trainer import to_tensors

    cfg = make_cfg(model={"use_gru": True, "gru_hidden": 8, "gru_chunk_length": chunk})
    worker = _worker(cfg)
    row = worker.sample(RolloutRequest("r0", 0, seed=1, num_steps=10)).rows["shared"]
    columns = 12 * (3 if chunk else 1)  # 4 env copies x 3 agents, x ceil(10 / 4) chunks
    assert row["obs"].shape[:2] == ((chunk or 10), columns) and row["h0_actor"].shape == (columns, 8)
    trainer = GroupTrainer(cfg, worker.groups[0], seed=0)  # the worker's weights
    mb = to_tensors(row)
    with torch.no_grad():
        logp, _, _ = trainer._policy_terms(mb, mb["advantages"])
        values, _ = trainer.policy.critic(mb["critic_in"], mb["h0_critic"], mb["episode_start"])
    active = mb["active"] > 0
    assert int(active.sum()) == 120  # 10 steps x 12 columns, padding inactive
    assert torch.allclose(logp[active], mb["logp"][active], atol=1e-5)
    assert torch.allclose(values[active], mb["values_norm"][active], atol=1e-5)
