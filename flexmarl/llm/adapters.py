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


ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
"""The two files of a PEFT adapter folder."""
_UNSUPPORTED = {"use_dora": False, "bias": "none", "fan_in_fan_out": False, "modules_to_save": None,
                "rank_pattern": {}, "alpha_pattern": {}}
"""PEFT LoraConfig options that change what an adapter computes, with the value ours has."""


def saved_adapter(adapter_dir) -> dict:
    """{rank, alpha, target_modules} of a PEFT LoRA adapter folder, read from its adapter_config.json
    (rsLoRA's alpha turned into the plain alpha with the same scale). ValueError says what is wrong."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    try:
        saved = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON ({exc})") from None
    if not isinstance(saved, dict) or saved.get("peft_type") != "LORA":
        raise ValueError(f"{path} is not a LoRA adapter's (peft_type {saved.get('peft_type') if isinstance(saved, dict) else None!r})")
    for option, ours in _UNSUPPORTED.items():
        value = saved.get(option)
        if value is not None and value != ours and (value or ours):  # an empty list is the None of its kind
            raise ValueError(f"{path} has {option} = {saved[option]!r}; supported: {ours!r}")
    try:
        rank, alpha, targets = int(saved["r"]), float(saved["lora_alpha"]), saved["target_modules"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} lacks a valid r, lora_alpha or target_modules ({exc!r})") from None
    if isinstance(targets, str) or not targets:
        raise ValueError(f"{path} has target_modules {targets!r}; supported: a list of module names")
    if saved.get("use_rslora"):  # scale alpha / sqrt(r) = alpha' / r
        alpha *= rank ** 0.5
    return {"rank": rank, "alpha": alpha, "target_modules": sorted(targets)}


def safetensors_problem(path) -> str:
    """Why a safetensors file cannot be what its header says (unreadable, header not JSON, tensor data past
    the end of the file or the file longer than its tensors); '' when it is consistent."""
    try:
        size = Path(path).stat().st_size
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                return f"{path}: its header length {length} runs past the end of the {size}-byte file"
            header = json.loads(f.read(length))
        end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    except (OSError, struct.error, ValueError, KeyError, TypeError, IndexError) as exc:
        return f"{path}: not a readable safetensors file ({exc})"
    if 8 + length + end != size:
        return f"{path}: {size} bytes, its header describes {8 + length + end} (a truncated or corrupt file)"
    return ""
