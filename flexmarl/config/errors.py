"""Config errors: one line naming the key path, the bad value and what is allowed.

Pydantic reports a `ValidationError` (a location, the input, a context); `from_validation_error` turns its
first error into today's message, `config key 'algo.gamma': got 1.5; allowed: a number in [0, 1]`.
Checks written by hand (validators, cross-field rules) raise `config_error(...)`, which travels through
pydantic as a custom error carrying the same three parts.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

_UNSET = object()

_TYPE_ALLOWED = {
    "int_type": "an integer", "float_type": "a number", "bool_type": "true or false", "string_type": "a string",
    "list_type": "a list", "dict_type": "a mapping",
}
_BOUND_SIGNS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
                "less_than_equal": ("le", "<=")}


class ConfigError(ValueError):
    """Invalid configuration: names the key path, the value and what is allowed."""

    def __init__(self, path: str, value: Any, allowed: str):
        self.path, self.value, self.allowed = path, value, allowed
        super().__init__(f"config key '{path}': got {value!r}; allowed: {allowed}")


class MovedKeyError(ConfigError):
    """A key that exists under another name now (a config written for an older version)."""

    def __init__(self, path: str, value: Any, new_path: str):
        self.path, self.value, self.allowed = path, value, new_path
        ValueError.__init__(self, f"config key '{path}' moved to {new_path}")


def config_error(allowed: str, *, key: str | None = None, value: Any = _UNSET) -> PydanticCustomError:
    """An error to raise inside a validator. `key`: a sub-key of the validated field (or, from a validator
    of the whole config, the full key path); `value`: what to show, when not the validated input."""
    ctx = {"allowed": allowed, "key": key}
    if value is not _UNSET:
        ctx["value"] = value
    return PydanticCustomError("config", "{allowed}", ctx)


def from_validation_error(exc: ValidationError, root: type[BaseModel], moved: dict[str, str]) -> ConfigError:
    """The ConfigError of `exc`'s first error (a moved key first: it explains the others)."""
    errors = exc.errors(include_url=False)
    paths = [_path(e["loc"]) for e in errors]
    for error, path in zip(errors, paths):
        if error["type"] == "extra_forbidden" and path in moved:
            return MovedKeyError(path, error["input"], moved[path])
    error, path = errors[0], paths[0]
    ctx = error.get("ctx") or {}
    if error["type"] == "config":
        path = ".".join(p for p in (path, ctx.get("key")) if p)
        return ConfigError(path, ctx.get("value", error["input"]), ctx["allowed"])
    return ConfigError(path or "<root>", error["input"], _allowed(error, root))


def _path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc if part != "[key]")


def _allowed(error: dict, root: type[BaseModel]) -> str:
    kind, ctx, loc = error["type"], error.get("ctx") or {}, error["loc"]
    if kind == "extra_forbidden":
        parent = _walk(root, loc[:-1])[0]
        where = _path(loc[:-1]) or "<root>"
        known = ", ".join(parent.model_fields) if _is_model(parent) else "none"
        return f"known keys under '{where}': {known}"
    if kind == "model_type":
        return "a mapping with keys " + ", ".join(_walk(root, loc)[0].model_fields)
    if kind == "literal_error":
        return "one of " + ctx["expected"].replace(" or ", ", ")
    if kind in _BOUND_SIGNS:
        field = _walk(root, loc)[1]
        interval = _interval(field) if field is not None else None
        name, sign = _BOUND_SIGNS[kind]
        return interval or f"{sign} {ctx[name]}"
    return _TYPE_ALLOWED.get(kind, error["msg"])


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _walk(root: type[BaseModel], loc: tuple) -> tuple[Any, FieldInfo | None]:
    """(annotation, field) at `loc`: through model fields and the values of typed mappings."""
    tp, field = root, None
    for part in loc:
        if _is_model(tp) and part in tp.model_fields:
            field = tp.model_fields[part]
            tp = field.annotation
        elif typing.get_origin(tp) is dict:
            tp, field = typing.get_args(tp)[1], None
        else:
            return None, None
    return tp, field


def _interval(field: FieldInfo) -> str | None:
    """'a number in [0, 1]' for a field bounded on both sides, else None."""
    bounds = {name: getattr(m, name) for m in field.metadata for name in ("gt", "ge", "lt", "le") if hasattr(m, name)}
    low = next(((n, v) for n, v in bounds.items() if n in ("gt", "ge")), None)
    high = next(((n, v) for n, v in bounds.items() if n in ("lt", "le")), None)
    if low is None or high is None:
        return None
    return f"a number in {'[' if low[0] == 'ge' else '('}{low[1]}, {high[1]}{']' if high[0] == 'le' else ')'}"
