"""Inference engines (flexmarl/llm/engines/): one vLLM engine and one HF engine per module.

The model is a tiny Qwen2 with TIED embeddings (as Qwen2.5-0.5B has): the case where vLLM's CPU reload
leaves the output projection stale unless it is repacked.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from benchmarks.llm import generation_throughput
from flexmarl.llm.engines.base import Generation, VersionMismatchError, WeightSyncError
from flexmarl.llm.engines.hf import HFEngine
from flexmarl.llm.weights import drop_tied_aliases, engine_weights, save_weights, ties_embeddings

PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13, 14, 15, 16], [20, 21, 22]]


def build_tied_model(out_dir) -> str:
    """A tiny Qwen2 with tied embeddings (2 layers, hidden 128), the engine tests' model."""
    from flexmarl.llm.models import build_tiny_model, build_tokenizer

    corpus = [f"speaker says {c} {s} ." for c in ("red", "blue", "green") for s in ("box", "ball", "cone")] * 4
    return str(build_tiny_model(out_dir, build_tokenizer(corpus, vocab_size=300), intermediate=256, tied=True))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tied_model(tmp_path_factory.mktemp("tied") / "model")


@pytest.fixture(scope="module")
def vllm_engine(model_dir):
    from flexmarl.llm.engines.vllm import VLLMEngine

    start = time.perf_counter()
    engine = VLLMEngine(model_dir, 0, 0, 256, "nobind", 0.25, "cpu", 0.3, "vllm-test")
    engine.start_s = time.perf_counter() - start
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf_engine(model_dir):
    engine = HFEngine(model_dir, version=0, max_model_len=256, engine_name="hf-test")
    yield engine
    engine.close()


def reference_model(model_dir, noise: float = 0.0, seed: int = 0, copy_last_token: bool = False):
    """The checkpoint in transformers, its weights perturbed by Gaussian noise; `copy_last_token` zeroes the
    attention and MLP outputs and enlarges the embeddings, so the model repeats its last input token."""
    from flexmarl.llm.models import load_causal_lm

    model = load_causal_lm(model_dir)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=generator) * noise)
            if copy_last_token and name.endswith(("o_proj.weight", "down_proj.weight")):
                p.zero_()
            if copy_last_token and name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn(p.shape, generator=generator))
    return model


@torch.no_grad()
def teacher_forced_logprobs(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    logits = model(torch.tensor([prompt + completion])).logits[0].float()
    logp = torch.log_softmax(logits, -1)[len(prompt) - 1: -1]
    return logp.gather(1, torch.tensor(completion)[:, None])[:, 0]


def max_logprob_diff(model, prompts, generations) -> float:
    return max(float((teacher_forced_logprobs(model, p, g.token_ids) - torch.tensor(g.logprobs)).abs().max())
               for p, g in zip(prompts, generations))


def eos_id(engine) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(engine.model_dir).eos_token_id


def generate_all(engine, prompts, seeds, threads: int = 8, **kwargs) -> list[Generation]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda ps: engine.generate(ps[0], seed=ps[1], **kwargs), zip(prompts, seeds)))


def test_concurrent_calls_batch_together_and_each_seed_fixes_its_sample(vllm_engine):
    engine = vllm_engine
    print(f"vLLM engine start: {engine.start_s:.1f} s")
    prompts, seeds = PROMPTS * 6, list(range(24))
    before = engine.load()
    seen_in_flight, done = [], threading.Event()

    def watch():
        while not done.is_set():
            seen_in_flight.append(engine.load()["in_flight"])
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    together = generate_all(engine, prompts, seeds, threads=24, max_tokens=16, temperature=1.0, version=0)
    done.set()
    watcher.join()
    alone = [engine.generate(p, 16, 1.0, s) for p, s in zip(prompts[:4], seeds[:4])]
    assert max(seen_in_flight) > 1  # continuous batching: several calls in one step
    eos = eos_id(engine)
    for g in together:
        assert len(g.token_ids) == len(g.logprobs) and g.version == 0 and all(lp <= 0 for lp in g.logprobs)
        assert (g.finish_reason, len(g.token_ids)) == ("length", 16) or (g.finish_reason, g.token_ids[-1]) == (
            "stop", eos)
    assert [g.token_ids for g in together[:4]] == [g.token_ids for g in alone]  # batch-independent sampling
    assert together[0].token_ids != together[4].token_ids  # same prompt, other seed
    after = engine.load()
    assert after["calls"] - before["calls"] == 28 and after["in_flight"] == 0 and after["waiting"] == 0
    assert after["generated_tokens"] - before["generated_tokens"] == sum(len(g.token_ids) for g in together + alone)


