"""Storing how a job ended, and moving its id where it belongs next.

- success and error statuses: one guarded update handed to the batched writer, which removes
  the id from the running set once the update is stored;
- retry: the update at once, then the id goes to the target queue's delayed set (or straight
  to its list when the delay is 0), atomically out of the running set when it stays on its queue;
- interrupt: `interrupt` is stored (with where the job was), then the job is queued again at the
  front of its queue at once.

Raw jobs have no running set; their documents may not exist yet (`statuses_no_storage`
containing "started"): then the write is an upsert, or nothing when the status is not stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from pymongo import DeleteOne, UpdateOne

from .. import job as jobs
from ..backoff import retry_through_outage
from ..clock import utcnow
from ..helpers import emit_metric
from ..queue import RegularQueue
from ..stats import StatsBuffer
from .execution import Outcome, RunningJob
from .writer import StatusWriter

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("mrq.worker")

HISTORY_LIMIT = 50


class OutcomeRecorder:
    def __init__(self, store: Store, worker_id: str, worker_oid: ObjectId, writer: StatusWriter,
                 stats: StatsBuffer, forget: Callable[[RunningJob], None],
                 ended: Callable[[str, str, float | None], None]) -> None:
        self.store = store
        self.worker_id = worker_id
        self.oid = worker_oid
        self.writer = writer
        self.stats = stats
        self.forget = forget  # drop the job from the worker's running table
        self.ended = ended  # metrics: (path, status, seconds)

    def record(self, job: RunningJob, outcome: Outcome) -> None:
        if outcome.status in job.no_storage and not job.inserted and outcome.retry is None \
                and outcome.status != jobs.INTERRUPT:
            self._count(job, outcome, None)  # a raw job whose status is not stored: nothing to write
            return
        now = utcnow()
        fields = jobs.final_fields(outcome.status, job.settings, now, job.datestarted)
        fields.update(outcome.fields)
        update: dict[str, Any] = {"$set": fields}
        if outcome.history is not None:
            update["$push"] = {"traceback_history": {"$each": [outcome.history], "$slice": -HISTORY_LIMIT}}
        guard = {"_id": job.id, "status": jobs.STARTED, "worker": self.oid}
        self._count(job, outcome, fields.get("totaltime"))
        if outcome.retry is not None:
            self._record_retry(job, outcome, guard, update, now)
        elif outcome.status == jobs.INTERRUPT:
            self._record_interrupt(job, guard, update, now)
        elif outcome.status in job.no_storage:
            if job.inserted:  # e.g. success not stored for a job whose start was: remove it
                self.writer.add(DeleteOne({"_id": job.id, "status": jobs.STARTED, "worker": self.oid}), None,
                                job.key_id)
        else:
            self._upsert_base(job, update)
            self.writer.add(UpdateOne(guard, update, upsert=not job.inserted), None if job.raw else job.source_queue,
                            job.key_id)

    def _count(self, job: RunningJob, outcome: Outcome, seconds: float | None) -> None:
        """Counters, metrics, the log line, the concurrency slot: for every job that ends."""
        self.stats.add(f"{outcome.status}:{job.source_queue}")
        if outcome.log_message:
            log.info("job %s (%s) %s", job.id, job.path, outcome.log_message)
        hook = self.store.settings.metric_hook
        if hook is not None:
            emit_metric(hook, f"jobs.status.{outcome.status}")
        if seconds is None:
            seconds = time.monotonic() - job.started_monotonic
        self.ended(job.path or "", outcome.status, seconds)
        if job.max_concurrency:
            self._release_slot(job)

    def _upsert_base(self, job: RunningJob, update: dict[str, Any]) -> None:
        """A raw job whose document was never inserted: the write creates it."""
        if job.inserted or job.data is None:
            return
        written = set(update["$set"]) | {"_id", "status", "worker", "traceback_history"}
        update["$setOnInsert"] = {k: v for k, v in job.data.items() if k not in written}

    # --- retry ------------------------------------------------------------------------------------

    def _record_retry(self, job: RunningJob, outcome: Outcome, guard: dict[str, Any], update: dict[str, Any],
                      now: datetime) -> None:
        retry = outcome.retry
        assert retry is not None
        fields = update["$set"]
        del fields["dateexpires"], fields["datefinished"]
        fields.update({"queue": retry.queue, "retry_count": retry.retry_count})
        if retry.delay > 0:
            fields["dateretry"] = now + timedelta(seconds=retry.delay)
        else:
            fields["status"] = jobs.QUEUED
            fields["datequeued"] = now
        self._upsert_base(job, update)
        if not self._write_once(guard, update, "MongoDB retry write", upsert=not job.inserted):
            self._ack_one(job)
            return
        self.forget(job)  # from here on, this id may be taken again, by this worker too
        due = time.time() + retry.delay
        target = RegularQueue(retry.queue, self.store)

        def move() -> None:
            if retry.queue == job.source_queue and not job.raw:
                # One atomic step: out of our running set, into the queue (or its delayed set).
                self.move_running(job, "d" if retry.delay > 0 else "q", due)
                return
            # Another queue (another slot): push first, then leave our running set; a crash in
            # between leaves a duplicate id, which workers skip, never a lost one.
            if retry.delay > 0:
                target.push_delayed({job.key_id: due})
            else:
                target.push([job.key_id])
            self._ack_one(job)

        retry_through_outage(move, "Redis retry", log)

    # --- interrupt ----------------------------------------------------------------------------------

    def _record_interrupt(self, job: RunningJob, guard: dict[str, Any], update: dict[str, Any],
                          now: datetime) -> None:
        """Store `interrupt` (with where it was), then queue the job again at the front of its queue."""
        del update["$set"]["dateexpires"]
        self._upsert_base(job, update)
        requeue = self._write_once(guard, update, "MongoDB interrupt write", maximum=1.0, upsert=not job.inserted)
        target_queue = job.data.get("queue") if job.raw and job.data else job.source_queue
        if requeue:
            retry_through_outage(lambda: self.store.jobs.update_one(
                {"_id": job.id, "status": jobs.INTERRUPT},
                {"$set": {"status": jobs.QUEUED, "datequeued": utcnow(), "dateupdated": utcnow(),
                          "queue": target_queue},
                 "$unset": {"datefinished": ""}},
            ), "MongoDB requeue write", log, maximum=1.0)
        self.forget(job)
        if job.raw:
            if requeue and target_queue:
                retry_through_outage(lambda: RegularQueue(target_queue, self.store).push([job.key_id], front=True),
                                     "Redis requeue", log, maximum=1.0)
            return
        retry_through_outage(lambda: self.move_running(job, "q" if requeue else "x", 0.0), "Redis requeue", log,
                             maximum=1.0)

    # --- helpers ------------------------------------------------------------------------------------

    def _write_once(self, guard: dict[str, Any], update: dict[str, Any], what: str, maximum: float = 5.0,
                    upsert: bool = False) -> bool:
        """Apply a guarded update through an outage. True when it applied, including when an
        attempt that failed on our side (a timeout) had in fact applied on the server."""
        attempts = 0
        marker = update["$set"]["dateupdated"]

        def write() -> bool:
            nonlocal attempts
            attempts += 1
            result = self.store.jobs.update_one(guard, update, upsert=upsert)
            if result.matched_count == 1 or result.upserted_id is not None:
                return True
            return attempts > 1 and self.store.jobs.count_documents(
                {"_id": guard["_id"], "worker": self.oid, "dateupdated": marker}, limit=1) == 1

        return retry_through_outage(write, what, log, maximum=maximum)

    def move_running(self, job: RunningJob, action: str, score: float) -> None:
        """Atomically move a job id from our running set to the front of its queue ("q"), to its
        delayed set ("d", at `score`), or nowhere ("x"); then wake the workers."""
        keys = self.store.keys
        queue = job.source_queue
        self.store.scripts.requeue_running(
            keys=[keys.queue_ids(queue), keys.queue_running(queue, self.worker_id), keys.queue_delayed(queue)],
            args=[job.key_id, action, repr(score)],
        )
        if action != "x":
            self.store.redis.publish(keys.notify_channel(queue), "1" if action == "q" else f"at:{score:f}")

    def _ack_one(self, job: RunningJob) -> None:
        if not job.raw:
            self.store.redis.srem(self.store.keys.queue_running(job.source_queue, self.worker_id), job.key_id)

    def _release_slot(self, job: RunningJob) -> None:
        try:
            self.store.redis.zrem(self.store.keys.concurrency(job.path), job.key_id)
        except Exception as exc:  # it expires by itself
            log.warning("releasing the concurrency slot of job %s failed: %s", job.id, exc)
