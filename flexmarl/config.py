"""Typed run configuration: one dataclass per component, loaded from YAML with `key=value` overrides.

Every field has a docstring. `load_config` checks types and allowed values for every key and raises
`ConfigError` naming the key path, the bad value and what is allowed, before anything starts.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from flexmarl.config_error import ConfigError  # callers may import it from here too
from flexmarl.overrides import apply_overrides


@dataclass
class RunConfig:
    name: str = "run"
    """Run name; the run directory is `<output_dir>/<name>-<timestamp>/`."""
    seed: int = 0
    """Seeds parameters, action sampling and env resets (every rollout request derives its own seed)."""
    iterations: int = 10
    """Training iterations; each collects `batch_env_steps` env steps and updates every group once."""
    batch_env_steps: int = 3200
    """Global batch in env steps per iteration; a multiple of `rollout.envs_per_worker * rollout.fragment_length`."""
    mode: Literal["ray", "serial"] = "ray"
    """`ray`: rollout workers and trainers as Ray actors on separate pools; `serial`: same components in one process."""
    workload: Literal["marl", "llm"] = "marl"
    """marl: env-stepping rollout workers and torch policies (sections env, model, algo, rollout).
    llm: language-model agents called by a text task's workflow on inference engines (section llm)."""
    output_dir: str = "runs"
    """Parent folder of run directories."""
    checkpoint_every: int = 10
    """Checkpoint every N iterations (and always at the end); 0 = only at the end."""
    eval_every: int = 0
    """Greedy evaluation every N iterations (0 = never); writes `eval/return_mean` and `eval/win_rate`."""
    eval_episodes: int = 10
    """Episodes per greedy evaluation."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class EnvConfig:
    name: str = "mpe/simple_spread"
    """Registered env name (see `envs.registered_names()`) or any ParallelEnv factory as 'module:callable'."""
    kwargs: dict = field(default_factory=dict)
    """Keyword arguments for the env factory."""
    groups: Any = "shared"
    """Agent -> policy group: 'shared' (one group: parameter sharing), 'independent' (one per agent),
    or a mapping {group_name: [agent, ...]} covering every agent exactly once."""
    global_state: Literal["env", "concat_obs"] = "env"
    """Centralised critic input: `env.state()`, or the agents' concatenated observations (same values for
    MPE, without recomputing every observation a second time). Envs without state() use concat_obs."""


@dataclass
class ModelConfig:
    actor: Literal["mlp", "candidate_scorer"] = "mlp"
    """mlp: one MLP maps the observation to every action's logit. candidate_scorer (discrete actions over
    a candidate slate, e.g. recommendation): one shared network scores each candidate from the context
    and that candidate's features, so slots are interchangeable and item knowledge transfers."""
    encoder: Literal["auto", "mlp", "cnn"] = "auto"
    """Observation encoder before the MLP layers. auto: a small CNN for image observations (a 3-D Box with 1-4
    channels, HWC or CHW), else the flat observation; mlp: always flatten; cnn: require images. A centralised
    critic uses the CNN too when its input is an image (an image `state()`, or the agents' images stacked)."""
    hidden_sizes: list = field(default_factory=lambda: [64, 64])
    """Widths of the MLP layers of actor and critic."""
    activation: Literal["relu", "tanh"] = "relu"
    """Hidden activation."""
    input_layer_norm: bool = True
    """LayerNorm on inputs (MAPPO's feature normalisation)."""
    use_gru: bool = False
    """Add a GRU after the MLP (recurrent actor and critic, trained on whole fragments)."""
    gru_hidden: int = 64
    """GRU hidden width."""


