"""`llm.backend` -> inference engine class. Above both engines (base.py holds the contract, hf.py the HF
engine, vllm.py the vLLM one), so neither engine module imports the other's.
The engines are named as import paths, loaded on first use: a config checks `llm.backend` without
importing torch, transformers or vLLM."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flexmarl.registry import Registry

if TYPE_CHECKING:
    from flexmarl.llm.engines.base import InferenceEngine

ENGINES = Registry("inference engine", {"hf": "flexmarl.llm.engines.hf:HFEngine",
                                        "vllm": "flexmarl.llm.engines.vllm:VLLMEngine"})
"""Every engine takes the same constructor arguments (see HFEngine / VLLMEngine)."""


def engine_class(backend: str) -> type[InferenceEngine]:
    if backend not in ENGINES:
        raise ValueError(f"unknown inference backend {backend!r}; known: {', '.join(sorted(ENGINES))}")
    return ENGINES[backend]
