"""Transitions made from outside a worker: requeue, cancel, and taking back a dead worker's jobs.
`Job`, the dashboard's actions, the maintenance sweeps and worker recovery all call these.

Each is one guarded MongoDB update (its filter names the statuses the job may leave that way)
followed by its Redis move, MongoDB first: a crash in between leaves a job whose document says
where it should be and whose id is not there yet, which reconciliation puts back (a duplicate id
at worst, which workers skip), never a job whose id is queued with a document that says
otherwise. Work is done in batches of at most BATCH jobs: one update and one Redis pipeline per
batch, whatever the number of jobs.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import pymongo
from bson import ObjectId
from pymongo import ReturnDocument

from ..clock import unix_time_of, utcnow
from ..exceptions import InvalidStatusTransition, JobNotFound
from ..queue import RegularQueue
from ..storage.keys import validate_job_queue
from . import documents as docs
from .dependencies import DEPENDENCY_ENDS, Ended, settle
from .policy import write
from .statuses import (
    CANCEL,
    CANCELLABLE_STATUSES,
    DEFAULT_QUEUE,
    DELAYED,
    FAILED,
    INTERRUPT,
    NOT_REQUEUABLE,
    QUEUED,
    RETRY,
    STARTED,
    WAITING,
)

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("mrq.lifecycle")

BATCH = 1000


def pages(store: Store, query: dict[str, Any], projection: dict[str, Any], batch: int = BATCH,
          op_timeout: float | None = None) -> Iterator[list[dict[str, Any]]]:
    """The jobs matching `query`, a batch at a time in `_id` order (keyset pagination: each batch
    is one indexed query, whatever changes the previous batches made). `op_timeout`: seconds each
    batch's query may take (server selection included) before it raises."""
    last: ObjectId | None = None
    while True:
        page_query = query if last is None else {"$and": [query, {"_id": {"$gt": last}}]}
        with pymongo.timeout(op_timeout):
            found = list(store.jobs.find(page_query, projection).sort("_id", 1).limit(batch))
        if not found:
            return
        yield found
        if len(found) < batch:
            return
        last = found[-1]["_id"]


# --- requeue ----------------------------------------------------------------------------------------


def requeue_one(store: Store, job_id: ObjectId, queue: str | None = None, retry_count: int = 0) -> None:
    """Queue a job again (after it failed, was cancelled, interrupted...). A queued job goes to the
    back of its queue (or of `queue`), as in MRQ: its id leaves its place in the list, so that it
    is queued once. A running job is left alone (InvalidStatusTransition)."""
    now = utcnow()
    fields = {**docs.requeued_fields(now, validate_job_queue(queue) if queue else None), "retry_count": retry_count}
    before = store.jobs.find_one_and_update(
        {"_id": job_id, "status": {"$nin": [STARTED, WAITING]}},
        {"$set": fields, "$unset": docs.REQUEUED_UNSET},
        projection={"queue": 1, "status": 1},
        return_document=ReturnDocument.BEFORE,
    )
    if before is None:
        found = store.jobs.find_one({"_id": job_id}, {"status": 1})
        if found is None:
            raise JobNotFound(job_id)
        if found["status"] == WAITING:
            raise InvalidStatusTransition(f"job {job_id} is waiting for its dependencies: it is queued when they end "
                                          "(cancel it to drop it)")
        raise InvalidStatusTransition(f"job {job_id} is {found['status']}: nothing to requeue")
    was = before.get("queue") or DEFAULT_QUEUE
    target = RegularQueue(queue or was, store)
    if before.get("status") != QUEUED:
        target.push([str(job_id)], requeued=True)
    elif target.name == was:
        write(lambda: target.move_to_back(str(job_id)), "Redis requeue")
    else:
        # Pushed on the new queue first, then out of the old list: a crash in between leaves two
        # copies, and a worker starts a job only once (from a waiting status), never twice.
        target.push([str(job_id)], requeued=True)
        write(lambda: RegularQueue(was, store).move_to_back(str(job_id), stays=False), "Redis requeue")


