"""Where a trainer puts its model: one rule for the MARL and the LLM trainers."""

from __future__ import annotations

import copy

import torch


def resolve_device(device: str) -> torch.device:
    """auto = cuda when a GPU is visible to this process (a Ray actor sees only the GPUs it was given)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but no CUDA GPU is visible to this process (torch "
                           f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); ask for a GPU in the "
                           "actor's demand (resources.trainer.gpus / resources.engine.gpus) or use device cpu")
    return resolved


def state_to_cpu(state):
    """A deep copy of a (nested) state dict with every tensor cloned to the CPU: checkpoints written by a
    GPU trainer load on a CPU-only machine, and later steps cannot change a state already handed out."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: state_to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(state_to_cpu(v) for v in state)
    return copy.deepcopy(state)  # the leaves: numbers, strings, anything else a state may hold
