"""LLM group trainer: the streamed contract on a tiny random causal LM (no task, no engine needed)."""

import numpy as np
import pytest
import torch

from flexmarl.algorithms import POLICY_LOSSES
from flexmarl.algorithms.losses import aggregate_token_loss
from flexmarl.llm import weights as weight_io
from flexmarl.llm.trainer import LLMGroupTrainer

VOCAB = 300


def _save_tiny_qwen2(out_dir, tied: bool) -> str:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         tie_word_embeddings=tied)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(out_dir, safe_serialization=True)
    return str(out_dir)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Qwen2 with tied embeddings, like Qwen2.5-0.5B (the task models are untied)."""
    return _save_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2-tied"), tied=True)


@pytest.fixture(scope="module")
def untied_model_dir(tmp_path_factory):
    return _save_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2-untied"), tied=False)


def _cfg(make_cfg, trainer=None, **llm):
    # Adam's first steps are about lr * sign(gradient), so fp32 rounding in a gradient entry near Adam's
    # eps can move a parameter by a sizeable fraction of lr: parameter comparisons use small rates.
    # The trainer knobs are the LLM workload's defaults (make_cfg is a MARL config).
    return make_cfg(llm={"lr": 1e-4, **llm},
                    trainer={"device": "cpu", "epochs": 1, "max_grad_norm": 1.0, **(trainer or {})})


def _micro_batches(trainer, n, seed=0, samples=None, noise=0.3):
    """`n` micro-batches of varying sizes and prompt and completion lengths (so their sample and token
    counts differ), with behaviour log-probs near the current policy's (off by `noise`, so ratios and
    clipping are exercised)."""
    rng = np.random.default_rng(seed)
    out = []
    for m in range(n):
        samples_m = samples or 3 + 2 * (m % 2)
        prompts = [rng.integers(VOCAB, size=rng.integers(2, 9)).tolist() for _ in range(samples_m)]
        longest = 3 + 5 * (m % 2)  # alternate short and long completions
        completions = [rng.integers(VOCAB, size=rng.integers(1, longest + 1)).tolist() for _ in range(samples_m)]
        logp = [[v + noise * rng.standard_normal() for v in row] for row in trainer.token_logprobs(prompts, completions)]
        advantages = rng.standard_normal(samples_m)
        out.append({"prompt_ids": prompts, "completion_ids": completions, "logp": logp,
                    "advantages": (advantages - advantages.mean()).tolist(), "versions": [0] * samples_m})
    return out


def _merged(micro_batches):
    return {k: [x for mb in micro_batches for x in mb[k]] for k in micro_batches[0]}


def _max_param_diff(a, b):
    pa, pb = a.model.state_dict(), b.model.state_dict()
    return max(float((pa[k] - pb[k]).abs().max()) for k in pa)


def _batch_loss(trainer, mb, mode):
    logp = trainer.token_logprobs(mb["prompt_ids"], mb["completion_ids"])
    T = max(len(c) for c in mb["completion_ids"])
    pad = lambda rows: torch.tensor([list(r) + [0.0] * (T - len(r)) for r in rows])
    mask = pad([[1.0] * len(c) for c in mb["completion_ids"]])
    per_token = POLICY_LOSSES[trainer.cfg.llm.loss](pad(logp), pad(mb["logp"]), torch.tensor(mb["advantages"])[:, None])
    summed, denominator = aggregate_token_loss(per_token, mask, mode)
    return float(summed) / denominator


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean_token_mean"])
def test_streamed_out_of_order_equals_sync(make_cfg, model_dir, loss_agg):
    """Micro-batches of a later minibatch arrive first and wait; within a minibatch order may differ."""
    cfg = _cfg(make_cfg, loss_agg=loss_agg, trainer={"num_minibatches": 2, "epochs": 2})
    sync = LLMGroupTrainer(cfg, "speaker", model_dir, seed=1)
    streamed = LLMGroupTrainer(cfg, "speaker", model_dir, seed=1)
    update_sync_and_streamed_out_of_order(sync, streamed)
    assert _max_param_diff(sync, streamed) < 1e-6


def update_sync_and_streamed_out_of_order(sync, streamed) -> None:
    """One update of two equal trainers on the same 4 micro-batches (2 minibatches): `sync` gets them at
    once, `streamed` one by one, the later minibatch's first and in another order within each."""
    mbs = _micro_batches(sync, 4)
    ids = ["a", "b", "c", "d"]
    sync.update(ids, [0] * 4, *mbs)
    streamed.begin_update(4)
    for slot in (3, 1, 2, 0):
        streamed.consume(ids[slot], 0, mbs[slot], slot)
    streamed.finish_update()
    assert streamed.version == sync.version == 1