def requeue_batch(store: Store, ids: list[ObjectId], allowed: dict[str, Any], *, reset_retry_count: bool = True,
                  queue: str | None = None) -> int:
    """Queue again the jobs of `ids` whose status matches `allowed` (a MongoDB condition on
    `status`). Returns how many were requeued."""
    if not ids:
        return 0
    now = utcnow()
    fields: dict[str, Any] = docs.requeued_fields(now, validate_job_queue(queue) if queue else None)
    if reset_retry_count:
        fields["retry_count"] = 0
    write(lambda: store.jobs.update_many({"_id": {"$in": ids}, "status": allowed},
                                         {"$set": fields, "$unset": docs.REQUEUED_UNSET}), "MongoDB requeue")
    # Which ones this call requeued: they carry its date (MongoDB keeps milliseconds, as utcnow()).
    requeued = store.jobs.find({"_id": {"$in": ids}, "status": QUEUED, "datequeued": now}, {"queue": 1})
    return _push_by_queue(store, requeued)


def requeue_matching(store: Store, query: dict[str, Any], *, reset_retry_count: bool = True) -> int:
    """Queue again every job matching `query` that is neither queued nor running, in batches."""
    total = 0
    allowed = {"$nin": list(NOT_REQUEUABLE)}
    for found in pages(store, {**query}, {"_id": 1}):
        total += requeue_batch(store, [doc["_id"] for doc in found], _narrow(query.get("status"), allowed),
                               reset_retry_count=reset_retry_count)
    return total


def _narrow(asked: Any, allowed: dict[str, Any]) -> Any:
    """The status condition of a requeue: what the caller asked for, within what is allowed."""
    if asked is None:
        return allowed
    return {"$in": [s for s in ([asked] if isinstance(asked, str) else asked.get("$in", []))
                    if s not in NOT_REQUEUABLE]}


def _push_by_queue(store: Store, found: Any) -> int:
    by_queue: dict[str, list[str]] = defaultdict(list)
    for doc in found:
        by_queue[doc.get("queue") or DEFAULT_QUEUE].append(str(doc["_id"]))
    for name, queue_ids in by_queue.items():
        write(partial(RegularQueue(name, store).push, queue_ids, requeued=True), "Redis requeue")
    return sum(len(v) for v in by_queue.values())


# --- cancel -----------------------------------------------------------------------------------------


def cancel_one(store: Store, job_id: ObjectId) -> bool:
    """Cancel a job that has not started: it will never run. False when it had already left the
    waiting statuses; a running job raises InvalidStatusTransition (abort it instead)."""
    found = store.jobs.find_one({"_id": job_id}, {"status": 1, "path": 1, "queue": 1})
    if found is None:
        raise JobNotFound(job_id)
    if found["status"] == STARTED:
        raise InvalidStatusTransition(f"job {job_id} is running: abort it instead of cancelling it")
    return cancel_batch(store, [found]) == 1


def cancel_batch(store: Store, found: list[dict[str, Any]]) -> int:
    """Cancel the jobs among `found` (documents with `_id`, `path`, `queue`) that have not
    started: one update per cancel TTL, then their ids are marked cancelled in their queues (the
    dequeue drops them without scanning the list), then the jobs waiting for them are cancelled
    too (lifecycle/dependencies.py). Returns how many were cancelled."""
    now = utcnow()
    by_ttl: dict[float, list[ObjectId]] = defaultdict(list)
    for doc in found:
        by_ttl[store.task_settings(str(doc.get("path") or "")).cancel_ttl].append(doc["_id"])
    changed = 0
    for ttl, ids in by_ttl.items():
        result = write(partial(
            store.jobs.update_many, {"_id": {"$in": ids}, "status": {"$in": sorted(CANCELLABLE_STATUSES)}},
            {"$set": {"status": CANCEL, "dateupdated": now, "dateexpires": now + timedelta(seconds=ttl)}}),
            "MongoDB cancel")
        changed += result.modified_count
    if changed:
        ids = [doc["_id"] for doc in found]
        waited_for = write(lambda: list(store.jobs.find(
            {"_id": {"$in": ids}, "status": CANCEL, "dependents": {"$exists": True}}, {"dependents": 1})),
            "MongoDB cancel")
        settle(store, [Ended(doc["_id"], CANCEL, doc["dependents"]) for doc in waited_for])
    by_queue: dict[str, list[str]] = defaultdict(list)
    for doc in found:
        if isinstance(doc.get("queue"), str):
            by_queue[doc["queue"]].append(str(doc["_id"]))
    for name, queue_ids in by_queue.items():
        write(partial(RegularQueue(name, store).cancel, queue_ids), "Redis cancel")
    return int(changed)


