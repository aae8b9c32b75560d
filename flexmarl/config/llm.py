"""The `llm` section: language-model agents (`run.workload: llm`); see docs/llm.md."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from flexmarl.algorithms.registry import POLICY_LOSSES
from flexmarl.config.adapters import ModelSources
from flexmarl.config.fields import (SECTION, AgentGroups, Device, NonNegativeInt, NonNegativeNumber, Number,
                                    PositiveInt, PositiveNumber, registered)
from flexmarl.llm.engines.registry import ENGINES
from flexmarl.llm.tasks import TASKS


class LLMConfig(BaseModel):
    """Language-model agents (`run.workload: llm`); see docs/llm.md. Their epochs, minibatches, trainer
    device, gradient clip and ratio clip are in the `trainer` section."""

    model_config = SECTION

    task: Annotated[str, registered(TASKS, import_path_allowed=True)] = "speaker_listener"
    """Registered text task (flexmarl.llm.tasks.TASKS) or 'module:Class'; it defines the agents, the
    workflow (which agent calls which) and the verifiable reward."""
    task_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the task."""
    model_dir: str = ""
    """Folder with one local Hugging Face checkpoint per agent (`<model_dir>/<agent>`), as written by
    `flexmarl llm build`; a real model works the same way (any local HF checkpoint directory). Empty:
    the task's own folder, runs/llm-models/<task> ('module:Class' as module.Class), built on first use.
    A relative path is resolved against the driver's working directory before any actor gets it."""
    models: ModelSources = Field(default_factory=dict)
    """Per-agent (or per-group) model overriding `<model_dir>/<agent>`: a checkpoint directory, e.g.
    {listener: /models/qwen2.5-0.5b}, or a LoRA adapter over `llm.base_model`, e.g. {speaker: {adapter: lora,
    rank: 8}}. Full-model and adapter groups may be mixed; all adapter groups share one engine pool."""
    base_model: str = ""
    """The checkpoint every LoRA adapter of `llm.models` trains over (held once per trainer and engine).
    Empty: the task's built model of the first adapter group's first agent (`<model_dir>/<agent>`)."""
    groups: AgentGroups = "independent"
    """Agent -> model: 'independent' (each agent its own model, engine(s) and trainer), 'shared' (one model
    for all agents, the agent named in the prompt), or a mapping {group: [agents]}."""
    backend: Annotated[str, registered(ENGINES)] = "vllm"
    """Registered inference engine (flexmarl.llm.engines.registry.ENGINES): vllm (vLLM; the CPU build here, the
    CUDA build on a GPU node) or hf (transformers, batched generation with a KV cache)."""
    engine_device: Device = "auto"
    """Inference engines' device: auto = cuda when the engine's placement bundle asks for a GPU
    (`resources.engine.gpus`), else cpu: the trainers' rule (`trainer.device`), serial and on Ray."""
    engines_per_agent: PositiveInt = 1
    """Inference engine instances per model group at the start."""
    group_size: Annotated[int, Field(ge=2)] = 8
    """G: trajectories per query (a GRPO group); advantages are normalised within it (so at least 2)."""
    queries_per_request: PositiveInt = 2
    """Queries in one rollout request; its complete groups form one micro-batch per agent."""
    queries_per_iteration: PositiveInt = 16
    """Global batch in queries (a multiple of queries_per_request); one optimizer step per global batch."""
    concurrent_requests: PositiveInt = 4
    """Inter-query parallelism: rollout requests in flight at once on the workflow workers."""
    max_concurrent_calls: PositiveInt = 16
    """Intra-query parallelism: agent calls of one request in flight at once (independent branches)."""
    max_new_tokens: PositiveInt = 8
    """Tokens generated per agent call at most."""
    max_prompt_tokens: PositiveInt = 128
    """Longest prompt sent to an engine; a longer one is not sent: the call gets the format penalty and
    is counted (`llm/prompt_too_long`)."""
    temperature: NonNegativeNumber = 1.0
    """Sampling temperature of rollouts (logprobs are the raw model's)."""
    loss: Annotated[str, registered(POLICY_LOSSES)] = "grpo"
    """Registered policy loss applied per token (flexmarl.algorithms.POLICY_LOSSES): grpo, sa_gcpo, gbpo, ..."""
    loss_agg: Literal["token_mean", "seq_mean_token_mean"] = "token_mean"
    """token_mean: sum of token losses / tokens in the minibatch (DAPO); seq_mean_token_mean: each
    sequence's token mean, averaged over sequences (GRPO paper). Both are final only when the minibatch is."""
    lr: PositiveNumber = 1.0e-4
    """Adam learning rate."""
    kl_coef: NonNegativeNumber = 0.0
    """Weight of the per-token k3 KL to the initial (warm-started) model; 0 skips the reference model."""
    format_penalty: Number = -1.0
    """Reward of an agent whose output cannot be parsed (or whose prompt was too long)."""
    engine_max_batch: PositiveInt = 64
    """Calls one engine runs together at most (vLLM's max_num_seqs). 1 makes every call's numerics
    independent of what else is in flight (bit-reproducible rollouts), at the cost of throughput."""
    engine_kv_cache_gib: PositiveNumber = 0.25
    """vLLM on CPU: KV-cache memory per engine (VLLM_CPU_KVCACHE_SPACE, GiB)."""
    gpu_memory_utilization: Annotated[Number, Field(gt=0, le=1)] = 0.3
    """vLLM on CUDA: share of the GPU's memory an engine may take."""
    max_engine_restarts: NonNegativeInt = 3
    """How many times a dead inference engine is replaced (its requests re-sent) before the run fails."""
    engine_replace_timeout_s: PositiveNumber = 300.0
    """How long the replacement of one dead engine may take, all attempts together: a replacement that
    fails to start or to load the current weights (e.g. it was put on a node that died with the engine
    and Ray has not declared dead yet) is started again, on a live node, until this passes; then the run
    stops naming the engine. Must cover Ray noticing a dead node (about 30 s by default) plus an
    engine's start and weight load."""
    max_task_errors: NonNegativeInt = 10
    """Trajectories whose task code may fail (its `run` raises or returns no usable Outcome) before the
    run stops with error.txt; each failure drops its query's GRPO group for every agent and counts in
    `llm/task_errors/<task>`. Counted since the run (re)started; 0 stops at the first failure."""
    load_balancing: bool = True
    """Inter-agent load balancing between iterations: engine instances follow each model group's calls
    of the last iteration (flexmarl.llm.balance.plan_allocation); false keeps the initial allocation."""
    rebalance_threshold: NonNegativeNumber = 5.0
    """Load disparity (busiest group's calls per instance / idlest group's) above which instances move
    between groups (the paper uses 5); 0 re-plans after every iteration."""
    swap_to: Literal["host", "remote"] = "host"
    """Where an idle group's training state goes when `resources.trainer_slots` makes groups share
    trainers: host memory of the slot, or the Ray object store (needs `run.mode: ray`)."""
