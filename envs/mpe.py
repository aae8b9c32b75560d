"""Multi-Agent Particle Environments from `mpe2` (MPE moved out of PettingZoo)."""

from __future__ import annotations

from typing import Any


def _mpe_factory(module_name: str):
    def factory(**kwargs: Any):
        import importlib

        module = importlib.import_module(f"mpe2.{module_name}")
        kwargs.setdefault("continuous_actions", False)
        return module.parallel_env(**kwargs)

    factory.__name__ = f"make_{module_name}"
    factory.__doc__ = f"mpe2.{module_name}.parallel_env(**kwargs); discrete actions unless asked."
    return factory


_MPE_TASKS = {
    "simple_spread": "simple_spread_v3",
    "simple_reference": "simple_reference_v3",
    "simple_speaker_listener": "simple_speaker_listener_v4",
    "simple_tag": "simple_tag_v3",
    "simple_adversary": "simple_adversary_v3",
    "simple_crypto": "simple_crypto_v3",
    "simple_push": "simple_push_v3",
    "simple_world_comm": "simple_world_comm_v3",
    "simple": "simple_v3",
}

FACTORIES = {f"mpe/{task}": _mpe_factory(module) for task, module in _MPE_TASKS.items()}