# --- bulk, by filter ----------------------------------------------------------------------------------


def act_on_matching(store: Store, action: str, query: dict[str, Any], *, queue: str | None = None) -> int:
    """MRQ's JobAction actions on every job matching `query`, in batches through cancel_batch and
    requeue_batch (what the dashboard's bulk actions use): `cancel` (waiting jobs only: a running
    job is aborted, not cancelled), `requeue` (retry_count back to 0) and `requeue_retry` (keeps
    it), both for jobs neither queued nor running, onto `queue` if given. Returns how many jobs
    changed."""
    asked = query.get("status")
    if action == "cancel":
        allowed: Any = {"$in": sorted(CANCELLABLE_STATUSES if asked is None else
                                      {s for s in ([asked] if isinstance(asked, str) else asked.get("$in", []))
                                       if s in CANCELLABLE_STATUSES})}
    elif action in ("requeue", "requeue_retry"):
        allowed = _narrow(asked, {"$nin": list(NOT_REQUEUABLE)})
    else:
        raise ValueError(f"unknown action {action!r} (cancel, requeue, requeue_retry)")
    if not allowed.get("$in", True):
        return 0
    changed = 0
    for found in pages(store, {**query, "status": allowed}, {"queue": 1, "path": 1}):
        if action == "cancel":
            changed += cancel_batch(store, found)
        else:
            changed += requeue_batch(store, [doc["_id"] for doc in found], allowed,
                                     reset_retry_count=action == "requeue", queue=queue)
    return changed


# --- a dead worker's jobs ---------------------------------------------------------------------------


def _lost_entry(dead_id: str, dead_oid: ObjectId | None, now: Any) -> dict[str, Any]:
    return docs.history_entry(
        "recovered", "WorkerLost",
        f"worker {dead_id} stopped renewing its lease while running this job (crash, kill, or lost connection): "
        "the job was queued again and may have run partly", dead_oid, now)


def take_back(store: Store, queue: str, dead_id: str, found: list[dict[str, Any]],
              max_recoveries: int) -> tuple[list[ObjectId], list[ObjectId]]:
    """Jobs `started` by a dead worker go back to `queued` with `recoveries` + 1 (they may have
    run partly: at-least-once), or, past `max_recoveries`, to `failed` as poison jobs. Guarded:
    only jobs still started by that worker change. Returns (requeued, poisoned) ids."""
    dead_oid = ObjectId(dead_id) if ObjectId.is_valid(dead_id) else None
    now = utcnow()
    mine = [doc for doc in found if doc.get("status") == STARTED and doc.get("worker") == dead_oid]
    poison = [doc["_id"] for doc in mine if int(doc.get("recoveries") or 0) >= max_recoveries]
    requeue = [doc["_id"] for doc in mine if int(doc.get("recoveries") or 0) < max_recoveries]
    entry = _lost_entry(dead_id, dead_oid, now)
    guard = {"status": STARTED, "worker": dead_oid}
    if requeue:
        update = {"$set": docs.requeued_fields(now, queue), "$inc": {"recoveries": 1}}
        write(lambda: store.jobs.update_many({"_id": {"$in": requeue}, **guard}, docs.push_history(update, entry)),
              "MongoDB recovery")
    if poison:
        message = (f"PoisonJob: the worker running this job died {max_recoveries + 1} times in a row (last: worker "
                   f"{dead_id}); it is not run again. Requeue it once the cause (a crash, os._exit, the memory "
                   "limit...) is fixed.")
        update = {"$set": {**docs.final_fields(FAILED, store.settings.default_job_ttl, now, None),
                           "exceptiontype": "PoisonJob", "traceback": message},
                  "$inc": {"recoveries": 1}}
        docs.push_history(update, {**entry, "status": FAILED, "exceptiontype": "PoisonJob", "traceback": message})
        write(lambda: store.jobs.update_many({"_id": {"$in": poison}, **guard}, update), "MongoDB recovery")
        waited_for = write(lambda: list(store.jobs.find(
            {"_id": {"$in": poison}, "status": FAILED, "dependents": {"$exists": True}}, {"dependents": 1})),
            "MongoDB recovery")
        settle(store, [Ended(doc["_id"], FAILED, doc["dependents"]) for doc in waited_for], recovering=True)
    return requeue, poison


