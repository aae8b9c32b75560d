"""Text tasks for LLM agents: the registry `TASKS` and `make_task`.

A task is chosen by `llm.task`: a registered name, or 'package.module:Class' for a task defined
elsewhere (any `TextTask` subclass; `llm.task_kwargs` go to its constructor).
"""

from __future__ import annotations

import importlib

from flexmarl.llm.tasks.base import Call, Completion, Outcome, TextTask
from flexmarl.registry import Registry

TASKS = Registry("text task", {
    "speaker_listener": "flexmarl.llm.tasks.speaker_listener:SpeakerListener",
    "recsys_sessions": "flexmarl.llm.tasks.recsys:RecsysSessions",
    "speaker_listener_skewed": "flexmarl.llm.tasks.skewed:SkewedSpeakerListener",
})
"""`llm.task` -> TextTask subclass (each class's `name` is its key here), loaded on first use: a config
checks `llm.task` without importing the tasks (or torch)."""


def task_class(name: str) -> type[TextTask]:
    """The class of a registered task name or of 'module:Class'."""
    if name in TASKS:
        return TASKS[name]
    if ":" not in name:
        raise ValueError(f"unknown task {name!r}; registered: {', '.join(sorted(TASKS))} (or 'module:Class')")
    module_name, class_name = name.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - user code: whatever its import raises
        raise ValueError(f"module {module_name!r} does not import ({type(exc).__name__}: {exc})") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"module {module_name!r} has no {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, TextTask)):
        raise ValueError(f"{name!r} is not a TextTask subclass")
    return cls


def make_task(name: str, format_penalty: float = -1.0, **kwargs) -> TextTask:
    """A task instance: `name` is registered or 'module:Class'; kwargs go to its constructor."""
    return task_class(name)(format_penalty=format_penalty, **kwargs)


__all__ = ["TASKS", "Call", "Completion", "Outcome", "TextTask", "make_task", "task_class"]