def _normalised_gradient(trainer, payloads):
    """The gradient `step` would apply for a minibatch of these micro-batches (before clipping)."""
    trainer.model.zero_grad(set_to_none=True)
    denominator = sum(trainer.train_micro_batch(trainer.micro_batch_tensors(p), first_epoch=True) for p in payloads)
    gradient = torch.cat([p.grad.flatten() for p in trainer.model.parameters()]) / denominator
    trainer.model.zero_grad(set_to_none=True)
    return gradient


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean_token_mean"])
def test_cutting_a_minibatch_into_micro_batches_does_not_change_the_update(make_cfg, model_dir, loss_agg):
    """The normalisation: micro-batches with different token and sample counts train as their union does."""
    trainer = LLMGroupTrainer(_cfg(make_cfg, loss_agg=loss_agg), "speaker", model_dir, seed=1)
    mbs = _micro_batches(trainer, 2)
    assert len({sum(map(len, mb["completion_ids"])) for mb in mbs}) == 2 and len({len(mb["advantages"]) for mb in mbs}) == 2
    whole = _normalised_gradient(trainer, [_merged(mbs)])
    assert torch.allclose(_normalised_gradient(trainer, mbs), whole, rtol=0, atol=1e-6)  # fp32 padding shapes: ~5e-8
    # the average of the micro-batches' own means would be a different gradient
    mean_of_means = sum(_normalised_gradient(trainer, [mb]) for mb in mbs) / 2
    assert (mean_of_means - whole).abs().max() > 1e-4
    # and end to end: two epochs of Adam steps (lr 1e-5: Adam's near-eps amplification of fp32 rounding
    # stays far below the 1e-6 checked, a normalisation error of order lr does not)
    cfg = _cfg(make_cfg, loss_agg=loss_agg, lr=1e-5, trainer={"epochs": 2})
    split, merged = LLMGroupTrainer(cfg, "speaker", model_dir, seed=1), LLMGroupTrainer(cfg, "speaker", model_dir, seed=1)
    split.update(["a", "b"], [0, 0], *mbs)
    merged.update(["a"], [0], _merged(mbs))
    assert _max_param_diff(split, merged) < 1e-6


def test_one_update_changes_the_weights_and_lowers_the_loss_on_its_batch(make_cfg, model_dir):
    cfg = _cfg(make_cfg, loss_agg="token_mean", lr=1e-3)
    trainer = LLMGroupTrainer(cfg, "speaker", model_dir, seed=1)
    (mb,) = _micro_batches(trainer, 1, samples=8, noise=0.0)  # on-policy: the ratio is 1 at the start
    before_weights, before_loss = trainer.get_weights(), _batch_loss(trainer, mb, "token_mean")
    metrics = trainer.update(["a"], [0], mb)
    after_weights = trainer.get_weights()
    assert any(not torch.equal(before_weights[k], after_weights[k]) for k in before_weights)
    assert _batch_loss(trainer, mb, "token_mean") < before_loss
    assert metrics["perf/policy_lag_max"] == 0.0 and metrics["perf/train_s"] > 0
    assert metrics["llm/tokens_trained"] == sum(map(len, mb["completion_ids"]))
    assert metrics["losses/clip_frac"] < 1e-6  # on-policy
    for key in ("losses/policy", "losses/grad_norm"):
        assert np.isfinite(metrics[key])
    assert "losses/kl" not in metrics and trainer.reference is None
    assert [kind for kind, _, _ in trainer.spans()] == ["consume", "finish"]


