"""Inference engines for LLM agents: the contract (`base.py`), the transformers and vLLM engines (`hf.py`,
`vllm.py`) and `llm.backend` -> engine class (`registry.py`). Imports nothing: a config names an engine
without importing torch."""