@dataclass
class AlgoConfig:
    name: Literal["mappo", "ippo"] = "mappo"
    """mappo: centralised critic on the global state; ippo: each agent's critic on its own observation."""
    critic_agent_id: Any = "auto"
    """Append a one-hot agent id (the agent's index in its group) to the critic's input, so a shared critic
    predicts each agent's own value (as the reference MAPPO implementations do). auto: on for a
    centralised critic (mappo) of a group of several agents, unless the env gives every agent the same
    reward (`env.shared_reward`, e.g. SMAX, GRF with `team_reward`) or the critic reads images; there one
    state maps to one return, so the id adds nothing. true / false force it."""
    advantage_estimator: str = "gae"
    """Registered advantage estimator (flexmarl.algorithms.ADVANTAGE_ESTIMATORS)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Trainer device: auto = cuda when the trainer's placement bundle has a GPU (`resources.trainer.gpus`
    or `resources.per_group.<group>.trainer.gpus`), else cpu."""
    policy_loss: str = "ppo_clip"
    """Registered policy loss (flexmarl.algorithms.POLICY_LOSSES)."""
    value_loss: str = "clipped_huber"
    """Registered value loss (flexmarl.algorithms.VALUE_LOSSES)."""
    gradient_aggregator: str = "mean"
    """How a shared actor combines its agents' gradients (flexmarl.algorithms.GRADIENT_AGGREGATORS):
    mean (= MAPPO/IPPO), grasp (consensus gradient, arXiv:2604.00717), pcgrad, cagrad."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_eps: float = 0.2
    """PPO ratio clip."""
    value_clip_eps: float = 0.2
    """Value prediction clip around the rollout-time prediction."""
    huber_delta: float = 10.0
    """Huber delta of the value loss."""
    entropy_coef: float = 0.01
    """Entropy bonus weight."""
    value_coef: float = 1.0
    """Value loss weight."""
    lr_actor: float = 7e-4
    """Actor Adam learning rate."""
    lr_critic: float = 7e-4
    """Critic Adam learning rate."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    max_grad_norm: float = 10.0
    """Gradient norm clip (actor and critic separately)."""
    epochs: int = 5
    """PPO epochs over each global batch."""
    num_minibatches: int = 1
    """Optimizer steps per epoch; must divide the micro-batches per iteration."""
    advantage_norm: bool = True
    """Normalise advantages within each micro-batch (final when the micro-batch is released)."""
    value_norm: bool = True
    """Running normalisation of value targets (MAPPO's ValueNorm)."""


@dataclass
class RolloutConfig:
    num_workers: int = 1
    """Rollout worker actors."""
    envs_per_worker: int = 16
    """Env copies each worker steps together (one batched policy call per step)."""
    fragment_length: int = 25
    """Env steps per env copy in one rollout request; every request starts fresh episodes."""
    request_unit: Literal["steps", "episodes"] = "steps"
    """steps: every env copy steps `fragment_length` times (episodes restart inside the request).
    episodes: every env copy plays one episode (at most `fragment_length` steps) and the request ends when
    the last one does, so long episodes make long requests (a long tail, as in GRF or LLM responses);
    `run.batch_env_steps` then counts capacity, and fewer steps are actually taken."""
    backend: Literal["torch", "random"] = "torch"
    """Inference backend that computes actions ("random": uniform baseline, nothing to train)."""
    max_worker_restarts: int = 3
    """How many times a dead rollout worker is replaced before the run fails."""
    request_timeout_s: float = 0.0
    """Ray mode: a worker that finishes none of its requests for this many seconds (a wedged game engine) is
    treated as dead: killed, replaced (counts against max_worker_restarts) and its rows regenerated;
    counted in `rollout/worker_timeouts`. 0 = wait forever. Must exceed the slowest request, including the
    first one, which also waits for the worker to start."""
    max_env_restarts: int = 3
    """Per request: how many env copies that raise mid-episode (a crashed GRF engine or SC2 client) are
    rebuilt, their episode discarded, before the request fails."""


@dataclass
class PipelineConfig:
    mode: Literal["sync", "microbatch", "stale"] = "microbatch"
    """sync: collect the whole global batch, then train. microbatch: train on each micro-batch as soon as
    it is complete, step once per global batch; zero policy lag, same result as sync. stale: rollout never
    waits for training; rows up to `max_staleness` versions old are admitted (not equal to sync)."""
    max_staleness: int = 1
    """stale mode only: the store refuses (and counts) rows more than this many versions old."""


@dataclass
class ActorDemand:
    """What one actor (a trainer, a rollout worker, an inference engine) asks of its placement bundle."""

    cpus: float = 0.0
    """CPUs; 0 = an equal share of its pool's `rollout_cpus` / `trainer_cpus` (the default)."""
    gpus: float = 0.0
    """GPUs (fractions allowed); > 0 puts the actor's model on the GPU Ray gives it (CUDA_VISIBLE_DEVICES)."""
    memory_gib: float = 0.0
    """Memory reserved for the actor in GiB (Ray's `memory` resource); 0 = none reserved."""


PLACEMENT_ROLES = ("trainer", "engine")
"""Roles a `resources.per_group` entry may set: the group's trainer, and (LLM) its engine instances."""