def test_token_logprobs_equal_a_direct_forward(make_cfg, model_dir):
    from transformers import AutoModelForCausalLM

    trainer = LLMGroupTrainer(_cfg(make_cfg), "speaker", model_dir, seed=1)
    mb = _micro_batches(trainer, 1, samples=5)[0]
    batched = trainer.token_logprobs(mb["prompt_ids"], mb["completion_ids"])  # right-padded together
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for prompt, completion, got in zip(mb["prompt_ids"], mb["completion_ids"], batched):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + completion])).logits[0]
        expected = torch.log_softmax(logits[len(prompt) - 1 : -1], -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]
        assert len(got) == len(completion)
        assert torch.allclose(torch.tensor(got), expected, atol=1e-5)


def test_state_round_trip_continues_exactly(make_cfg, model_dir):
    cfg = _cfg(make_cfg, trainer={"num_minibatches": 2, "epochs": 2})
    trainer = LLMGroupTrainer(cfg, "speaker", model_dir, seed=1)
    mbs = _micro_batches(trainer, 2)
    trainer.update(["a", "b"], [0, 0], *mbs)
    state = trainer.get_state()
    twin = LLMGroupTrainer(cfg, "speaker", model_dir, seed=1)
    twin.set_state(state)
    assert twin.version == 1 and _max_param_diff(trainer, twin) == 0.0
    trainer.update(["a", "b"], [1, 1], *mbs)
    twin.update(["a", "b"], [1, 1], *mbs)
    assert _max_param_diff(trainer, twin) == 0.0
    a, b = trainer.get_state()["optimizer"]["state"], twin.get_state()["optimizer"]["state"]
    assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)
    # the handed-out state is a copy: the later steps did not change it
    assert any(not torch.equal(state["model"][k], v) for k, v in trainer.model.state_dict().items())


@pytest.mark.parametrize("tied", [True, False])
def test_weights_are_the_checkpoints_tensors_as_cpu_fp32_copies(make_cfg, model_dir, untied_model_dir, tied):
    path = model_dir if tied else untied_model_dir
    trainer = LLMGroupTrainer(_cfg(make_cfg), "speaker", path, seed=1)
    weights = trainer.get_weights()
    layout = weight_io.checkpoint_layout(path)
    assert {k: tuple(v.shape) for k, v in weights.items()} == layout
    assert ("lm_head.weight" in weights) == (not tied)
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 for t in weights.values())
    trainer.update(["a"], [0], _micro_batches(trainer, 1)[0])
    params = trainer.model.state_dict()
    assert all(not torch.equal(weights[k], params[k]) for k in ("model.embed_tokens.weight", "model.norm.weight"))


def test_kl_to_the_initial_model_is_reported_and_grows_once_the_policy_moves(make_cfg, model_dir):
    trainer = LLMGroupTrainer(_cfg(make_cfg, kl_coef=0.1), "speaker", model_dir, seed=1)
    assert trainer.reference is not None
    assert not any(p.requires_grad for p in trainer.reference.parameters())
    mbs = _micro_batches(trainer, 2)
    first = trainer.update(["a", "b"], [0, 0], *mbs)
    assert first["losses/kl"] == 0.0  # one minibatch: both micro-batches ran on the initial weights
    second = trainer.update(["a", "b"], [1, 1], *mbs)
    assert second["losses/kl"] > 0.0


def test_bad_micro_batches_are_refused_and_empty_ones_train_nothing(make_cfg, model_dir):
    trainer = LLMGroupTrainer(_cfg(make_cfg), "speaker", model_dir, seed=1)
    with pytest.raises(ValueError, match="empty prompt"):
        trainer.token_logprobs([[]], [[1, 2]])
    mb = _micro_batches(trainer, 1)[0]
    mb["logp"][0] = mb["logp"][0][:-1]
    trainer.begin_update(1)
    with pytest.raises(ValueError, match=r"'speaker': sample 0 has \d+ completion tokens but \d+ behaviour log-probs"):
        trainer.consume("a", 0, mb)
    empty = {"prompt_ids": [], "completion_ids": [], "logp": [], "advantages": [], "versions": []}
    before = trainer.get_weights()
    metrics = trainer.update(["a"], [0], empty)  # a request whose calls were all refused (prompt too long)
    assert metrics["llm/tokens_trained"] == 0 and trainer.version == 1
    assert all(torch.equal(before[k], v) for k, v in trainer.get_weights().items())
