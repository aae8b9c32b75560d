"""LoRA agents with PEFT: one base model held once, any number of agents' adapters over it.

`AdapterHost` owns a base causal LM wrapped in a PEFT `PeftModelForCausalLM` and adds one named adapter
per model group. A trainer (flexmarl/llm/trainer.py) activates its group's adapter before each forward;
a trainer slot (flexmarl/llm/slots.py) gives all of its adapter groups one host, so the base is in memory
once however many agents share the slot. The HF engine serves adapters the same way (each call names its
adapter; calls of different adapters run in one batch through PEFT's `adapter_names`).

Adapter weights travel under PEFT's own file names (`get_peft_model_state_dict`: the adapter name taken
out, `...q_proj.lora_A.weight`), which is what `adapter_model.safetensors` holds: a trainer's weights are
an exported adapter's file, an engine loads them by those names, and vLLM reads them from such a folder.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from flexmarl.config.adapters import LoraAdapter
from flexmarl.llm.adapters import ADAPTER_WEIGHTS
from flexmarl.llm.models import load_causal_lm

START_SUFFIX = "__start"
"""A frozen copy of an adapter's `init` (its group name + this) is the KL reference of an adapter group."""


def lora_config(spec: LoraAdapter, base_dir: str | None = None):
    """The PEFT LoraConfig of `spec` (causal LM; `base_dir` recorded as the base a saved adapter names)."""
    from peft import LoraConfig

    return LoraConfig(r=spec.rank, lora_alpha=spec.scale_alpha, lora_dropout=spec.dropout,
                      target_modules=list(spec.target_modules), task_type="CAUSAL_LM",
                      base_model_name_or_path=base_dir)


class AdapterState(torch.nn.Module):
    """The parameters of one adapter (the same Parameter objects as in the host's model), as a module:
    what `flexmarl.state_swap` moves when a trainer slot swaps an adapter group (its adapter and the
    optimizer state, nothing of the base)."""

    def __init__(self, parameters: list[torch.nn.Parameter]):
        super().__init__()
        self.adapter = torch.nn.ParameterList(parameters)


class AdapterHost:
    """A base model held once, with named LoRA adapters added over it (PEFT)."""

    def __init__(self, base_dir: str, device: str | torch.device = "cpu"):
        self.base_dir, self.device = str(base_dir), device
        self.model = None
        """The PeftModelForCausalLM once the first adapter is added (eval mode: no dropout but the adapters')."""
        self.specs: dict[str, LoraAdapter] = {}
        self._base = load_causal_lm(self.base_dir, device).requires_grad_(False)

    def add(self, name: str, spec: LoraAdapter, seed: int = 0):
        """Add adapter `name` (initialised from `seed`: A random, B zero, so it starts as the base) and
        return the PEFT model."""
        from peft import get_peft_model

        if name in self.specs:
            raise ValueError(f"adapter {name!r} is already on the base {self.base_dir}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.model is None:
                self.model = get_peft_model(self._base, lora_config(spec, self.base_dir), adapter_name=name).eval()
            else:
                self.model.add_adapter(name, lora_config(spec, self.base_dir))
        self.model.to(self.device).eval()  # a new adapter's modules start in train mode
        self.specs[name] = spec
        return self.model

    def activate(self, name: str):
        """The model with adapter `name` active (and trainable, the others frozen)."""
        if self.model.active_adapter != name:
            self.model.set_adapter(name)
        return self.model

    def named_parameters(self, name: str) -> dict[str, torch.nn.Parameter]:
        """PEFT file name (adapter name taken out) -> the adapter's live Parameter."""
        pattern = re.compile(rf"\.(lora_\w+)\.{re.escape(name)}(?=\.|$)")
        named = {}
        for path, parameter in self.model.named_parameters():
            file_name, found = pattern.subn(r".\1", path)
            if found:
                named[file_name] = parameter
        return named

    def weights(self, name: str) -> dict[str, torch.Tensor]:
        """The adapter's tensors under their file names: CPU fp32 copies that later steps leave alone."""
        return {n: p.detach().to("cpu", torch.float32, copy=True) for n, p in self.named_parameters(name).items()}

    @torch.no_grad()
    def load_weights(self, name: str, weights: dict[str, torch.Tensor]) -> None:
        """Copy `weights` (file names, as `weights` returns them) into adapter `name`, in place."""
        live = self.named_parameters(name)
        problems = adapter_layout_problems(weights, live)
        if problems:
            raise ValueError(f"adapter {name!r}: {'; '.join(problems)}")
        for file_name, tensor in weights.items():
            live[file_name].copy_(tensor)

    def dropout_modules(self, name: str) -> list[torch.nn.Module]:
        """The adapter's dropout modules (train mode while training, when its dropout is > 0)."""
        return [m.lora_dropout[name] for m in self.model.modules()
                if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict) and name in m.lora_dropout]


def adapter_layout_problems(weights: dict[str, torch.Tensor], live: dict[str, torch.Tensor]) -> list[str]:
    """Missing, unexpected and wrongly shaped adapter tensors (empty: they fit)."""
    from flexmarl.llm.weights import layout_problems

    return layout_problems({n: tuple(t.shape) for n, t in weights.items()}, {n: tuple(t.shape) for n, t in live.items()})


def save_adapter(weights: dict[str, torch.Tensor], spec: LoraAdapter, base_dir: str, out_dir) -> Path:
    """A PEFT adapter directory (adapter_config.json + adapter_model.safetensors) that
    `PeftModel.from_pretrained(base, out_dir)` and vLLM's LoRARequest load."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lora_config(spec, str(base_dir)).save_pretrained(str(out))
    save_file({n: t.detach().to("cpu", torch.float32).contiguous() for n, t in weights.items()},
              str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    return out


def load_adapter_weights(adapter_dir) -> dict[str, torch.Tensor]:
    """The tensors of a PEFT adapter folder under their file names (what `AdapterHost.load_weights` takes)."""
    from safetensors.torch import load_file

    return load_file(str(Path(adapter_dir) / ADAPTER_WEIGHTS))
