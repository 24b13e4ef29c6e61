"""Raw queues: job parameters kept in Redis only, turned into jobs by a `job_factory` when a
worker takes them. They trade safety for speed (docs/queues.md): nothing is written to MongoDB
until a worker starts the job (or, with `statuses_no_storage`, until it fails).

One class per kind, chosen from the name's suffix:

| suffix | Redis type of `{p:q:<name>}:raw` | order | duplicates |
|---|---|---|---|
| `_raw` | LIST | first in, first out | allowed |
| `_set` | SET | none | merged |
| `_sorted_set` | ZSET, score = rank | lowest score first | merged (re-adding re-scores) |
| `_timed_set` | ZSET, score = unix time | due ones, earliest first | merged |
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..connections import Commands
from ..exceptions import ConfigError, InvalidJob
from ..helpers import emit_metric
from ..storage.keys import validate_job_queue, validate_queue_name
from ..store import strings
from .base import Queue, queue_kind

MAX_DEQUEUE = 500
#: Keys of a RAW_QUEUES entry that MRQ accepted and that mrq ignores (kept for compatibility).
IGNORED_KEYS = frozenset({"has_subqueues", "pushback_seconds", "dashboard_graph", "notify"})
KNOWN_KEYS = frozenset({"job_factory", "retry_queue", "statuses_no_storage"}) | IGNORED_KEYS
STORABLE_STATUSES = frozenset({"started", "success", "failed", "retry", "maxretries", "timeout", "abort", "interrupt"})


class RawParam(str):
    """A raw parameter as given to `job_factory`: a str that also answers `.decode()` (MRQ on
    Python 3 passed bytes, so factories written for it may call it)."""

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return str(self)


@dataclass(frozen=True)
class RawQueueConfig:
    job_factory: Callable[[RawParam], Mapping[str, Any]]
    retry_queue: str
    statuses_no_storage: frozenset[str]


def _resolve_callable(value: Any, where: str) -> Callable[..., Any]:
    if callable(value):
        return value
    if isinstance(value, str) and "." in value:
        module_name, _, attr = value.rpartition(".")
        try:
            found = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{where}: cannot import {value!r} ({exc})") from None
        if callable(found):
            return found
    raise ConfigError(f"{where}: job_factory must be a callable or a dotted path to one, got {value!r}")


def raw_queue_config(raw_queues: Mapping[str, Any], root: str) -> RawQueueConfig:
    """The validated RAW_QUEUES entry of a raw queue (looked up by its root name)."""
    entry = raw_queues.get(root)
    if entry is None:
        raise ConfigError(
            f"raw queue {root!r} has no RAW_QUEUES entry: add RAW_QUEUES = {{{root!r}: "
            "{'job_factory': ..., 'retry_queue': 'default'}} to the config"
        )
    where = f"RAW_QUEUES[{root!r}]"
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{where} must be a dict")
    unknown = sorted(set(entry) - KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(KNOWN_KEYS))})")
    if "job_factory" not in entry:
        raise ConfigError(f"{where}: job_factory is required (a callable: raw param -> {{'path', 'params'}})")
    retry_queue = entry.get("retry_queue", "default")
    try:
        validate_job_queue(retry_queue)
    except Exception as exc:
        raise ConfigError(f"{where}: retry_queue: {exc}") from None
    if queue_kind(retry_queue) != "regular":
        raise ConfigError(f"{where}: retry_queue {retry_queue!r} must be a regular queue")
    statuses = entry.get("statuses_no_storage", ())
    if isinstance(statuses, str) or not isinstance(statuses, Iterable):
        raise ConfigError(f"{where}: statuses_no_storage must be a list of statuses, got {statuses!r}")
    bad = sorted(set(statuses) - STORABLE_STATUSES)
    if bad:
        raise ConfigError(f"{where}: statuses_no_storage: unknown status {bad[0]!r} "
                          f"(known: {', '.join(sorted(STORABLE_STATUSES))})")
    return RawQueueConfig(_resolve_callable(entry["job_factory"], where), retry_queue, frozenset(statuses))


def _as_member(param: Any, index: int) -> str | bytes:
    if isinstance(param, str | bytes):
        return param
    if isinstance(param, int | float) and not isinstance(param, bool):
        return str(param)
    raise InvalidJob(f"raw param #{index} must be a string (or bytes, or a number), got {type(param).__name__}")


def _as_score(score: Any, param: Any) -> float:
    if isinstance(score, bool) or not isinstance(score, int | float) or math.isnan(score) or math.isinf(score):
        raise InvalidJob(f"the score of raw param {param!r} must be a finite number, got {score!r}")
    return float(score)


class RawQueue(Queue):
    """Base of the raw kinds."""

    is_raw = True

    @property
    def config(self) -> RawQueueConfig:
        cached = getattr(self, "_config", None)
        if cached is None:
            cached = self._config = raw_queue_config(self.store.settings.raw_queues, self.root)
        return cached

    @property
    def key(self) -> str:
        return self.store.keys.raw_queue(self.name)

    def enqueue_raw_jobs(self, params: Iterable[Any] | Mapping[Any, float]) -> int:
        """Add raw params (a list; for sorted and timed sets also a dict param -> score). Every
        param is checked before anything is written. Returns how many were given. As in MRQ, the
        queue's kind comes from its name and its RAW_QUEUES entry is only read by the worker that
        takes the params, so a producer needs no RAW_QUEUES."""
        if self.name.endswith("/"):
            validate_queue_name(self.name)  # raises: one cannot queue on "root/"
        members = self._members(params)
        if not members:
            return 0
        commands = Commands()
        self._add(commands, members)
        self._send_push(commands, self.add_push_bookkeeping(commands, len(members)))
        hook = self.store.settings.metric_hook
        emit_metric(hook, f"queues.{self.name}.enqueued", len(members))
        emit_metric(hook, "queues.all.enqueued", len(members))
        return len(members)

    def _members(self, params: Any) -> Any:
        if isinstance(params, Mapping):
            raise InvalidJob(f"queue {self.name!r} ({self.kind}) takes a list of params, not a dict of scores")
        if isinstance(params, str | bytes):
            raise InvalidJob("raw params must be a list of strings, not one string")
        return [_as_member(p, i) for i, p in enumerate(params)]

    def _add(self, pipe: Any, members: Any) -> None:
        raise NotImplementedError

    def remove_raw_jobs(self, params: Iterable[Any]) -> None:
        members = [_as_member(p, i) for i, p in enumerate(params)]
        if members:
            self._remove(members)

    def _remove(self, members: list[str | bytes]) -> None:
        raise NotImplementedError

    def empty(self) -> None:
        """Remove every waiting param of this queue."""
        self.store.redis.delete(self.key)

    def list_raw_jobs(self, skip: int = 0, limit: int = 20) -> list[bytes]:
        """Up to `limit` waiting params after `skip`, in the order workers take them (a set: sorted),
        as `bytes`, as MRQ returned them (`list_raw_jobs_with_scores` gives str)."""
        raise NotImplementedError


class RawListQueue(RawQueue):
    kind = "raw"

    def _add(self, pipe: Any, members: list[str | bytes]) -> None:
        pipe.execute_command("RPUSH", self.key, *members)

    def _remove(self, members: list[str | bytes]) -> None:
        pipe = self.store.redis.pipeline(transaction=False)
        for member in members:
            pipe.lrem(self.key, 0, member)  # type: ignore[arg-type]
        pipe.execute()

    def dequeue(self, count: int, worker_id: str, now: float | None = None) -> tuple[list[Any], float | None]:
        taken = self.store.redis.lpop(self.key, min(count, MAX_DEQUEUE))
        return [RawParam(p) for p in strings(taken or [])], None

    def size(self) -> int:
        return int(self.store.redis.llen(self.key))

    def list_raw_jobs(self, skip: int = 0, limit: int = 20) -> list[bytes]:
        return [bytes(p) for p in self.store.redis.lrange(self.key, skip, skip + limit - 1)]  # type: ignore[arg-type]


class RawSetQueue(RawQueue):
    kind = "set"

    def _add(self, pipe: Any, members: list[str | bytes]) -> None:
        pipe.execute_command("SADD", self.key, *members)

    def _remove(self, members: list[str | bytes]) -> None:
        self.store.redis.srem(self.key, *members)

    def dequeue(self, count: int, worker_id: str, now: float | None = None) -> tuple[list[Any], float | None]:
        taken = self.store.redis.spop(self.key, min(count, MAX_DEQUEUE))
        return [RawParam(p) for p in strings(taken or [])], None

    def size(self) -> int:
        return int(self.store.redis.scard(self.key))

    def list_raw_jobs(self, skip: int = 0, limit: int = 20) -> list[bytes]:
        return sorted(bytes(p) for p in self.store.redis.smembers(self.key))[skip:skip + limit]  # type: ignore[arg-type]


class RawSortedSetQueue(RawQueue):
    """Lowest score first. A list of params gets score 0 (so they keep insertion order among
    themselves only by Redis' lexicographic tie-break); pass a dict param -> score to order them."""

    kind = "sorted_set"
    default_score: float | None = 0.0

    def _members(self, params: Any) -> Any:
        if isinstance(params, Mapping):
            return {_as_member(p, i): _as_score(s, p) for i, (p, s) in enumerate(params.items())}
        if isinstance(params, str | bytes):
            raise InvalidJob("raw params must be a list of strings, not one string")
        score = time.time() if self.default_score is None else self.default_score
        return {_as_member(p, i): score for i, p in enumerate(params)}

    def _add(self, pipe: Any, members: dict[str | bytes, float]) -> None:
        pipe.execute_command("ZADD", self.key, *(item for member, score in members.items() for item in (score, member)))

    def _remove(self, members: list[str | bytes]) -> None:
        self.store.redis.zrem(self.key, *members)

    def dequeue(self, count: int, worker_id: str, now: float | None = None) -> tuple[list[Any], float | None]:
        taken: Any = self.store.redis.zpopmin(self.key, min(count, MAX_DEQUEUE))
        return [RawParam(m.decode() if isinstance(m, bytes) else m) for m, _ in taken], None

    def size(self) -> int:
        return int(self.store.redis.zcard(self.key))

    def list_raw_jobs(self, skip: int = 0, limit: int = 20) -> list[bytes]:
        rows: Any = self.store.redis.zrange(self.key, skip, skip + limit - 1)
        return list(rows)

    def list_raw_jobs_with_scores(self, skip: int = 0, limit: int = 20) -> list[tuple[str, float]]:
        rows: Any = self.store.redis.zrange(self.key, skip, skip + limit - 1, withscores=True)
        return [(m.decode() if isinstance(m, bytes) else m, float(s)) for m, s in rows]


class RawTimedSetQueue(RawSortedSetQueue):
    """Score = unix time at which the job becomes due; a list of params is due now."""

    kind = "timed_set"
    default_score = None

    def dequeue(self, count: int, worker_id: str, now: float | None = None) -> tuple[list[Any], float | None]:
        members, next_due = self.store.scripts.timed_pop(
            keys=[self.key], args=[repr(time.time() if now is None else now), min(count, MAX_DEQUEUE)]
        )
        return [RawParam(p) for p in strings(members)], (float(next_due) if next_due else None)

    def count_due(self, now: float | None = None) -> int:
        return int(self.store.redis.zcount(self.key, "-inf", time.time() if now is None else now))
