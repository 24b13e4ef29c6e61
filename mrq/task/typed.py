"""The typed task decorator: `@task(queue="high", timeout=60)` on a module-level function.

    @task(queue="reports", timeout=600)
    def daily(day: str, send: bool = False) -> dict: ...

    daily.queue(day="2024-05-01")          # the job id (an ObjectId); nothing runs here
    daily.queue_many([{"day": d} for d in days])
    await daily.aqueue(day="2024-05-01")   # from asyncio code (mrq.aio)
    daily("2024-05-01")                    # a plain call, as before

The job's path is the function's dotted path (`module.name`), so a job queued this way is an
ordinary job: a worker resolves the path to the decorated function (mrq/task/paths.py) and calls
it with the params as keyword arguments, and `queue_job("module.name", {...})` queues the same
job. `queue` and `aqueue` take the function's own parameters (typing.ParamSpec: mypy and IDEs
check them) and bind them to its signature before anything is stored: a wrong name or a missing
argument raises InvalidJob naming it. The settings given to the decorator are the task's, as a
TASKS entry would give them (mrq.store.Store.task_settings says which wins).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

import bson
from bson import ObjectId

from ..config import parse_task_key
from ..exceptions import ConfigError, InvalidJob
from ..queue.base import queue_kind
from ..queue.producer import queue_job, queue_jobs
from ..storage.keys import validate_job_queue
from ..store import declare_task_settings
from .paths import validate_task_path

if TYPE_CHECKING:
    from ..store import Store

P = ParamSpec("P")
R = TypeVar("R")

_BY_NAME = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY,
            inspect.Parameter.VAR_KEYWORD)


def task_path(function: Callable[..., Any]) -> str:
    """The dotted path a worker finds `function` by; TypeError saying why when it has none (a
    lambda, a nested function, a method, a function of the `__main__` script, a private name)."""
    if not inspect.isfunction(function):
        raise TypeError(f"@task decorates a module-level function, not {type(function).__name__} {function!r}")
    module, qualname = function.__module__, function.__qualname__
    if function.__name__ == "<lambda>":
        raise TypeError(f"@task cannot decorate a lambda (in {module}): a worker finds a task by its name; "
                        "define it with `def` at the top level of a module")
    if "<locals>" in qualname:
        raise TypeError(f"@task cannot decorate {qualname} (in {module}), a function defined inside another: a "
                        "worker imports the module and finds the task by name; define it at the module's top level")
    if "." in qualname:
        raise TypeError(f"@task cannot decorate the method {qualname} (in {module}): tasks are module-level "
                        "functions (or mrq.task.Task classes)")
    if module == "__main__":
        raise TypeError(f"@task cannot decorate {qualname} in the __main__ script: a worker cannot import it by "
                        "that name; move the task into a module and import it from the script")
    if qualname.startswith("_"):
        raise TypeError(f"@task cannot decorate {module}.{qualname}: a private name is never a task path")
    path = f"{module}.{qualname}"
    validate_task_path(path)
    return path


def _check_signature(path: str, signature: inspect.Signature) -> None:
    for parameter in signature.parameters.values():
        if parameter.kind not in _BY_NAME:
            kind = "*" + parameter.name if parameter.kind is inspect.Parameter.VAR_POSITIONAL else parameter.name
            raise TypeError(f"@task {path}: parameter {kind} cannot be passed by name; a job's params are a dict "
                            "of names to values (use keyword parameters)")


def _parse_settings(path: str, values: dict[str, Any]) -> dict[str, Any]:
    parsed = {}
    for key, value in values.items():
        if value is None:
            continue
        try:
            parsed[key] = parse_task_key(key, value, f"@task {path}")
        except ConfigError as exc:
            raise TypeError(str(exc)) from None
    if "queue" in parsed:
        validate_job_queue(parsed["queue"])
        if queue_kind(parsed["queue"]) != "regular":
            raise TypeError(f"@task {path}: queue {parsed['queue']!r} is a raw queue; jobs go to regular queues")
    return parsed


class TaskFunction(Generic[P, R]):
    """A function made a task by `@task`: call it as the function, or queue it as a job."""

    def __init__(self, function: Callable[P, R], settings: dict[str, Any], *, queue: str | None = None,
                 store: Store | None = None) -> None:
        functools.update_wrapper(self, function)
        self.__mrq_function__ = function  # what the worker runs (mrq/task/paths.py)
        self.path = task_path(function)
        if inspect.iscoroutinefunction(function):
            raise TypeError(f"@task {self.path}: an async function cannot run in mrq's (gevent) workers; tasks "
                            "are plain functions (producers may be async: see aqueue)")
        self.signature = inspect.signature(function)
        _check_signature(self.path, self.signature)
        self.settings = settings
        self._queue = queue
        self._store = store
        self._depends_on: Any = None
        self._on_dependency_failure = "cancel"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.__mrq_function__(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<task {self.path}>"

    def using(self, *, queue: str | None = None, store: Store | None = None, depends_on: Any = None,
              on_dependency_failure: str | None = None) -> TaskFunction[P, R]:
        """The same task queued on another queue, through another Store than the current one, or
        waiting for other jobs (`depends_on`, `on_dependency_failure`: see queue_jobs):
        `report.using(depends_on=[fetch_id]).queue(day="monday")`."""
        if queue is not None:
            validate_job_queue(queue)
        copy: TaskFunction[P, R] = TaskFunction(self.__mrq_function__, self.settings, queue=queue or self._queue,
                                                store=store or self._store)
        copy._depends_on = self._depends_on if depends_on is None else depends_on
        copy._on_dependency_failure = on_dependency_failure or self._on_dependency_failure
        return copy

    def params(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The job params of a call with these arguments: bound to the signature by name (defaults
        are left to the function, as in a direct call). InvalidJob naming what does not fit."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidJob(f"{self.path}: {exc}") from None
        params: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            if self.signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                params.update(value)
            else:
                params[name] = value
        return params

    def _checked_params(self, params: Mapping[str, Any], index: int) -> dict[str, Any]:
        if not isinstance(params, Mapping):
            raise InvalidJob(f"{self.path}: params #{index} must be a dict, got {type(params).__name__}")
        if not all(isinstance(name, str) for name in params):
            raise InvalidJob(f"{self.path}: params #{index} have a name that is not a string")
        try:
            return self.params(**params)
        except InvalidJob as exc:
            raise InvalidJob(f"params #{index}: {exc}") from None

    def _check_defined(self) -> None:
        """A worker imports the module and takes the name: it must find this task there."""
        module = sys.modules.get(self.__mrq_function__.__module__)
        found = getattr(module, self.__mrq_function__.__name__, None)
        if getattr(found, "__mrq_function__", None) is not self.__mrq_function__:
            raise InvalidJob(f"{self.path}: the module does not define this task under that name (a worker "
                             "would not find it); decorate the function where it is defined, at the top level")

    def _refused(self, exc: InvalidJob, params_list: list[dict[str, Any]]) -> InvalidJob:
        """The producer's error, naming the task and, for a value MongoDB cannot store, the
        parameter that holds it."""
        where = ""
        for params in params_list:
            for name, value in params.items():
                try:
                    bson.encode({name: value})
                except Exception:
                    where = f" (parameter {name!r}: {type(value).__name__})"
                    break
            if where:
                break
        return InvalidJob(f"{self.path}: {exc}{where}")

    def queue(self, *args: P.args, **kwargs: P.kwargs) -> ObjectId:
        """Queue one job of this task; returns its id. Nothing runs here."""
        params = self.params(*args, **kwargs)
        self._check_defined()
        try:
            return queue_job(self.path, params, queue=self._queue, store=self._store, depends_on=self._depends_on,
                             on_dependency_failure=self._on_dependency_failure)
        except InvalidJob as exc:
            raise self._refused(exc, [params]) from None

    def queue_many(self, params_list: Iterable[Mapping[str, Any]], *, batch_size: int = 1000) -> list[ObjectId]:
        """Queue one job per params dict (each checked against the signature first; nothing is
        stored if one does not fit); returns their ids in order."""
        checked = [self._checked_params(params, index) for index, params in enumerate(params_list)]
        self._check_defined()
        try:
            return queue_jobs(self.path, checked, queue=self._queue, batch_size=batch_size, store=self._store,
                              depends_on=self._depends_on, on_dependency_failure=self._on_dependency_failure)
        except InvalidJob as exc:
            raise self._refused(exc, checked) from None

    def _no_async_dependencies(self) -> None:
        if self._depends_on:
            raise InvalidJob(f"{self.path}: depends_on is not supported by the asyncio producer (mrq.aio) yet: "
                             "queue it with .queue() (from a thread: asyncio.to_thread)")

    async def aqueue(self, *args: P.args, **kwargs: P.kwargs) -> ObjectId:
        """`queue` for asyncio code: through mrq.aio's connection (its current one)."""
        from .. import aio

        params = self.params(*args, **kwargs)
        self._check_defined()
        self._no_async_dependencies()
        try:
            return await aio.queue_job(self.path, params, queue=self._queue)
        except InvalidJob as exc:
            raise self._refused(exc, [params]) from None

    async def aqueue_many(self, params_list: Iterable[Mapping[str, Any]], *,
                          batch_size: int = 1000) -> list[ObjectId]:
        """`queue_many` for asyncio code (mrq.aio)."""
        from .. import aio

        checked = [self._checked_params(params, index) for index, params in enumerate(params_list)]
        self._check_defined()
        self._no_async_dependencies()
        try:
            return await aio.queue_jobs(self.path, checked, queue=self._queue, batch_size=batch_size)
        except InvalidJob as exc:
            raise self._refused(exc, checked) from None


@overload
def task(function: Callable[P, R], /) -> TaskFunction[P, R]: ...


@overload
def task(*, queue: str | None = None, timeout: float | None = None, max_retries: int | None = None,
         retry_delay: float | None = None, max_concurrency: int | None = None, result_ttl: float | None = None,
         abort_ttl: float | None = None, cancel_ttl: float | None = None,
         default_ttl: float | None = None) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...


def task(function: Callable[P, R] | None = None, /, **settings: Any) -> Any:
    """Make a module-level function a task: `@task` or `@task(queue=..., timeout=..., ...)` with the
    keys a TASKS entry takes (queue, timeout, max_retries, retry_delay, max_concurrency,
    result_ttl, abort_ttl, cancel_ttl, default_ttl). See the module's docstring."""

    def decorate(target: Callable[P, R]) -> TaskFunction[P, R]:
        path = task_path(target)
        parsed = _parse_settings(path, settings)
        wrapped: TaskFunction[P, R] = TaskFunction(target, parsed)
        declare_task_settings(path, parsed)
        return wrapped

    if function is not None:
        if settings:
            raise TypeError("@task takes either a function or settings by name, not both")
        return decorate(function)
    return decorate
