"""Regular queues: job documents in MongoDB, their ids in Redis."""

from __future__ import annotations

import time

from ..connections import execute_and_publish
from ..store import strings
from .base import Queue

MAX_DEQUEUE = 500  # ids taken per Lua call at most


class RegularQueue(Queue):
    """Job ids in a Redis LIST `{p:q:<name>}:ids`; due retries in the ZSET `{p:q:<name>}:delayed`.
    Names ending in `_reverse` are taken newest first (LIFO)."""

    kind = "regular"

    @property
    def is_reverse(self) -> bool:
        return self.root.endswith("_reverse")

    def push(self, ids: list[str], *, front: bool = False) -> None:
        """Put job ids on the queue (their documents must already say `queued`) and wake workers."""
        if not ids:
            return
        keys = self.store.keys
        pipe = self.store.redis.pipeline(transaction=False)
        if front:
            pipe.lpush(keys.queue_ids(self.name), *ids)
        else:
            pipe.rpush(keys.queue_ids(self.name), *ids)
        self._execute_push(pipe, len(ids))

    def push_delayed(self, ids_and_times: dict[str, float]) -> None:
        """Schedule job ids to go back on the queue at the given unix times."""
        if not ids_and_times:
            return
        store = self.store
        pipe = store.redis.pipeline(transaction=False)
        pipe.zadd(store.keys.queue_delayed(self.name), ids_and_times)
        self._note_known(pipe)
        execute_and_publish(pipe, store.redis,
                            [(store.keys.notify_channel(self.name), f"at:{min(ids_and_times.values()):f}")])

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
        return strings(ids), (float(next_due) if next_due else None)

    def size(self) -> int:
        """Ids waiting in the queue (not counting delayed retries)."""
        return int(self.store.redis.llen(self.store.keys.queue_ids(self.name)))

    def delayed_size(self) -> int:
        return int(self.store.redis.zcard(self.store.keys.queue_delayed(self.name)))

    def list_job_ids(self, skip: int = 0, limit: int = 20) -> list[str]:
        """Queued ids in the order workers will take them."""
        key = self.store.keys.queue_ids(self.name)
        if self.is_reverse:
            return list(reversed(strings(self.store.redis.lrange(key, -(skip + limit), -(skip + 1)))))
        return strings(self.store.redis.lrange(key, skip, skip + limit - 1))
