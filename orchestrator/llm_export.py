"""`flexmarl llm export CHECKPOINT OUT`: the trained models of an LLM run's checkpoint as Hugging Face
checkpoint directories, one per model group (`OUT/<group>`; with `llm.groups: independent` a group is an
agent), that `from_pretrained` and vLLM load like the checkpoint the group started from.

Each directory gets the trainer's weights (fp32, the trainer's precision, as `model.safetensors` under the
checkpoint's own tensor names: a tied output embedding is stored once, as the start checkpoint stores it),
the start checkpoint's config (its dtype set to float32, so that loading does not round the weights),
tokenizer and generation config, which the run never changes. A LoRA adapter group is written as a PEFT
adapter directory (adapter_config.json naming the base, adapter_model.safetensors) that
`PeftModel.from_pretrained(base, OUT/<group>)` and vLLM's LoRARequest load. The start checkpoint (the
base) must still be where the run found it."""

from __future__ import annotations

import json
from pathlib import Path

from flexmarl.config import config_from_saved
from flexmarl.llm import weights as weight_io
from flexmarl.llm.models import checkpoint_problem
from orchestrator.run_dir import CheckpointError, load_checkpoint


def export_llm_checkpoint(checkpoint, out) -> dict[str, Path]:
    """Write every model group's trained model under `out`; returns {group: directory}."""
    data = load_checkpoint(checkpoint)
    workload = config_from_saved(data["config"]).run.workload
    if workload != "llm":
        raise CheckpointError(f"{checkpoint} is a checkpoint of a {workload} run; llm export takes an LLM run's")
    exported = {}
    for group, signature in data["groups"].items():
        start = signature["model_dir"]
        problem = checkpoint_problem(start)
        if problem:
            raise CheckpointError(f"model group {group!r} started from {start}, whose config and tokenizer the export "
                                  f"needs: {problem}")
        state = data["state"]["trainers"][group]
        if "adapter" in signature:
            exported[group] = export_adapter(start, state["adapter"], signature["adapter"], Path(out) / group)
        else:
            exported[group] = export_model(start, state["model"], Path(out) / group)
    return exported


def export_adapter(base_dir, weights: dict, spec: dict, out_dir: Path) -> Path:
    """One PEFT adapter directory: a trainer's adapter weights (PEFT file names) and its LoRA config."""
    from flexmarl.config.adapters import LoraAdapter
    from flexmarl.llm.lora import save_adapter

    save_adapter(weights, LoraAdapter.model_validate(spec), str(base_dir), out_dir)
    (out_dir / "flexmarl_export.json").write_text(json.dumps({"started_from": str(base_dir), "adapter": spec}, indent=1))
    return out_dir


def export_model(start_dir, state_dict: dict, out_dir: Path) -> Path:
    """One Hugging Face directory: `state_dict` (a trainer's) with the config, tokenizer and generation
    config of `start_dir`, the checkpoint it was trained from."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = weight_io.engine_weights(state_dict, start_dir)
    problems = weight_io.layout_problems({n: tuple(t.shape) for n, t in tensors.items()},
                                         weight_io.drop_tied_aliases(weight_io.checkpoint_layout(start_dir),
                                                                     weight_io.ties_embeddings(start_dir)))
    if problems:
        raise CheckpointError(f"the trained weights do not fit {start_dir}: {'; '.join(problems)}")
    weight_io.save_weights(tensors, out_dir)
    config = AutoConfig.from_pretrained(start_dir)
    config.dtype = "float32"
    config.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(start_dir).save_pretrained(out_dir)
    if (Path(start_dir) / "generation_config.json").exists():
        GenerationConfig.from_pretrained(start_dir).save_pretrained(out_dir)
    (out_dir / "flexmarl_export.json").write_text(json.dumps({"started_from": str(start_dir)}, indent=1))
    return out_dir
