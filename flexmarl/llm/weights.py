"""Weights between trainers and inference engines: names, checks, and the safetensors disk round-trip.

Engines take weights by their Hugging Face names, exactly the tensors a checkpoint directory holds
(`checkpoint_layout`). A trainer's state dict differs from that in small ways: a model with tied input
and output embeddings lists `lm_head.weight` although the checkpoint does not store it, and tensors may
sit on a GPU or need a copy; `engine_weights` turns one into the other. A push is checked before it
touches an engine (`layout_problems`, `value_problems`), because a reload that fails halfway leaves a vLLM
model without weights.

The disk path (`save_weights`, then an engine's reload from that folder) is the in-memory push's
comparison in `flexmarl bench llm`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WEIGHTS_FILE = "model.safetensors"
TIED_ALIASES = ("lm_head.weight",)
"""Names a state dict lists for a tied output embedding but a checkpoint does not store."""


def checkpoint_layout(model_dir) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of every tensor in the folder's safetensors files (headers only, nothing loaded)."""
    from flexmarl.llm.adapters import tensor_shapes

    return tensor_shapes(model_dir)


def ties_embeddings(model_dir) -> bool:
    """Whether the checkpoint's config ties the output embedding to the input one."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    text_config = config.get("text_config", config)
    return bool(text_config.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))


def drop_tied_aliases(weights: dict, tied: bool) -> dict:
    """Without the names a tied model shares with its input embedding (the engine writes that one)."""
    if not tied:
        return weights
    return {name: t for name, t in weights.items() if name not in TIED_ALIASES}


def engine_weights(state_dict: dict[str, torch.Tensor], model_dir) -> dict[str, torch.Tensor]:
    """A trainer's (HF) state dict as an engine loads it: the checkpoint's names only (tied aliases
    dropped), detached contiguous fp32 CPU tensors (a CPU fp32 tensor is not copied)."""
    weights = drop_tied_aliases(state_dict, ties_embeddings(model_dir))
    return {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in weights.items()}


def layout_problems(layout: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> list[str]:
    """Missing names, unexpected names and wrong shapes (empty list: the layouts match)."""
    problems = []
    missing = sorted(set(expected) - set(layout))
    unexpected = sorted(set(layout) - set(expected))
    if missing:
        problems.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
    for name in sorted(set(layout) & set(expected)):
        if tuple(layout[name]) != tuple(expected[name]):
            problems.append(f"{name} has shape {list(layout[name])}, the model needs {list(expected[name])}")
    return problems


def value_problems(weights: dict[str, torch.Tensor]) -> list[str]:
    """Tensors that are not floating point or hold NaN/inf."""
    problems = []
    for name, t in weights.items():
        if not torch.is_floating_point(t):
            problems.append(f"{name} has dtype {t.dtype}, not floating point")
        elif not bool(torch.isfinite(t).all()):
            problems.append(f"{name} holds NaN or inf")
    return problems


def save_weights(weights: dict[str, torch.Tensor], out_dir) -> Path:
    """Weights as one safetensors file in `out_dir` (what an engine reloads from a folder)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {n: t.detach().contiguous() for n, t in weights.items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    return out


def read_weights(model_dir) -> dict[str, torch.Tensor]:
    """All tensors of the folder's safetensors files, on the CPU."""
    from safetensors.torch import load_file

    weights = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        weights.update(load_file(str(file)))
    return weights
