"""Batched final status writes.

When a job ends, its greenlet hands its final write to the writer and is free at once. The
writer sends every pending write in one `bulk_write` (one command for many jobs), then removes
those ids from the worker's running sets in Redis (one SREM per queue). The order matters: until
the status is in MongoDB the id stays in the running set, so a crash in between gets the job
recovered and run again (at-least-once), never lost. `idle` is true only when nothing is pending,
being written or being acknowledged: a worker releases its lease only then.
"""

from __future__ import annotations

import logging

import gevent
import gevent.event

from ..lifecycle import FinalWrite, HeldJobs

log = logging.getLogger("mrq.worker")


class StatusWriter:
    def __init__(self, held: HeldJobs) -> None:
        self.held = held
        self._pending: list[FinalWrite] = []
        self._in_flight: list[FinalWrite] = []
        self._greenlet: gevent.Greenlet | None = None
        self._idle = gevent.event.Event()
        self._idle.set()
        self.flushes = 0

    def add(self, final: FinalWrite) -> None:
        self._pending.append(final)
        self._idle.clear()
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)

    def pending(self) -> dict[str, str | None]:
        """Ids whose final status is queued, being written or being acknowledged -> the queue
        whose running set holds them (None: a raw job)."""
        return {one.key_id: one.queue for one in [*self._in_flight, *self._pending]}

    @property
    def backlog(self) -> int:
        """Writes not yet sent (the loop slows down taking jobs when this grows)."""
        return len(self._pending)

    @property
    def idle(self) -> bool:
        return self._idle.is_set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every write is stored and acknowledged; False on timeout."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            self._in_flight = batch
            try:
                self.held.ack(batch, self.held.write_finals(batch))
            except Exception:  # a bug, not an outage (outages are waited out inside): never drop the batch
                log.exception("storing %d final statuses failed; retrying in 1s", len(batch))
                self._pending[:0] = batch
                self._in_flight = []
                gevent.sleep(1.0)
                continue
            self._in_flight = []
            self.flushes += 1
        self._idle.set()