def recover_running(store: Store, queue: str, dead_id: str, ids: list[str], max_recoveries: int,
                    counts: dict[str, int]) -> None:
    """Give back ids a dead worker holds in `queue`'s running set, from what their documents say:
    `started` by it -> take_back(); `queued`/`interrupt` -> the list; `retry`/`delayed` -> the
    delayed set; anything else (finished, missing, started by another worker) -> dropped."""
    valid = [ObjectId(i) for i in ids if ObjectId.is_valid(i)]
    found = write(lambda: list(store.jobs.find(
        {"_id": {"$in": valid}}, {"status": 1, "worker": 1, "dateretry": 1, "recoveries": 1, "dependents": 1})),
        "MongoDB recovery")
    requeued, poisoned = take_back(store, queue, dead_id, found, max_recoveries)
    # Jobs it had ended but not acknowledged: it may have died before settling their dependents.
    settle(store, [Ended(doc["_id"], doc["status"], doc["dependents"]) for doc in found
                   if doc.get("dependents") and doc.get("status") in DEPENDENCY_ENDS], recovering=True)
    interrupted = [doc["_id"] for doc in found if doc.get("status") == INTERRUPT]
    if interrupted:
        now = utcnow()
        write(lambda: store.jobs.update_many({"_id": {"$in": interrupted}, "status": INTERRUPT},
                                             {"$set": docs.requeued_fields(now), "$unset": docs.REQUEUED_UNSET}),
              "MongoDB recovery")
    by_id = {str(doc["_id"]): doc for doc in found}
    back = {str(i) for i in requeued}
    moves: list[tuple[str, str, float]] = []
    for job_id in ids:
        doc = by_id.get(job_id)
        status = doc.get("status") if doc else None
        if job_id in back:
            moves.append((job_id, "q", 0.0))
            counts["requeued"] += 1
        elif status in (QUEUED, INTERRUPT):
            moves.append((job_id, "q", 0.0))
            counts["restored"] += 1
        elif status in (RETRY, DELAYED) and doc is not None:
            moves.append((job_id, "d", unix_time_of(doc.get("dateretry") or utcnow())))
            counts["restored"] += 1
        else:
            moves.append((job_id, "x", 0.0))
            counts["poisoned" if doc is not None and doc["_id"] in poisoned else "dropped"] += 1
    write(lambda: RegularQueue(queue, store).give_back(dead_id, moves), "Redis recovery")


def recover_stale(store: Store, found: list[dict[str, Any]], max_recoveries: int) -> int:
    """Jobs `started` by workers that are gone, found by a sweep rather than in a running set
    (a worker registry lost with Redis): taken back, and their ids pushed again."""
    by_worker_queue: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for doc in found:
        by_worker_queue[(str(doc.get("worker")), doc.get("queue") or DEFAULT_QUEUE)].append(doc)
    total = 0
    for (worker_id, queue), group in by_worker_queue.items():
        requeued, _ = take_back(store, queue, worker_id, group, max_recoveries)
        if requeued:
            ids = [str(i) for i in requeued]
            regular = RegularQueue(queue, store)
            write(partial(regular.give_back, worker_id, [(i, "x", 0.0) for i in ids]), "Redis recovery")
            write(partial(regular.push, ids, requeued=True), "Redis recovery")
        total += len(requeued)
    return total
