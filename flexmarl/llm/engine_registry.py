"""`llm.backend` -> inference engine class. Above both engines (flexmarl/llm/engine.py holds the contract,
flexmarl/llm/hf_engine.py the HF engine, flexmarl/llm/vllm_engine.py the vLLM one), so neither engine
module imports the other's.
The engines are named as import paths, loaded on first use: a config checks `llm.backend` without
importing torch, transformers or vLLM."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flexmarl.registry import Registry

if TYPE_CHECKING:
    from flexmarl.llm.engine import InferenceEngine

ENGINES = Registry("inference engine", {"hf": "flexmarl.llm.hf_engine:HFEngine",
                                        "vllm": "flexmarl.llm.vllm_engine:VLLMEngine"})
"""Every engine takes the same constructor arguments (see HFEngine / VLLMEngine)."""


def engine_class(backend: str) -> type[InferenceEngine]:
    if backend not in ENGINES:
        raise ValueError(f"unknown inference backend {backend!r}; known: {', '.join(sorted(ENGINES))}")
    return ENGINES[backend]
