"""Build a task's local models: one tokenizer trained on the task's text, one tiny random model per
agent, warm-started on that agent's examples, saved to `<out_dir>/<agent>/` (a Hugging Face checkpoint
directory that transformers and vLLM load), one more warm-started on every agent's examples,
`<out_dir>/shared-base/` (the default base of LoRA agents: `llm.base_model` empty), plus
`<out_dir>/build.json` recording the settings, the warm-start losses and the warm-started team's success
rate (HF sampling on `eval_queries` queries).
`flexmarl llm build` calls `build_task_models`; a build whose settings match is reused as it is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flexmarl.llm.groups import SHARED_BASE, default_model_dir
from flexmarl.llm.models import (build_tiny_model, build_tokenizer, load_causal_lm, load_tokenizer, sample_tokens,
                                  torch_threads)
from flexmarl.llm.tasks import Completion, TextTask, make_task
from flexmarl.llm.warm_start import warm_start

BUILD_FORMAT = 2
"""Bumped when the build procedure changes, so older builds are not reused."""



@dataclass
class BuildSettings:
    """Everything a build depends on; a build with equal settings is reused."""

    task: str = "speaker_listener"
    """Registered task name or 'module:Class'."""
    task_kwargs: dict = field(default_factory=dict)
    """Task constructor arguments (e.g. the warm-start fractions)."""
    seed: int = 0
    """Seed of the tokenizer-independent randomness: initial weights, examples, batches, evaluation."""
    vocab_size: int = 512
    """Upper bound of the BPE vocabulary (a small corpus stops merging earlier)."""
    arch: str = "qwen2"
    """Model architecture (flexmarl.llm.models.ARCHITECTURES)."""
    hidden: int = 128
    """Hidden size."""
    layers: int = 2
    """Decoder layers."""
    heads: int = 2
    """Attention heads (as many key-value heads)."""
    head_dim: int = 64
    """Size of one attention head."""
    max_positions: int = 256
    """Longest sequence (prompt + completion) the model handles."""
    warm_start_steps: int = 1000
    """Supervised Adam steps per agent (0: the random model)."""
    warm_start_lr: float = 5e-4
    """Warm-start learning rate (speaker-listener: 1e-3 and above stalled the listener at chance for
    hundreds of steps; 5e-4 left it within 150 and kept improving)."""
    warm_start_batch: int = 64
    """Examples per warm-start step."""
    warm_start_max_grad_norm: float = 1.0
    """Gradient norm clip of the warm start."""
    sft_examples: int = 4096
    """Warm-start examples drawn per agent (the steps sample batches from them)."""
    eval_queries: int = 256
    """Queries on which the warm-started team's success rate is measured."""
    eval_temperature: float = 1.0
    """Sampling temperature of the measurement (rollouts sample at 1.0 by default)."""
    max_new_tokens: int = 8
    """Tokens per call in the measurement (as llm.max_new_tokens)."""
    format_version: int = BUILD_FORMAT
    """Build procedure version."""


def build_task_models(task_name: str = "speaker_listener", out_dir=None, seed: int = 0,
                      warm_start_steps: int = 1000, task_kwargs: dict | None = None, force: bool = False,
                      threads: int = 1, log=None, **settings) -> dict[str, Path]:
    """Build (or reuse) the task's models into `out_dir` (default: the task's runs/llm-models/<task>);
    returns {agent: checkpoint directory}. Keyword `settings`
    are BuildSettings fields (vocab_size, hidden, layers, warm_start_lr, eval_queries, ...); `log` is an
    optional print-like callable for progress lines; `threads`: torch CPU threads while building."""
    cfg = BuildSettings(task=task_name, task_kwargs=dict(task_kwargs or {}), seed=seed,
                        warm_start_steps=warm_start_steps, **settings)
    out = Path(out_dir or default_model_dir(task_name))
    task = make_task(cfg.task, **cfg.task_kwargs)
    paths = {agent: out / agent for agent in task.agents}
    record = out / "build.json"
    if not force and _reusable(record, cfg, {**paths, SHARED_BASE: out / SHARED_BASE}):
        return paths

    with torch_threads(threads):
        _build(task, cfg, {**paths, SHARED_BASE: out / SHARED_BASE}, record, log)
    return paths


