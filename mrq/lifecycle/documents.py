"""The fields each transition writes, built here and nowhere else: the new job document, the
final-status fields, the `traceback_history` entry, the fields of a job put back in its queue,
and the minimal failure stored when MongoDB refuses a transition's write."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId

from .statuses import ABORT, CANCEL, FAILED, QUEUED, STARTED, SUCCESS, WAITING

#: `traceback_history` keeps the newest entries only.
HISTORY_LIMIT = 50
#: A traceback stored with a refused write is cut to this many characters.
MINIMAL_TRACEBACK_CHARS = 4096


def ttl_for(status: str, task_settings: Any) -> float:
    """Seconds a job in a final status is kept (its `dateexpires`)."""
    if status == SUCCESS:
        return float(task_settings.result_ttl)
    if status == ABORT:
        return float(task_settings.abort_ttl)
    if status == CANCEL:
        return float(task_settings.cancel_ttl)
    return float(task_settings.default_ttl)


def new_job(job_id: ObjectId, path: str, params: dict[str, Any], queue: str, now: datetime) -> dict[str, Any]:
    """The document `queue_jobs` inserts."""
    return {"_id": job_id, "path": path, "params": params, "queue": queue, "status": QUEUED,
            "datequeued": now, "dateupdated": now, "retry_count": 0}


def waiting_fields(depends_on: list[ObjectId], on_failure: str) -> dict[str, Any]:
    """What a job queued with `depends_on` stores instead of `queued` (lifecycle/dependencies.py)."""
    fields: dict[str, Any] = {"status": WAITING, "depends_on": depends_on, "dependencies_ended": []}
    if on_failure != "cancel":
        fields["on_dependency_failure"] = on_failure
    return fields


def raw_started(job_id: ObjectId, path: str, params: dict[str, Any], queue: str, raw_queue: str, worker: Any,
                now: datetime) -> dict[str, Any]:
    """The document of a job a worker made from a raw queue's param and starts at once; `queue` is
    the raw queue's retry queue."""
    return {"_id": job_id, "path": path, "params": params, "queue": queue, "raw_queue": raw_queue,
            "status": STARTED, "datequeued": now, "datestarted": now, "dateupdated": now, "worker": worker,
            "retry_count": 0}


def factory_failure(job_id: ObjectId, queue: str, raw_queue: Any, param: str, exc: BaseException, text: str,
                    worker: Any, now: datetime, ttl: float) -> dict[str, Any]:
    """A raw param whose `job_factory` raised: a `failed` job that says so."""
    return {"_id": job_id, "path": f"{raw_queue.root}.job_factory", "params": {"raw": param[:100_000]},
            "queue": queue, "raw_queue": raw_queue.name, "status": FAILED, "exceptiontype": type(exc).__name__,
            "traceback": text, "datequeued": now, "datestarted": now, "dateupdated": now, "datefinished": now,
            "dateexpires": now + timedelta(seconds=ttl), "worker": worker, "retry_count": 0,
            "traceback_history": [history_entry(FAILED, type(exc).__name__, text, worker, now)]}


def final_fields(status: str, ttl: float, now: datetime, started: datetime | None) -> dict[str, Any]:
    """The fields every final status write sets; the job is kept `ttl` seconds (see ttl_for)."""
    fields: dict[str, Any] = {
        "status": status,
        "dateupdated": now,
        "datefinished": now,
        "dateexpires": now + timedelta(seconds=ttl),
    }
    if started is not None:
        fields["totaltime"] = (now - started).total_seconds()
    return fields


def retry_dates(now: datetime, delay: float, ttl: float) -> dict[str, Any]:
    """A job waiting for its retry: `dateretry`, and a `dateexpires` as MRQ gave every waiting
    status (`default_ttl`), counted from the retry date rather than MRQ's `datequeued`, so that
    a job never expires before its retry is due; starting it removes the expiry again."""
    dateretry = now + timedelta(seconds=delay)
    return {"dateretry": dateretry, "dateexpires": dateretry + timedelta(seconds=ttl)}


def history_entry(status: str, exceptiontype: str, traceback: str, worker: Any, now: datetime,
                  **extra: Any) -> dict[str, Any]:
    return {"date": now, "status": status, "exceptiontype": exceptiontype, "traceback": traceback,
            "worker": worker, **extra}


def push_history(update: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """Add `entry` to an update's `traceback_history` (bounded)."""
    update["$push"] = {"traceback_history": {"$each": [entry], "$slice": -HISTORY_LIMIT}}
    return update


def requeued_fields(now: datetime, queue: str | None = None) -> dict[str, Any]:
    """A job put back in a queue (`$set`); pair with REQUEUED_UNSET."""
    fields: dict[str, Any] = {"status": QUEUED, "datequeued": now, "dateupdated": now}
    if queue is not None:
        fields["queue"] = queue
    return fields


#: What a job put back in its queue forgets (`$unset`).
REQUEUED_UNSET = {"dateexpires": "", "dateretry": "", "datefinished": ""}


def cut(text: str, limit: int = MINIMAL_TRACEBACK_CHARS) -> str:
    if len(text) <= limit:
        return text
    keep = limit // 2
    return text[:keep] + f"\n... [{len(text) - 2 * keep} characters cut] ...\n" + text[-keep:]


def minimal_failure(reason: str, ttl: float, now: datetime, *, shrink: bool = False) -> dict[str, Any]:
    """The update stored when MongoDB refuses a transition's write (a document grown past 16 MiB,
    a validator): `failed`, with why, and an expiry. With `shrink`, the fields that can make a
    document too large (the result, the history) are removed too."""
    update: dict[str, Any] = {"$set": {
        "status": FAILED, "exceptiontype": "StatusWriteError", "traceback": cut(reason),
        "dateupdated": now, "datefinished": now, "dateexpires": now + timedelta(seconds=ttl),
    }}
    if shrink:
        update["$unset"] = {"result": "", "traceback_history": ""}
    return update
