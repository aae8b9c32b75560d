"""The whole run configuration: its sections, the workload's trainer defaults, and the rules that join
keys of several sections."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from flexmarl.config.errors import config_error
from flexmarl.config.fields import SECTION
from flexmarl.config.llm import LLMConfig
from flexmarl.config.resources import ResourcesConfig
from flexmarl.config.sections import (LLM_TRAINER_DEFAULTS, AlgoConfig, EnvConfig, ModelConfig, PipelineConfig,
                                      RolloutConfig, RunConfig, TrainerConfig)

MOVED_KEYS = {
    **{f"{section}.{knob}": f"'trainer.{knob}'" for section in ("algo", "llm") for knob in TrainerConfig.model_fields},
    "llm.device": "'trainer.device' (trainers) and 'llm.engine_device' (inference engines)",
}
"""Keys of configs written for an older version -> where they live now (named in the error)."""


class Config(BaseModel):
    """A run: YAML sections run, env, model, algo, trainer, rollout, pipeline, resources, llm."""

    model_config = SECTION

    run: RunConfig = Field(default_factory=RunConfig)
    """Run name, seed, length, mode (ray / serial), workload (marl / llm), output and evaluation."""
    env: EnvConfig = Field(default_factory=EnvConfig)
    """MARL: the env and its agent groups."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """MARL: the policy and critic networks."""
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    """MARL: algorithm, losses, advantages, learning rates."""
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    """Both workloads: epochs, minibatches, device, gradient clip, ratio clip (defaults per workload)."""
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    """MARL: rollout workers and requests (LLM: `num_workers` workflow workers and their restarts)."""
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    """How training overlaps rollout: sync, microbatch, stale."""
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    """Placement: pools, strategies, per-actor demands."""
    llm: LLMConfig = Field(default_factory=LLMConfig)
    """LLM agents: task, models, engines, sampling, group loss."""

    @property
    def microbatch_env_steps(self) -> int:
        return self.rollout.envs_per_worker * self.rollout.fragment_length

    @property
    def requests_per_iteration(self) -> int:
        if self.run.workload == "llm":
            return self.llm.queries_per_iteration // self.llm.queries_per_request
        return self.run.batch_env_steps // self.microbatch_env_steps

    def to_dict(self) -> dict:
        """The resolved config (every key), as `config.yaml` of a run directory stores it."""
        return self.model_dump()

    @model_validator(mode="after")
    def _workload_trainer_defaults(self) -> "Config":
        if self.run.workload == "llm":
            unset = {k: v for k, v in LLM_TRAINER_DEFAULTS.items() if k not in self.trainer.model_fields_set}
            self.trainer = self.trainer.model_copy(update=unset)
        return self

    @model_validator(mode="after")
    def _batches_divide(self) -> "Config":
        micro, batch = self.microbatch_env_steps, self.run.batch_env_steps
        if micro > batch:
            raise config_error(f"a micro-batch (envs_per_worker * fragment_length = {micro} env steps) no larger "
                               f"than run.batch_env_steps = {batch}", key="rollout.envs_per_worker",
                               value=self.rollout.envs_per_worker)
        if batch % micro:
            raise config_error(f"a multiple of rollout.envs_per_worker * rollout.fragment_length = {micro}",
                               key="run.batch_env_steps", value=batch)
        llm = self.llm
        if self.run.workload == "llm" and llm.queries_per_iteration % llm.queries_per_request:
            raise config_error(f"a multiple of llm.queries_per_request = {llm.queries_per_request}",
                               key="llm.queries_per_iteration", value=llm.queries_per_iteration)
        units = "rollout requests (micro-batches)" if self.run.workload == "llm" else "micro-batches"
        if self.requests_per_iteration % self.trainer.num_minibatches:
            raise config_error(f"a divisor of the {self.requests_per_iteration} {units} per iteration",
                               key="trainer.num_minibatches", value=self.trainer.num_minibatches)
        return self