def _build(task: TextTask, cfg: BuildSettings, paths: dict[str, Path], record: Path, log) -> None:
    started = time.perf_counter()
    record.unlink(missing_ok=True)  # a build interrupted from here on is never reused
    tokenizer = build_tokenizer(task.corpus(), cfg.vocab_size)
    tokenizer.add_tokens(task.vocabulary_tokens())  # task strings kept whole (e.g. item codes), none by default
    examples = task.sft_examples(np.random.default_rng(cfg.seed), cfg.sft_examples)
    examples[SHARED_BASE] = [example for agent in task.agents for example in examples[agent]]
    agents: dict[str, dict] = {}
    for index, agent in enumerate([*task.agents, SHARED_BASE]):
        seed_of_agent = cfg.seed * 1000 + index
        build_tiny_model(paths[agent], tokenizer, arch=cfg.arch, hidden=cfg.hidden, layers=cfg.layers,
                         heads=cfg.heads, head_dim=cfg.head_dim, max_positions=cfg.max_positions, seed=seed_of_agent)
        model = load_causal_lm(paths[agent])
        losses = warm_start(model, tokenizer, examples[agent], cfg.warm_start_steps, lr=cfg.warm_start_lr,
                            batch=cfg.warm_start_batch, seed=seed_of_agent,
                            max_grad_norm=cfg.warm_start_max_grad_norm)
        model.save_pretrained(paths[agent], safe_serialization=True)
        agents[agent] = {"parameters": sum(p.numel() for p in model.parameters()), "warm_start_losses": losses}
        if log is not None and losses:
            log(f"{agent}: warm-start loss {losses[0]:.3f} -> {np.mean(losses[-20:]):.3f} ({len(losses)} steps)")

    evaluation = evaluate_team(task, {a: load_causal_lm(paths[a]) for a in task.agents}, load_tokenizer(paths[task.agents[0]]),
                               queries=cfg.eval_queries, seed=cfg.seed, temperature=cfg.eval_temperature,
                               max_new_tokens=cfg.max_new_tokens)
    if log is not None:
        log(f"warm-started success rate {evaluation['success']:.3f} on {cfg.eval_queries} queries")
    summary = {"settings": dataclasses.asdict(cfg), "tokenizer_vocab": len(tokenizer), "agents": agents,
               "warm_start_success": evaluation["success"], "evaluation": evaluation,
               "build_seconds": time.perf_counter() - started}
    record.write_text(json.dumps(summary, indent=1))


def read_build(out_dir) -> dict:
    """The build.json of a built model folder."""
    return json.loads((Path(out_dir) / "build.json").read_text())


def _reusable(record: Path, cfg: BuildSettings, paths: dict[str, Path]) -> bool:
    if not record.exists():
        return False
    try:
        settings = json.loads(record.read_text())["settings"]
    except (ValueError, KeyError):
        return False
    # Through JSON, so that tuples/lists and ints/floats compare as they were written.
    return settings == json.loads(json.dumps(dataclasses.asdict(cfg))) and all(
        (p / "config.json").exists() and (p / "model.safetensors").exists() for p in paths.values())


def evaluate_team(task: TextTask, models: dict, tokenizer, queries: int = 64, seed: int = 0, temperature: float = 1.0,
                  max_new_tokens: int = 8, examples: int = 4) -> dict:
    """Run the task's workflow on `queries` seeded queries with each agent's HF model sampling its calls.
    Returns the mean success, mean reward and format-error rate per agent, and a few transcripts."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    eos = tokenizer.eos_token_id
    transcript: list[tuple[str, str, str]] = []

    async def call(agent: str, prompt: str) -> Completion:
        tokens, logprobs = sample_tokens(models[agent], tokenizer.encode(prompt), max_new_tokens, temperature, eos,
                                         generator)
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        transcript.append((agent, prompt, text))
        return Completion(text=text, token_ids=tokens, logprobs=logprobs,
                          finish_reason="stop" if tokens and tokens[-1] == eos else "length")

    outcomes, shown = [], []
    for i in range(queries):
        transcript.clear()
        outcomes.append(asyncio.run(task.run(task.sample_query(rng), call)))
        if i < examples:
            shown.append([{"agent": a, "prompt": p, "completion": c} for a, p, c in transcript])
    return {
        "queries": queries,
        "success": float(np.mean([o.success for o in outcomes])),
        "reward_mean": {a: float(np.mean([o.rewards[a] for o in outcomes])) for a in task.agents},
        "format_error_rate": {a: float(np.mean([o.format_errors[a] for o in outcomes])) for a in task.agents},
        "transcripts": shown,
    }
