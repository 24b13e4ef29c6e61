"""Batched final status writes.

When a job ends, its greenlet hands the guarded MongoDB update to the writer and is free at
once. The writer sends every pending update in one `bulk_write` (one command for many jobs),
then removes those ids from the worker's running sets in Redis (one SREM per queue). The order
matters: until the status is in MongoDB the id stays in the running set, so a crash in between
gets the job recovered and run again (at-least-once), never lost.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import pymongo.errors

from ..backoff import retry_through_outage

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("mrq.worker")


class StatusWriter:
    def __init__(self, store: Store, worker_id: str) -> None:
        self.store = store
        self.worker_id = worker_id
        self._pending: list[tuple[Any, str | None, str]] = []
        self._in_flight: list[tuple[Any, str | None, str]] = []
        self._greenlet: gevent.Greenlet | None = None
        self._idle = gevent.event.Event()
        self._idle.set()
        self.flushes = 0
        self.stopping = False

    def add(self, update: Any, queue: str | None, job_id: str) -> None:
        """Queue a final-status write (UpdateOne, DeleteOne) of a job taken from `queue` (None:
        a raw job, which holds no running-set entry)."""
        self._pending.append((update, queue, job_id))
        self._idle.clear()
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)

    def pending_ids(self) -> set[str]:
        """Ids whose final status is queued, being written or being acknowledged."""
        return {job_id for _, _, job_id in self._pending} | {job_id for _, _, job_id in self._in_flight}

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every queued update is written and acknowledged."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            self._in_flight = batch
            self._write(batch)
            self._ack(batch)
            self._in_flight = []
            self.flushes += 1
        self._idle.set()

    def _write(self, batch: list[tuple[Any, str | None, str]]) -> None:
        def write() -> None:
            try:
                self.store.jobs.bulk_write([op for op, _, _ in batch], ordered=False)
            except pymongo.errors.BulkWriteError as exc:
                # An update MongoDB refuses (should not happen: results and tracebacks are checked)
                # must not block the others; record why on each job instead.
                for error in exc.details.get("writeErrors", []):
                    op, _, job_id = batch[error["index"]]
                    log.error("job %s: storing its final status failed: %s", job_id, error.get("errmsg"))
                    self.store.jobs.update_one(
                        op._filter,
                        {"$set": {"status": "failed", "exceptiontype": "StatusWriteError",
                                  "traceback": f"storing the job's final status failed: {error.get('errmsg')}"}},
                    )

        retry_through_outage(write, "MongoDB status write", log)

    def _ack(self, batch: list[tuple[Any, str | None, str]]) -> None:
        by_queue: dict[str, list[str]] = defaultdict(list)
        for _, queue, job_id in batch:
            if queue is not None:
                by_queue[queue].append(job_id)
        if not by_queue:
            return

        def ack() -> Any:
            pipe = self.store.redis.pipeline(transaction=False)
            for queue, ids in by_queue.items():
                pipe.srem(self.store.keys.queue_running(queue, self.worker_id), *ids)
            return pipe.execute()

        retry_through_outage(ack, "Redis acknowledgement", log)
