"""LoRA agents (PEFT) in the trainer: adapter-only training, weights and state; several adapters on one
base; the microbatch == sync equality; swapping an adapter group on a trainer slot moves its adapter."""

import pytest
import torch

from flexmarl.config.adapters import LoraAdapter
from flexmarl.llm.lora import AdapterHost
from flexmarl.llm.trainer import LLMGroupTrainer
from flexmarl.llm.slots import TrainerSlot
from tests.flexmarl.llm.test_trainer import _cfg, _micro_batches, _save_tiny_qwen2, update_sync_and_streamed_out_of_order

LORA = LoraAdapter(adapter="lora", rank=4, alpha=8.0, target_modules=["q_proj", "v_proj", "down_proj"])


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return _save_tiny_qwen2(tmp_path_factory.mktemp("lora-base"), tied=True)


def _adapter_trainer(cfg, base_dir, group="speaker", seed=1, host=None, spec=LORA):
    return LLMGroupTrainer(cfg, group, base_dir, seed, spec, host)


def _adapter_diff(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _base_tensors(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}


def test_an_update_trains_the_adapter_alone_and_hands_out_only_it(make_cfg, base_dir):
    trainer = _adapter_trainer(_cfg(make_cfg, lr=1e-3), base_dir)
    before_base, before = _base_tensors(trainer), trainer.get_weights()
    assert before and all(".lora_A.weight" in n or ".lora_B.weight" in n for n in before)
    assert all(torch.count_nonzero(t) == 0 for n, t in before.items() if "lora_B" in n)  # starts as the base
    trainer.update(["a"], [0], _micro_batches(trainer, 1)[0])
    after = trainer.get_weights()
    assert all(torch.equal(before_base[n], t) for n, t in _base_tensors(trainer).items())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    state = trainer.get_state()
    assert set(state) == {"version", "adapter", "optimizer"} and state["adapter"].keys() == after.keys()
    adapter_params = sum(t.numel() for t in after.values())
    assert adapter_params < sum(p.numel() for p in trainer.model.parameters()) / 20


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean_token_mean"])
def test_streamed_out_of_order_equals_sync_for_an_adapter(make_cfg, base_dir, loss_agg):
    cfg = _cfg(make_cfg, loss_agg=loss_agg, lr=1e-3, trainer={"num_minibatches": 2, "epochs": 2})
    sync, streamed = _adapter_trainer(cfg, base_dir), _adapter_trainer(cfg, base_dir)
    update_sync_and_streamed_out_of_order(sync, streamed)
    assert _adapter_diff(sync, streamed) < 1e-6
    assert _adapter_diff(sync, _adapter_trainer(cfg, base_dir)) > 1e-4  # it did train


def test_adapters_sharing_one_base_train_as_if_alone(make_cfg, base_dir):
    cfg = _cfg(make_cfg, lr=1e-3, kl_coef=0.1)
    host = AdapterHost(base_dir)
    speaker = _adapter_trainer(cfg, base_dir, "speaker", 1, host)
    listener = _adapter_trainer(cfg, base_dir, "listener", 2, host, LORA.model_copy(update={"rank": 2}))
    alone = _adapter_trainer(cfg, base_dir, "speaker", 1)
    assert speaker.model is listener.model  # one base in memory
    mbs = _micro_batches(alone, 2)
    listener_before = listener.get_weights()
    for trainer in (speaker, alone):
        trainer.update(["a", "b"], [0, 0], *mbs)
        stats = trainer.update(["a", "b"], [1, 1], *mbs)
    assert stats["losses/kl"] > 0  # the reference is the base with the adapter off
    assert _adapter_diff(speaker, alone) == 0.0
    assert all(torch.equal(listener_before[n], t) for n, t in listener.get_weights().items())
    # each adapter's log-probs are its own
    prompts, completions = mbs[0]["prompt_ids"], mbs[0]["completion_ids"]
    assert speaker.token_logprobs(prompts, completions) == alone.token_logprobs(prompts, completions)
    assert listener.token_logprobs(prompts, completions) != speaker.token_logprobs(prompts, completions)


def test_state_round_trip_of_an_adapter_continues_exactly(make_cfg, base_dir):
    cfg = _cfg(make_cfg, lr=1e-3)
    trainer = _adapter_trainer(cfg, base_dir)
    mbs = _micro_batches(trainer, 2)
    trainer.update(["a", "b"], [0, 0], *mbs)
    twin = _adapter_trainer(cfg, base_dir, seed=7)  # another initial adapter: set_state replaces it
    twin.set_state(trainer.get_state())
    assert twin.version == 1 and _adapter_diff(trainer, twin) == 0.0
    trainer.update(["a", "b"], [1, 1], *mbs)
    twin.update(["a", "b"], [1, 1], *mbs)
    assert _adapter_diff(trainer, twin) == 0.0


def test_a_slot_swaps_an_adapter_group_as_its_adapter_and_trains_as_dedicated_trainers(make_cfg, base_dir):
    cfg = _cfg(make_cfg, lr=1e-3, trainer={"num_minibatches": 2})
    specs = [("speaker", base_dir, 1, LORA), ("listener", base_dir, 2, LORA)]
    slot = TrainerSlot(cfg, specs)
    dedicated = {name: _adapter_trainer(cfg, base_dir, name, seed) for name, _, seed, _ in specs}
    mbs = _micro_batches(dedicated["speaker"], 4)
    for trainer in dedicated.values():
        trainer.begin_update(4)
    for name in ("speaker", "listener"):
        slot.call(name, "begin_update", 4)
    for i, mb in enumerate(mbs):  # the groups alternate: every call swaps, with gradients mid-minibatch
        for name in ("speaker", "listener"):
            slot.call(name, "consume", f"m{i}", 0, mb, i)
            dedicated[name].consume(f"m{i}", 0, mb, i)
    for name in ("speaker", "listener"):
        slot.call(name, "finish_update")
        dedicated[name].finish_update()
    assert slot.swaps >= 8 and len(slot.hosts) == 1  # the base once for both groups
    for name, trainer in dedicated.items():
        got = slot.call(name, "get_weights")
        assert all(torch.equal(got[n], t) for n, t in trainer.get_weights().items())
    # what a swap moved: the adapter and its Adam moments (and step counters), nothing of the base
    state, reference = slot.swapped["speaker"]
    adapter_bytes = sum(t.numel() * t.element_size() for t in slot.call("speaker", "get_weights").values())
    steps = len(slot.trainers["speaker"].opt.state_dict()["state"]) * 4  # Adam's fp32 step per parameter
    assert reference is None and state.nbytes == 3 * adapter_bytes + steps
    base_bytes = sum(p.numel() * p.element_size() for n, p in slot.trainers["speaker"].model.named_parameters()
                     if "lora_" not in n)
    assert state.nbytes < base_bytes / 5


@pytest.mark.parametrize("rank", [1, 4, 16])
def test_alpha_auto_scales_with_the_square_root_of_the_rank(rank):
    from flexmarl.config.adapters import AUTO_ALPHA_COEFFICIENT
    from flexmarl.llm.lora import lora_config

    spec = LoraAdapter(adapter="lora", rank=rank, alpha="auto")
    assert lora_config(spec).lora_alpha == pytest.approx(AUTO_ALPHA_COEFFICIENT * rank ** 0.5)
    assert lora_config(LoraAdapter(adapter="lora", rank=rank, alpha=3)).lora_alpha == 3.0
