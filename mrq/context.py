"""The MRQ-compatible API for code running inside jobs and for standalone scripts.

    from mrq.context import log, get_current_job, retry_current_job, connections

This module is a thin facade over the current Store and the job the calling greenlet runs
(mrq.current); library code does not use it.
"""

from __future__ import annotations

import logging
from typing import Any

from . import current
from .config import Settings
from .exceptions import MrqError
from .helpers import metric
from .job import queue_job, queue_jobs, queue_raw_jobs
from .legacy_mongo import legacy_database
from .subpool import subpool_imap, subpool_map
from .task import load_task

__all__ = [
    "abort_current_job",
    "connections",
    "get_current_config",
    "get_current_job",
    "get_current_worker",
    "get_dependency_results",
    "log",
    "metric",
    "queue_job",
    "queue_jobs",
    "queue_raw_jobs",
    "retry_current_job",
    "run_task",
    "set_current_job_progress",
    "setup_context",
    "subpool_imap",
    "subpool_map",
]

#: The per-job logger: inside a job its records go to the worker's output and to mrq_logs.
log = logging.getLogger("mrq.current")

get_current_job = current.get_current_job
get_current_worker = current.get_current_worker
set_current_job = current.set_current_job


class ConfigDict(dict[str, Any]):
    """MRQ's config: a real dict of lowercase keys (every setting and every uppercase key of the
    config file), so task code can `[...]`, `.get()`, set keys and return or log it as JSON.
    Attribute access (`config.redis_prefix`) also works. Keys set here are seen by later
    `get_current_config()` calls of this process; mrq's own code reads its `Settings`, which
    assignments here do not change."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"unknown setting {name!r}") from None


_config_dicts: dict[int, tuple[Settings, ConfigDict]] = {}


def get_current_config() -> ConfigDict:
    """The configuration in use, as MRQ returned it: a dict with lowercase keys (one per process
    and settings, so that keys a task sets stay visible to the next call)."""
    settings = current.get_current_config()
    cached = _config_dicts.get(id(settings))
    if cached is None or cached[0] is not settings:
        _config_dicts.clear()  # the settings were replaced: start from them
        config = ConfigDict(settings.values)
        config.update(settings.extra)
        cached = _config_dicts[id(settings)] = (settings, config)
    return cached[1]


def setup_context(**overrides: Any) -> ConfigDict:
    """For standalone scripts: read the config file and MRQ_* environment, plus `overrides`
    (e.g. `setup_context(redis="redis://...", mongodb_jobs="mongodb://...")`). Returns the config
    as get_current_config() does."""
    current.setup_from_environment(**overrides)
    return get_current_config()


class _Connections:
    """`connections.redis`, `connections.mongodb_jobs`, `connections.mongodb_logs` of the
    current context, and as in MRQ, `connections.redis_<name>` / `connections.mongodb_<name>` for
    each `REDIS_<NAME>` / `MONGODB_<NAME>` URI of the config file: all created on first use. The
    MongoDB databases also answer pymongo 3's method names (mrq/legacy_mongo.py), as MRQ's did."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        conns = current.get_current_store().connections
        if name == "redis":
            return conns.redis
        if name in ("mongodb_jobs", "mongodb_logs"):
            return legacy_database(getattr(conns, name))
        if name.startswith("mongodb_"):
            return legacy_database(conns.named(name))
        if name.startswith("redis_"):
            return conns.named(name)
        raise AttributeError(f"no connection named {name!r} (redis, mongodb_jobs, mongodb_logs, or redis_<name> / "
                             "mongodb_<name> from a REDIS_<NAME> / MONGODB_<NAME> config key)")

    def reset(self) -> None:
        current.get_current_store().connections.close()


connections = _Connections()


def _require_job(what: str) -> Any:
    job = current.get_current_job()
    if job is None:
        raise MrqError(f"{what}() was called outside a running job")
    return job


def get_dependency_results() -> list[Any]:
    """The results of the jobs the current job waited for (its `depends_on`, in order; a group's
    callback: the members' results): None for one that did not end `success` (a job queued with
    on_dependency_failure="run") or that expired."""
    from .workflow import dependency_results

    job = _require_job("get_dependency_results")
    return dependency_results(job.data if job.data is not None else job, job.store)


def retry_current_job(delay: float | None = None, max_retries: int | None = None,
                      queue: str | None = None) -> None:
    """Stop the current job and run it again after `delay` seconds (default: the task's
    retry_delay), on `queue` (default: its queue). Past `max_retries` (default: the task's) the job
    ends as `maxretries` instead. Never returns."""
    job = _require_job("retry_current_job")
    job.retry(delay=delay, max_retries=max_retries, queue=queue)


def abort_current_job() -> None:
    """Stop the current job now; it ends as `abort` and is not retried. Never returns."""
    job = _require_job("abort_current_job")
    job.abort()


def set_current_job_progress(ratio: float, save: bool = False) -> None:
    """Record the job's progress (0..1); saved within a second, or now with save=True."""
    job = _require_job("set_current_job_progress")
    job.set_progress(ratio, save=save)


def run_task(path: str, params: dict[str, Any]) -> Any:
    """Run another task synchronously, in this greenlet, and return its result."""
    return load_task(path)(params)

