"""Transitions of the jobs a worker holds: start, finish, retry, interrupt, drop.

The invariant every method keeps: a job's id stays in the worker's running set (`{p:q:<queue>}:
running:<worker>`) until MongoDB has the status that says where the job is next, and then it
moves in one step (acknowledged, or given back to the list or the delayed set atomically). A
crash at any point leaves the id in the running set, from where recovery takes it back: a job is
run again (at-least-once, counted), never lost.

Every status write is guarded (`status: started, worker: <this worker>`), so a worker that lost
its lease cannot overwrite what another worker did with the job since. Writes go through the
one error policy (policy.py): an outage is waited out; a refusal stores a minimal `failed`
status with the reason and an expiry, and the id is acknowledged: never left behind.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from bson import ObjectId
from pymongo import DeleteOne, ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError

from .. import faultpoints
from ..clock import unix_time_of, utcnow
from ..queue import RegularQueue
from ..storage.leases import Leases
from . import documents as docs
from .dependencies import DEPENDENCY_ENDS, Ended, guard_for, settle
from .policy import Refused, write
from .statuses import FAILED, QUEUED, RETRY, STARTABLE_STATUSES, STARTED, SUCCESS

if TYPE_CHECKING:
    from ..store import Store, TaskSettings

log = logging.getLogger("mrq.worker")


class HeldJob(Protocol):
    """What the lifecycle needs to know of a job a worker holds."""

    id: ObjectId
    source_queue: str  # the queue it was taken from (a raw queue's name for a raw job)
    running_queue: str | None  # the queue whose running set holds its id (None: none does)
    raw: bool
    inserted: bool
    data: dict[str, Any] | None
    settings: TaskSettings
    datestarted: datetime | None

    @property
    def key_id(self) -> str: ...


@dataclass
class FinalWrite:
    """One job's final status, waiting in the worker's batched writer."""

    job_id: ObjectId
    key_id: str
    queue: str | None  # the queue whose running set holds the id (None: a raw job, none holds it)
    filter: dict[str, Any]
    update: dict[str, Any] | None  # None: delete the document (a status not stored)
    upsert: bool = False
    base: dict[str, Any] = field(default_factory=dict)  # for an upsert: the fields a minimal failure keeps
    ttl: float = 0.0
    dependents: list[ObjectId] = field(default_factory=list)  # as read at start (the filter checks them)

    @property
    def status(self) -> str | None:
        return None if self.update is None else self.update["$set"].get("status")

    @property
    def guard(self) -> dict[str, Any]:
        """The filter without its `dependents` condition."""
        return {k: v for k, v in self.filter.items() if k != "dependents"}

    def operation(self) -> Any:
        if self.update is None:
            return DeleteOne(self.filter)
        return UpdateOne(self.filter, self.update, upsert=self.upsert)


class HeldJobs:
    """The transitions of one worker's jobs. `forget(job)` drops a job from the worker's running
    table; it is called just before the job's id may be taken again."""

    def __init__(self, store: Store, worker_id: str, worker_oid: ObjectId,
                 forget: Callable[[Any], None] = lambda job: None) -> None:
        self.store = store
        self.worker_id = worker_id
        self.oid = worker_oid
        self.forget = forget
        self._registered: set[str] = set()  # queues added to this worker's queue list by hold()

    def guard(self, job_id: ObjectId) -> dict[str, Any]:
        return {"_id": job_id, "status": STARTED, "worker": self.oid}

    # --- start --------------------------------------------------------------------------------------

    def start_one(self, job_id: str) -> dict[str, Any] | None:
        """Start one taken job in one round trip; its document, or None when it may not start
        (cancelled, finished, missing, or MongoDB refused the write)."""
        now = utcnow()
        oid = ObjectId(job_id)
        changes = {"status": STARTED, "datestarted": now, "dateupdated": now, "worker": self.oid}

        def start() -> dict[str, Any] | None:
            found: dict[str, Any] | None = self.store.jobs.find_one_and_update(
                {"_id": oid, "status": {"$in": sorted(STARTABLE_STATUSES)}},
                {"$set": changes, "$unset": {"dateexpires": "", "dateretry": ""}},
                return_document=ReturnDocument.AFTER,
            )
            if found is None:  # a retried attempt may have applied: look
                found = self.store.jobs.find_one({**self.guard(oid), "datestarted": now})
            return found

        try:
            return write(start, "MongoDB job start")
        except Refused as exc:
            self._refused_start([oid], str(exc))
            return None

    def start_many(self, documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Start loaded documents with one guarded update; returns those that started for this
        worker, by id."""
        if not documents:
            return {}
        now = utcnow()
        oids = [doc["_id"] for doc in documents]
        changes = {"status": STARTED, "datestarted": now, "dateupdated": now, "worker": self.oid}

        def mark() -> int:
            return int(self.store.jobs.update_many(
                {"_id": {"$in": oids}, "status": {"$in": sorted(STARTABLE_STATUSES)}},
                {"$set": changes, "$unset": {"dateexpires": "", "dateretry": ""}},
            ).modified_count)

        try:
            modified = write(mark, "MongoDB job start")
        except Refused as exc:
            self._refused_start(oids, str(exc))
            return {}
        if modified == len(documents):
            for doc in documents:
                doc.update(changes)
                doc.pop("dateexpires", None)
                doc.pop("dateretry", None)
            return {str(doc["_id"]): doc for doc in documents}
        # Some changed status meanwhile (cancelled...), or a retried attempt had applied: look.
        fresh = write(lambda: list(self.store.jobs.find({"_id": {"$in": oids}})), "MongoDB job load")
        return {str(d["_id"]): d for d in fresh
                if d.get("status") == STARTED and d.get("worker") == self.oid and d.get("datestarted") == now}

    def _refused_start(self, oids: list[ObjectId], reason: str) -> None:
        """MongoDB refused to start them: they end `failed` with the reason (their ids are then
        dropped by the caller), rather than stay `queued` with no id left in Redis."""
        for oid in oids:
            self.store_refusal(FinalWrite(oid, str(oid), None, {"_id": oid, "status": {"$in": sorted(
                STARTABLE_STATUSES)}}, None, ttl=self.store.settings.default_job_ttl), reason)

    def unstart(self, doc: dict[str, Any], queue: str, due: float) -> None:
        """Undo a start that must wait (no free `max_concurrency` slot): back to `queued`, and the
        id into the queue's delayed set until `due`, atomically out of the running set."""
        write(lambda: self.store.jobs.update_one(self.guard(doc["_id"]), {"$set": {"status": QUEUED}}),
              "MongoDB job start undo")
        self.give_back(queue, [(str(doc["_id"]), "d", due)])

    def drop(self, by_queue: dict[str, list[str]], *, not_started: bool = True) -> None:
        """Acknowledge ids: taken ids that will not run (cancelled, finished, missing), or, with
        not_started=False, ids whose final status is stored."""
        def ack() -> None:
            pipe = self.store.redis.pipeline(transaction=False)
            for name, ids in by_queue.items():
                RegularQueue(name, self.store).ack(self.worker_id, ids, pipe, not_started=not_started)
            pipe.execute()

        if by_queue:
            write(ack, "Redis acknowledgement")

    def hold(self, queue: str, ids: list[str]) -> None:
        """Put ids in this worker's running set of `queue` (raw jobs, before their documents are
        inserted: from then on recovery finds them), registering the queue first."""
        def hold() -> None:
            if queue not in self._registered:
                Leases(self.store.redis, self.store.keys).add_queues(self.worker_id, [queue])
                self._registered.add(queue)
            RegularQueue(queue, self.store).hold(self.worker_id, ids)

        write(hold, "Redis running set")

    def give_back(self, queue: str, moves: Sequence[tuple[str, str, float]], *, own: bool = True) -> None:
        """Move ids out of this worker's running set (see RegularQueue.give_back). `own`: their
        documents say this worker just put them back: the move happens even if Redis lost the entry."""
        write(lambda: RegularQueue(queue, self.store).give_back(self.worker_id, moves, own=own), "Redis give back",
              maximum=1.0)

    # --- finish (batched by the worker's writer) ------------------------------------------------------

    def final(self, job: HeldJob, fields: dict[str, Any], history: dict[str, Any] | None) -> FinalWrite:
        """The write that stores a final status (`fields` come from documents.final_fields)."""
        update: dict[str, Any] = {"$set": fields}
        if fields.get("status") == SUCCESS:  # an earlier attempt's error stays in traceback_history only
            update["$unset"] = {"exceptiontype": "", "traceback": ""}
        if history is not None:
            docs.push_history(update, history)
        base = self._upsert_base(job, update)
        guard = self.guard(job.id)
        dependents = list((job.data or {}).get("dependents") or ())
        if job.inserted:  # a job queued meanwhile with depends_on on this one makes the write miss
            guard.update(guard_for(dependents))
        return FinalWrite(job.id, job.key_id, job.running_queue, guard, update, upsert=not job.inserted, base=base,
                          ttl=job.settings.default_ttl, dependents=dependents)

    def remove(self, job: HeldJob) -> FinalWrite:
        """A status that is not stored (raw queues' `statuses_no_storage`) for a job whose start
        was: the document goes."""
        return FinalWrite(job.id, job.key_id, job.running_queue, self.guard(job.id), None)

    def write_finals(self, batch: Sequence[FinalWrite]) -> dict[str, tuple[str, float]]:
        """One `bulk_write` for the batch, through outages; a write MongoDB refuses stores the
        minimal failure instead (the others apply). Returns the ids whose job turned out to be no
        longer ours and waiting again (requeued after our lease was lost): where to give them
        back ("q" or "d", due time) instead of acknowledging them."""
        refused: list[tuple[FinalWrite, str]] = []
        applied = 0

        def bulk() -> None:
            nonlocal applied
            refused.clear()
            try:
                result = self.store.jobs.bulk_write([w.operation() for w in batch], ordered=False)
                applied = result.matched_count + result.upserted_count + result.deleted_count
            except BulkWriteError as exc:
                details = exc.details
                applied = details.get("nMatched", 0) + details.get("nUpserted", 0) + details.get("nRemoved", 0)
                for error in details.get("writeErrors", []):
                    refused.append((batch[error["index"]], f"{error.get('errmsg')} (code {error.get('code')})"))

        try:
            write(bulk, "MongoDB status write")
        except Refused:  # the command as a whole (e.g. a document too large to send): one by one
            applied = 0
            for one in batch:
                try:
                    write(partial(self.store.jobs.bulk_write, [one.operation()]), "MongoDB status write")
                except Refused as exc:
                    refused.append((one, str(exc)))
        ended = [Ended(one.job_id, one.status or "", one.dependents) for one in batch
                 if one.dependents and one.status in DEPENDENCY_ENDS]
        for one, reason in refused:
            self.store_refusal(one, reason)
        moves: dict[str, tuple[str, float]] = {}
        if applied + len(refused) < len(batch):
            refused_ids = {one.job_id for one, _ in refused}
            missed = [one for one in batch if one.queue is not None and one.job_id not in refused_ids]
            missed_ids = {one.job_id for one in missed}
            ended = [e for e in ended if e.job_id not in missed_ids]
            ended.extend(self._ended_with_new_dependents(missed))
            moves = self._waiting_again([one.job_id for one in missed])
        # Before the ids are acknowledged: a crash here leaves them to recovery, which settles again.
        if ended:
            faultpoints.reached("before_settle")
            settle(self.store, ended)
        return moves

    def _ended_with_new_dependents(self, missed: list[FinalWrite]) -> list[Ended]:
        """Of writes that missed, those whose job is still ours: jobs queued with `depends_on` on
        them since they started changed their `dependents`. Each is ended with a write that returns
        the dependents to settle. (The others were applied by an attempt that failed on our side,
        or are no longer ours.)"""
        by_id = {one.job_id: one for one in missed}
        still = write(lambda: [doc["_id"] for doc in self.store.jobs.find(
            {"_id": {"$in": list(by_id)}, "status": STARTED, "worker": self.oid}, {"_id": 1})], "MongoDB status check")
        ended: list[Ended] = []
        for job_id in still:
            one = by_id[job_id]
            if one.update is None:
                continue
            update = one.update
            try:
                doc = write(partial(self.store.jobs.find_one_and_update, one.guard, update,
                                    projection={"dependents": 1, "status": 1}, return_document=ReturnDocument.AFTER),
                            "MongoDB status write")
            except Refused as exc:
                self.store_refusal(one, str(exc))
                continue
            if doc is not None and doc.get("status") in DEPENDENCY_ENDS:
                ended.append(Ended(job_id, doc["status"], doc.get("dependents") or ()))
        # Writes that did apply (a retried bulk): their dependents are settled too (idempotent).
        for one in missed:
            if one.job_id not in still and one.dependents and one.status in DEPENDENCY_ENDS:
                ended.append(Ended(one.job_id, one.status or "", one.dependents))
        return ended

    def _waiting_again(self, ids: list[ObjectId]) -> dict[str, tuple[str, float]]:
        """Of jobs whose final write did not match: those whose document says they wait again."""
        found = write(lambda: list(self.store.jobs.find({"_id": {"$in": ids}, "status": {"$in": sorted(
            STARTABLE_STATUSES)}}, {"status": 1, "dateretry": 1})), "MongoDB status check")
        moves: dict[str, tuple[str, float]] = {}
        for doc in found:
            due = doc.get("dateretry")
            moves[str(doc["_id"])] = ("q", 0.0) if doc["status"] == QUEUED or due is None else ("d", unix_time_of(due))
        if moves:
            log.warning("%d jobs were taken back from this worker while it ran them (its lease was lost): their "
                        "results were not stored; they will run again", len(moves))
        return moves

    def ack(self, batch: Sequence[FinalWrite], moves: dict[str, tuple[str, float]] | None = None) -> None:
        """The batch's statuses are stored: out of the running sets (or, for `moves`, given back)."""
        moves = moves or {}
        by_queue: dict[str, list[str]] = defaultdict(list)
        back: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
        for one in batch:
            if one.queue is None:
                continue
            if one.key_id in moves:
                action, score = moves[one.key_id]
                back[one.queue].append((one.key_id, action, score))
            else:
                by_queue[one.queue].append(one.key_id)
        self.drop(by_queue, not_started=False)
        for queue, queue_moves in back.items():
            self.give_back(queue, queue_moves, own=False)

    def store_refusal(self, one: FinalWrite, reason: str) -> None:
        """MongoDB refused a job's status write: store `failed` with the reason (smaller and
        smaller until it is accepted), so that the job ends with a status and an expiry."""
        message = (f"storing this job's status failed: MongoDB refused the write: {reason}. The job ended; "
                   "what it returned or raised could not be stored.")
        log.error("job %s: %s", one.job_id, message)
        for shrink in (False, True):
            update = docs.minimal_failure(message, one.ttl or self.store.settings.default_job_ttl, utcnow(),
                                          shrink=shrink)
            if one.upsert:
                update["$setOnInsert"] = dict(one.base)
            try:
                doc = write(partial(self.store.jobs.find_one_and_update, one.guard, update, upsert=one.upsert,
                                    projection={"dependents": 1}, return_document=ReturnDocument.AFTER),
                            "MongoDB status write")
                if doc is not None and doc.get("dependents"):
                    settle(self.store, [Ended(one.job_id, FAILED, doc["dependents"])])
                return
            except Refused as exc:
                reason = str(exc)
        log.error("job %s: MongoDB refused even a minimal failed status (%s); its id is acknowledged", one.job_id,
                  reason)

    # --- retry ----------------------------------------------------------------------------------------

    def retry(self, job: HeldJob, fields: dict[str, Any], history: dict[str, Any] | None, queue: str,
              retry_count: int, delay: float) -> None:
        """Store `retry` (or `queued` when there is no delay), then move the id to the target
        queue's delayed set (or list): atomically out of the running set when it stays on its
        queue; else pushed first, acknowledged second (a crash in between leaves a duplicate id,
        which workers skip, never a lost one)."""
        now = utcnow()
        fields = {**fields, "status": RETRY, "dateupdated": now, "queue": queue, "retry_count": retry_count}
        if job.datestarted is not None:
            fields["totaltime"] = (now - job.datestarted).total_seconds()
        if delay > 0:
            fields.update(docs.retry_dates(now, delay, job.settings.default_ttl))
        else:
            fields.update(docs.requeued_fields(now))
        update: dict[str, Any] = {"$set": fields}
        if history is not None:
            docs.push_history(update, history)
        if not self._apply(job, update, "MongoDB retry write"):
            return
        self.forget(job)  # from here on, this id may be taken again, by this worker too
        due = time.time() + delay
        if queue == job.running_queue:
            self.give_back(queue, [(job.key_id, "d" if delay > 0 else "q", due)])
            return
        target = RegularQueue(queue, self.store)
        if delay > 0:
            write(lambda: target.push_delayed({job.key_id: due}), "Redis retry")
        else:
            write(lambda: target.push([job.key_id]), "Redis retry")
        self._ack_one(job)

    # --- interrupt ------------------------------------------------------------------------------------

    def interrupt(self, job: HeldJob, fields: dict[str, Any], history: dict[str, Any] | None) -> None:
        """The worker is stopping: the job goes back to the front of its queue at once, with one
        write (`queued`, its `interrupt` entry and where it was in `traceback_history`)."""
        now = utcnow()
        target = job.running_queue or (job.data or {}).get("queue") or job.source_queue
        update: dict[str, Any] = {"$set": {**fields, **docs.requeued_fields(now, target)},
                                  "$unset": docs.REQUEUED_UNSET}
        if history is not None:
            docs.push_history(update, history)
        applied = self._apply(job, update, "MongoDB interrupt write", maximum=1.0)
        self.forget(job)
        if not applied:
            return
        if job.running_queue is not None:
            self.give_back(job.running_queue, [(job.key_id, "q", 0.0)])
        else:  # a raw job whose start was not stored: no running set holds it
            write(lambda: RegularQueue(target, self.store).push([job.key_id], front=True), "Redis requeue",
                  maximum=1.0)

    # --- helpers --------------------------------------------------------------------------------------

    def _apply(self, job: HeldJob, update: dict[str, Any], what: str, maximum: float = 5.0) -> bool:
        """Apply a guarded update now. True when it applied (also when an attempt that failed on
        our side had in fact applied); False when the job is no longer ours (its id is then
        acknowledged); a refusal stores the minimal failure and acknowledges."""
        self._upsert_base(job, update)
        guard = self.guard(job.id)
        marker = update["$set"]["dateupdated"]
        attempts = 0

        def apply() -> bool:
            nonlocal attempts
            attempts += 1
            result = self.store.jobs.update_one(guard, update, upsert=not job.inserted)
            if result.matched_count == 1 or result.upserted_id is not None:
                return True
            return attempts > 1 and self.store.jobs.count_documents(
                {"_id": job.id, "worker": self.oid, "dateupdated": marker}, limit=1) == 1

        try:
            applied = write(apply, what, maximum=maximum)
        except Refused as exc:
            self.store_refusal(FinalWrite(job.id, job.key_id, None, guard, None, upsert=not job.inserted,
                                          base=self._minimal_base(job), ttl=job.settings.default_ttl), str(exc))
            applied = False
        if not applied:
            self.forget(job)
            moves = {} if job.running_queue is None else self._waiting_again([job.id])
            if moves and job.running_queue is not None:
                self.give_back(job.running_queue, [(job.key_id, *moves[job.key_id])], own=False)
            else:
                self._ack_one(job)
        return applied

    def _ack_one(self, job: HeldJob) -> None:
        if job.running_queue is not None:
            self.drop({job.running_queue: [job.key_id]}, not_started=False)

    def _upsert_base(self, job: HeldJob, update: dict[str, Any]) -> dict[str, Any]:
        """A raw job whose document was never inserted: the write creates it (`$setOnInsert`)."""
        if job.inserted or job.data is None:
            return {}
        written = set(update["$set"]) | set(update.get("$unset", ())) | {"_id", "status", "worker",
                                                                        "traceback_history"}
        update["$setOnInsert"] = {k: v for k, v in job.data.items() if k not in written}
        return self._minimal_base(job)

    @staticmethod
    def _minimal_base(job: HeldJob) -> dict[str, Any]:
        data = job.data or {}
        return {k: data[k] for k in ("path", "queue", "raw_queue", "datequeued") if k in data}
