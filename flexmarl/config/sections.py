"""The config sections of both workloads' shared parts and of the MARL workload: run, env, model, algo,
trainer, rollout, pipeline (resources: resources.py; LLM agents: llm.py). Every field has a docstring."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from flexmarl.algorithms.registry import ADVANTAGE_ESTIMATORS, GRADIENT_AGGREGATORS, POLICY_LOSSES, VALUE_LOSSES
from flexmarl.config.fields import (SECTION, AgentGroups, Device, LayerWidths, NonNegativeInt, NonNegativeNumber,
                                    Number, PositiveInt, PositiveNumber, registered)


class RunConfig(BaseModel):
    model_config = SECTION

    name: str = "run"
    """Run name; the run directory is `<output_dir>/<name>-<timestamp>/`."""
    seed: int = 0
    """Seeds parameters, action sampling and env resets (every rollout request derives its own seed)."""
    iterations: PositiveInt = 10
    """Training iterations; each collects `batch_env_steps` env steps and updates every group once."""
    batch_env_steps: PositiveInt = 3200
    """Global batch in env steps per iteration; a multiple of `rollout.envs_per_worker * rollout.fragment_length`."""
    mode: Literal["ray", "serial"] = "ray"
    """`ray`: rollout workers and trainers as Ray actors on separate pools; `serial`: same components in one process."""
    workload: Literal["marl", "llm"] = "marl"
    """marl: env-stepping rollout workers and torch policies (sections env, model, algo, rollout).
    llm: language-model agents called by a text task's workflow on inference engines (section llm)."""
    output_dir: str = "runs"
    """Parent folder of run directories."""
    checkpoint_every: NonNegativeInt = 10
    """Checkpoint every N iterations (and always at the end); 0 = only at the end."""
    eval_every: NonNegativeInt = 0
    """Greedy evaluation every N iterations (0 = never); writes `eval/return_mean` and `eval/win_rate`."""
    eval_episodes: PositiveInt = 10
    """Episodes per greedy evaluation."""
    progress: bool = True
    """Show a progress bar."""


class EnvConfig(BaseModel):
    model_config = SECTION

    name: str = "mpe/simple_spread"
    """Registered env name (see `envs.registered_names()`) or any ParallelEnv factory as 'module:callable'."""
    kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the env factory."""
    groups: AgentGroups = "shared"
    """Agent -> policy group: 'shared' (one group: parameter sharing), 'independent' (one per agent),
    or a mapping {group_name: [agent, ...]} covering every agent exactly once."""
    global_state: Literal["env", "concat_obs"] = "env"
    """Centralised critic input: `env.state()`, or the agents' concatenated observations (same values for
    MPE, without recomputing every observation a second time). Envs without state() use concat_obs."""


class ModelConfig(BaseModel):
    model_config = SECTION

    actor: Literal["mlp", "candidate_scorer"] = "mlp"
    """mlp: one MLP maps the observation to every action's logit. candidate_scorer (discrete actions over
    a candidate slate, e.g. recommendation): one shared network scores each candidate from the context
    and that candidate's features, so slots are interchangeable and item knowledge transfers."""
    encoder: Literal["auto", "mlp", "cnn"] = "auto"
    """Observation encoder before the MLP layers. auto: a small CNN for image observations (a 3-D Box with 1-4
    channels, HWC or CHW), else the flat observation; mlp: always flatten; cnn: require images. A centralised
    critic uses the CNN too when its input is an image (an image `state()`, or the agents' images stacked)."""
    hidden_sizes: LayerWidths = Field(default_factory=lambda: [64, 64])
    """Widths of the MLP layers of actor and critic."""
    activation: Literal["relu", "tanh"] = "relu"
    """Hidden activation."""
    input_layer_norm: bool = True
    """LayerNorm on inputs (MAPPO's feature normalisation)."""
    hidden_layer_norm: bool = False
    """A LayerNorm after each hidden layer's activation, as the reference MAPPO codes' MLPs (on-policy,
    HARL) have."""
    use_gru: bool = False
    """Add a GRU after the MLP (recurrent actor and critic, trained on whole fragments)."""
    gru_hidden: PositiveInt = 64
    """GRU hidden width."""
    gru_chunk_length: NonNegativeInt = 0
    """0: the GRU is trained through each whole rollout fragment; L > 0: through chunks of L steps, each
    starting from the hidden state the rollout had there (rMAPPO's `data_chunk_length`, 10 in its runs)."""


