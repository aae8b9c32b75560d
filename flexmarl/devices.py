"""Devices: a concrete device checked before a model goes there, and states copied to the CPU. Which
device an actor gets is one rule, `Runtime.device_for` (orchestrator/runtime.py)."""

from __future__ import annotations

import copy

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """A concrete device ("cpu", "cuda", "cuda:1"), checked: cuda must be visible to this process (a Ray
    actor sees only the GPUs it was given). Which device an actor gets ("auto") is `Runtime.device_for`'s rule."""
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
