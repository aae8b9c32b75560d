"""vLLM serves a model written by `flexmarl llm export`. Here, not in tests/orchestrator: an in-process vLLM
engine changes process-wide state that the bit-exact Ray tests must not inherit (Makefile: own pytest process)."""

import pytest

from tests.flexmarl.llm.conftest import chat_checkpoints  # noqa: F401  (the export fixture's checkpoints)
from tests.orchestrator.test_llm import exported_run  # noqa: F401  (the exported run, a module fixture)


@pytest.mark.slow
def test_vllm_serves_an_exported_model(exported_run):
    from flexmarl.llm.engines.vllm import VLLMEngine
    from flexmarl.llm.models import load_causal_lm, load_tokenizer, prompt_token_ids
    from tests.flexmarl.llm.test_engine import max_logprob_diff

    _, _, out = exported_run
    model_dir = str(out / "speaker")
    prompt = prompt_token_ids(load_tokenizer(model_dir), "speaker: target red circle. message:")
    engine = VLLMEngine(model_dir, 0, 0, 256, "nobind", 0.25, "cpu", 0.3, "vllm-export")
    try:
        outs = [engine.generate(prompt, max_tokens=6, temperature=1.0, seed=seed) for seed in range(3)]
    finally:
        engine.close()
    assert max_logprob_diff(load_causal_lm(model_dir), [prompt] * 3, outs) < 1e-4