class AlgoConfig(BaseModel):
    """The MARL algorithm (the optimisation knobs both workloads have are in `trainer`)."""

    model_config = SECTION

    name: Literal["mappo", "ippo"] = "mappo"
    """mappo: centralised critic on the global state; ippo: each agent's critic on its own observation."""
    critic_agent_id: Literal["auto", True, False] = "auto"
    """Append a one-hot agent id (the agent's index in its group) to the critic's input, so a shared critic
    predicts each agent's own value (as the reference MAPPO implementations do). auto: on for a
    centralised critic (mappo) of a group of several agents, unless the env gives every agent the same
    reward (`env.shared_reward`, e.g. SMAX, GRF with `team_reward`) or the critic reads images; there one
    state maps to one return, so the id adds nothing. true / false force it."""
    advantage_estimator: Annotated[str, registered(ADVANTAGE_ESTIMATORS)] = "gae"
    """Registered advantage estimator (flexmarl.algorithms.ADVANTAGE_ESTIMATORS)."""
    policy_loss: Annotated[str, registered(POLICY_LOSSES)] = "ppo_clip"
    """Registered policy loss (flexmarl.algorithms.POLICY_LOSSES)."""
    value_loss: Annotated[str, registered(VALUE_LOSSES)] = "clipped_huber"
    """Registered value loss (flexmarl.algorithms.VALUE_LOSSES)."""
    gradient_aggregator: Annotated[str, registered(GRADIENT_AGGREGATORS)] = "mean"
    """How a shared actor combines its agents' gradients (flexmarl.algorithms.GRADIENT_AGGREGATORS):
    mean (= MAPPO/IPPO), grasp (consensus gradient, arXiv:2604.00717), pcgrad, cagrad."""
    gamma: Annotated[Number, Field(ge=0, le=1)] = 0.99
    """Discount factor."""
    gae_lambda: Annotated[Number, Field(ge=0, le=1)] = 0.95
    """GAE lambda."""
    value_clip_eps: NonNegativeNumber = 0.2
    """Value prediction clip around the rollout-time prediction."""
    huber_delta: PositiveNumber = 10.0
    """Huber delta of the value loss."""
    entropy_coef: NonNegativeNumber = 0.01
    """Entropy bonus weight."""
    value_coef: NonNegativeNumber = 1.0
    """Value loss weight."""
    lr_actor: PositiveNumber = 7e-4
    """Actor Adam learning rate."""
    lr_critic: PositiveNumber = 7e-4
    """Critic Adam learning rate."""
    adam_eps: NonNegativeNumber = 1e-5
    """Adam epsilon."""
    advantage_norm: bool = True
    """Normalise advantages within each micro-batch (final when the micro-batch is released)."""
    value_norm: bool = True
    """Running normalisation of value targets (MAPPO's ValueNorm)."""


LLM_TRAINER_DEFAULTS = {"epochs": 1, "max_grad_norm": 1.0}
"""`trainer` defaults of `run.workload: llm` where they differ from the MARL ones (the field defaults)."""


class TrainerConfig(BaseModel):
    """The optimisation knobs both workloads have: MARL group trainers and LLM agents' trainers. A knob left
    out takes its workload's default (LLM_TRAINER_DEFAULTS for llm), as when it lived in `algo` / `llm`."""

    model_config = SECTION

    epochs: PositiveInt = 5
    """Passes over each global batch. Default: 5 (marl, PPO epochs), 1 (llm)."""
    num_minibatches: PositiveInt = 1
    """Optimizer steps per epoch; must divide the micro-batches (marl) / rollout requests (llm) per iteration."""
    device: Device = "auto"
    """Trainer device (trainers and trainer slots, both workloads, serial and Ray): auto = cuda when the
    trainer's placement bundle asks for a GPU (`resources.trainer.gpus` or
    `resources.per_group.<group>.trainer.gpus`), else cpu (inference engines: `llm.engine_device`, same rule)."""
    max_grad_norm: NonNegativeNumber = 10.0
    """Gradient norm clip (marl: actor and critic separately). Default: 10.0 (marl), 1.0 (llm; 0 = no clip)."""
    clip_eps: NonNegativeNumber = 0.2
    """Ratio clip of the ppo_clip / grpo policy loss."""
    tau_pos: PositiveNumber = 1.0
    """Gate temperature of the sa_gcpo policy loss for positive advantages."""
    tau_neg: PositiveNumber = 1.05
    """Gate temperature of the sa_gcpo policy loss for negative advantages (> tau_pos damps them harder)."""


class RolloutConfig(BaseModel):
    model_config = SECTION

    num_workers: PositiveInt = 1
    """Rollout worker actors."""
    envs_per_worker: PositiveInt = 16
    """Env copies each worker steps together (one batched policy call per step)."""
    fragment_length: PositiveInt = 25
    """Env steps per env copy in one rollout request; every request starts fresh episodes."""
    request_unit: Literal["steps", "episodes"] = "steps"
    """steps: every env copy steps `fragment_length` times (episodes restart inside the request).
    episodes: every env copy plays one episode (at most `fragment_length` steps) and the request ends when
    the last one does, so long episodes make long requests (a long tail, as in GRF or LLM responses);
    `run.batch_env_steps` then counts capacity, and fewer steps are actually taken."""
    backend: Literal["torch", "random"] = "torch"
    """Inference backend that computes actions ("random": uniform baseline, nothing to train)."""
    max_worker_restarts: NonNegativeInt = 3
    """How many times a dead rollout worker is replaced before the run fails."""
    request_timeout_s: NonNegativeNumber = 0.0
    """Ray mode: a worker that finishes none of its requests for this many seconds (a wedged game engine) is
    treated as dead: killed, replaced (counts against max_worker_restarts) and its rows regenerated;
    counted in `rollout/worker_timeouts`. 0 = wait forever. Must exceed the slowest request, including the
    first one, which also waits for the worker to start."""
    max_env_restarts: NonNegativeInt = 3
    """Per request: how many env copies that raise mid-episode (a crashed GRF engine or SC2 client) are
    rebuilt, their episode discarded, before the request fails."""


class PipelineConfig(BaseModel):
    model_config = SECTION

    mode: Literal["sync", "microbatch", "stale"] = "microbatch"
    """sync: collect the whole global batch, then train. microbatch: train on each micro-batch as soon as
    it is complete, step once per global batch; zero policy lag, same result as sync. stale: rollout never
    waits for training; rows up to `max_staleness` versions old are admitted (not equal to sync)."""
    max_staleness: NonNegativeInt = 1
    """stale mode only: the store refuses (and counts) rows more than this many versions old."""
