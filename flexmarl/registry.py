"""A name -> object table whose built-in entries are named as 'module:attribute' and imported on first
lookup, so listing or checking names (what loading a config does) imports nothing heavy: no torch,
transformers or vLLM until an entry is used."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any


class Registry(MutableMapping):
    """name -> object. A `str` value is a 'module:attribute' import path, resolved (once) on lookup."""

    def __init__(self, kind: str, builtins: dict[str, str]):
        self.kind = kind
        """What an entry is ("policy loss"), for error messages."""
        self._entries: dict[str, Any] = dict(builtins)

    def __getitem__(self, name: str) -> Any:
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), attribute)
        return entry

    def __contains__(self, name: object) -> bool:  # Mapping's default would look the entry up (and import it)
        return name in self._entries

    def __setitem__(self, name: str, value: Any) -> None:
        self._entries[name] = value

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator adding an entry under a new name (a name already taken is refused)."""
        def decorator(obj: Any) -> Any:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator
