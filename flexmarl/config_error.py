"""The one error every config problem raises, in a module of its own so that the config loader
(flexmarl/config.py) and the override parser (flexmarl/overrides.py) both import it without importing
each other's module."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """Invalid configuration: names the key path, the value and what is allowed."""

    def __init__(self, path: str, value: Any, allowed: str):
        self.path, self.value, self.allowed = path, value, allowed
        super().__init__(f"config key '{path}': got {value!r}; allowed: {allowed}")
