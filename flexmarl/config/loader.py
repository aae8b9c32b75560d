"""Loading a config: YAML file or mapping, `key=value` overrides, checked against the schema; every
problem is one `ConfigError` naming the key path, the value and what is allowed, before anything starts."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from pydantic import ValidationError

from flexmarl.config.errors import ConfigError, from_validation_error
from flexmarl.config.overrides import apply_overrides
from flexmarl.config.schema import MOVED_KEYS, Config
from flexmarl.config.sections import TrainerConfig


def config_from_dict(data: dict, overrides: list[str] | None = None) -> Config:
    """Build and check a Config from a mapping, after `key.path=value` overrides (rule: overrides.py)."""
    try:
        return Config.model_validate(apply_overrides(data or {}, overrides or []))
    except ValidationError as exc:
        raise from_validation_error(exc, Config, MOVED_KEYS) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError("<file>", str(path), "an existing YAML file") from exc
    if not isinstance(data, dict):
        raise ConfigError("<root>", data, "a YAML mapping of sections (run, env, model, algo, trainer, rollout, "
                                          "pipeline, resources, llm)")
    return config_from_dict(data, overrides)


def config_from_saved(data: dict, overrides: list[str] | None = None) -> Config:
    """A config this program wrote (a run directory's config.yaml, a checkpoint's config), also one
    written before the `trainer` section existed, so such runs resume and evaluate unchanged."""
    return config_from_dict(upgrade_saved_config(data), overrides)


def upgrade_saved_config(data: dict) -> dict:
    """A resolved config written before a knob moved to the `trainer` section (the section itself, or
    later the loss hyper-parameters tau_pos / tau_neg): the workload's own copies of the shared knobs
    (`algo.*` for marl, `llm.*` for llm) move to `trainer`, the other workload's unused copies are dropped,
    and LLM engines keep the device they had (`llm.device` set both engines and trainers)."""
    if not isinstance(data, dict):
        return data
    moved = [(s, k) for s in ("algo", "llm") for k in TrainerConfig.model_fields if k in (data.get(s) or {})]
    if "trainer" in data and not moved:
        return data
    out = copy.deepcopy(data)
    own = "llm" if (out.get("run") or {}).get("workload") == "llm" else "algo"
    trainer = out.setdefault("trainer", {})
    for section, knob in moved:
        value = out[section].pop(knob)
        if section == own:
            trainer.setdefault(knob, value)
    if own == "llm" and "device" in trainer and "engine_device" not in out.get("llm", {}):
        out.setdefault("llm", {})["engine_device"] = trainer["device"]
    return out
