"""What a LoRA adapter needs from its base checkpoint, read without torch (config checks run before
start, and loading a config imports no torch): the checkpoint's tensor shapes from the safetensors
headers, and from them the linear layers an adapter can target, their sizes, and an adapter's tensors.
Imports nothing of the package: the engines and the pre-start checks (flexmarl/llm/setup.py) use it."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def tensor_shapes(model_dir) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of every tensor in the folder's safetensors files, from their JSON headers
    (8 bytes little-endian header length, then the header); no tensor is read."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {model_dir}")
    shapes = {}
    for file in files:
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        shapes.update({name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"})
    return shapes


def linear_layers(model_dir) -> dict[str, tuple[int, int]]:
    """Module path -> (out, in) features of every 2-D weight (the layers LoRA can adapt)."""
    return {name[: -len(".weight")]: shape for name, shape in tensor_shapes(model_dir).items()
            if name.endswith(".weight") and len(shape) == 2}


def targeted(layers: dict[str, tuple[int, int]], target: str) -> dict[str, tuple[int, int]]:
    """The layers a PEFT target module name matches: the module path itself or its last components."""
    return {path: shape for path, shape in layers.items() if path == target or path.endswith("." + target)}


def adapter_layout(base_dir, spec) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a LoRA adapter over `base_dir`, as PEFT names it in its files
    (`base_model.model.<layer>.lora_A.weight`: rank x in, `lora_B`: out x rank): what a push must match."""
    layers = linear_layers(base_dir)
    layout = {}
    for target in spec.target_modules:
        for path, (out_features, in_features) in targeted(layers, target).items():
            layout[f"base_model.model.{path}.lora_A.weight"] = (spec.rank, in_features)
            layout[f"base_model.model.{path}.lora_B.weight"] = (out_features, spec.rank)
    return layout
