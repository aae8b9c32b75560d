"""Before an LLM run starts: the task, the model groups and every checkpoint are checked, so that bad
input is one `ConfigError` naming the key (`flexmarl train` runs `check_llm_run` before Ray starts and
before a run directory exists), and the task's default models are built on first use (`ensure_models`).
Once the actors are placed and before any starts, `check_nodes_read_models` checks the checkpoints and
adapter `init` folders again on every node that hosts an actor (a node without the shared folder fails
here, not mid-start)."""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path

from flexmarl.actors import ActorSpec
from flexmarl.config import Config, ConfigError
from flexmarl.config.adapters import LoraAdapter
from flexmarl.llm.adapters import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_layout, linear_layers, safetensors_problem,
                                   saved_adapter, targeted, tensor_shapes)
from flexmarl.llm.groups import LLMGroup, build_llm_groups, models_folder
from flexmarl.llm.models import checkpoint_problem
from flexmarl.llm.tasks import TextTask, task_class
from flexmarl.workload import Runtime

log = logging.getLogger(__name__)

CHECKPOINT = "a local Hugging Face checkpoint directory (config.json, *.safetensors weights, tokenizer files)"
ADAPTER_FOLDER = f"a PEFT LoRA adapter folder ({ADAPTER_CONFIG}, {ADAPTER_WEIGHTS})"


def configured_task(cfg: Config) -> TextTask:
    """The task `llm.task` names, built with `llm.task_kwargs`; a task that cannot be had is a ConfigError."""
    llm = cfg.llm
    try:
        cls = task_class(llm.task)
    except ValueError as exc:
        raise ConfigError("llm.task", llm.task, f"a registered task or 'module:Class' naming a TextTask subclass; "
                                                f"{exc}") from None
    try:
        return cls(format_penalty=llm.format_penalty, **llm.task_kwargs)
    except TypeError as exc:
        accepted = ", ".join(p for p in inspect.signature(cls).parameters if p != "format_penalty")
        raise ConfigError("llm.task_kwargs", llm.task_kwargs,
                          f"keyword arguments of {cls.__name__} ({accepted or 'none'}); {exc}") from None


def check_llm_run(cfg: Config) -> tuple[TextTask, list[LLMGroup]]:
    """Everything about an LLM config that can be checked without starting anything: the task, the model
    groups, and each existing checkpoint (complete, and large enough for the prompts).
    Missing default models are fine: `ensure_models` builds them."""
    task = configured_task(cfg)
    groups = build_llm_groups(cfg.llm, tuple(task.agents))
    if not default_models_to_build(cfg, groups):
        check_context(cfg, groups)
    return task, groups


def default_models_to_build(cfg: Config, groups: list[LLMGroup]) -> bool:
    """True when the task's default models are missing and will be built; a checkpoint named in
    `llm.models` that is not complete, or default models missing beside `llm.models`, is a ConfigError."""
    problems = [(g, checkpoint_problem(g.model_dir)) for g in groups]
    problems = [(g, problem) for g, problem in problems if problem]
    named = [(g, problem) for g, problem in problems if g.model_key != "llm.model_dir"]
    if named:
        g, problem = named[0]
        raise ConfigError(g.model_key, _configured(cfg, g.model_key), f"{CHECKPOINT}; {problem}")
    if not problems:
        return False
    g, problem = problems[0]
    folder = models_folder(cfg.llm)
    build = f"flexmarl llm build --task {cfg.llm.task} --out {folder}"
    # only the default folder is built, and only when no checkpoint is named (adapters train over it)
    if any(not isinstance(source, LoraAdapter) for source in cfg.llm.models.values()):
        raise ConfigError("llm.model_dir", folder,
                          f"a folder with a checkpoint for agent {g.agents[0]!r}, since llm.models names none for it "
                          f"({problem}); set llm.models.{g.agents[0]}, or build the task's models with `{build}`")
    if not (Path(g.model_dir) / "config.json").exists():
        return True
    raise ConfigError("llm.model_dir", folder, f"a folder of checkpoints; {problem} (rebuild it with `{build}`)")


