"""Taking back the jobs of dead workers.

Every live worker looks every few seconds for workers whose lease has expired. For each, it
reads the ids in that worker's running sets, decides from their MongoDB documents what each
needs, writes MongoDB first (guarded updates), then moves the ids in Redis (one Lua call per
queue that moves only ids still in the dead worker's set). Running it twice, or in two workers
at once, neither duplicates nor loses an id.

- `started` by the dead worker: queued again with `recoveries` + 1 (it may have run partly:
  at-least-once), or, past `max_recoveries`, `failed` as a poison job (`PoisonJob`): a job that
  keeps killing its workers stops doing so.
- `queued` / `interrupt`: back on the queue. `retry` / `delayed`: back in the delayed set.
- final statuses, jobs started by someone else, missing documents: dropped from the set.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from bson import ObjectId

from .. import job as jobs
from ..clock import unix_time_of, utcnow
from ..store import Store, strings

log = logging.getLogger("mrq.worker")

BATCH = 300


def expired_workers(store: Store, limit: int = 20) -> list[str]:
    ids, _now = store.scripts.expired_workers(keys=[store.keys.workers], args=[0, limit])
    return [i.decode() for i in ids]


def recover_worker(store: Store, dead_id: str, max_recoveries: int) -> dict[str, int]:
    """Give back every job a dead worker held. Returns counts by action."""
    keys = store.keys
    counts = {"requeued": 0, "poisoned": 0, "restored": 0, "dropped": 0}
    dead_oid = ObjectId(dead_id) if ObjectId.is_valid(dead_id) else None
    queues = sorted(strings(store.redis.smembers(keys.worker_queues(dead_id))))
    leftover = False
    for queue in queues:
        running_key = keys.queue_running(queue, dead_id)
        ids = sorted(strings(store.redis.smembers(running_key)))
        for start in range(0, len(ids), BATCH):
            chunk = ids[start:start + BATCH]
            triples = _recover_chunk(store, queue, dead_id, dead_oid, chunk, max_recoveries, counts)
            store.scripts.requeue_running(
                keys=[keys.queue_ids(queue), running_key, keys.queue_delayed(queue)], args=triples
            )
        if ids:
            store.redis.publish(keys.notify_channel(queue), str(len(ids)))
        leftover = leftover or bool(store.redis.scard(running_key))
    if not leftover:
        pipe = store.redis.pipeline(transaction=False)
        pipe.zrem(keys.workers, dead_id)
        pipe.delete(keys.worker_queues(dead_id))
        pipe.execute()
    if any(counts.values()):
        log.warning("recovered the jobs of dead worker %s: %s", dead_id,
                    ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    return counts


def _recover_chunk(store: Store, queue: str, dead_id: str, dead_oid: ObjectId | None, ids: list[str],
                   max_recoveries: int, counts: dict[str, int]) -> list[Any]:
    now = utcnow()
    docs = {
        str(doc["_id"]): doc
        for doc in store.jobs.find({"_id": {"$in": [ObjectId(i) for i in ids if ObjectId.is_valid(i)]}},
                                   {"status": 1, "worker": 1, "dateretry": 1, "recoveries": 1, "path": 1})
    }
    requeue: list[ObjectId] = []
    poison: list[ObjectId] = []
    interrupted: list[ObjectId] = []
    triples: list[Any] = []
    for job_id in ids:
        doc = docs.get(job_id)
        status = doc.get("status") if doc else None
        if doc is None:
            action, score = "x", 0.0
        elif status == jobs.STARTED and doc.get("worker") == dead_oid:
            if int(doc.get("recoveries") or 0) >= max_recoveries:
                poison.append(doc["_id"])
                action, score = "x", 0.0
            else:
                requeue.append(doc["_id"])
                action, score = "q", 0.0
        elif status in (jobs.QUEUED, jobs.INTERRUPT):
            if status == jobs.INTERRUPT:
                interrupted.append(doc["_id"])
            action, score = "q", 0.0
        elif status in (jobs.RETRY, jobs.DELAYED):
            action, score = "d", unix_time_of(doc.get("dateretry") or now)
        else:
            action, score = "x", 0.0
        triples.extend([job_id, action, repr(score)])
        counts["dropped" if action == "x" and job_id not in {str(p) for p in poison} else
               ("restored" if action in ("d",) or status in (jobs.QUEUED, jobs.INTERRUPT) else
                "poisoned" if action == "x" else "requeued")] += 1

    entry = {"date": now, "status": "recovered", "exceptiontype": "WorkerLost", "worker": dead_oid,
             "traceback": f"worker {dead_id} stopped renewing its lease while running this job (crash, kill, "
                          "or lost connection): the job was queued again and may have run partly"}
    if requeue:
        store.jobs.update_many(
            {"_id": {"$in": requeue}, "status": jobs.STARTED, "worker": dead_oid},
            {"$set": {"status": jobs.QUEUED, "datequeued": now, "dateupdated": now, "queue": queue},
             "$inc": {"recoveries": 1},
             "$push": {"traceback_history": {"$each": [entry], "$slice": -50}}},
        )
    if poison:
        message = (f"PoisonJob: the worker running this job died {max_recoveries + 1} times in a row (last: worker "
                   f"{dead_id}); it is not run again. Requeue it once the cause (a crash, os._exit, the memory "
                   "limit...) is fixed.")
        store.jobs.update_many(
            {"_id": {"$in": poison}, "status": jobs.STARTED, "worker": dead_oid},
            {"$set": {"status": jobs.FAILED, "exceptiontype": "PoisonJob", "traceback": message,
                      "dateupdated": now, "datefinished": now,
                      "dateexpires": now + timedelta(seconds=store.settings.default_job_ttl)},
             "$inc": {"recoveries": 1},
             "$push": {"traceback_history": {"$each": [{**entry, "status": jobs.FAILED,
                                                         "exceptiontype": "PoisonJob", "traceback": message}],
                                             "$slice": -50}}},
        )
    if interrupted:
        store.jobs.update_many({"_id": {"$in": interrupted}, "status": jobs.INTERRUPT},
                               {"$set": {"status": jobs.QUEUED, "datequeued": now, "dateupdated": now}})
    return triples


def recover_expired(store: Store, my_id: str, max_recoveries: int) -> int:
    """Recover every expired worker (never this one). Returns the number of jobs given back."""
    total = 0
    for dead_id in expired_workers(store):
        if dead_id == my_id:
            continue
        counts = recover_worker(store, dead_id, max_recoveries)
        total += counts["requeued"] + counts["restored"]
    return total
