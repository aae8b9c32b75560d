"""Language-model agents: text tasks (flexmarl.llm.tasks), tiny local models (models, warm_start, build),
inference engines and trainers. Importing this package imports nothing heavy: torch, transformers and
vLLM load only with the submodule that needs them."""
