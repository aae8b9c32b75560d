"""`llm.models.<group>` as a LoRA adapter: the model of an agent (or model group) may be a checkpoint
directory (a string) or `{adapter: lora, rank, alpha, dropout, target_modules}`, a low-rank adapter
trained over `llm.base_model` (docs/llm.md#lora-agents). Checked here what the config alone says; what
needs the base checkpoint (its layer names and sizes) is checked before start by
`flexmarl/llm/setup.py` from its config.json and safetensors headers, without torch."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, PlainValidator, ValidationError

from flexmarl.config.errors import config_error, from_validation_error
from flexmarl.config.fields import SECTION, Number, PositiveInt, yaml_number

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
"""The attention projections of the Llama/Qwen2/Mistral families."""

AUTO_ALPHA_COEFFICIENT = 32.0
"""c of `alpha: auto` = c * sqrt(rank): the best of c = 2, 8, 32 on the speaker-listener task, by the
pre-registered rule of `flexmarl bench lora-alpha` (docs/llm.md#lora-alpha; a small effect there)."""


def _module_names(value: Any) -> list[str]:
    if isinstance(value, list) and value and all(isinstance(name, str) and name for name in value):
        return value
    raise config_error("a non-empty list of module names, e.g. [q_proj, v_proj]")


ModuleNames = Annotated[list[str], PlainValidator(_module_names)]


def _alpha(value: Any) -> float | str:
    number = yaml_number(value)
    if number == "auto" or (isinstance(number, (int, float)) and not isinstance(number, bool) and number > 0):
        return number if number == "auto" else float(number)
    raise config_error("a number > 0 or 'auto'")


Alpha = Annotated[float | Literal["auto"], PlainValidator(_alpha)]


class LoraAdapter(BaseModel):
    """A LoRA adapter (PEFT) over `llm.base_model`: its agents' policy is the base plus this adapter."""

    model_config = SECTION

    adapter: Literal["lora"]
    """The adapter kind (PEFT LoRA)."""
    rank: PositiveInt = 8
    """LoRA rank r: at most the smaller dimension of every targeted layer."""
    alpha: Alpha = "auto"
    """LoRA alpha: the update is scaled by alpha / rank. auto (the default): AUTO_ALPHA_COEFFICIENT *
    sqrt(rank), as the best alpha grows like the square root of the rank; chosen over alpha = rank,
    2 * rank and 16 by the sweep in docs/llm.md#lora-alpha."""
    dropout: Annotated[Number, Field(ge=0, lt=1)] = 0.0
    """Dropout on the adapter's input while training (0 keeps an update a deterministic function of its
    batch, which the microbatch == sync equality needs)."""
    target_modules: ModuleNames = Field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    """Names of the linear layers that get an adapter (module names of the base architecture)."""
    base: str = ""
    """The checkpoint this adapter was meant for; empty = `llm.base_model`. Set, it must be that one (all
    adapters of a run share the engines of one base)."""
    init: str = ""
    """A PEFT adapter folder (adapter_config.json + adapter_model.safetensors, e.g. from `flexmarl llm export`
    or PEFT's `save_pretrained`) the adapter starts from; empty: a fresh adapter (B = 0, the base). Its rank,
    alpha and target modules are the folder's; set here as well, they must equal it."""

    @property
    def scale_alpha(self) -> float:
        """The alpha PEFT gets (`alpha`, or auto's c * sqrt(rank))."""
        return AUTO_ALPHA_COEFFICIENT * math.sqrt(self.rank) if self.alpha == "auto" else float(self.alpha)


def _model_source(value: Any) -> dict[str, str | LoraAdapter]:
    if not isinstance(value, dict):
        raise config_error("a mapping {agent or group: checkpoint directory or {adapter: lora, ...}}")
    sources = {}
    for key, source in value.items():
        if isinstance(source, (str, LoraAdapter)):
            sources[key] = source
        elif isinstance(source, dict):
            sources[key] = _adapter(str(key), source)
        else:
            raise config_error("a checkpoint directory (a string) or an adapter {adapter: lora, rank, alpha, dropout, "
                               "target_modules}", key=str(key), value=source)
    return sources


def _adapter(key: str, source: dict) -> LoraAdapter:
    if "adapter" not in source:
        raise config_error("a checkpoint directory (a string) or an adapter mapping with 'adapter: lora'",
                           key=key, value=source)
    try:
        return LoraAdapter.model_validate(source)
    except ValidationError as exc:  # re-raised under the full key path, llm.models.<key>.<field>
        error = from_validation_error(exc, LoraAdapter, {})
        allowed = error.allowed.replace("'<root>'", f"'llm.models.{key}'")
        raise config_error(allowed, key=f"{key}.{error.path}", value=error.value) from None


ModelSources = Annotated[dict[str, str | LoraAdapter], BeforeValidator(_model_source)]
"""{agent or group: a checkpoint directory, or a LoRA adapter over llm.base_model}."""
