"""How a job ended -> the lifecycle transition that stores it, plus what every ending updates
(counters, metrics, the log line, the `max_concurrency` slot).

- success and error statuses: the final write goes to the batched writer, which acknowledges
  the id once the write is stored;
- retry: `HeldJobs.retry` (the write at once, then the id to the target queue);
- interrupt: `HeldJobs.interrupt` (queued again at the front of its queue at once).

Raw jobs have no running set; their documents may not exist yet (`statuses_no_storage`
containing "started"): then the write is an upsert, or nothing when the status is not stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..clock import utcnow
from ..helpers import emit_metric
from ..lifecycle import HeldJobs, statuses
from ..lifecycle.documents import final_fields, ttl_for
from ..stats import StatsBuffer
from .execution import Outcome, RunningJob
from .writer import StatusWriter

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("mrq.worker")


class OutcomeRecorder:
    def __init__(self, store: Store, held: HeldJobs, writer: StatusWriter, stats: StatsBuffer,
                 ended: Callable[[str, str, float | None], None]) -> None:
        self.store = store
        self.held = held
        self.writer = writer
        self.stats = stats
        self.ended = ended  # metrics: (path, status, seconds)

    def record(self, job: RunningJob, outcome: Outcome) -> None:
        status = outcome.status
        if status in job.no_storage and not job.inserted and outcome.retry is None and status != statuses.INTERRUPT:
            self._count(job, outcome, None)  # a raw job whose status is not stored: nothing to write
            return
        if outcome.retry is not None:
            self._count(job, outcome, None)
            retry = outcome.retry
            self.held.retry(job, outcome.fields, outcome.history, retry.queue, retry.retry_count, retry.delay)
        elif status == statuses.INTERRUPT:
            self._count(job, outcome, None)
            self.held.interrupt(job, outcome.fields, outcome.history)
        elif status in job.no_storage:
            self._count(job, outcome, None)
            if job.inserted:  # e.g. success not stored for a job whose start was: remove it
                self.writer.add(self.held.remove(job))
        else:
            fields = final_fields(status, ttl_for(status, job.settings), utcnow(), job.datestarted)
            fields.update(outcome.fields)
            self._count(job, outcome, fields.get("totaltime"))
            self.writer.add(self.held.final(job, fields, outcome.history))

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

    def _release_slot(self, job: RunningJob) -> None:
        try:
            self.store.redis.zrem(self.store.keys.concurrency(job.path), job.key_id)
        except Exception as exc:  # it expires by itself
            log.warning("releasing the concurrency slot of job %s failed: %s", job.id, exc)
