"""Jobs that wait for other jobs: the `waiting` status and its transitions.

A job queued with `depends_on=[ids]` is stored `waiting` (its id is in no Redis structure) with
`depends_on` (its dependencies, in order) and `dependencies_ended` (those that ended, filled as
they end). Each dependency lists it in `dependents`. Nothing polls: the transition that ends a
dependency settles its dependents at once, by this module:

- a dependency ended `success` (or in any final status, for a job queued with
  `on_dependency_failure="run"`) is added to the dependent's `dependencies_ended`; the update that
  completes the list is followed by the guarded `waiting -> queued` transition, and only the
  caller whose transition applied pushes the id (so a dependent is queued once);
- a dependency ended otherwise (`failed`, `maxretries`, `timeout`, `abort`, `cancel`) cancels the
  dependent with the reason (`exceptiontype: DependencyFailed`), and so, in turn, its own
  dependents.

Who settles, and why nothing is missed (docs/guarantees.md, Dependencies):
- The worker ending a job writes its final status with a guard on the `dependents` it read at
  start (`$exists: false` when it had none): a dependent registered meanwhile makes the write miss,
  and the worker then ends the job with a write that returns the current `dependents`. It settles
  them before acknowledging the job's id in Redis: a crash in between leaves the id in its running
  set, and the worker that recovers it settles them again (idempotent: a set, and a guarded
  transition; a dependent found `queued` then is pushed again, a duplicate id at worst).
- A producer registers a new job on its dependencies after inserting it, then reads their
  statuses and settles the new job for those that had already ended.
- `maintenance.resettle_waiting` (run by RequeueLostJobs) settles jobs left waiting by a producer that died
  between those steps.
"""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from pymongo import ReturnDocument

from ..clock import utcnow
from ..queue.regular import RegularQueue
from . import documents as docs
from .policy import write
from .statuses import ABORT, CANCEL, DEFAULT_QUEUE, FAILED, MAXRETRIES, QUEUED, SUCCESS, TIMEOUT, WAITING

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("mrq.lifecycle")

#: The statuses that settle a dependent (`interrupt` does not: such a job is queued again).
DEPENDENCY_ENDS = frozenset({SUCCESS, FAILED, MAXRETRIES, TIMEOUT, ABORT, CANCEL})
#: What a dependent does when a dependency ends in another status than success.
ON_FAILURE = ("cancel", "run")
#: A job may wait for at most this many jobs (a group's callback waits for each member).
MAX_DEPENDENCIES = 10_000

DEPENDENCY_FAILED = "DependencyFailed"


def guard_for(dependents: Any) -> dict[str, Any]:
    """The condition a final write adds to its guard: the job's `dependents` are still those the
    worker read (none: `$exists: false`). A dependent registered since makes the write miss."""
    if not dependents:
        return {"dependents": {"$exists": False}}
    return {"dependents": list(dependents)}


class Ended:
    """A job that ended, with its dependents to settle."""

    __slots__ = ("dependents", "job_id", "status")

    def __init__(self, job_id: ObjectId, status: str, dependents: Iterable[ObjectId]) -> None:
        self.job_id = job_id
        self.status = status
        self.dependents = list(dependents)

    def __repr__(self) -> str:
        return f"<Ended {self.job_id} {self.status} -> {len(self.dependents)}>"


def settle(store: Store, ended: Iterable[Ended], *, recovering: bool = False) -> dict[str, int]:
    """Tell each dependent of `ended` that it ended (see the module's text). With `recovering`, a
    dependent found `queued` is pushed again (the pass being redone may have stopped between its
    transition and its push). Returns counts: queued, cancelled."""
    counts = {"queued": 0, "cancelled": 0}
    work: deque[Ended] = deque(one for one in ended if one.dependents and one.status in DEPENDENCY_ENDS)
    seen: set[ObjectId] = set()
    while work:
        # One update per dependent for every dependency of this round that ended.
        round_: list[Ended] = []
        while work:
            round_.append(work.popleft())
        by_dependent: dict[ObjectId, list[Ended]] = defaultdict(list)
        for one in round_:
            for dependent in one.dependents:
                by_dependent[dependent].append(one)
        for dependent, parents in by_dependent.items():
            failed = [p for p in parents if p.status != SUCCESS]
            if failed:
                cancelled = _cancel(store, dependent, failed[0])
                if cancelled is not None:
                    counts["cancelled"] += 1
                    if dependent not in seen:
                        seen.add(dependent)
                        work.append(cancelled)
                    continue
            if _note(store, dependent, [p.job_id for p in parents], recovering=recovering):
                counts["queued"] += 1
    return counts


