"""Maintenance: safety nets that put jobs back where they belong.

The worker already recovers dead workers' jobs, requeues due retries and reconciles Redis with
MongoDB after Redis lost data (reconcile.py); these functions repair what only a sweep can see
(a worker registry that vanished, jobs left `interrupt` by an old version...). They are
idempotent, safe to run while workers run, and do bounded work per step: MongoDB is read a batch
at a time (at most BATCH ids per `$in`), Redis a window at a time. `mrq.basetasks.cleaning`
exposes them as tasks under MRQ's names, to run from `SCHEDULER_TASKS` or `mrq-run`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import timedelta
from typing import Any

from bson import ObjectId

from .clock import unix_time_of, utcnow
from .lifecycle import dependencies, operations, statuses
from .lifecycle.statuses import DEFAULT_QUEUE, INTERRUPT, QUEUED, RETRY, STARTED, WAITING_STATUSES
from .queue import RegularQueue
from .storage.leases import Leases
from .storage.mongo import ensure_indexes
from .store import Store

log = logging.getLogger("mrq.maintenance")

BATCH = operations.BATCH


class _Presence:
    """Which ids Redis holds, per queue, read once per pass (a window at a time) and kept as raw
    bytes (about 80 bytes per id: a million waiting ids cost ~80 MB for the pass)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.workers = list(Leases(store.redis, store.keys).deadlines())
        self._held: dict[str, set[bytes | str]] = {}

    def has(self, queue: str, job_id: str) -> bool:
        held = self._held.get(queue)
        if held is None:
            held = self._held[queue] = set(RegularQueue(queue, self.store).held_ids(self.workers))
        return job_id.encode() in held or job_id in held


def requeue_lost_jobs(store: Store, min_age: float = 60.0, *, extend: Any = None,
                      op_timeout: float | None = None) -> dict[str, int]:
    """Jobs that MongoDB says are waiting (queued, retry, delayed) but that no Redis structure
    holds (e.g. Redis restarted without its data) are put back: queued ids on their queue, retries
    in their delayed set. Jobs queued less than `min_age` seconds ago are left alone (their
    producer may be about to push them). `extend()` is called between batches (a lock to keep);
    `op_timeout` bounds each MongoDB query (the pass raises rather than hang through an outage).

    An id that moves in Redis while the pass reads it may be pushed although present: a
    duplicate, which workers drop (its job has started or ended), never a loss."""
    cutoff = utcnow() - timedelta(seconds=min_age)
    presence = _Presence(store)
    counts = {"queued": 0, "delayed": 0}
    query = {"status": {"$in": sorted(WAITING_STATUSES)}, "datequeued": {"$lte": cutoff}}
    for found in operations.pages(store, query, {"queue": 1, "status": 1, "dateretry": 1}, op_timeout=op_timeout):
        lost_queued: dict[str, list[str]] = defaultdict(list)
        lost_delayed: dict[str, dict[str, float]] = defaultdict(dict)
        for doc in found:
            queue, job_id = doc.get("queue") or DEFAULT_QUEUE, str(doc["_id"])
            if presence.has(queue, job_id):
                continue
            if doc["status"] == QUEUED or doc.get("dateretry") is None:
                lost_queued[queue].append(job_id)
            else:
                lost_delayed[queue][job_id] = unix_time_of(doc["dateretry"])
        for queue, ids in lost_queued.items():
            RegularQueue(queue, store).push(ids)
            counts["queued"] += len(ids)
        for queue, times in lost_delayed.items():
            RegularQueue(queue, store).push_delayed(times)
            counts["delayed"] += len(times)
        if extend is not None:
            extend()
    if any(counts.values()):
        log.warning("requeued lost jobs: %d queued, %d delayed retries", counts["queued"], counts["delayed"])
    return counts


def requeue_interrupted_jobs(store: Store) -> int:
    """Queue again the jobs left in `interrupt` (a worker normally does it at once)."""
    return operations.requeue_matching(store, {"status": INTERRUPT}, reset_retry_count=False)


def requeue_retry_jobs(store: Store) -> int:
    """Queue the `retry` jobs whose retry time has passed (workers normally move them from the
    delayed set themselves)."""
    return operations.requeue_matching(store, {"status": RETRY, "dateretry": {"$lte": utcnow()}},
                                       reset_retry_count=False)


def requeue_started_jobs(store: Store, timeout: float | None = 300.0, *, op_timeout: float | None = None) -> int:
    """Queue again the `started` jobs whose worker is not alive (no lease) and that have been
    running longer than their task's timeout plus `timeout` seconds (None: however long). A job
    that keeps killing its workers ends as a poison job, as with recovery."""
    now = utcnow()
    alive = Leases(store.redis, store.keys).alive()
    total = 0
    projection = {"worker": 1, "datestarted": 1, "path": 1, "queue": 1, "status": 1, "recoveries": 1}
    for found in operations.pages(store, {"status": STARTED}, projection, op_timeout=op_timeout):
        stale = []
        for doc in found:
            if str(doc.get("worker")) in alive:
                continue
            if timeout is not None:
                limit = store.task_settings(doc.get("path") or "").timeout + timeout
                if (now - (doc.get("datestarted") or now)).total_seconds() <= limit:
                    continue
            stale.append(doc)
        total += operations.recover_stale(store, stale, store.settings.max_recoveries)
    return total


def resettle_waiting(store: Store, min_age: float = 60.0, *, op_timeout: float | None = None) -> dict[str, int]:
    """Jobs waiting for more than `min_age` seconds whose dependencies have ended are settled (a
    producer that died between registering a job and reading its dependencies' statuses, or a
    dependency whose settling was lost with a worker whose running set Redis lost). Idempotent,
    and safe at any age: every step is a set addition or a guarded transition."""
    cutoff = utcnow() - timedelta(seconds=min_age)
    totals = {"queued": 0, "cancelled": 0}
    query = {"status": statuses.WAITING, "datequeued": {"$lte": cutoff}}
    for found in operations.pages(store, query, {"depends_on": 1, "dependencies_ended": 1}, op_timeout=op_timeout):
        missing: dict[ObjectId, list[ObjectId]] = defaultdict(list)
        for doc in found:
            done = set(doc.get("dependencies_ended") or ())
            for parent in doc.get("depends_on") or ():
                if parent not in done:
                    missing[parent].append(doc["_id"])
        parents = list(missing)
        for start in range(0, len(parents), 1000):
            chunk = parents[start:start + 1000]
            ended = store.jobs.find({"_id": {"$in": chunk},
                                     "status": {"$in": sorted(dependencies.DEPENDENCY_ENDS)}}, {"status": 1})
            counts = dependencies.settle(
                store, [dependencies.Ended(doc["_id"], doc["status"], missing[doc["_id"]]) for doc in ended],
                recovering=True)
            for key, value in counts.items():
                totals[key] += value
    if any(totals.values()):
        log.warning("settled jobs left waiting for ended dependencies: %d queued, %d cancelled", totals["queued"],
                    totals["cancelled"])
    return totals


def ensure_all_indexes(store: Store) -> list[str]:
    return ensure_indexes(store.connections.mongodb_jobs, store.connections.mongodb_logs)