def test_pushed_weights_give_the_logprobs_of_an_hf_model_with_the_same_weights(vllm_engine, hf_engine, model_dir):
    reference = reference_model(model_dir, noise=0.3, seed=1)
    weights = engine_weights(reference.state_dict(), model_dir)
    version = vllm_engine.version() + 1
    seconds = vllm_engine.load_weights(weights, version)
    hf_engine.load_weights(weights, version)
    assert seconds > 0 and vllm_engine.version() == hf_engine.version() == version
    prompts = PROMPTS * 2
    sampled = generate_all(vllm_engine, prompts, range(8), max_tokens=12, temperature=1.0, version=version)
    diff = max_logprob_diff(reference, prompts, sampled)
    print(f"max |vLLM - HF| logprob after push: {diff:.2e}")
    assert diff < 1e-4
    hf_sampled = generate_all(hf_engine, prompts, range(8), max_tokens=12, temperature=1.0, version=version)
    assert max_logprob_diff(reference, prompts, hf_sampled) < 1e-4
    greedy_vllm = generate_all(vllm_engine, PROMPTS, [0] * 4, max_tokens=8, temperature=0.0)
    greedy_hf = generate_all(hf_engine, PROMPTS, [0] * 4, max_tokens=8, temperature=0.0)
    assert [g.token_ids for g in greedy_vllm] == [g.token_ids for g in greedy_hf]


def test_versions_are_enforced(vllm_engine, hf_engine, model_dir):
    for engine in (vllm_engine, hf_engine):
        held = engine.version()
        with pytest.raises(VersionMismatchError, match=f"holds version {held}, call asked for {held + 7}"):
            engine.generate(PROMPTS[0], 4, 1.0, 0, version=held + 7)
        with pytest.raises(VersionMismatchError, match="older version"):
            engine.load_weights(engine_weights(reference_model(model_dir).state_dict(), model_dir), held - 1)
        assert engine.generate(PROMPTS[0], 4, 1.0, 0, version=held).version == held


@pytest.mark.parametrize("fault", ["wrong_shape", "missing", "nan"])
def test_a_failed_push_names_the_engine_and_the_old_version_keeps_serving(vllm_engine, hf_engine, model_dir, fault):
    weights = engine_weights(reference_model(model_dir, noise=0.5, seed=9).state_dict(), model_dir)
    if fault == "wrong_shape":
        weights["model.norm.weight"] = torch.ones(7)
    elif fault == "missing":
        del weights["model.layers.1.mlp.up_proj.weight"]
    else:
        weights["model.layers.0.self_attn.q_proj.bias"][0] = float("nan")
    cause = {"wrong_shape": "model.norm.weight has shape", "missing": "missing tensors", "nan": "NaN"}[fault]
    for engine in (vllm_engine, hf_engine):
        held = engine.version()
        before = engine.generate(PROMPTS[2], 8, 1.0, 5, version=held)
        with pytest.raises(WeightSyncError, match=rf"engine {engine.engine_name}: .*{cause}"):
            engine.load_weights(weights, held + 1)
        after = engine.generate(PROMPTS[2], 8, 1.0, 5, version=held)
        assert engine.version() == held and after.token_ids == before.token_ids
        assert after.logprobs == pytest.approx(before.logprobs, abs=1e-6)


def test_a_push_into_a_busy_engine_is_refused(vllm_engine, hf_engine, model_dir):
    weights = engine_weights(reference_model(model_dir).state_dict(), model_dir)
    never_stops = engine_weights(reference_model(model_dir, copy_last_token=True).state_dict(), model_dir)
    for engine in (vllm_engine, hf_engine):
        held = engine.version() + 1
        engine.load_weights(never_stops, held)  # the long call below cannot end early with eos
        with ThreadPoolExecutor(1) as pool:
            long_call = pool.submit(engine.generate, PROMPTS[0], 200, 1.0, 0, held)
            while engine.load()["in_flight"] == 0:
                time.sleep(0.001)
            with pytest.raises(WeightSyncError, match="still in flight"):
                engine.load_weights(weights, held + 1)
            assert long_call.result().version == held and engine.version() == held


def test_eos_ends_a_call_on_both_engines(vllm_engine, hf_engine, model_dir):
    """A model that repeats its last token: after eos it samples eos again ('stop'); otherwise it runs to
    max_tokens ('length'). Also shows the tied output projection follows the pushed embeddings."""
    reference = reference_model(model_dir, copy_last_token=True)
    eos = reference.config.eos_token_id
    weights = engine_weights(reference.state_dict(), model_dir)
    for engine in (vllm_engine, hf_engine):
        version = engine.version() + 1
        engine.load_weights(weights, version)
        stop = engine.generate([5, 6, eos], 6, 1.0, 0, version)
        length = engine.generate([5, 6, 9], 6, 1.0, 0, version)
        assert (stop.token_ids, stop.finish_reason) == ([eos], "stop")
        assert (length.token_ids, length.finish_reason) == ([9] * 6, "length")


def test_no_kv_computed_with_old_weights_is_reused_after_a_push(vllm_engine, model_dir):
    """vLLM's prefix cache keeps full KV blocks of earlier prompts; after a push they are stale."""
    cache_config = vllm_engine.engine.vllm_config.cache_config
    assert cache_config.enable_prefix_caching  # otherwise this test checks nothing
    prompt = [5 + i % 200 for i in range(cache_config.block_size + 3)]  # one full block, cached after a call
    for seed, noise in ((1, 0.1), (2, 0.4)):
        reference = reference_model(model_dir, noise=noise, seed=seed)
        version = vllm_engine.version() + 1
        vllm_engine.load_weights(engine_weights(reference.state_dict(), model_dir), version)
        outs = [vllm_engine.generate(prompt, 6, 1.0, s, version) for s in range(2)]  # the 2nd reuses the 1st's block
        assert max_logprob_diff(reference, [prompt, prompt], outs) < 1e-4