def _note(store: Store, dependent: ObjectId, parents: list[ObjectId], *, recovering: bool) -> bool:
    """Add ended dependencies to a waiting job; queue it when they are all there. True when this
    call queued it."""
    doc = write(lambda: store.jobs.find_one_and_update(
        {"_id": dependent, "status": WAITING},
        {"$addToSet": {"dependencies_ended": {"$each": parents}}},
        projection={"depends_on": 1, "dependencies_ended": 1, "queue": 1},
        return_document=ReturnDocument.AFTER), "MongoDB dependency")
    if doc is None:
        if recovering:
            _push_again_if_queued(store, dependent)
        return False
    if not set(doc.get("depends_on") or ()) <= set(doc.get("dependencies_ended") or ()):
        return False
    now = utcnow()
    result = write(lambda: store.jobs.update_one(
        {"_id": dependent, "status": WAITING}, {"$set": docs.requeued_fields(now)}), "MongoDB dependency")
    if result.modified_count != 1:
        if recovering:
            _push_again_if_queued(store, dependent)
        return False
    _push(store, doc.get("queue") or DEFAULT_QUEUE, [dependent])
    return True


def _push_again_if_queued(store: Store, dependent: ObjectId) -> None:
    doc = write(lambda: store.jobs.find_one({"_id": dependent, "status": QUEUED}, {"queue": 1}),
                "MongoDB dependency")
    if doc is not None:
        _push(store, doc.get("queue") or DEFAULT_QUEUE, [dependent])


def _push(store: Store, queue: str, ids: Sequence[ObjectId]) -> None:
    write(lambda: RegularQueue(queue, store).push([str(i) for i in ids]), "Redis dependency")


def failure_reason(parent: ObjectId, status: str) -> str:
    return (f"{DEPENDENCY_FAILED}: dependency {parent} ended {status}, so this job was cancelled without running "
            "(queue it with on_dependency_failure='run' to run it whatever its dependencies end with)")


def _cancel(store: Store, dependent: ObjectId, parent: Ended) -> Ended | None:
    """Cancel a waiting job whose dependency failed, unless it runs anyway; the job, now ended,
    with its own dependents (to cancel in turn), or None when it was not cancelled."""
    now = utcnow()
    reason = failure_reason(parent.job_id, parent.status)
    update = docs.push_history({"$set": {
        "status": CANCEL, "dateupdated": now, "datefinished": now,
        "dateexpires": now + timedelta(seconds=store.settings.default_job_ttl),
        "exceptiontype": DEPENDENCY_FAILED, "traceback": reason,
    }}, docs.history_entry(CANCEL, DEPENDENCY_FAILED, reason, None, now, dependency=parent.job_id))
    doc = write(lambda: store.jobs.find_one_and_update(
        {"_id": dependent, "status": WAITING, "on_dependency_failure": {"$ne": "run"}}, update,
        projection={"dependents": 1}, return_document=ReturnDocument.AFTER), "MongoDB dependency")
    if doc is None:
        return None
    return Ended(dependent, CANCEL, doc.get("dependents") or ())


# --- when a job is queued ------------------------------------------------------------------------------


def register(store: Store, new_ids: Sequence[ObjectId], depends_on: Sequence[ObjectId]) -> None:
    """After inserting waiting jobs: list them in their dependencies' `dependents`, then settle them
    for the dependencies that had already ended (a dependency ending after the registration settles
    them itself: its final write misses, see guard_for)."""
    write(lambda: store.jobs.update_many({"_id": {"$in": list(depends_on)}},
                                         {"$addToSet": {"dependents": {"$each": list(new_ids)}}}),
          "MongoDB dependency")
    ended = write(lambda: list(store.jobs.find({"_id": {"$in": list(depends_on)},
                                                "status": {"$in": sorted(DEPENDENCY_ENDS)}}, {"status": 1})),
                  "MongoDB dependency")
    if ended:
        settle(store, [Ended(doc["_id"], doc["status"], new_ids) for doc in ended])
