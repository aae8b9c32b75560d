"""Field types shared by the config sections: strict models, numbers as YAML writes them, registered names."""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, PlainValidator

from flexmarl.config.errors import config_error

SECTION = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)
"""Every config model: unknown keys refused, no type coercion (5.0 is not an int, "5" not a number; YAML
numbers written like 1e-3 are the one exception, below), each field documented by its docstring."""


def yaml_number(value: Any) -> Any:
    """YAML 1.1 reads "1e-3" (no dot) as a string: numbers may arrive as strings."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Number = Annotated[float, BeforeValidator(yaml_number)]
PositiveNumber = Annotated[Number, Field(gt=0)]
NonNegativeNumber = Annotated[Number, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Device = Literal["auto", "cpu", "cuda"]


def registered(table: Collection[str], import_path_allowed: bool = False) -> AfterValidator:
    """A name of `table` (a registry: checked without importing its entries); with `import_path_allowed`,
    also any 'module:Class' (imported, and checked, when the run starts)."""
    def check(name: str) -> str:
        if name in table or (import_path_allowed and ":" in name):
            return name
        names = ", ".join(sorted(table))
        raise config_error(f"registered: {names} (or 'module:Class')" if import_path_allowed else f"one of {names}")

    return AfterValidator(check)


def _agent_groups(value: Any) -> str | dict[str, list[str]]:
    if value in ("shared", "independent"):
        return value
    if not isinstance(value, dict):
        raise config_error("'shared', 'independent' or a mapping {group: [agents]}")
    for name, members in value.items():
        if not (isinstance(members, list) and members and all(isinstance(a, str) for a in members)):
            raise config_error("a non-empty list of agent names", key=str(name), value=members)
    return value


AgentGroups = Annotated[Literal["shared", "independent"] | dict[str, list[str]], PlainValidator(_agent_groups)]
"""'shared', 'independent' or {group: [agent, ...]} (whether the agents exist is checked against the env
or task when the run starts)."""


def _positive_int_list(value: Any) -> list[int]:
    if isinstance(value, list) and value and all(type(h) is int and h > 0 for h in value):
        return value
    raise config_error("a non-empty list of positive integers")


LayerWidths = Annotated[list[int], PlainValidator(_positive_int_list)]

