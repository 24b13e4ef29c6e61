"""What the dashboard and the CLI show about queues: every known queue with its kind, size,
paused flag and oldest job age (from Redis), and job counts per status (from MongoDB)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from ..store import strings
from .base import is_paused_in, paused_queues, queue_kind
from .registry import MIN_FORGET_AFTER, SWEEP_BATCH, SWEEP_MAX, known_queue_names

if TYPE_CHECKING:
    from ..store import Store


@dataclass(frozen=True)
class QueueInfo:
    name: str
    kind: str
    size: int  # jobs waiting in Redis (ids of a regular queue, params of a raw queue)
    delayed: int  # delayed retries (regular queues)
    paused: bool
    oldest_age: float | None  # seconds the oldest waiting job has waited (regular queues)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "size": self.size, "delayed": self.delayed,
                "paused": self.paused, "oldest_age": self.oldest_age}


_SIZE_COMMAND = {"raw": "llen", "set": "scard", "sorted_set": "zcard", "timed_set": "zcard"}


def queue_infos(store: Store, names: list[str] | None = None) -> list[QueueInfo]:
    """Size, delayed count, paused flag and oldest job age of queues (all known ones by default),
    from Redis only: three round trips, and at most four commands per queue (the dashboard passes
    a page of names: `registry.queue_names_page`)."""
    names = known_queue_names(store) if names is None else names
    paused = paused_queues(store)
    keys = store.keys
    pipe = store.redis.pipeline(transaction=False)
    for name in names:
        kind = queue_kind(name)
        if kind == "regular":
            pipe.llen(keys.queue_ids(name))
            pipe.zcard(keys.queue_cancelled(name))
            pipe.zcard(keys.queue_delayed(name))
            pipe.lindex(keys.queue_ids(name), 0)
        else:
            getattr(pipe, _SIZE_COMMAND[kind])(keys.raw_queue(name))
    replies = iter(pipe.execute() if names else [])
    now = time.time()
    infos = []
    for name in names:
        if queue_kind(name) == "regular":
            length, cancelled, delayed, oldest = next(replies), next(replies), next(replies), next(replies)
            size = max(0, int(length) - int(cancelled))  # cancelled ids wait to be dropped by a dequeue
        else:
            size, delayed, oldest = next(replies), 0, None
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


def forget_empty_subqueues(store: Store, older_than: float, now: float | None = None) -> list[str]:
    """Drop from the registry the subqueues no producer noted for `older_than` seconds (at least
    MIN_FORGET_AFTER) that hold nothing. Bounded work: at most SWEEP_MAX subqueues looked at, in
    pipelines of SWEEP_BATCH. Safe to run from any number of workers at once."""
    keys, client = store.keys, store.redis
    cutoff = (time.time() if now is None else now) - max(older_than, MIN_FORGET_AFTER)
    paused = paused_queues(store)
    forgotten: list[str] = []
    offset = 0
    while offset < SWEEP_MAX:
        candidates = strings(client.zrangebyscore(keys.queues_seen, "-inf", cutoff, start=offset, num=SWEEP_BATCH))
        names = [name for name in candidates if "/" in name and not is_paused_in(name, paused)]
        pipe = client.pipeline(transaction=False)
        for name in names:
            if queue_kind(name) == "regular":
                pipe.exists(keys.queue_ids(name), keys.queue_delayed(name))
            else:
                pipe.exists(keys.raw_queue(name))
        empty = [name for name, found in zip(names, pipe.execute() if names else [], strict=True) if not found]
        if empty:
            removed = strings(store.scripts.forget_queues(
                keys=[keys.known_queues, keys.queues_seen, *[keys.subqueues(name.split("/", 1)[0]) for name in empty]],
                args=[cutoff, *empty]))
            forgotten += removed
        else:
            removed = []
        if len(candidates) < SWEEP_BATCH:
            break
        offset += len(candidates) - len(removed)
    return forgotten
