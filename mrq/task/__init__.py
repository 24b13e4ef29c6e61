"""Tasks: the user code a job runs, addressed by a dotted path.

- `Task`, MRQ's base class, and how a path resolves to a task (`load_task`, `defined_in_source`):
  mrq/task/paths.py;
- `task`, the typed decorator that makes a module-level function a task with `fn.queue(...)`:
  mrq/task/typed.py. It queues jobs, so it imports the producer, which resolves paths here:
  it is imported on first use of the name (PEP 562), so that importing mrq.task.paths never
  imports the producer half-way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .paths import Task, defined_in_source, load_task, validate_task_path

if TYPE_CHECKING:
    from .typed import TaskFunction, task, task_path

__all__ = ["Task", "TaskFunction", "defined_in_source", "load_task", "task", "task_path", "validate_task_path"]

_TYPED = ("TaskFunction", "task", "task_path")


def __getattr__(name: str) -> Any:
    if name in _TYPED:
        from . import typed

        return getattr(typed, name)
    raise AttributeError(f"module 'mrq.task' has no attribute {name!r}")