def _configured(cfg: Config, key: str):
    """The value of `llm.models.<name>` or `llm.base_model`."""
    parts = key.split(".")
    return cfg.llm.models[parts[2]] if parts[1] == "models" else getattr(cfg.llm, parts[1])


def ensure_models(cfg: Config, groups: list[LLMGroup]) -> None:
    """Build the task's tiny warm-started models into its default folder when they are missing."""
    folder = models_folder(cfg.llm)
    if not default_models_to_build(cfg, groups):
        if not cfg.llm.models:
            _warn_if_stale(folder)
        return
    from flexmarl.llm.build import build_task_models

    log.info("no models in %s: building the task's tiny warm-started models there (once)", folder)
    build_task_models(cfg.llm.task, folder, seed=cfg.run.seed, log=log.info, task_kwargs=cfg.llm.task_kwargs)


def _warn_if_stale(model_dir: str) -> None:
    """A build by an older build procedure (e.g. other warm-start data) is used as it is, with a warning."""
    from flexmarl.llm.build import BUILD_FORMAT, read_build

    try:
        settings = read_build(model_dir)["settings"]
        built, task = settings["format_version"], settings["task"]
    except (OSError, ValueError, KeyError):
        return  # not one of our builds (or none): nothing to compare
    if built < BUILD_FORMAT:
        log.warning("%s was built by an older build procedure (format %d, now %d): rebuild it with "
                    "`flexmarl llm build --task %s --out %s` for the current warm start", model_dir, built, BUILD_FORMAT,
                    task, model_dir)


def check_context(cfg: Config, groups: list[LLMGroup]) -> None:
    """What the checkpoints must fit: prompt + completion every model's context (or the engines could not
    serve a call), and each LoRA adapter its base's layers (`check_adapters`)."""
    check_adapters(groups)
    need = cfg.llm.max_prompt_tokens + cfg.llm.max_new_tokens
    for g in groups:
        context = json.loads((Path(g.model_dir) / "config.json").read_text()).get("max_position_embeddings")
        if context is not None and need > context:
            raise ConfigError("llm.max_prompt_tokens", cfg.llm.max_prompt_tokens,
                              f"at most {context - cfg.llm.max_new_tokens}: with llm.max_new_tokens = "
                              f"{cfg.llm.max_new_tokens} it must fit the {context}-token context of {g.model_dir}")


def check_adapters(groups: list[LLMGroup]) -> None:
    """Every adapter group against its base: the same base for all (one engine pool), target modules the
    architecture has, and a rank no larger than the smallest targeted layer. ConfigError naming the key."""
    adapter_groups = [g for g in groups if g.adapter is not None]
    if not adapter_groups:
        return
    base = adapter_groups[0].model_dir
    layers = linear_layers(base)
    for g in adapter_groups:
        spec, key = g.adapter, g.adapter_key
        if spec.base and os.path.abspath(spec.base) != base:
            raise ConfigError(f"{key}.base", spec.base, f"empty or the engines' base {base} ({g.model_key}): every "
                                                        f"adapter of a run is served by one engine pool over one base")
        short_names = sorted({path.rsplit(".", 1)[-1] for path in layers})
        for target in spec.target_modules:
            if not targeted(layers, target):
                raise ConfigError(f"{key}.target_modules", spec.target_modules,
                                  f"linear layers of the base {base}: {', '.join(short_names)} (no {target!r})")
        chosen = {path: shape for target in spec.target_modules for path, shape in targeted(layers, target).items()}
        path, shape = min(chosen.items(), key=lambda item: min(item[1]))
        if spec.rank > min(shape):
            raise ConfigError(f"{key}.rank", spec.rank, f"at most {min(shape)}: the targeted layer {path} of {base} "
                                                        f"is {shape[0]} x {shape[1]}")
        if spec.init:
            _check_adapter_weights(spec, key, base)


