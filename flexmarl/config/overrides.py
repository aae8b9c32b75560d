"""Command-line overrides `key.path=value` applied to a config mapping.

The rule (documented in README "Configs"):
- `a.b.c=value` sets one key and leaves its siblings alone: `env.kwargs.N=4` changes N and keeps the
  other kwargs;
- a value that is a mapping replaces the mapping at that key: `env.kwargs={}` clears the kwargs,
  `env.kwargs={N: 4}` leaves only N;
- changing `env.name` drops the base config's `env.kwargs` (they were the old env's arguments); `env.kwargs`
  overrides given on the same command line then apply to the new env.

Overrides apply left to right, values are parsed as YAML scalars or flow mappings/lists.
"""

from __future__ import annotations

import copy

import yaml

from flexmarl.config.errors import ConfigError


def _parse(item: str) -> tuple[list[str], object]:
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(item, item, "overrides of the form key.path=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(key, raw, f"a YAML value ({str(exc).splitlines()[0]})") from None
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """A copy of `data` with `overrides` applied by the rule above."""
    out = copy.deepcopy(data or {})
    parsed = [_parse(item) for item in overrides]
    base_env = out.get("env") if isinstance(out.get("env"), dict) else {}
    if any(parts == ["env", "name"] and value != base_env.get("name") for parts, value in parsed):
        base_env.pop("kwargs", None)  # before any override, so `env.kwargs.x=...` beside it still applies
    for parts, value in parsed:
        node = out
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                path = ".".join(parts[: depth + 1])
                raise ConfigError(".".join(parts), value, f"a path inside a mapping; '{path}' is {node!r}")
        node[parts[-1]] = value
    return out

