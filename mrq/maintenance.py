"""Maintenance: safety nets that put jobs back where they belong.

The worker already recovers dead workers' jobs and requeues due retries by itself; these
functions repair what only a sweep can see (Redis that lost its data, a worker registry that
vanished, jobs left `interrupt` by an old version...). They are idempotent and safe to run while
workers run. `mrq.basetasks.cleaning` exposes them as tasks under MRQ's names, to run from
`SCHEDULER_TASKS` or `mrq-run`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import timedelta
from typing import Any

from bson import ObjectId

from . import job as jobs
from .clock import unix_time_of, utcnow
from .queue import RegularQueue
from .storage.mongo import ensure_indexes
from .store import Store, strings

log = logging.getLogger("mrq.maintenance")

BATCH = 1000


def _ids_in_redis(store: Store, queue: str) -> set[str]:
    """Every id Redis holds for a queue: queued, delayed, and in any worker's running set."""
    keys = store.keys
    present = set(strings(store.redis.lrange(keys.queue_ids(queue), 0, -1)))
    present.update(strings(store.redis.zrange(keys.queue_delayed(queue), 0, -1)))
    workers = strings(store.redis.zrange(keys.workers, 0, -1))
    for worker_id in workers:
        present.update(strings(store.redis.smembers(keys.queue_running(queue, worker_id))))
    return present


def requeue_lost_jobs(store: Store, min_age: float = 60.0) -> dict[str, int]:
    """Jobs that MongoDB says are waiting (queued, retry, delayed) but that no Redis structure
    holds (e.g. Redis restarted without its data) are put back: queued ids on their queue, retries
    in their delayed set. Jobs queued less than `min_age` seconds ago are left alone (their
    producer may be about to push them)."""
    cutoff = utcnow() - timedelta(seconds=min_age)
    waiting = [jobs.QUEUED, jobs.RETRY, jobs.DELAYED]
    by_queue: dict[str, list[dict[str, Any]]] = defaultdict(list)
    cursor = store.jobs.find(
        {"status": {"$in": waiting}, "datequeued": {"$lte": cutoff}},
        {"queue": 1, "status": 1, "dateretry": 1},
    ).sort("_id", 1)
    for doc in cursor:
        by_queue[doc.get("queue") or jobs.DEFAULT_QUEUE].append(doc)
    counts = {"queued": 0, "delayed": 0}
    for queue_name, docs in by_queue.items():
        present = _ids_in_redis(store, queue_name)
        queue = RegularQueue(queue_name, store)
        lost_queued = [str(d["_id"]) for d in docs if d["status"] == jobs.QUEUED and str(d["_id"]) not in present]
        lost_delayed = {str(d["_id"]): unix_time_of(d.get("dateretry") or utcnow())
                        for d in docs if d["status"] != jobs.QUEUED and str(d["_id"]) not in present}
        for start in range(0, len(lost_queued), BATCH):
            queue.push(lost_queued[start:start + BATCH])
        if lost_delayed:
            queue.push_delayed(lost_delayed)
        counts["queued"] += len(lost_queued)
        counts["delayed"] += len(lost_delayed)
    if any(counts.values()):
        log.warning("requeued lost jobs: %d queued, %d delayed retries", counts["queued"], counts["delayed"])
    return counts


def requeue_interrupted_jobs(store: Store) -> int:
    """Queue again the jobs left in `interrupt` (a worker normally does it at once)."""
    return _requeue(store, {"status": jobs.INTERRUPT}, keep_retry_count=True)


def requeue_retry_jobs(store: Store) -> int:
    """Queue the `retry` jobs whose retry time has passed (workers normally move them from the
    delayed set themselves)."""
    return _requeue(store, {"status": jobs.RETRY, "dateretry": {"$lte": utcnow()}}, keep_retry_count=True)


def requeue_started_jobs(store: Store, timeout: float = 300.0) -> int:
    """Queue again the `started` jobs whose worker is not alive (no lease) and that have been
    running longer than their task's timeout plus `timeout` seconds."""
    now = utcnow()
    alive = set(strings(store.redis.zrangebyscore(store.keys.workers, unix_time_of(now), "+inf")))
    stale: list[ObjectId] = []
    for doc in store.jobs.find({"status": jobs.STARTED}, {"worker": 1, "datestarted": 1, "path": 1}):
        if str(doc.get("worker")) in alive:
            continue
        limit = store.task_settings(doc.get("path") or "").timeout + timeout
        started = doc.get("datestarted") or now
        if (now - started).total_seconds() > limit:
            stale.append(doc["_id"])
    if not stale:
        return 0
    return _requeue(store, {"_id": {"$in": stale}, "status": jobs.STARTED}, keep_retry_count=True,
                    count_recovery=True)


def _requeue(store: Store, query: dict[str, Any], keep_retry_count: bool, count_recovery: bool = False) -> int:
    total = 0
    now = utcnow()
    while True:
        docs = list(store.jobs.find(query, {"queue": 1, "worker": 1}).limit(BATCH))
        if not docs:
            return total
        ids = [d["_id"] for d in docs]
        update: dict[str, Any] = {"$set": {"status": jobs.QUEUED, "datequeued": now, "dateupdated": now},
                                  "$unset": {"dateexpires": "", "dateretry": ""}}
        if not keep_retry_count:
            update["$set"]["retry_count"] = 0
        if count_recovery:
            update["$inc"] = {"recoveries": 1}
        store.jobs.update_many({**query, "_id": {"$in": ids}}, update)
        by_queue: dict[str, list[str]] = defaultdict(list)
        for doc in docs:
            by_queue[doc.get("queue") or jobs.DEFAULT_QUEUE].append(str(doc["_id"]))
        for queue_name, queue_ids in by_queue.items():
            queue = RegularQueue(queue_name, store)
            pipe = store.redis.pipeline(transaction=False)
            for worker_id in {str(d.get("worker")) for d in docs if d.get("worker")}:
                pipe.srem(store.keys.queue_running(queue_name, worker_id), *queue_ids)
            pipe.zrem(store.keys.queue_delayed(queue_name), *queue_ids)
            pipe.execute()
            queue.push(queue_ids)
        total += len(ids)


def ensure_all_indexes(store: Store) -> list[str]:
    return ensure_indexes(store.connections.mongodb_jobs, store.connections.mongodb_logs)