def _check_adapter_weights(spec: LoraAdapter, key: str, base: str) -> None:
    """An adapter's `init` weights: a consistent safetensors file whose tensors are the adapter's over `base`."""
    from flexmarl.llm.weights import layout_problems

    weights = Path(spec.init) / ADAPTER_WEIGHTS
    problem = safetensors_problem(weights)
    if not problem:
        problems = layout_problems(tensor_shapes(spec.init), adapter_layout(base, spec))
        problem = f"its tensors do not fit a rank-{spec.rank} adapter of {base}: {'; '.join(problems[:3])}" if problems else ""
    if problem:
        raise ConfigError(f"{key}.init", spec.init, f"a PEFT LoRA adapter folder whose {ADAPTER_WEIGHTS} fits the "
                                                    f"base; {problem}")


def models_read_by(cfg: Config, groups: list[LLMGroup], actor: ActorSpec) -> list[LLMGroup]:
    """The groups whose checkpoint an actor reads: a group trainer its group's; a trainer slot any group's
    (it hosts each in turn); an engine its pool's, or every pool's when load balancing may rebuild it from
    another pool's checkpoint; a workflow worker every group's (their tokenizers)."""
    if actor.role == "trainer" and actor.group is not None:
        return [g for g in groups if g.name == actor.group]
    if actor.role == "engine" and not cfg.llm.load_balancing:
        return [g for g in groups if g.pool == actor.group]
    return list(groups)


def files_read_by(cfg: Config, groups: list[LLMGroup], actor: ActorSpec) -> list[tuple[str, str, str]]:
    """(config key, path, what it must be) of each folder an actor reads as it starts: the checkpoints of
    `models_read_by`, and for a trainer (group or slot) the `init` folder of each adapter it trains."""
    read = models_read_by(cfg, groups, actor)
    found = [(g.model_key, g.model_dir, CHECKPOINT) for g in read]
    if actor.role == "trainer":
        found += [(f"{g.adapter_key}.init", g.adapter.init, ADAPTER_FOLDER)
                  for g in read if g.adapter is not None and g.adapter.init]
    return found


def check_nodes_read_models(cfg: Config, runtime: Runtime, groups: list[LLMGroup], actors: list[ActorSpec]) -> None:
    """After placement, before any actor starts: one small task per node that hosts actors checks there
    every folder those actors read (`files_read_by`: checkpoints, adapters' `init` folders); a ConfigError
    names the key, the node, the actor and what is missing. Serial: this process again."""
    wanted: dict[str, dict[str, tuple[str, str, ActorSpec]]] = {}  # node -> path -> (key, kind, first actor)
    for actor in actors:
        node = runtime.node_of(actor.key)
        for key, path, kind in files_read_by(cfg, groups, actor):
            wanted.setdefault(node, {}).setdefault(path, (key, kind, actor))
    checks = {node: runtime.run_on_node(node, _problems, sorted((path, kind) for path, (_, kind, _) in paths.items()))
              for node, paths in wanted.items()}
    for node, ref in checks.items():
        for path, problem in runtime.get(ref).items():
            key, kind, actor = wanted[node][path]
            raise ConfigError(key, path, f"{kind} under the same absolute path on every node that hosts the "
                                         f"group's actors (docs/cluster.md: what nodes must share); on node "
                                         f"{node[:12]}, which hosts the {actor.describe()}: {problem}")


def _problems(paths: list[tuple[str, str]]) -> dict[str, str]:
    """{path: why it cannot be read} for the unreadable ones (run on the node being checked)."""
    found = {path: checkpoint_problem(path) if kind == CHECKPOINT else _adapter_problem(path) for path, kind in paths}
    return {path: problem for path, problem in found.items() if problem}


def _adapter_problem(folder: str) -> str:
    try:
        saved_adapter(folder)
    except ValueError as exc:
        return str(exc)
    return safetensors_problem(Path(folder) / ADAPTER_WEIGHTS)
