"""The queue base class, the factory that picks the kind from the name, and pause/resume."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .. import current
from ..clock import utcnow
from ..connections import Commands, send_commands
from ..stats import RETENTION, minute_of
from ..storage import mongo
from ..storage.keys import validate_queue_name
from ..store import strings
from .registry import note

if TYPE_CHECKING:
    from ..store import Store

RAW_SUFFIXES = ("_timed_set", "_sorted_set", "_set", "_raw")


def queue_kind(name: str) -> str:
    """'regular' or the raw kind ('raw', 'set', 'sorted_set', 'timed_set') of a queue name. The
    kind comes from the part before the first '/' (subqueues share their root's kind)."""
    root = name.split("/", 1)[0]
    for suffix in RAW_SUFFIXES:
        if root.endswith(suffix):
            return suffix[1:]
    return "regular"


class Queue:
    """Base of the queue kinds. `Queue("name", store)` returns an instance of the right kind, chosen
    once from the name: RegularQueue, RawListQueue (`_raw`), RawSetQueue (`_set`),
    RawSortedSetQueue (`_sorted_set`) or RawTimedSetQueue (`_timed_set`)."""

    kind = "regular"
    is_raw = False
    _kinds: dict[str, type[Queue]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            Queue._kinds[cls.kind] = cls

    def __new__(cls, name: str, store: Store | None = None, **kwargs: Any) -> Any:
        if cls is Queue:
            cls = Queue._kinds[queue_kind(validate_queue_name(name, allow_subqueue_wildcard=True))]
        return super().__new__(cls)

    def __init__(self, name: str, store: Store | None = None) -> None:
        self.name = validate_queue_name(name, allow_subqueue_wildcard=True)
        # `/main` (accepted as in MRQ) is a plain queue: its own root, no subqueue.
        self.root = name if name.startswith("/") else name.split("/", 1)[0]
        self.is_subqueue = "/" in name and not name.startswith("/")
        self._store = store

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = current.get_current_store()
        return self._store

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Queue) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def pause(self) -> None:
        pause_queue(self.store, self.name)

    def resume(self) -> None:
        resume_queue(self.store, self.name)

    def is_paused(self) -> bool:
        return is_paused_in(self.name.rstrip("/"), paused_queues(self.store))

    def size(self) -> int:
        raise NotImplementedError

    def dequeue(self, count: int, worker_id: str, now: float | None = None) -> tuple[list[Any], float | None]:
        """Take up to `count` jobs for a worker: ids (regular) or raw params. Returns them and,
        when the queue ran dry, the unix time at which its next job becomes due (or None)."""
        raise NotImplementedError

    def _note_known(self, pipe: Any) -> None:
        """Register the queue in the known queues (registry.py), once a minute at most per process:
        the registry heals by itself after Redis lost its data."""
        note(self.store, pipe, self.name, self.root, self.is_subqueue)

    def _send_push(self, commands: Commands, messages: list[tuple[str, str]]) -> None:
        """Send a push's commands (with their bookkeeping) and wake the workers, in one round trip.
        If that fails, the once-a-minute notes it carried count as not written."""
        try:
            send_commands(self.store.redis, commands, messages)
        except BaseException:
            self.store.forget_notes()
            raise

    def add_push_bookkeeping(self, pipe: Any, count: int) -> list[tuple[str, str]]:
        """Add the writes shared by every push to the commands holding the push itself (anything
        with `execute_command`: mrq.connections.Commands, a redis-py pipeline, sync or asyncio):
        the known-queues set (and the root's subqueue set), the throughput counter. Cheap writes
        are repeated once a minute at most per process. Returns the wake-up message to publish
        after them, as `(channel, message)` pairs."""
        store = self.store
        keys = store.keys
        self._note_known(pipe)
        minute = minute_of(time.time())
        pipe.execute_command("HINCRBY", keys.stats(minute), f"in:{self.name}", count)
        if store.note_once(f"stats:{minute}"):
            pipe.execute_command("EXPIRE", keys.stats(minute), RETENTION)
        return [(keys.notify_channel(self.name), str(count))]


# --- pause / resume (every kind) ------------------------------------------------------------------
#
# The paused flag lives in MongoDB (`mrq_queues`, the record that survives Redis losing its data)
# and in the Redis set `<p>:paused` that workers read every second. MongoDB is written first;
# reconciliation after a Redis data loss copies it back (restore_paused).


def pause_queue(store: Store, name: str) -> None:
    """Workers stop taking jobs from the queue (and, for a root name, from all its subqueues)
    within a second; queued jobs stay where they are."""
    _set_paused(store, name, True)


def resume_queue(store: Store, name: str) -> None:
    _set_paused(store, name, False)


def _set_paused(store: Store, name: str, paused: bool) -> None:
    name = validate_queue_name(name.rstrip("/"))
    store.connections.mongodb_jobs[mongo.QUEUES].update_one(
        {"_id": name}, {"$set": {"paused": paused, "dateupdated": utcnow()}}, upsert=True)
    if paused:
        store.redis.sadd(store.keys.paused_queues, name)
    else:
        store.redis.srem(store.keys.paused_queues, name)
    store.redis.publish(store.keys.control_channel, "paused")


def restore_paused(store: Store) -> list[str]:
    """Copy the paused flags from MongoDB back to Redis (after Redis lost its data)."""
    names = [doc["_id"] for doc in store.connections.mongodb_jobs[mongo.QUEUES].find({"paused": True}, {"_id": 1})]
    if names:
        store.redis.sadd(store.keys.paused_queues, *names)
        store.redis.publish(store.keys.control_channel, "paused")
    return names


def paused_queues(store: Store) -> set[str]:
    return set(strings(store.redis.smembers(store.keys.paused_queues)))


def is_paused_in(name: str, paused: set[str]) -> bool:
    """A queue is paused when its own name, or its root (the part before the first '/'), is."""
    return name in paused or name.split("/", 1)[0] in paused
