"""`llm.backend` -> inference engine class. Above both engines (flexmarl/llm/engine.py holds the contract
and the HF engine, flexmarl/llm/vllm_engine.py the vLLM one), so neither engine module imports the other's.
Importing vllm_engine is cheap: vLLM itself is imported only when a VLLMEngine is built."""

from __future__ import annotations

from flexmarl.llm.engine import HFEngine, InferenceEngine
from flexmarl.llm.vllm_engine import VLLMEngine

ENGINES: dict[str, type[InferenceEngine]] = {"hf": HFEngine, "vllm": VLLMEngine}
"""Every engine takes the same constructor arguments (see HFEngine / VLLMEngine)."""


def engine_class(backend: str) -> type[InferenceEngine]:
    entry = ENGINES.get(backend)
    if entry is None:
        raise ValueError(f"unknown inference backend {backend!r}; known: {', '.join(sorted(ENGINES))}")
    return entry
