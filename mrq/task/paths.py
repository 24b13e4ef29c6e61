"""Task paths: the user code a job runs, addressed by a dotted path, and how a path resolves.

A task is either a `Task` subclass (MRQ style: `run(self, params)` gets the params dict) or a
plain function (called with the params as keyword arguments; a function decorated with
`@task`, mrq/task/typed.py, runs as the function it wraps), **defined in the module its path
names**: a path never resolves to something the module imports (`reports.run` when `reports`
does `from subprocess import run`), to a private name (`_helper`), nor to any other callable
object. The worker, `mrq-run`, the scheduler and the HTTP API all resolve paths here. Modules are
imported on first use and the result is cached per process.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..exceptions import InvalidJob, TaskImportError, TaskNotFound

_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


class Task:
    """Base class of MRQ-style tasks. Override `run(self, params)`; its return value is stored as
    the job's result (it must be storable in MongoDB: dicts, lists, strings, numbers, dates...)."""

    is_main_task = False
    max_concurrency = 0

    def run_wrapped(self, params: dict[str, Any]) -> Any:
        """Hook around `run`, kept for MRQ compatibility (override to wrap every run)."""
        return self.run(params)

    def run(self, params: dict[str, Any]) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.run() is not implemented")


def validate_task_path(path: object) -> str:
    if not isinstance(path, str) or not _PATH.fullmatch(path):
        raise InvalidJob(f"task path must be a dotted Python path like 'tasks.io.Fetch', got {path!r}")
    return path


_cache: dict[str, Callable[[dict[str, Any]], Any]] = {}
_lock = threading.Lock()


def load_task(path: str) -> Callable[[dict[str, Any]], Any]:
    """Return a callable `run(params)` for the task path, importing its module on first use.

    Raises TaskNotFound when the path names nothing, TaskImportError (with the module's own
    traceback) when the module fails to import.
    """
    runner = _cache.get(path)
    if runner is not None:
        return runner
    with _lock:
        runner = _cache.get(path)
        if runner is None:
            runner = _cache[path] = _resolve(path)
    return runner


def _resolve(path: str) -> Callable[[dict[str, Any]], Any]:
    validate_task_path(path)
    module_name, _, attr = path.rpartition(".")
    if attr.startswith("_"):
        raise TaskNotFound(f"no task {path}: {attr!r} is a private name (tasks are public classes and functions)")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise TaskNotFound(f"no task {path}: no module named {exc.name!r}") from None
        raise _import_error(path, module_name) from None
    except BaseException:
        raise _import_error(path, module_name) from None
    target = module.__dict__.get(attr)
    if target is None:
        raise TaskNotFound(f"no task {path}: module {module_name!r} has no attribute {attr!r}")
    defined_in = getattr(target, "__module__", None)
    if defined_in != module_name:
        where = f"{defined_in}.{getattr(target, '__qualname__', attr)}" if defined_in else repr(target)[:80]
        raise TaskNotFound(f"no task {path}: {attr} is {where}, which module {module_name!r} imports but does not "
                           "define (a task is a Task class or a function defined in the module of its path)")
    if isinstance(target, type):
        if not issubclass(target, Task) and not callable(getattr(target, "run", None)):
            raise TaskNotFound(f"no task {path}: class {attr} has no run(params) method")
        task_class = target

        def run_class(params: dict[str, Any]) -> Any:
            return task_class().run_wrapped(params)

        run_class.task_class = task_class  # type: ignore[attr-defined]
        return run_class
    wrapped = getattr(target, "__mrq_function__", None)  # a @task function: what it decorates
    if inspect.isfunction(wrapped) and wrapped.__module__ == module_name:
        target = wrapped
    if inspect.isfunction(target):
        function = target

        def run_function(params: dict[str, Any]) -> Any:
            return function(**params)

        return run_function
    raise TaskNotFound(f"no task {path}: {attr} is a {type(target).__name__}, not a Task class or a function")


def defined_in_source(path: str) -> bool:
    """Whether the module of `path` defines `class Name` or `def Name` (at its top level, or in a
    top-level `if`/`try`), read from its source file on sys.path, never imported: what a process
    that must not run user code (the dashboard) can check before accepting a path."""
    try:
        validate_task_path(path)
    except InvalidJob:
        return False
    module_name, _, attr = path.rpartition(".")
    if attr.startswith("_"):
        return False
    source = _module_source(module_name.split("."))
    if source is None:
        return False
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return attr in _top_level_definitions(tree.body)


def _module_source(parts: list[str]) -> str | None:
    for base in sys.path:
        root = Path(base or ".").joinpath(*parts)
        for candidate in (root.with_suffix(".py"), root / "__init__.py"):
            if candidate.is_file():
                try:
                    return candidate.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    return None
    return None


def _top_level_definitions(body: list[ast.stmt]) -> set[str]:
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.If):
            names |= _top_level_definitions(node.body) | _top_level_definitions(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                names |= _top_level_definitions(block)
    return names


def _import_error(path: str, module_name: str) -> TaskImportError:
    exc_type, exc, _ = sys.exc_info()
    details = "".join(traceback.format_exception(exc_type, exc, exc.__traceback__ if exc else None))
    error = TaskImportError(
        f"task {path}: importing module {module_name!r} raised {exc_type.__name__ if exc_type else 'an error'}: {exc}"
    )
    error.details = details  # type: ignore[attr-defined]
    return error
