"""Checkpoints shaped like the instruct ones users bring (tests/flexmarl/llm/chat_checkpoints.py): their
chat templates turn a prompt into token ids, both engines serve them, and an engine stops on the eos
ids of generation_config.json (not only config.json's)."""

from __future__ import annotations

import pytest
import torch

from flexmarl.llm.engines.hf import HFEngine
from flexmarl.llm.models import load_causal_lm, load_tokenizer, prompt_token_ids
from flexmarl.llm.weights import engine_weights
from tests.flexmarl.llm.chat_checkpoints import FAMILIES, generation_eos_ids
from tests.flexmarl.llm.test_engine import max_logprob_diff

PROMPT = "speaker: target red circle; others blue star, green cone. message:"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_prompt_goes_through_the_checkpoints_chat_template(chat_checkpoints, family):
    tokenizer = load_tokenizer(chat_checkpoints[family])
    ids = prompt_token_ids(tokenizer, PROMPT)
    assert all(isinstance(i, int) for i in ids)
    # the same ids as transformers' own tokenizing apply_chat_template (a BatchEncoding in transformers 5)
    encoded = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    assert ids == list(getattr(encoded, "input_ids", encoded))
    text = tokenizer.decode(ids)
    assert PROMPT in text and text.endswith({"llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
                                             "chatml": "<|im_start|>assistant\n", "mistral": " [/INST]"}[family])
    bos = FAMILIES[family]["bos"]
    if bos:  # written by the template, not added a second time by the tokenizer
        assert tokenizer.convert_ids_to_tokens(ids).count(bos) == 1 and ids[0] == tokenizer.bos_token_id
    # without a template the prompt is encoded as it is
    tokenizer.chat_template = None
    assert prompt_token_ids(tokenizer, PROMPT) == tokenizer.encode(PROMPT)


def always_emit(model_dir: str, token: int) -> dict[str, torch.Tensor]:
    """Weights under which the model greedily emits `token` whatever the prompt: attention and MLP
    outputs zeroed, so the last hidden state is the last input token's embedding, and every embedding
    points the same way as `token`'s output row, which is ten times longer."""
    model = load_causal_lm(model_dir)
    state = {name: t.clone() for name, t in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(model.config.hidden_size, generator=generator)
    for name, t in state.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            t.zero_()
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            t.copy_(direction + 0.01 * torch.randn(t.shape, generator=generator))
            t[token] = 10 * direction
    return engine_weights(state, model_dir)


def make_engine(backend: str, model_dir: str):
    if backend == "hf":
        return HFEngine(model_dir, version=0, max_model_len=256, engine_name="hf-chat")
    from flexmarl.llm.engines.vllm import VLLMEngine

    return VLLMEngine(model_dir, 0, 0, 256, "nobind", 0.25, "cpu", 0.3, "vllm-chat")


ENGINE_CASES = [pytest.param(family, backend, id=f"{family}-{backend}",
                             marks=[pytest.mark.slow] if (family, backend) == ("mistral", "vllm") else [])
                for family in FAMILIES for backend in ("hf", "vllm")]


@pytest.mark.parametrize("family,backend", ENGINE_CASES)
def test_each_engine_serves_the_checkpoint_and_stops_on_generation_config_eos(chat_checkpoints, family, backend):
    model_dir = chat_checkpoints[family]
    prompt = prompt_token_ids(load_tokenizer(model_dir), PROMPT)
    engine = make_engine(backend, model_dir)
    try:
        sampled = [engine.generate(prompt, max_tokens=6, temperature=1.0, seed=seed) for seed in range(3)]
        assert all(1 <= len(g.token_ids) <= 6 for g in sampled)
        assert max_logprob_diff(load_causal_lm(model_dir), [prompt] * 3, sampled) < 1e-4

        # The last eos id of generation_config.json (llama3: <|eot_id|>, chatml: <|endoftext|>) ends a call
        # although config.json names another eos token.
        stop = generation_eos_ids(model_dir)[-1]
        engine.load_weights(always_emit(model_dir, stop), version=1)
        out = engine.generate(prompt, max_tokens=6, temperature=0.0, seed=0, version=1)
        assert (out.token_ids, out.finish_reason) == ([stop], "stop")
    finally:
        engine.close()
