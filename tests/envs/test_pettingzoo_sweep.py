"""The contract behind the README's "any ParallelEnv works": every env that the installed PettingZoo and mpe2
ship either trains one short iteration from `configs/demo.yaml`'s settings (serial mode), or is refused
before anything starts with one `error:` line that says why.

The envs are found by walking the packages (every `<family>.<name>_vN` module), not listed here: a new
PettingZoo release is swept as it is. An env whose module or constructor needs something not installed
(Atari ROMs and `multi_agent_ale_py`, Box2D, pymunk, chess, rlcard, OpenSpiel) is skipped with that reason
(`pytest -ra` lists them). Modules without `parallel_env` are AEC-only (the classic board and card games)
and go through `wrappers/aec_to_parallel`, which runs those whose agents act once per cycle.
"""

from __future__ import annotations

import importlib
import math
import os
import pkgutil
import re
from pathlib import Path

import pytest

from flexmarl.config import ConfigError, load_config
from flexmarl.env_probe import probe_env
from orchestrator.cli import main
from orchestrator.run_dir import new_run_dir
from orchestrator.train import train

ROOT = Path(__file__).resolve().parents[2]
DEMO = str(ROOT / "configs/demo.yaml")
PACKAGES = ("pettingzoo", "mpe2")
VERSIONED = re.compile(r"_v\d+$")
# One short iteration: 2 copies x 50 steps, one epoch on one minibatch, no evaluation, one checkpoint at the end.
SHORT_RUN = ["run.mode=serial", "run.iterations=1", "run.batch_env_steps=100", "rollout.envs_per_worker=2",
             "rollout.fragment_length=50", "trainer.epochs=1", "trainer.num_minibatches=1", "run.eval_every=0",
             "run.checkpoint_every=0", "run.progress=false"]


def shipped_env_modules(package: str) -> list[str]:
    """`package`'s versioned env modules, top level and one subpackage down, found without importing them."""
    root = importlib.import_module(package)
    found = []
    for info in pkgutil.iter_modules(root.__path__):
        if info.ispkg:
            inner = pkgutil.iter_modules([os.path.join(info.module_finder.path, info.name)])
            found += [f"{package}.{info.name}.{m.name}" for m in inner if not m.ispkg and VERSIONED.search(m.name)]
        elif VERSIONED.search(info.name):
            found.append(f"{package}.{info.name}")
    return sorted(found)


ENV_MODULES = [module for package in PACKAGES for module in shipped_env_modules(package)]
# Measured where the env's dependency was installed (pymunk): 20 agents with 457x120x3 images, refused for
# memory under MAPPO, then ~110 s for its IPPO iteration on 2 shared cores. Everything else takes < 20 s.
SLOW = {"pettingzoo.butterfly.pistonball_v6"}


def _env_overrides_or_skip(module_name: str) -> tuple[list[str], object]:
    """(env overrides for the config, one built copy) for a shipped env module; skips one that needs an
    uninstalled dependency. AEC-only modules go through wrappers/aec_to_parallel."""
    try:
        module = importlib.import_module(module_name)
        if hasattr(module, "parallel_env"):
            return [f"env.name={module_name}:parallel_env"], module.parallel_env()
        overrides = ["env.name=wrappers/aec_to_parallel", f"env.kwargs.env={module_name}:env"]
        return overrides, module.env()
    except ImportError as exc:  # gymnasium's DependencyNotInstalled is an ImportError too
        pytest.skip(f"{module_name} needs what is not installed: {exc}")


def test_the_sweep_finds_every_family():
    families = {m.split(".")[1] for m in ENV_MODULES if m.startswith("pettingzoo.")}
    assert {"atari", "butterfly", "classic", "sisl"} <= families, families
    assert "mpe2.simple_spread_v3" in ENV_MODULES and len(ENV_MODULES) >= 45, ENV_MODULES


def _refusal(tmp_path: Path, capsys, overrides: list[str]) -> str | None:
    """None when the run may start, else the CLI's error line (checked: exit code 2, one line, no run directory)."""
    try:
        probe_env(load_config(DEMO, [*SHORT_RUN, f"run.output_dir={tmp_path}", *overrides]))
        return None
    except ConfigError:
        pass
    assert main(["train", DEMO, f"run.output_dir={tmp_path}", *SHORT_RUN, *overrides]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]  # not the env's warnings
    assert len(err) == 1 and err[0].startswith("error: config key "), err
    assert not any(tmp_path.iterdir())
    return err[0]


@pytest.mark.parametrize("module_name", [
    pytest.param(m, id=m.replace("pettingzoo.", "").replace(".", "/"), marks=[pytest.mark.slow] * (m in SLOW))
    for m in ENV_MODULES])
def test_shipped_env_trains_or_is_refused_before_start(module_name, tmp_path, capsys):
    overrides, env = _env_overrides_or_skip(module_name)
    agents = list(env.possible_agents)
    turn_based = not hasattr(importlib.import_module(module_name), "parallel_env") and \
        not env.metadata.get("is_parallelizable", False)
    mixed_spaces = len({(repr(env.observation_space(a)), repr(env.action_space(a))) for a in agents}) > 1
    env.close()

    error = _refusal(tmp_path, capsys, overrides)
    if turn_based:
        assert error and "'env.kwargs'" in error and "act in turn" in error, error
        return
    # A refusal must say what works; each fix below is the one its message spells out.
    if mixed_spaces:  # demo.yaml shares one policy: refused, naming the groupings that work
        suggested = re.search(r"env\.groups='(\{.*\})'", error or "")
        assert "'env.groups.shared'" in error and "env.groups=independent" in error and suggested, error
        overrides = overrides + [f"env.groups={suggested.group(1)}"]
        error = _refusal(tmp_path, capsys, overrides)
    if error and "'run.batch_env_steps'" in error:  # many image agents: every critic row holds all their images
        assert "GiB" in error and "algo.name=ippo" in error, error
        overrides = overrides + ["algo.name=ippo"]
        error = _refusal(tmp_path, capsys, overrides)
    assert error is None, error

    cfg = load_config(DEMO, [*SHORT_RUN, f"run.output_dir={tmp_path}", *overrides])
    spec, groups = probe_env(cfg)
    metrics = train(cfg, new_run_dir(cfg))
    losses = {k: v for k, v in metrics.items() if k.startswith("losses/")}
    assert metrics["env_steps"] == 100 and metrics["iteration"] == 1, metrics
    assert {k.split("/")[1] for k in losses} == {g.name for g in groups}, losses
    assert len(groups) > 1 if mixed_spaces else len(groups) == 1
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
