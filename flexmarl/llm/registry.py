"""The LLM workload's name tables: inference engines (`llm.backend`) and text tasks (`llm.task`). Entries
load on first use, so a config checks its names without importing torch, transformers or vLLM."""

from __future__ import annotations

from flexmarl.registry import Registry

ENGINES = Registry("inference engine", {"hf": "flexmarl.llm.engine:HFEngine",
                                        "vllm": "flexmarl.llm.vllm_engine:VLLMEngine"})
"""`llm.backend` -> engine class. Every engine takes the same constructor arguments (see HFEngine / VLLMEngine)."""

TASKS = Registry("text task", {
    "speaker_listener": "flexmarl.llm.tasks.speaker_listener:SpeakerListener",
    "recsys_sessions": "flexmarl.llm.tasks.recsys:RecsysSessions",
    "speaker_listener_skewed": "flexmarl.llm.tasks.skewed:SkewedSpeakerListener",
})
"""`llm.task` -> TextTask subclass (each class's `name` is its key here)."""
