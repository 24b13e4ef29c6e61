"""Queues: one class per queue kind, chosen once from the queue name by `Queue(name, store)`.

A regular queue keeps the ids of its queued jobs in a Redis list (the job documents are in
MongoDB). Raw queue kinds (`_raw`, `_set`, `_sorted_set`, `_timed_set`) keep parameters in Redis;
they are not implemented yet and refuse to be used rather than behaving like something else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from . import current
from .exceptions import InvalidQueueName
from .stats import RETENTION, minute_of
from .storage.keys import validate_queue_name
from .store import strings

if TYPE_CHECKING:
    from .store import Store

RAW_SUFFIXES = ("_timed_set", "_sorted_set", "_set", "_raw")
MAX_DEQUEUE = 500  # ids taken per Lua call at most


def queue_kind(name: str) -> str:
    """'regular' or the raw suffix kind ('raw', 'set', 'sorted_set', 'timed_set') of a name. The
    kind comes from the part before the first '/' (subqueues share their root's kind)."""
    root = name.split("/", 1)[0]
    for suffix in RAW_SUFFIXES:
        if root.endswith(suffix):
            return suffix[1:]
    return "regular"


class Queue:
    """Base of the queue kinds. `Queue("name", store)` returns an instance of the right kind."""

    kind = "regular"

    def __new__(cls, name: str, store: Store | None = None) -> Any:
        if cls is Queue:
            kind = queue_kind(validate_queue_name(name, allow_subqueue_wildcard=True))
            if kind != "regular":
                raise InvalidQueueName(f"queue {name!r}: raw queues ({kind}) are not supported yet")
            cls = RegularQueue
        return super().__new__(cls)

    def __init__(self, name: str, store: Store | None = None) -> None:
        self.name = validate_queue_name(name, allow_subqueue_wildcard=True)
        self.root = name.split("/", 1)[0]
        self.is_subqueue = "/" in name
        self._store = store

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = current.get_current_store()
        return self._store

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def pause(self) -> None:
        pause_queue(self.store, self.name)

    def resume(self) -> None:
        resume_queue(self.store, self.name)

    def is_paused(self) -> bool:
        return is_paused_in(self.name.rstrip("/"), paused_queues(self.store))


class RegularQueue(Queue):
    """Job ids in a Redis LIST `{p:q:<name>}:ids`; due retries in the ZSET `{p:q:<name>}:delayed`.
    Names ending in `_reverse` are taken newest first (LIFO)."""

    @property
    def is_reverse(self) -> bool:
        return self.root.endswith("_reverse")

    def push(self, ids: list[str], *, front: bool = False) -> None:
        """Put job ids on the queue (their documents must already say `queued`) and wake workers."""
        if not ids:
            return
        store = self.store
        keys = store.keys
        pipe = store.redis.pipeline(transaction=False)
        if front:
            pipe.lpush(keys.queue_ids(self.name), *ids)
        else:
            pipe.rpush(keys.queue_ids(self.name), *ids)
        if store.note_once("queue:" + self.name):
            pipe.sadd(keys.known_queues, self.name)
        minute = minute_of(time.time())
        pipe.hincrby(keys.stats(minute), f"in:{self.name}", len(ids))
        if store.note_once(f"stats:{minute}"):
            pipe.expire(keys.stats(minute), RETENTION)
        pipe.publish(keys.notify_channel(self.name), str(len(ids)))
        pipe.execute()

    def push_delayed(self, ids_and_times: dict[str, float]) -> None:
        """Schedule job ids to go back on the queue at the given unix times."""
        if not ids_and_times:
            return
        store = self.store
        pipe = store.redis.pipeline(transaction=False)
        pipe.zadd(store.keys.queue_delayed(self.name), ids_and_times)
        if store.note_once("queue:" + self.name):
            pipe.sadd(store.keys.known_queues, self.name)
        pipe.publish(store.keys.notify_channel(self.name), f"at:{min(ids_and_times.values()):f}")
        pipe.execute()

    def forget(self, job_id: str, *, delayed_only: bool = False) -> None:
        """Remove one id from the queue (a cancelled job). Workers skip such ids anyway; this keeps
        the queue size honest."""
        store = self.store
        pipe = store.redis.pipeline(transaction=False)
        if not delayed_only:
            pipe.lrem(store.keys.queue_ids(self.name), 1, job_id)
        pipe.zrem(store.keys.queue_delayed(self.name), job_id)
        pipe.execute()

    def dequeue(self, count: int, worker_id: str, now: float | None = None) -> tuple[list[str], float | None]:
        """Atomically move up to `count` ids into the worker's running set. Returns the ids and,
        when the queue ran dry, the unix time of its next delayed job (None if none)."""
        store = self.store
        keys = store.keys
        ids, next_due = store.scripts.dequeue(
            keys=[keys.queue_ids(self.name), keys.queue_running(self.name, worker_id),
                  keys.queue_delayed(self.name)],
            args=[repr(time.time() if now is None else now), min(count, MAX_DEQUEUE),
                  "R" if self.is_reverse else "L"],
        )
        return [i.decode() for i in ids], (float(next_due) if next_due else None)

    def size(self) -> int:
        """Ids waiting in the queue (not counting delayed retries)."""
        return int(self.store.redis.llen(self.store.keys.queue_ids(self.name)))

    def delayed_size(self) -> int:
        return int(self.store.redis.zcard(self.store.keys.queue_delayed(self.name)))

    def list_job_ids(self, skip: int = 0, limit: int = 20) -> list[str]:
        """Queued ids in the order workers will take them."""
        key = self.store.keys.queue_ids(self.name)
        if self.is_reverse:
            ids: list[bytes] = self.store.redis.lrange(key, -(skip + limit), -(skip + 1))  # type: ignore[assignment]
            return [i.decode() for i in reversed(ids)]
        ids = self.store.redis.lrange(key, skip, skip + limit - 1)  # type: ignore[assignment]
        return [i.decode() for i in ids]


# --- pause / resume (every kind) ------------------------------------------------------------------


def pause_queue(store: Store, name: str) -> None:
    """Workers stop taking jobs from the queue (and, for a root name, from all its subqueues)
    within a second; queued jobs stay where they are."""
    name = validate_queue_name(name.rstrip("/"))
    store.redis.sadd(store.keys.paused_queues, name)
    store.redis.publish(store.keys.control_channel, "paused")


def resume_queue(store: Store, name: str) -> None:
    name = validate_queue_name(name.rstrip("/"))
    store.redis.srem(store.keys.paused_queues, name)
    store.redis.publish(store.keys.control_channel, "paused")


def paused_queues(store: Store) -> set[str]:
    return set(strings(store.redis.smembers(store.keys.paused_queues)))


def is_paused_in(name: str, paused: set[str]) -> bool:
    """A queue is paused when its own name, or its root (the part before the first '/'), is."""
    return name in paused or name.split("/", 1)[0] in paused


# --- introspection --------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueInfo:
    name: str
    kind: str
    size: int  # jobs waiting in Redis (ids or raw params)
    delayed: int  # delayed retries (regular queues)
    paused: bool
    oldest_age: float | None  # seconds the oldest waiting job has waited (regular queues)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "size": self.size, "delayed": self.delayed,
                "paused": self.paused, "oldest_age": self.oldest_age}


