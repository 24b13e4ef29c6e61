"""Turning what the worker took from its queues into running jobs.

Regular queues give ids: one `find` loads their documents; jobs whose task has a
`max_concurrency` take a slot first (those without a free slot go back to their queue's delayed
set for a moment: they wait in the queue, not in a greenlet); one guarded `update_many` marks
the rest `started`. Ids whose documents cannot start (cancelled, finished, missing) are dropped;
a missing document of a young id may still be on its way (a single `queue_job` pushes and inserts
at once): it is waited for (IN_FLIGHT_RETRIES, then the delayed set) until the id is too old.

Raw queues give params: the queue's `job_factory` turns each into `{path, params}`; unless
"started" is in `statuses_no_storage` the job documents are inserted (one `insert_many`). A
factory that raises gives a `failed` job with its traceback; the others go on.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import gevent
import pymongo.errors
from bson import ObjectId

from .. import faultpoints
from ..backoff import retry_through_outage
from ..clock import utcnow
from ..exceptions import TaskNotFound
from ..lifecycle import HeldJobs, documents, statuses
from ..queue import Queue, RawQueue
from ..task import load_task
from .execution import RunningJob, format_exception

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("mrq.worker")

#: Seconds a job that found no free `max_concurrency` slot waits in its queue's delayed set.
HOLD_BACK = 0.5
#: A single `queue_job` pushes the id while its document is being inserted (producer._queue_one),
#: so a worker may find no document yet. Within this many seconds of the id's creation (the
#: ObjectId's time, in whole seconds: a producer's insert gives up after the MongoDB client's
#: socket timeout, max(6 x MRQ_MONGODB_TIMEOUT, 30 s), plus server selection) a missing document
#: is waited for: at once for these pauses, then from the delayed set (HOLD_BACK). Older, it was
#: deleted, expired or never stored: the id is dropped.
IN_FLIGHT_RETRIES = (0.002, 0.005, 0.01, 0.02)
IN_FLIGHT_MARGIN = 10.0


class JobStarter:
    def __init__(self, store: Store, held: HeldJobs, worker_oid: ObjectId, running: dict[str, RunningJob],
                 finishing: Callable[[], dict[str, str | None]]) -> None:
        self.store = store
        self.held = held
        self.oid = worker_oid
        self.running = running
        self.finishing = finishing
        self._limits: dict[str, int] = {}

    def start(self, taken: list[tuple[Queue, list[Any]]]) -> list[RunningJob]:
        started: list[RunningJob] = []
        regular = [(q, items) for q, items in taken if not q.is_raw]
        if regular:
            started.extend(self._start_regular(regular))
        for queue, params in taken:
            if isinstance(queue, RawQueue):
                started.extend(self._start_raw(queue, params))
        return started

    # --- regular ------------------------------------------------------------------------------------

    def _start_regular(self, taken: list[tuple[Queue, list[Any]]]) -> list[RunningJob]:
        finishing = self.finishing()
        queue_of: dict[str, Queue] = {}
        drop: dict[str, list[str]] = {}
        for queue, ids in taken:
            for job_id in ids:
                if not ObjectId.is_valid(job_id):
                    log.error("queue %s held %r, which is not a job id (written by something else than mrq?): "
                              "dropped", queue.name, job_id[:100])
                    drop.setdefault(queue.name, []).append(job_id)
                    continue
                if job_id in queue_of:  # taken from two queues at once: two entries, keep one
                    if queue_of[job_id] != queue:
                        drop.setdefault(queue.name, []).append(job_id)
                    continue
                owner = self.running.get(job_id)
                if owner is not None:
                    # Running here already: from the same queue this is that run's own entry;
                    # from another queue it is a second entry, and a duplicate.
                    if owner.running_queue != queue.name:
                        drop.setdefault(queue.name, []).append(job_id)
                    continue
                if job_id in finishing:
                    # Its previous run's final status is being written. From the same queue, this
                    # is that run's entry (the writer puts it where the document says once the
                    # write is done); from another queue, look at it again in a moment.
                    if finishing[job_id] != queue.name:
                        self._hold_back(queue.name, job_id)
                    continue
                queue_of[job_id] = queue
        if len(queue_of) == 1 and not drop:
            [(job_id, queue)] = queue_of.items()
            return self._start_one(queue, job_id)
        oids = [ObjectId(job_id) for job_id in queue_of]
        docs = retry_through_outage(lambda: list(self.store.jobs.find({"_id": {"$in": oids}})), "MongoDB job load",
                                    log) if oids else []
        found = {str(doc["_id"]): doc for doc in docs}
        candidates: list[dict[str, Any]] = []
        for job_id, queue in queue_of.items():
            doc = found.get(job_id)
            if doc is None and self.in_flight(job_id):
                self._hold_back(queue.name, job_id)  # its producer's insert is on its way
                continue
            if doc is None or doc.get("status") not in statuses.STARTABLE_STATUSES:
                if doc is None:
                    log.warning("job %s was queued on %s but has no document (expired or deleted): dropped",
                                job_id, queue.name)
                drop.setdefault(queue.name, []).append(job_id)
                continue
            candidates.append(doc)
        candidates, held_back = self._take_slots(candidates)
        for doc in held_back:
            self._hold_back(queue_of[str(doc["_id"])].name, str(doc["_id"]))
        ours = self.held.start_many(candidates)
        started = []
        for doc in candidates:
            job_id = str(doc["_id"])
            if job_id not in ours:
                drop.setdefault(queue_of[job_id].name, []).append(job_id)
                self._release_slot(doc)
                continue
            job = RunningJob(ours[job_id], queue_of[job_id].name, self.store)
            job.max_concurrency = self.limit_of(job.path or "")
            started.append(job)
        self.held.drop(drop)
        return started

    def _start_one(self, queue: Queue, job_id: str) -> list[RunningJob]:
        """The idle case (one job taken): start it in one round trip (find_one_and_update) rather
        than two (find, then update_many): this is on the pickup latency path."""
        doc = self.held.start_one(job_id)
        waits = list(IN_FLIGHT_RETRIES)
        while doc is None:
            faultpoints.reached("start_missed")
            found = self.store.jobs.find_one({"_id": ObjectId(job_id)}, {"status": 1})
            if found is not None and found.get("status") not in statuses.STARTABLE_STATUSES:
                self.held.drop({queue.name: [job_id]})  # cancelled, started elsewhere, ended
                return []
            if found is None and not self.in_flight(job_id):
                log.warning("job %s was queued on %s but has no document (expired or deleted): dropped",
                            job_id, queue.name)
                self.held.drop({queue.name: [job_id]})
                return []
            if not waits:
                self._hold_back(queue.name, job_id)
                return []
            pause = waits.pop(0)
            if found is None:  # its producer's insert is on its way (producer._queue_one)
                gevent.sleep(pause)
            doc = self.held.start_one(job_id)  # (a document found startable arrived just now)
        if self.limit_of(doc.get("path") or ""):
            _, held_back = self._take_slots([doc])
            if held_back:  # no free slot: undo the start, wait in the queue
                self.held.unstart(doc, queue.name, self._due())
                return []
        job = RunningJob(doc, queue.name, self.store)
        job.max_concurrency = self.limit_of(job.path or "")
        return [job]

    # --- max_concurrency ------------------------------------------------------------------------------

    def _take_slots(self, docs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Split the documents into (may start, held back for lack of a free slot)."""
        limited = [(doc, limit, self.store.task_settings(doc.get("path") or ""))  # limit_of imports the task first
                   for doc in docs if (limit := self.limit_of(doc.get("path") or ""))]
        if not limited:
            return docs, []
        now = time.time()
        pipe = self.store.redis.pipeline(transaction=False)
        for doc, limit, ts in limited:
            self.store.scripts.acquire_slot(
                keys=[self.store.keys.concurrency(doc["path"])],
                args=[str(doc["_id"]), limit, repr(now), repr(now + ts.timeout + 60)],
                client=pipe,
            )
        granted = retry_through_outage(pipe.execute, "Redis concurrency slots", log)
        held_ids = {doc["_id"] for (doc, _, _), ok in zip(limited, granted, strict=True) if not ok}
        return [d for d in docs if d["_id"] not in held_ids], [d for d in docs if d["_id"] in held_ids]

    def _hold_back(self, queue: str, job_id: str) -> None:
        """Back into the queue's delayed set for a moment, atomically out of our running set."""
        self.held.give_back(queue, [(job_id, "d", self._due())])

    def in_flight(self, job_id: str) -> bool:
        """Whether a job id without a document may still get one (its producer's insert may be
        on its way, IN_FLIGHT_MARGIN)."""
        timeout = self.store.settings.mongodb_timeout
        window = max(6 * timeout, 30.0) + timeout + IN_FLIGHT_MARGIN
        return time.time() - ObjectId(job_id).generation_time.timestamp() < window

    @staticmethod
    def _due() -> float:
        return time.time() + HOLD_BACK * (1 + random.random())

    def limit_of(self, path: str) -> int:
        """The task's max_concurrency: TASKS or `@task(max_concurrency=...)` first, else MRQ's
        `Task.max_concurrency` class attribute (0: no limit). The first call for a path imports
        the task's module, so that what a `@task` declares is known before its first job starts
        (this runs before any RunningJob reads the task's settings)."""
        limit = self._limits.get(path)
        if limit is None:
            try:
                task_class = getattr(load_task(path), "task_class", None)
            except TaskNotFound:
                task_class = None  # the job will fail with the reason; no slot needed
            limit = self.store.task_settings(path).max_concurrency
            if not limit:
                limit = max(0, int(getattr(task_class, "max_concurrency", 0) or 0))
            self._limits[path] = limit
        return limit

    def _release_slot(self, doc: dict[str, Any]) -> None:
        if self.limit_of(doc.get("path") or ""):
            self.store.redis.zrem(self.store.keys.concurrency(doc["path"]), str(doc["_id"]))

    # --- raw ----------------------------------------------------------------------------------------

    def _start_raw(self, queue: RawQueue, params: list[Any]) -> list[RunningJob]:
        config = queue.config
        now = utcnow()
        started: list[RunningJob] = []
        failed_docs: list[dict[str, Any]] = []
        for param in params:
            job_id = ObjectId()
            try:
                spec = config.job_factory(param)
                if not isinstance(spec, Mapping) or not isinstance(spec.get("path"), str) \
                        or not isinstance(spec.get("params", {}), Mapping):
                    raise TypeError(f"job_factory must return {{'path': str, 'params': dict}}, got {spec!r}")
            except Exception as exc:
                if "failed" not in config.statuses_no_storage:
                    text = f"job_factory of raw queue {queue.name} failed for raw param {str(param)[:1000]!r}:\n" + \
                        format_exception(sys.exc_info())
                    failed_docs.append(documents.factory_failure(
                        job_id, config.retry_queue, queue, str(param), exc, text, self.oid, now,
                        self.store.settings.default_job_ttl))
                log.error("raw queue %s: job_factory failed for %r: %s", queue.name, str(param)[:200], exc)
                continue
            doc = documents.raw_started(job_id, spec["path"], dict(spec.get("params") or {}), config.retry_queue,
                                        queue.name, self.oid, now)
            job = RunningJob(doc, queue.name, self.store)
            job.raw = True
            job.no_storage = config.statuses_no_storage
            job.inserted = "started" not in config.statuses_no_storage
            # An inserted raw job is held like a regular one (in its retry queue's running set), so
            # that recovery takes it back if this worker dies; one whose start is not stored is not.
            job.running_queue = config.retry_queue if job.inserted else None
            job.max_concurrency = 0  # not applied to raw queues (documented)
            started.append(job)
        inserted = [job for job in started if job.inserted]
        if inserted:
            self.held.hold(config.retry_queue, [job.key_id for job in inserted])
        to_insert = [job.data for job in inserted if job.data is not None] + failed_docs
        if to_insert:
            refused = self._insert(to_insert)
            if refused:
                started = [job for job in started if job.id not in refused]
                self.held.drop({config.retry_queue: [str(i) for i in refused]}, not_started=False)
        return started

    def _insert(self, docs: list[dict[str, Any]]) -> set[ObjectId]:
        """Insert raw jobs' documents; the ids MongoDB refused (logged: those params are lost)."""
        refused: set[ObjectId] = set()

        def insert() -> None:
            try:
                self.store.jobs.insert_many(docs, ordered=False)
            except pymongo.errors.BulkWriteError as exc:
                for error in exc.details.get("writeErrors", []):
                    if error.get("code") != 11000:  # 11000: an earlier attempt stored it
                        doc = docs[error["index"]]
                        refused.add(doc["_id"])
                        log.error("raw job %s (%s): MongoDB refused its document (%s): not run", doc["_id"],
                                  doc.get("path"), error.get("errmsg"))

        retry_through_outage(insert, "MongoDB raw job insert", log)
        return refused