@dataclass
class ResourcesConfig:
    """Placement: one bundle per actor, grouped in two pools (rollout, trainer); see docs/cluster.md."""

    rollout_cpus: float = 1.0
    """CPUs of the rollout pool, split evenly over the rollout actors (workers, LLM engines) that do not
    set their own `cpus`."""
    trainer_cpus: float = 1.0
    """CPUs of the training pool, split evenly over the group trainers that do not set their own `cpus`."""
    bind_cpus: bool = True
    """LLM workload on a CPU node: bind inference engines to the rollout pool's first cores and trainers
    to the next ones, so generation and training do not fight over cores (flexmarl/llm/cpus.py)."""
    trainer_slots: int = 0
    """LLM workload: trainer actors the model groups share. 0 = one trainer per group, bound for the
    whole run; n > 0 = n slots, groups time-share them (group i on slot i % n): an idle group's weights,
    Adam state, gradients and version are swapped out (`llm.swap_to`) and swapped back in when its
    next micro-batch arrives (orchestrator/slots.py)."""
    strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = "PACK"
    """Ray placement strategy of both pools' bundles: PACK (as few nodes as possible), SPREAD (over nodes,
    best effort), STRICT_SPREAD (each of a pool's actors on a different node)."""
    trainer: ActorDemand = field(default_factory=ActorDemand)
    """Default demand of each group trainer."""
    rollout_worker: ActorDemand = field(default_factory=ActorDemand)
    """Default demand of each rollout worker (MARL env stepping; LLM workflow workers)."""
    engine: ActorDemand = field(default_factory=ActorDemand)
    """Default demand of each inference engine instance (`run.workload: llm`)."""
    per_group: dict = field(default_factory=dict)
    """Per agent group overrides, key by key: {group: {trainer: {cpus, gpus, memory_gib}, engine: {...}}},
    e.g. {listener: {trainer: {gpus: 1}}}. `engine` applies to LLM groups only."""