def known_queue_names(store: Store) -> list[str]:
    return sorted(strings(store.redis.smembers(store.keys.known_queues)))


def queue_infos(store: Store, names: list[str] | None = None) -> list[QueueInfo]:
    """Size, delayed count, paused flag and oldest job age of queues (all known ones by default),
    from Redis only: two round trips whatever the number of queues."""
    names = known_queue_names(store) if names is None else names
    paused = paused_queues(store)
    keys = store.keys
    pipe = store.redis.pipeline(transaction=False)
    for name in names:
        pipe.llen(keys.queue_ids(name))
        pipe.zcard(keys.queue_delayed(name))
        pipe.lindex(keys.queue_ids(name), 0)
    replies = pipe.execute() if names else []
    now = time.time()
    infos = []
    for index, name in enumerate(names):
        size, delayed, oldest = replies[3 * index:3 * index + 3]
        age = None
        if oldest:
            oldest_id = oldest.decode() if isinstance(oldest, bytes) else str(oldest)
            if ObjectId.is_valid(oldest_id):
                age = max(0.0, now - ObjectId(oldest_id).generation_time.timestamp())
        infos.append(QueueInfo(name, queue_kind(name), int(size), int(delayed), is_paused_in(name, paused), age))
    return infos


def status_counts(store: Store, queue: str | None = None) -> dict[str, int]:
    """Jobs per status in MongoDB (one aggregate on the (queue, status) or (status) index)."""
    pipeline: list[dict[str, Any]] = []
    if queue is not None:
        pipeline.append({"$match": {"queue": queue}})
    pipeline.append({"$group": {"_id": "$status", "count": {"$sum": 1}}})
    return {row["_id"]: row["count"] for row in store.jobs.aggregate(pipeline)}
