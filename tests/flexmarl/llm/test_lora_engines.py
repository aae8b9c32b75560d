"""Engines serving LoRA adapters over one base (HF through PEFT, vLLM with enable_lora): each call names
its agent's adapter, calls of different adapters batch together, a push replaces one adapter (versioned,
checked), and what an engine samples has the trainer's log-probs for that adapter."""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from flexmarl.config.adapters import LoraAdapter
from flexmarl.llm.adapters import adapter_layout
from flexmarl.llm.engines.base import VersionMismatchError, WeightSyncError
from flexmarl.llm.engines.hf import HFEngine
from flexmarl.llm.trainer import LLMGroupTrainer
from tests.flexmarl.llm.test_engine import build_tied_model
from tests.flexmarl.llm.test_trainer import _cfg

ADAPTERS = {"speaker": LoraAdapter(adapter="lora", rank=4, alpha=16.0),
            "listener": LoraAdapter(adapter="lora", rank=8, alpha=8.0, target_modules=["q_proj", "up_proj"])}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return build_tied_model(tmp_path_factory.mktemp("lora-base") / "model")


@pytest.fixture(scope="module")
def trained(base_dir):
    """One trainer per adapter after one update (lr large enough that each adapter moves the policy)."""
    from tests.conftest import small_config

    trainers = {}
    for seed, (name, spec) in enumerate(ADAPTERS.items()):
        trainer = LLMGroupTrainer(_cfg(small_config, lr=2e-2), name, base_dir, seed, spec)
        trainer.update(["a"], [0], _micro_batch(trainer, seed))
        trainers[name] = trainer
    return trainers


def _micro_batch(trainer, seed: int) -> dict:
    """Random prompts and completions within the base's vocabulary, advantages of both signs."""
    rng = np.random.default_rng(seed)
    vocab = trainer.model.config.vocab_size
    prompts = [rng.integers(vocab, size=4).tolist() for _ in range(6)]
    completions = [rng.integers(vocab, size=5).tolist() for _ in range(6)]
    advantages = rng.standard_normal(6)
    return {"prompt_ids": prompts, "completion_ids": completions,
            "logp": trainer.token_logprobs(prompts, completions), "advantages": (advantages - advantages.mean()).tolist(),
            "versions": [0] * 6}


@pytest.fixture(scope="module", params=["hf", "vllm"])
def engine(request, base_dir):
    if request.param == "hf":
        engine = HFEngine(base_dir, 0, 0, 256, engine_name="hf-lora", adapters=ADAPTERS)
    else:
        from flexmarl.llm.engines.vllm import VLLMEngine

        start = time.perf_counter()
        engine = VLLMEngine(base_dir, 0, 0, 256, "nobind", 0.25, "cpu", 0.3, "vllm-lora", adapters=ADAPTERS)
        print(f"vLLM with {len(ADAPTERS)} adapters started in {time.perf_counter() - start:.1f} s")
    yield engine
    engine.close()


def test_the_adapter_layout_is_what_peft_trains(trained, base_dir):
    for name, trainer in trained.items():
        assert {n: tuple(t.shape) for n, t in trainer.get_weights().items()} == adapter_layout(base_dir, ADAPTERS[name])


def test_mixed_adapter_calls_have_each_adapters_trained_logprobs(engine, trained):
    for name, trainer in trained.items():
        engine.load_weights(trainer.get_weights(), 1, name)
        assert engine.version(name) == 1
    assert engine.version() == 0  # the base was not pushed
    prompts = [[5 + i, 9, 12 + i % 3] for i in range(12)]
    names = [list(ADAPTERS)[i % 2] for i in range(12)]
    with ThreadPoolExecutor(12) as pool:  # all in flight together: the adapters' calls batch
        outs = list(pool.map(lambda i: engine.generate(prompts[i], 6, 1.0, i, 1, names[i]), range(12)))
    worst = 0.0
    for name, trainer in trained.items():
        mine = [i for i in range(12) if names[i] == name]
        expected = trainer.token_logprobs([prompts[i] for i in mine], [outs[i].token_ids for i in mine])
        for i, ref in zip(mine, expected):
            worst = max(worst, float((torch.tensor(outs[i].logprobs) - torch.tensor(ref)).abs().max()))
    assert worst < 2e-3, worst
    # the adapters matter: the base (no adapter) gives other log-probs for the same tokens
    base = trained["speaker"]
    with base.model.disable_adapter():
        plain = base.token_logprobs([prompts[0]], [outs[0].token_ids])[0]
    assert float((torch.tensor(plain) - torch.tensor(outs[0].logprobs)).abs().max()) > 1e-2


def test_adapter_pushes_are_versioned_and_checked(engine, trained):
    weights = trained["speaker"].get_weights()
    engine.load_weights(weights, 2, "speaker")
    with pytest.raises(VersionMismatchError, match="adapter 'speaker'"):
        engine.generate([5, 6, 7], 2, 1.0, 0, 1, "speaker")
    with pytest.raises(VersionMismatchError, match="older version 1"):
        engine.load_weights(weights, 1, "speaker")
    before = engine.generate([5, 6, 7], 3, 0.0, 0, 2, "speaker")
    bad = {n: t[:, :1] if "lora_A" in n else t for n, t in weights.items()}
    with pytest.raises(WeightSyncError, match="refused, old version 2 kept"):
        engine.load_weights(bad, 3, "speaker")
    nan = {n: torch.full_like(t, float("nan")) for n, t in weights.items()}
    with pytest.raises(WeightSyncError, match="NaN"):
        engine.load_weights(nan, 3, "speaker")
    assert engine.generate([5, 6, 7], 3, 0.0, 0, 2, "speaker").logprobs == before.logprobs
    with pytest.raises(ValueError, match="no adapter 'critic'"):
        engine.generate([5, 6, 7], 2, 1.0, 0, None, "critic")
    # the other adapter is untouched by this one's pushes
    assert engine.version("listener") >= 1
