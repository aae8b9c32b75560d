"""Typed run configuration (pydantic v2): one model per section, loaded from YAML with `key=value` overrides.

Every field has a docstring. `load_config` checks types, allowed values and the rules joining keys and
raises `ConfigError` naming the key path, the bad value and what is allowed, before anything starts.
Loading a config imports no torch (registered names are checked in torch-free tables).

- sections.py: run, env, model, algo, trainer, rollout, pipeline; resources.py; llm.py: the sections.
- schema.py: `Config` (the sections, workload-dependent trainer defaults, cross-section rules, moved keys).
- fields.py: shared field types; errors.py: `ConfigError` and pydantic's errors turned into it.
- overrides.py: the `key.path=value` rule; loader.py: `load_config`, `config_from_dict`, `config_from_saved`.
"""

from flexmarl.config.errors import ConfigError, MovedKeyError
from flexmarl.config.llm import LLMConfig
from flexmarl.config.loader import config_from_dict, config_from_saved, load_config
from flexmarl.config.resources import ActorDemand, ResourcesConfig
from flexmarl.config.schema import Config
from flexmarl.config.sections import (AlgoConfig, EnvConfig, ModelConfig, PipelineConfig, RolloutConfig, RunConfig,
                                      TrainerConfig)

__all__ = [
    "ActorDemand", "AlgoConfig", "Config", "ConfigError", "EnvConfig", "LLMConfig", "ModelConfig", "MovedKeyError",
    "PipelineConfig", "ResourcesConfig", "RolloutConfig", "RunConfig", "TrainerConfig", "config_from_dict",
    "config_from_saved", "load_config",
]