@dataclass
class LLMConfig:
    """Language-model agents (`run.workload: llm`); see docs/llm.md."""

    task: str = "speaker_listener"
    """Registered text task (flexmarl.llm.tasks.TASKS) or 'module:Class'; it defines the agents, the
    workflow (which agent calls which) and the verifiable reward."""
    task_kwargs: dict = field(default_factory=dict)
    """Keyword arguments for the task."""
    model_dir: str = ""
    """Folder with one local Hugging Face checkpoint per agent (`<model_dir>/<agent>`), as written by
    `flexmarl llm build`; a real model works the same way (any local HF checkpoint directory). Empty:
    the task's own folder, runs/llm-models/<task> ('module:Class' as module.Class), built on first use.
    A relative path is resolved against the driver's working directory before any actor gets it."""
    models: dict = field(default_factory=dict)
    """Per-agent checkpoint directory overriding `<model_dir>/<agent>`, e.g. {listener: /models/qwen2.5-0.5b}."""
    groups: Any = "independent"
    """Agent -> model: 'independent' (each agent its own model, engine(s) and trainer), 'shared' (one model
    for all agents, the agent named in the prompt), or a mapping {group: [agents]}."""
    backend: str = "vllm"
    """Registered inference engine (flexmarl.llm.engine_registry.ENGINES): vllm (vLLM; the CPU build here, the
    CUDA build on a GPU node) or hf (transformers, batched generation with a KV cache)."""
    engines_per_agent: int = 1
    """Inference engine instances per model group at the start."""
    group_size: int = 8
    """G: trajectories per query (a GRPO group); advantages are normalised within it."""
    queries_per_request: int = 2
    """Queries in one rollout request; its complete groups form one micro-batch per agent."""
    queries_per_iteration: int = 16
    """Global batch in queries (a multiple of queries_per_request); one optimizer step per global batch."""
    concurrent_requests: int = 4
    """Inter-query parallelism: rollout requests in flight at once on the workflow workers."""
    max_concurrent_calls: int = 16
    """Intra-query parallelism: agent calls of one request in flight at once (independent branches)."""
    max_new_tokens: int = 8
    """Tokens generated per agent call at most."""
    max_prompt_tokens: int = 128
    """Longest prompt sent to an engine; a longer one is not sent: the call gets the format penalty and
    is counted (`llm/prompt_too_long`)."""
    temperature: float = 1.0
    """Sampling temperature of rollouts (logprobs are the raw model's)."""
    loss: str = "grpo"
    """Registered group loss (flexmarl.algorithms.group_losses.GROUP_LOSSES): grpo, sa_gcpo, gbpo."""
    loss_agg: Literal["token_mean", "seq_mean_token_mean"] = "token_mean"
    """token_mean: sum of token losses / tokens in the minibatch (DAPO); seq_mean_token_mean: each
    sequence's token mean, averaged over sequences (GRPO paper). Both are final only when the minibatch is."""
    epochs: int = 1
    """Passes over each global batch."""
    num_minibatches: int = 1
    """Optimizer steps per epoch; must divide the requests per iteration."""
    lr: float = 1.0e-4
    """Adam learning rate."""
    max_grad_norm: float = 1.0
    """Gradient norm clip."""
    clip_eps: float = 0.2
    """GRPO ratio clip."""
    tau_pos: float = 1.0
    """SA-GCPO gate temperature for positive advantages."""
    tau_neg: float = 1.05
    """SA-GCPO gate temperature for negative advantages."""
    kl_coef: float = 0.0
    """Weight of the per-token k3 KL to the initial (warm-started) model; 0 skips the reference model."""
    format_penalty: float = -1.0
    """Reward of an agent whose output cannot be parsed (or whose prompt was too long)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Trainer device: auto = cuda when a GPU is visible to the trainer actor, else cpu."""
    engine_max_batch: int = 64
    """Calls one engine runs together at most (vLLM's max_num_seqs). 1 makes every call's numerics
    independent of what else is in flight (bit-reproducible rollouts), at the cost of throughput."""
    engine_kv_cache_gib: float = 0.25
    """vLLM on CPU: KV-cache memory per engine (VLLM_CPU_KVCACHE_SPACE, GiB)."""
    gpu_memory_utilization: float = 0.3
    """vLLM on CUDA: share of the GPU's memory an engine may take."""
    max_engine_restarts: int = 3
    """How many times a dead inference engine is replaced (its requests re-sent) before the run fails."""
    max_task_errors: int = 10
    """Trajectories whose task code may fail (its `run` raises or returns no usable Outcome) before the
    run stops with error.txt; each failure drops its query's GRPO group for every agent and counts in
    `llm/task_errors/<task>`. Counted since the run (re)started; 0 stops at the first failure."""
    load_balancing: bool = True
    """Inter-agent load balancing between iterations: engine instances follow each model group's calls
    of the last iteration (flexmarl.llm.balance.plan_allocation); false keeps the initial allocation."""
    rebalance_threshold: float = 5.0
    """Load disparity (busiest group's calls per instance / idlest group's) above which instances move
    between groups (the paper uses 5); 0 re-plans after every iteration."""
    swap_to: Literal["host", "remote"] = "host"
    """Where an idle group's training state goes when `resources.trainer_slots` makes groups share
    trainers: host memory of the slot, or the Ray object store (needs `run.mode: ray`)."""


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)

    @property
    def microbatch_env_steps(self) -> int:
        return self.rollout.envs_per_worker * self.rollout.fragment_length

    @property
    def requests_per_iteration(self) -> int:
        if self.run.workload == "llm":
            return self.llm.queries_per_iteration // self.llm.queries_per_request
        return self.run.batch_env_steps // self.microbatch_env_steps

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- loading and checking


