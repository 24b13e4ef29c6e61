"""`Store`: what every layer above storage needs, in one object passed explicitly.

It bundles the settings, the connections, the Redis key builder, the Lua scripts and the
MongoDB collections, and resolves per-task settings (`TASKS`). Jobs, queues, the worker, the
scheduler and the dashboard all take a Store; `mrq.context` only keeps the current one for
user code running inside jobs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pymongo.collection
import redis

from .config import Settings
from .connections import Connections
from .storage import mongo
from .storage.keys import Keys
from .storage.scripts import Scripts, scripts_for

# Per-task keys of TASKS and the setting each one defaults to.
TASK_DEFAULTS = {
    "timeout": "default_job_timeout",
    "result_ttl": "default_job_result_ttl",
    "abort_ttl": "default_job_abort_ttl",
    "cancel_ttl": "default_job_cancel_ttl",
    "default_ttl": "default_job_ttl",
    "max_retries": "default_job_max_retries",
    "retry_delay": "default_job_retry_delay",
}


#: Per-task settings declared in code by the @task decorator (mrq/task/typed.py), by task path;
#: `_declared_version` grows with each declaration so that Stores drop what they had resolved.
_declared: dict[str, dict[str, Any]] = {}
_declared_version = 0


def declare_task_settings(path: str, values: dict[str, Any]) -> None:
    """Record the settings a task declares in code (already parsed): see Store.task_settings for
    how they combine with TASKS."""
    global _declared_version
    _declared[path] = dict(values)
    _declared_version += 1


@dataclass(frozen=True)
class TaskSettings:
    queue: str | None
    timeout: float
    result_ttl: float
    abort_ttl: float
    cancel_ttl: float
    default_ttl: float
    max_retries: int
    retry_delay: float
    max_concurrency: int = 0


class Store:
    def __init__(self, settings: Settings, connections: Connections | None = None) -> None:
        self.settings = settings
        self.connections = connections or Connections(settings)
        self.keys = Keys(settings.redis_prefix)
        self._task_settings: dict[str, TaskSettings] = {}
        self._declared_seen = _declared_version
        self._noted: dict[str, float] = {}

    @property
    def redis(self) -> redis.Redis:
        return self.connections.redis

    @property
    def scripts(self) -> Scripts:
        return scripts_for(self.connections.redis)

    @property
    def jobs(self) -> pymongo.collection.Collection:
        return self.connections.jobs_collection(mongo.JOBS)

    @property
    def workers(self) -> pymongo.collection.Collection:
        return self.connections.mongodb_jobs[mongo.WORKERS]

    @property
    def groups(self) -> pymongo.collection.Collection:
        return self.connections.mongodb_jobs[mongo.GROUPS]

    @property
    def logs(self) -> pymongo.collection.Collection | None:
        db = self.connections.mongodb_logs
        return None if db is None else db[mongo.LOGS]

    @cached_property
    def _task_prefixes(self) -> list[tuple[str, dict[str, Any]]]:
        # Longest prefix first: "tasks.io.Fetch" beats "tasks.io" beats "tasks".
        entries = [(path, conf) for path, conf in self.settings.tasks.items() if isinstance(conf, dict)]
        return sorted(entries, key=lambda item: len(item[0]), reverse=True)

    def task_settings(self, path: str) -> TaskSettings:
        """The settings of a task path, key by key: its exact TASKS entry, else what the task
        declares with `@task(...)` (when its module is imported in this process), else the longest
        TASKS entry whose dotted prefix matches, else the default_job_* settings."""
        if self._declared_seen != _declared_version:
            self._task_settings.clear()
            self._declared_seen = _declared_version
        found = self._task_settings.get(path)
        if found is not None:
            return found
        conf: dict[str, Any] = {}
        for prefix, entry in self._task_prefixes:
            if path == prefix or path.startswith(prefix.rstrip(".") + "."):
                conf = entry
                break
        if path in _declared:
            exact = self.settings.tasks.get(path)
            conf = {**conf, **_declared[path], **(exact if isinstance(exact, dict) else {})}
        values: dict[str, Any] = {"queue": conf.get("queue"), "max_concurrency": int(conf.get("max_concurrency") or 0)}
        for key, setting in TASK_DEFAULTS.items():
            values[key] = conf.get(key, self.settings[setting])
        found = TaskSettings(**values)
        self._task_settings[path] = found
        return found

    def note_once(self, name: str, period: float = 60.0) -> bool:
        """True the first time `name` is noted, then again once per `period` seconds: for writes
        that are idempotent and only need repeating now and then (registering a known queue, so
        that the set heals after Redis lost its data; setting a key's expiry)."""
        now = time.monotonic()
        last = self._noted.get(name)
        if last is not None and now - last < period:
            return False
        self._noted[name] = now
        return True

    def forget_notes(self) -> None:
        """A pipeline carrying noted writes failed: note everything again at the next push (its
        writes may not have been applied)."""
        self._noted.clear()

    def close(self) -> None:
        self.connections.close()


def strings(values: Any) -> list[str]:
    """Redis replies (bytes) as str."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
