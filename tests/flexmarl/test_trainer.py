import numpy as np
import pytest
import torch

from flexmarl.rollout import RolloutRequest, RolloutWorker
from flexmarl.trainer import GroupTrainer, to_tensors


def _rows(cfg, n):
    worker = RolloutWorker(cfg)
    trainer = GroupTrainer(cfg, worker.groups[0], seed=3)
    worker.set_weights({g.name: trainer.get_weights() for g in worker.groups}, 0)
    rows = [worker.sample(RolloutRequest(f"r{i}", 0, seed=i, num_steps=25)).rows["shared"] for i in range(n)]
    return worker, trainer, rows


def _grads(module):
    return torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])


def test_accumulated_micro_batches_equal_one_full_batch_gradient(make_cfg):
    cfg = make_cfg(algo={"advantage_norm": False, "value_norm": False})
    worker, trainer, rows = _rows(cfg, 2)
    mbs = [to_tensors(r) for r in rows]
    counts = [trainer.accumulate(mb, trainer.value_norm) for mb in mbs]
    accumulated = _grads(trainer.policy)
    trainer.policy.zero_grad(set_to_none=True)
    full = {k: torch.cat([mb[k] for mb in mbs], dim=0 if k.startswith("h0") else 1) for k in mbs[0]}
    assert trainer.accumulate(full, trainer.value_norm) == sum(counts)
    assert torch.allclose(accumulated, _grads(trainer.policy), rtol=1e-5, atol=1e-4)


def test_update_bumps_version_reports_zero_lag_and_changes_weights(make_cfg):
    cfg = make_cfg()
    worker, trainer, rows = _rows(cfg, 2)
    before = trainer.get_weights()["policy"]
    metrics = trainer.update(["a", "b"], [0, 0], *rows)
    assert trainer.version == 1 and metrics["perf/policy_lag_max"] == 0.0
    after = trainer.get_weights()["policy"]
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    for key in ("losses/policy", "losses/value", "losses/entropy", "losses/approx_kl"):
        assert np.isfinite(metrics[key])


def test_state_round_trip_gives_identical_next_update(make_cfg):
    cfg = make_cfg()
    worker, trainer, rows = _rows(cfg, 2)
    trainer.update(["a", "b"], [0, 0], *rows)
    twin = GroupTrainer(cfg, worker.groups[0], seed=3)
    twin.set_state(trainer.get_state())
    trainer.update(["a", "b"], [1, 1], *rows)
    twin.update(["a", "b"], [1, 1], *rows)
    a, b = trainer.get_weights()["policy"], twin.get_weights()["policy"]
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_recurrent_and_masked_batches_train(make_cfg):
    cfg = make_cfg(model={"use_gru": True, "gru_hidden": 8},
                   env={"name": "tests.faulty_envs:make_masked", "kwargs": {"banned": 2, "N": 3}})
    worker, trainer, rows = _rows(cfg, 2)
    metrics = trainer.update(["a", "b"], [0, 0], *rows)
    assert np.isfinite(metrics["losses/policy"]) and trainer.version == 1