def _check_type(path: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(path, value, "one of " + ", ".join(map(repr, choices)))
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, value, "an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(path, value, "a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, value, "a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, value, "a string")
        return value
    if tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, value, "a list")
        return list(value)
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(path, value, "a mapping")
        return dict(value)
    raise TypeError(f"unsupported config type {tp} at {path}")


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(key, data[unknown[0]], f"known keys under '{prefix.rstrip('.') or '<root>'}': {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp, value, path = hints[name], data[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(path, value, "a mapping")
            kwargs[name] = _build(tp, value, f"{path}.")
        else:
            kwargs[name] = _check_type(path, value, tp)
    return cls(**kwargs)


def _positive(path: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(path, value, ">= 0" if allow_zero else "> 0")


def validate(cfg: Config) -> Config:
    """Semantic checks that types alone cannot express."""
    from flexmarl.algorithms import ADVANTAGE_ESTIMATORS, GRADIENT_AGGREGATORS, POLICY_LOSSES, VALUE_LOSSES

    for path, value in [
        ("run.iterations", cfg.run.iterations), ("run.batch_env_steps", cfg.run.batch_env_steps),
        ("run.eval_episodes", cfg.run.eval_episodes), ("rollout.num_workers", cfg.rollout.num_workers),
        ("rollout.envs_per_worker", cfg.rollout.envs_per_worker),
        ("rollout.fragment_length", cfg.rollout.fragment_length), ("algo.epochs", cfg.algo.epochs),
        ("algo.num_minibatches", cfg.algo.num_minibatches), ("algo.lr_actor", cfg.algo.lr_actor),
        ("algo.lr_critic", cfg.algo.lr_critic), ("model.gru_hidden", cfg.model.gru_hidden),
        ("resources.rollout_cpus", cfg.resources.rollout_cpus),
        ("resources.trainer_cpus", cfg.resources.trainer_cpus), ("algo.huber_delta", cfg.algo.huber_delta),
    ]:
        _positive(path, value)
    for path, value in [
        ("run.checkpoint_every", cfg.run.checkpoint_every), ("run.eval_every", cfg.run.eval_every),
        ("rollout.max_worker_restarts", cfg.rollout.max_worker_restarts),
        ("rollout.max_env_restarts", cfg.rollout.max_env_restarts),
        ("rollout.request_timeout_s", cfg.rollout.request_timeout_s),
        ("algo.entropy_coef", cfg.algo.entropy_coef), ("algo.value_coef", cfg.algo.value_coef),
        ("algo.max_grad_norm", cfg.algo.max_grad_norm), ("algo.clip_eps", cfg.algo.clip_eps),
        ("algo.value_clip_eps", cfg.algo.value_clip_eps),
        ("resources.trainer_slots", cfg.resources.trainer_slots),
        ("llm.rebalance_threshold", cfg.llm.rebalance_threshold),
    ]:
        _positive(path, value, allow_zero=True)
    for path, value in [("algo.gamma", cfg.algo.gamma), ("algo.gae_lambda", cfg.algo.gae_lambda)]:
        if not 0.0 <= value <= 1.0:
            raise ConfigError(path, value, "a number in [0, 1]")
    for path, value, registry in [
        ("algo.advantage_estimator", cfg.algo.advantage_estimator, ADVANTAGE_ESTIMATORS),
        ("algo.policy_loss", cfg.algo.policy_loss, POLICY_LOSSES),
        ("algo.value_loss", cfg.algo.value_loss, VALUE_LOSSES),
        ("algo.gradient_aggregator", cfg.algo.gradient_aggregator, GRADIENT_AGGREGATORS),
    ]:
        if value not in registry:
            raise ConfigError(path, value, "one of " + ", ".join(sorted(registry)))
    if not cfg.model.hidden_sizes or not all(isinstance(h, int) and h > 0 for h in cfg.model.hidden_sizes):
        raise ConfigError("model.hidden_sizes", cfg.model.hidden_sizes, "a non-empty list of positive integers")
    if cfg.algo.critic_agent_id not in ("auto", True, False):
        raise ConfigError("algo.critic_agent_id", cfg.algo.critic_agent_id, "auto, true or false")
    if cfg.pipeline.max_staleness < 0:
        raise ConfigError("pipeline.max_staleness", cfg.pipeline.max_staleness, "an integer >= 0")
    if cfg.microbatch_env_steps > cfg.run.batch_env_steps:
        raise ConfigError(
            "rollout.envs_per_worker", cfg.rollout.envs_per_worker,
            f"a micro-batch (envs_per_worker * fragment_length = {cfg.microbatch_env_steps} env steps) "
            f"no larger than run.batch_env_steps = {cfg.run.batch_env_steps}",
        )
    if cfg.run.batch_env_steps % cfg.microbatch_env_steps:
        raise ConfigError(
            "run.batch_env_steps", cfg.run.batch_env_steps,
            f"a multiple of rollout.envs_per_worker * rollout.fragment_length = {cfg.microbatch_env_steps}",
        )
    if cfg.requests_per_iteration % cfg.algo.num_minibatches:
        raise ConfigError(
            "algo.num_minibatches", cfg.algo.num_minibatches,
            f"a divisor of the {cfg.requests_per_iteration} micro-batches per iteration",
        )
    _validate_resources(cfg.resources)
    if cfg.run.workload == "llm":
        _validate_llm(cfg.llm)
    groups = cfg.env.groups
    if isinstance(groups, str):
        if groups not in ("shared", "independent"):
            raise ConfigError("env.groups", groups, "'shared', 'independent' or a mapping {group: [agents]}")
    elif isinstance(groups, dict):
        for name, members in groups.items():
            if not isinstance(members, list) or not members or not all(isinstance(a, str) for a in members):
                raise ConfigError(f"env.groups.{name}", members, "a non-empty list of agent names")
    else:
        raise ConfigError("env.groups", groups, "'shared', 'independent' or a mapping {group: [agents]}")
    return cfg


def _validate_resources(res: ResourcesConfig) -> None:
    for role in ("trainer", "rollout_worker", "engine"):
        demand = getattr(res, role)
        for key in ("cpus", "gpus", "memory_gib"):
            _positive(f"resources.{role}.{key}", getattr(demand, key), allow_zero=True)
    for group, roles in res.per_group.items():
        if not isinstance(roles, dict):
            raise ConfigError(f"resources.per_group.{group}", roles, "a mapping {trainer: {...}, engine: {...}}")
        for role, demand in roles.items():
            path = f"resources.per_group.{group}.{role}"
            if role not in PLACEMENT_ROLES:
                raise ConfigError(path, demand, "keys " + ", ".join(PLACEMENT_ROLES))
            built = _build(ActorDemand, demand, f"{path}.") if isinstance(demand, dict) else None
            if built is None:
                raise ConfigError(path, demand, "a mapping with keys cpus, gpus, memory_gib")
            for key in demand:
                _positive(f"{path}.{key}", getattr(built, key), allow_zero=True)


def _validate_llm(llm: LLMConfig) -> None:
    from flexmarl.algorithms.group_losses import GROUP_LOSSES

    for path, value in [
        ("llm.engines_per_agent", llm.engines_per_agent), ("llm.group_size", llm.group_size),
        ("llm.queries_per_request", llm.queries_per_request), ("llm.queries_per_iteration", llm.queries_per_iteration),
        ("llm.concurrent_requests", llm.concurrent_requests), ("llm.max_concurrent_calls", llm.max_concurrent_calls),
        ("llm.max_new_tokens", llm.max_new_tokens), ("llm.max_prompt_tokens", llm.max_prompt_tokens),
        ("llm.epochs", llm.epochs), ("llm.num_minibatches", llm.num_minibatches), ("llm.lr", llm.lr),
        ("llm.engine_kv_cache_gib", llm.engine_kv_cache_gib), ("llm.engine_max_batch", llm.engine_max_batch), ("llm.gpu_memory_utilization", llm.gpu_memory_utilization),
    ]:
        _positive(path, value)
    for path, value in [("llm.temperature", llm.temperature), ("llm.kl_coef", llm.kl_coef),
                        ("llm.max_grad_norm", llm.max_grad_norm), ("llm.clip_eps", llm.clip_eps),
                        ("llm.max_engine_restarts", llm.max_engine_restarts),
                        ("llm.max_task_errors", llm.max_task_errors)]:
        _positive(path, value, allow_zero=True)
    if llm.group_size < 2:
        raise ConfigError("llm.group_size", llm.group_size, ">= 2 (group-normalised advantages need two outputs)")
    if llm.queries_per_iteration % llm.queries_per_request:
        raise ConfigError("llm.queries_per_iteration", llm.queries_per_iteration,
                          f"a multiple of llm.queries_per_request = {llm.queries_per_request}")
    requests = llm.queries_per_iteration // llm.queries_per_request
    if requests % llm.num_minibatches:
        raise ConfigError("llm.num_minibatches", llm.num_minibatches,
                          f"a divisor of the {requests} rollout requests (micro-batches) per iteration")
    from flexmarl.llm.engine_registry import ENGINES

    if llm.backend not in ENGINES:
        raise ConfigError("llm.backend", llm.backend, "one of " + ", ".join(sorted(ENGINES)))
    if llm.loss not in GROUP_LOSSES:
        raise ConfigError("llm.loss", llm.loss, "one of " + ", ".join(sorted(GROUP_LOSSES)))
    if llm.gpu_memory_utilization > 1:
        raise ConfigError("llm.gpu_memory_utilization", llm.gpu_memory_utilization, "a number in (0, 1]")
    if not (llm.groups in ("independent", "shared") or isinstance(llm.groups, dict)):
        raise ConfigError("llm.groups", llm.groups, "'independent', 'shared' or a mapping {group: [agents]}")


def config_from_dict(data: dict, overrides: list[str] | None = None) -> Config:
    """Build and check a Config from a mapping, after `key.path=value` overrides (rule: flexmarl/overrides.py)."""
    return validate(_build(Config, apply_overrides(data or {}, overrides or []), ""))


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError("<file>", str(path), "an existing YAML file") from exc
    if not isinstance(data, dict):
        raise ConfigError("<root>", data, "a YAML mapping of sections (run, env, model, algo, rollout, pipeline, resources)")
    return config_from_dict(data, overrides)