def test_disk_reload_equals_the_in_memory_push(vllm_engine, hf_engine, model_dir, tmp_path):
    reference = reference_model(model_dir, noise=0.2, seed=4)
    weights = engine_weights(reference.state_dict(), model_dir)
    save_weights(drop_tied_aliases(weights, ties_embeddings(model_dir)), tmp_path)  # safetensors: no shared storage
    for engine in (vllm_engine, hf_engine):
        engine.load_weights(weights, engine.version() + 1)
        in_memory = engine.generate(PROMPTS[1], 10, 1.0, 3)
        other = engine_weights(reference_model(model_dir, noise=0.4, seed=5).state_dict(), model_dir)
        engine.load_weights(other, engine.version() + 1)  # so the reload below has something to undo
        assert engine.load_weights_from_dir(tmp_path, engine.version() + 1) > 0
        from_disk = engine.generate(PROMPTS[1], 10, 1.0, 3)
        assert from_disk.token_ids == in_memory.token_ids
        assert max_logprob_diff(reference, [PROMPTS[1]], [from_disk]) < 1e-4


def test_a_prompt_too_long_is_refused_alone(vllm_engine, hf_engine):
    for engine in (vllm_engine, hf_engine):
        with pytest.raises(ValueError):
            engine.generate(list(range(5, 255)), 16, 1.0, 0)
        assert len(engine.generate(PROMPTS[0], 3, 1.0, 0).token_ids) == 3


def test_hf_batches_equal_single_calls(hf_engine):
    prompts, seeds = PROMPTS * 4, range(16)
    together = generate_all(hf_engine, prompts, seeds, threads=16, max_tokens=8, temperature=1.0)
    alone = [hf_engine.generate(p, 8, 1.0, s) for p, s in zip(prompts, seeds)]
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]
    for a, b in zip(together, alone):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)  # left padding reorders fp32 sums


def test_the_llm_benchmarks_throughput_helper_on_both_engines(vllm_engine, hf_engine):
    """`flexmarl bench llm`'s tokens/s helper (benchmarks/llm.py), tested here for this module's engines: an
    in-process vLLM engine is built once per process (tests/flexmarl/llm), not again under tests/benchmarks."""
    prompts = [p + [30 + i % 50] for i, p in enumerate(PROMPTS * 16)]
    for engine in (vllm_engine, hf_engine):
        result = generation_throughput(engine, prompts, max_tokens=8, batch=32)
        print(f"{engine.engine_name}: {result['tokens_per_s']:.0f} tokens/s at batch 32, 8 new tokens")
        assert result["calls"] == 64 and 0 < result["tokens"] <= 64 * 8 and result["tokens_per_s"] > 0


def test_a_second_engine_in_the_process_on_a_task_model_with_untied_embeddings(vllm_engine, tiny_task_models):
    """The project's own models (untied lm_head, warm-started), beside the module's engine in one process."""
    from flexmarl.llm.engines.vllm import VLLMEngine
    from flexmarl.llm.weights import ties_embeddings

    model_dir = str(next(iter(tiny_task_models.values())))
    assert not ties_embeddings(model_dir)
    reference = reference_model(model_dir, noise=0.05, seed=3)
    engine = VLLMEngine(model_dir, 0, 0, 256, "nobind", 0.25, "cpu", 0.3, "vllm-task")
    try:
        engine.load_weights(engine_weights(reference.state_dict(), model_dir), 1)
        outs = generate_all(engine, PROMPTS, range(4), max_tokens=8, temperature=1.0, version=1)
        assert max_logprob_diff(reference, PROMPTS, outs) < 1e-4
        assert vllm_engine.generate(PROMPTS[0], 4, 1.0, 0).version == vllm_engine.version()
    finally:
        engine.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible)")
def test_cuda_engines(model_dir):
    reference = reference_model(model_dir, noise=0.3, seed=2)
    weights = engine_weights(reference.state_dict(), model_dir)
    engine = HFEngine(model_dir, device="cuda", engine_name="hf-cuda")
    try:
        engine.load_weights(weights, 1)
        out = engine.generate(PROMPTS[0], 8, 1.0, 0, version=1)
        assert max_logprob_diff(reference, [PROMPTS[0]], [out]) < 1e-3
    finally:
        engine.close()
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        pytest.skip("the installed vLLM is the CPU build")
    from flexmarl.llm.engines.vllm import VLLMEngine

    engine = VLLMEngine(model_dir, 0, 0, 256, device="cuda", gpu_memory_utilization=0.2, engine_name="vllm-cuda",
                        dtype="float32")
    try:
        engine.load_weights(weights, 1)
        outs = generate_all(engine, PROMPTS, range(4), max_tokens=8, temperature=1.0, version=1)
        assert max_logprob_diff(reference, PROMPTS, outs) < 1e-3
    finally:
        engine.close()