def test_streamed_arrival_order_does_not_change_later_epochs(make_cfg):
    cfg = make_cfg(algo={"advantage_norm": False}, trainer={"epochs": 3})
    worker, trainer, rows = _rows(cfg, 4)
    twin = GroupTrainer(cfg, worker.groups[0], seed=3)
    trainer.update(["a", "b", "c", "d"], [0] * 4, *rows)
    twin.begin_update(4)
    for sid, row in [("c", rows[2]), ("a", rows[0]), ("d", rows[3]), ("b", rows[1])]:
        twin.consume(sid, 0, row)
    twin.finish_update()
    a, b = trainer.get_weights()["policy"], twin.get_weights()["policy"]
    assert all(np.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_incomplete_batch_is_refused(make_cfg):
    worker, trainer, rows = _rows(make_cfg(), 2)
    trainer.begin_update(2)
    trainer.consume("a", 0, rows[0])
    with pytest.raises(RuntimeError, match="1 of 2 micro-batches consumed"):
        trainer.finish_update()


def _smax_rows(make_cfg, aggregator, **model):
    cfg = make_cfg(env={"name": "smax/3m", "kwargs": {}, "global_state": "env"},
                   rollout={"envs_per_worker": 4, "fragment_length": 30}, run={"batch_env_steps": 240},
                   algo={"gradient_aggregator": aggregator}, trainer={"epochs": 2, "num_minibatches": 2}, model=model)
    worker = RolloutWorker(cfg)
    trainer = GroupTrainer(cfg, worker.groups[0], seed=3)
    worker.set_weights({g.name: trainer.get_weights() for g in worker.groups}, 0)
    rows = [worker.sample(RolloutRequest(f"r{i}", 0, seed=i, num_steps=30)).rows["shared"] for i in range(2)]
    return trainer, rows


@pytest.mark.parametrize("use_gru", [False, True])
def test_per_agent_gradients_add_up_to_the_ordinary_gradient(make_cfg, use_gru):
    """Each agent's gradient from the batched backward, weighted by its sample share, is the plain gradient."""
    from flexmarl.per_agent_grads import PerAgentGradients

    trainer, rows = _smax_rows(make_cfg, "mean", use_gru=use_gru)
    mb = to_tensors(rows[0])
    n = trainer.accumulate(mb, trainer.value_norm)
    plain = _grads(trainer.policy.actor) / n
    trainer.policy.zero_grad(set_to_none=True)
    trainer.per_agent = PerAgentGradients(list(trainer.policy.actor.parameters()), 3, "mean")
    trainer.accumulate(mb, trainer.value_norm)
    counts = trainer.per_agent.counts.clone()
    assert counts.sum() == n and (counts > 0).all()
    trainer.per_agent.apply()
    assert torch.allclose(_grads(trainer.policy.actor), plain, rtol=1e-4, atol=1e-6)


def test_grasp_update_logs_consensus_metrics_and_times(make_cfg):
    trainer, rows = _smax_rows(make_cfg, "grasp")
    assert trainer.per_agent is not None
    before = trainer.get_weights()["policy"]
    metrics = trainer.update(["a", "b"], [0, 0], *rows)
    assert -1.0 <= metrics["grasp/cosine_min"] <= 1.0
    assert metrics["perf/per_agent_grad_s"] > 0 and metrics["perf/aggregate_s"] > 0
    after = trainer.get_weights()["policy"]
    assert any(not np.array_equal(before[k], after[k]) for k in before if k.startswith("actor"))


def test_unknown_aggregator_is_a_config_error(make_cfg):
    from flexmarl.config import ConfigError

    with pytest.raises(ConfigError, match=r"algo.gradient_aggregator.*'nope'.*cagrad, grasp, mean, pcgrad"):
        make_cfg(algo={"gradient_aggregator": "nope"})


def test_candidate_scorer_trains_a_shared_recsys_policy_with_grasp(make_cfg):
    cfg = make_cfg(env={"name": "recsys/movielens", "kwargs": {"session_length": 10}, "global_state": "env"},
                   rollout={"envs_per_worker": 16, "fragment_length": 10}, run={"batch_env_steps": 320},
                   algo={"gradient_aggregator": "grasp"}, trainer={"epochs": 1}, model={"actor": "candidate_scorer"})
    worker = RolloutWorker(cfg)
    trainer = GroupTrainer(cfg, worker.groups[0], seed=3)
    worker.set_weights({g.name: trainer.get_weights() for g in worker.groups}, 0)
    rows = [worker.sample(RolloutRequest(f"r{i}", 0, seed=i, num_steps=10)).rows["shared"] for i in range(2)]
    before = trainer.get_weights()["policy"]
    metrics = trainer.update(["a", "b"], [0, 0], *rows)
    assert -1.0 <= metrics["grasp/cosine_min"] <= 1.0 and np.isfinite(metrics["losses/policy"])
    after = trainer.get_weights()["policy"]
    assert any(not np.array_equal(before[k], after[k]) for k in before if k.startswith("actor.score"))
