"""Evaluation tasks by name: `get_task("salary")`, `task_names()`, `register_task(task)`."""

from __future__ import annotations

import threading

from rlm.evals.base import Task

_lock = threading.Lock()
_tasks: dict[str, Task] = {}


def register_task(task: Task) -> None:
    """Make `task` available by its `name` (replacing a task of the same name)."""
    if not task.name:
        raise ValueError("a task needs a non-empty name")
    with _lock:
        _tasks[task.name] = task


def task_names() -> list[str]:
    """The names of every registered task, sorted."""
    _load_builtin()
    with _lock:
        return sorted(_tasks)


def get_task(name: str) -> Task:
    """The task called `name`; raises KeyError naming the known tasks."""
    _load_builtin()
    with _lock:
        task = _tasks.get(name)
    if task is None:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
    return task


def _load_builtin() -> None:
    # The built-in tasks register themselves when their package is imported.
    import rlm.evals  # noqa: F401
