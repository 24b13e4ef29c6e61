"""The worker: one process running many jobs at once in a pool of gevent greenlets.

The loop takes only as many job ids as it has free greenlets (no prefetch), moving them
atomically from the queue into its running set in Redis (a Lua script), marks them `started` in
MongoDB with one guarded update, and runs each in a greenlet. When nothing is queued it waits on
an event set by queue notifications (pub/sub), finished jobs, due retries and signals: a new job
starts within milliseconds, and an idle worker costs nothing.

Signals: the first SIGINT stops taking jobs and lets the running ones finish; a second SIGINT or
a SIGTERM interrupts the running jobs (status `interrupt`, then queued again at once) and exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import gevent
import gevent.event
import gevent.pool
from bson import ObjectId
from greenlet import getcurrent
from pymongo import UpdateOne

from .. import current, maintenance
from .. import job as jobs
from ..backoff import STORE_ERRORS, retry_through_outage
from ..clock import utcnow
from ..config import Settings
from ..exceptions import AbortInterrupt, ShutdownInterrupt, StoreUnavailable, TimeoutInterrupt
from ..joblogs import JobLogHandler
from ..queue import RegularQueue, is_paused_in, paused_queues
from ..scheduler import Scheduler, validate_schedule
from ..stats import StatsBuffer
from ..store import Store, strings
from . import recovery
from .execution import Outcome, RunningJob, execute
from .lease import LeaseKeeper
from .notify import NotificationListener
from .report import build_report, memory_mb
from .writer import StatusWriter

log = logging.getLogger("mrq.worker")

#: How long an idle worker waits before looking at its queues again without being woken (a
#: safety net for a lost notification; pickup never depends on it).
IDLE_RECHECK = 5.0
#: Seconds between re-reads of the paused queues (a `paused` control message also triggers one).
PAUSED_REFRESH = 1.0
HISTORY_LIMIT = 50

# Exit codes
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_STORE_UNAVAILABLE = 3


class Worker:
    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings)
        self.oid = ObjectId()
        self.id = str(self.oid)
        self.name = settings.name or f"{socket.gethostname().split('.')[0]}.{os.getpid()}"
        self.queues: list[RegularQueue] = [RegularQueue(name, self.store) for name in settings.queues]
        self.pool = gevent.pool.Pool(settings.greenlets)
        self.writer = StatusWriter(self.store, self.id)
        self.running: dict[str, RunningJob] = {}
        self.wake = gevent.event.Event()
        self._logs_wake = gevent.event.Event()
        self._scheduler_stop = gevent.event.Event()
        self._scheduler_greenlet: gevent.Greenlet | None = None
        self.status = "init"
        self.done_jobs = 0
        self.started_jobs = 0
        self.recovered_jobs = 0
        self.stats = StatsBuffer()
        self.datestarted = utcnow()
        self.paused: set[str] = set()
        self.lease: LeaseKeeper | None = None
        self.exitcode = EXIT_OK
        self.graceful_stop = False
        self.shutdown_now = False
        self.started_at = time.monotonic()
        self._next_due: float | None = None
        self._listener: NotificationListener | None = None
        self._log_handler: JobLogHandler | None = None
        self._service_greenlets: list[gevent.Greenlet] = []
        self._on_status: list[Callable[[str], None]] = []
        # Validated now, so that a bad SCHEDULER_TASKS entry stops the worker before it takes a job.
        self.scheduler = Scheduler(self.store, validate_schedule(settings.scheduler_tasks)) \
            if settings.scheduler else None

    # --- lifecycle ---------------------------------------------------------------------------------

    def work(self) -> int:
        """Run until a stop condition; returns the process exit code."""
        current.set_current_config(self.settings, self.store)
        current.set_current_worker(self)
        try:
            self.init()
        except StoreUnavailable as exc:
            log.error("%s", exc)
            return EXIT_STORE_UNAVAILABLE
        try:
            self.loop()
        finally:
            self.finish()
        return self.exitcode

    def init(self) -> None:
        self.install_signal_handlers()
        self.store.connections.check()
        if self.settings.ensure_indexes:
            created = maintenance.ensure_all_indexes(self.store)
            log.info("indexes: %s", ", ".join(created) if created else "all present")
        logs = self.store.logs
        if logs is not None:
            self._log_handler = JobLogHandler(logs, self.settings.default_job_ttl)
            logging.getLogger("mrq.current").addHandler(self._log_handler)
            self._service_greenlets.append(gevent.spawn(self._flush_logs_forever))
        self.register()
        self.paused = paused_queues(self.store)
        self.lease = LeaseKeeper(self.settings, self.id)
        self.lease.start()
        keys = self.store.keys
        self._listener = NotificationListener(
            self.store.redis, [keys.notify_channel(q.name) for q in self.queues] + [keys.control_channel], [],
            self._on_message,
        )
        self._listener.start()
        self._service_greenlets.append(gevent.spawn(self._save_progress_forever))
        self._service_greenlets.append(gevent.spawn(self._recover_forever))
        self._service_greenlets.append(gevent.spawn(self._report_forever))
        self._service_greenlets.append(gevent.spawn(self._refresh_paused_forever))
        if self.scheduler is not None:
            self._scheduler_greenlet = gevent.spawn(self._schedule_forever)
        log.info("worker %s (%s) started: queues %s, %d greenlets", self.name, self.id,
                 " ".join(q.name for q in self.queues), self.settings.greenlets)

    def register(self) -> None:
        """Take the lease and record the queues where this worker will hold running ids."""
        keys = self.store.keys
        self.store.scripts.lease(keys=[keys.workers], args=[self.id, "register", self.settings.worker_lease])
        self.store.redis.sadd(keys.worker_queues(self.id), *[q.name for q in self.queues])

    def finish(self) -> None:
        self.set_status("kill" if self.shutdown_now else "join")
        if self.shutdown_now:
            self._interrupt_running()
            self.pool.join(timeout=30)
        else:
            self.pool.join()  # a second SIGINT or a SIGTERM interrupts the jobs and ends this wait
        self.writer.wait_idle(timeout=60)
        if self._listener is not None:
            self._listener.stop()
        if self._scheduler_greenlet is not None:
            self._scheduler_stop.set()
            self._scheduler_greenlet.join(timeout=10)  # let a check in progress complete
            self._scheduler_greenlet.kill(block=True, timeout=2)
        for greenlet in self._service_greenlets:
            greenlet.kill(block=True, timeout=2)
        self._flush_logs()
        if self._log_handler is not None:
            logging.getLogger("mrq.current").removeHandler(self._log_handler)
        clean = not self.running and self.writer.backlog == 0
        if self.lease is not None:
            # Jobs still running (stuck in C code...) keep their ids in the running sets: the lease
            # then expires and another worker recovers them.
            self.lease.stop(release=clean)
        if clean:
            try:
                self.store.redis.delete(self.store.keys.worker_queues(self.id))
            except Exception as exc:
                log.warning("could not unregister the worker: %s", exc)
        self.set_status("stop")
        self.report()
        log.info("worker %s stopped after %d jobs", self.name, self.done_jobs)
        current.set_current_worker(None)

    def install_signal_handlers(self) -> None:
        if getcurrent().parent is not None:
            return  # not the main greenlet (tests running a worker inside gevent): no signals
        try:
            gevent.signal_handler(signal.SIGINT, self.on_sigint)
            gevent.signal_handler(signal.SIGTERM, self.on_sigterm)
        except ValueError:
            pass  # not the main thread

    def on_sigint(self) -> None:
        if self.graceful_stop:
            log.warning("second SIGINT: interrupting running jobs")
            self.stop(now=True)
        else:
            log.warning("SIGINT: finishing %d running jobs, taking no new ones (SIGINT again to interrupt them)",
                        len(self.running))
            self.stop()

    def on_sigterm(self) -> None:
        log.warning("SIGTERM: interrupting %d running jobs; they will be queued again", len(self.running))
        self.stop(now=True)

    def stop(self, now: bool = False) -> None:
        self.graceful_stop = True
        self._scheduler_stop.set()
        if now:
            self.shutdown_now = True
            self.set_status("kill")
            gevent.spawn(self._interrupt_running)
        self.wake.set()

    def set_status(self, status: str) -> None:
        self.status = status
        for callback in self._on_status:
            callback(status)

    # --- the loop -----------------------------------------------------------------------------------

    def limits_reached(self) -> bool:
        s = self.settings
        if s.max_jobs and self.started_jobs >= s.max_jobs:
            return True
        return bool(s.max_time and time.monotonic() - self.started_at >= s.max_time)

    def loop(self) -> None:
        burst = self.settings.dequeue_strategy == "burst"
        while not self.graceful_stop:
            if self.limits_reached():
                log.info("limit reached (max_jobs=%s, max_time=%s): stopping", self.settings.max_jobs,
                         self.settings.max_time)
                break
            free = self.pool.free_count()
            if self.settings.max_jobs:
                free = min(free, self.settings.max_jobs - self.started_jobs)
            if free <= 0 or self.writer.backlog > 4 * self.settings.greenlets:
                self.set_status("full")
                self.wake.clear()
                self.wake.wait(1.0)
                continue
            self.wake.clear()
            taken = self.dequeue(free)
            if taken:
                self.set_status("spawn")
                self.start_jobs(taken)
                continue
            if burst:
                if not self.running:
                    break
                self.wake.wait(1.0)
                continue
            self.set_status("wait")
            self.wake.wait(self._idle_timeout())

    def _idle_timeout(self) -> float:
        timeout = IDLE_RECHECK
        if self._next_due is not None:
            timeout = min(timeout, max(0.0, self._next_due - time.time()) + 0.001)
        if self.settings.max_time:
            timeout = min(timeout, max(0.0, self.settings.max_time - (time.monotonic() - self.started_at)))
        return timeout

    def _on_message(self, channel: str | None, data: bytes | None) -> None:
        """A pub/sub message (or None after a (re)subscription)."""
        if channel == self.store.keys.control_channel and data is not None:
            self._on_control(data)
            return
        if data and data.startswith(b"at:"):
            try:
                self._note_due(float(data[3:]))
            except ValueError:
                pass
        self.wake.set()

    def _on_control(self, data: bytes) -> None:
        command, _, argument = data.decode(errors="replace").partition(" ")
        if command == "paused":
            gevent.spawn(self._refresh_paused)
            return
        if command == "abort":
            job = self.running.get(argument.strip())
            if job is not None and not job.aborted:
                job.aborted = True
                log.warning("job %s (%s): abort requested, stopping it", job.id, job.path)
                job.kill(AbortInterrupt("job aborted from outside while running"))

    def _note_due(self, due: float) -> None:
        if self._next_due is None or due < self._next_due:
            self._next_due = due

    def active_queues(self) -> list[RegularQueue]:
        if not self.paused:
            return self.queues
        return [q for q in self.queues if not is_paused_in(q.name.rstrip("/"), self.paused)]

    def _refresh_paused(self) -> None:
        try:
            paused = paused_queues(self.store)
        except STORE_ERRORS:
            return
        if paused != self.paused:
            resumed = self.paused - paused
            self.paused = paused
            if resumed:
                self.wake.set()

    def _refresh_paused_forever(self) -> None:
        while True:
            self._refresh_paused()
            gevent.sleep(PAUSED_REFRESH)

    def dequeue(self, free: int) -> list[tuple[RegularQueue, list[str]]]:
        """Take up to `free` ids, queue by queue in priority order."""
        taken: list[tuple[RegularQueue, list[str]]] = []
        next_due: float | None = None
        for queue in self.active_queues():
            if free <= 0:
                break
            failures = 0

            def attempt(queue: RegularQueue = queue, count: int = free) -> tuple[list[str], float | None]:
                nonlocal failures
                try:
                    return queue.dequeue(count, self.id)
                except STORE_ERRORS:
                    failures += 1
                    raise

            try:
                ids, due = retry_through_outage(attempt, "Redis dequeue", log, give_up=lambda: self.graceful_stop)
            except STORE_ERRORS:
                break  # stopping during an outage: take nothing more
            if failures:
                # A call that timed out on our side may still have run on the server: its ids
                # would sit in our running set, unknown to us. Take them now.
                ids += self._unknown_running_ids(queue, ids)
            if due is not None and (next_due is None or due < next_due):
                next_due = due
            if ids:
                taken.append((queue, ids))
                free -= len(ids)
        if free > 0:
            self._next_due = next_due
        return taken

    def _unknown_running_ids(self, queue: RegularQueue, just_taken: list[str]) -> list[str]:
        members = strings(self.store.redis.smembers(self.store.keys.queue_running(queue.name, self.id)))
        known = set(self.running) | self.writer.pending_ids() | set(just_taken)
        unknown = [job_id for job_id in members if job_id not in known]
        if unknown:
            log.warning("taking %d job ids found in this worker's running set after a Redis timeout", len(unknown))
        return unknown

    def start_jobs(self, taken: list[tuple[RegularQueue, list[str]]]) -> None:
        """Mark the taken jobs started (one guarded update for all), load them, run them."""
        queue_of = {job_id: queue for queue, ids in taken for job_id in ids}
        oids = [ObjectId(job_id) for job_id in queue_of]
        now = utcnow()

        def mark_started() -> list[dict[str, Any]]:
            self.store.jobs.update_many(
                {"_id": {"$in": oids}, "status": {"$in": sorted(jobs.STARTABLE_STATUSES)}},
                {"$set": {"status": jobs.STARTED, "datestarted": now, "dateupdated": now, "worker": self.oid},
                 "$unset": {"dateexpires": "", "dateretry": ""}},
            )
            return list(self.store.jobs.find({"_id": {"$in": oids}}))

        docs = retry_through_outage(mark_started, "MongoDB job start", log)
        found = {str(doc["_id"]): doc for doc in docs}
        pending = self.writer.pending_ids()
        not_ours: dict[str, list[str]] = {}
        for job_id, queue in queue_of.items():
            if job_id in self.running or job_id in pending:
                continue  # a duplicate of an id we are running or finishing: the running-set entry is that job's
            doc = found.get(job_id)
            if doc is None or doc.get("status") != jobs.STARTED or doc.get("worker") != self.oid \
                    or job_id in self.running:
                if doc is None:
                    log.warning("job %s was queued on %s but has no document (expired or deleted): dropped",
                                job_id, queue.name)
                not_ours.setdefault(queue.name, []).append(job_id)
                continue
            job = RunningJob(doc, queue.name, self.store)
            self.running[job_id] = job
            self.started_jobs += 1
            greenlet = self.pool.spawn(self.perform, job)
            greenlet.link(self._slot_freed)  # runs after the pool released the slot
        if not_ours:
            def ack() -> None:
                pipe = self.store.redis.pipeline(transaction=False)
                for name, ids in not_ours.items():
                    pipe.srem(self.store.keys.queue_running(name, self.id), *ids)
                pipe.execute()

            retry_through_outage(ack, "Redis acknowledgement", log)

    # --- one job ------------------------------------------------------------------------------------

    def perform(self, job: RunningJob) -> None:
        me = getcurrent()
        current.set_current_job(job, me)
        job.add_greenlet(me)
        timer = gevent.get_hub().loop.timer(max(job.settings.timeout, 0.001))
        timer.start(self._on_timeout, job)
        try:
            outcome = execute(job, self.oid)
        finally:
            timer.close()
            job.remove_greenlet(me)
        try:
            self.record(job, outcome)
        finally:
            current.set_current_job(None, me)
            self._forget(job)
            self.done_jobs += 1
            if self._log_handler is not None and self._log_handler.pending:
                self._logs_wake.set()

    def _forget(self, job: RunningJob) -> None:
        """Drop the job from the local running table (only this run of it: the same id may already
        run again here after a retry)."""
        if self.running.get(job.key_id) is job:
            del self.running[job.key_id]

    def _slot_freed(self, _greenlet: gevent.Greenlet) -> None:
        self.wake.set()

    def _on_timeout(self, job: RunningJob) -> None:
        if job.key_id not in self.running:
            return
        job.timed_out = True
        log.warning("job %s (%s) timed out after %gs: killing it", job.id, job.path, job.settings.timeout)
        job.kill(TimeoutInterrupt(f"job exceeded its timeout of {job.settings.timeout:g}s"))

    def _interrupt_running(self) -> None:
        for job in list(self.running.values()):
            if not job.interrupted:
                job.interrupted = True
                job.kill(ShutdownInterrupt("worker shutting down"))

    def record(self, job: RunningJob, outcome: Outcome) -> None:
        """Store how the job ended. Successes and errors go through the batched writer; retries
        and interrupts, which also move the id in Redis, are written at once."""
        now = utcnow()
        fields = jobs.final_fields(outcome.status, job.settings, now, job.datestarted)
        fields.update(outcome.fields)
        update: dict[str, Any] = {"$set": fields}
        if outcome.history is not None:
            update["$push"] = {"traceback_history": {"$each": [outcome.history], "$slice": -HISTORY_LIMIT}}
        guard = {"_id": job.id, "status": jobs.STARTED, "worker": self.oid}
        self.stats.add(f"{outcome.status}:{job.source_queue}")
        if outcome.log_message:
            log.info("job %s (%s) %s", job.id, job.path, outcome.log_message)
        if outcome.retry is not None:
            self._record_retry(job, outcome, guard, update, now)
        elif outcome.status == jobs.INTERRUPT:
            self._record_interrupt(job, guard, update)
        else:
            self.writer.add(UpdateOne(guard, update), job.source_queue, job.key_id)

    def _record_retry(self, job: RunningJob, outcome: Outcome, guard: dict[str, Any], update: dict[str, Any],
                      now: datetime) -> None:
        retry = outcome.retry
        assert retry is not None
        fields = update["$set"]
        del fields["dateexpires"], fields["datefinished"]
        fields.update({"queue": retry.queue, "retry_count": retry.retry_count})
        target = RegularQueue(retry.queue, self.store)
        if retry.delay > 0:
            fields["dateretry"] = now + timedelta(seconds=retry.delay)
        else:
            fields["status"] = jobs.QUEUED
            fields["datequeued"] = now

        if not self._write_once(guard, update, "MongoDB retry write"):
            self._ack_one(job)
            return

        self._forget(job)  # from here on, this id may be taken again, by this worker too
        due = time.time() + retry.delay

        def move() -> None:
            if retry.queue == job.source_queue:
                # One atomic step: out of our running set, into the queue (or its delayed set).
                self._move_running(job, "d" if retry.delay > 0 else "q", due)
                return
            # Another queue (another slot): push first, then leave our running set; a crash in
            # between leaves a duplicate id, which workers skip, never a lost one.
            if retry.delay > 0:
                target.push_delayed({job.key_id: due})
            else:
                target.push([job.key_id])
            self._ack_one(job)

        retry_through_outage(move, "Redis retry", log)

    def _record_interrupt(self, job: RunningJob, guard: dict[str, Any], update: dict[str, Any]) -> None:
        """Store `interrupt` (with where it was), then queue the job again at the front of its queue."""
        fields = update["$set"]
        del fields["dateexpires"]

        requeue = self._write_once(guard, update, "MongoDB interrupt write", maximum=1.0)
        if requeue:
            retry_through_outage(lambda: self.store.jobs.update_one(
                {"_id": job.id, "status": jobs.INTERRUPT},
                {"$set": {"status": jobs.QUEUED, "datequeued": utcnow(), "dateupdated": utcnow()},
                 "$unset": {"datefinished": ""}},
            ), "MongoDB requeue write", log, maximum=1.0)

        self._forget(job)
        retry_through_outage(lambda: self._move_running(job, "q" if requeue else "x", 0.0), "Redis requeue", log,
                             maximum=1.0)

    def _write_once(self, guard: dict[str, Any], update: dict[str, Any], what: str, maximum: float = 5.0) -> bool:
        """Apply a guarded update through an outage. True when it applied, including when an
        attempt that failed on our side (a timeout) had in fact applied on the server."""
        attempts = 0
        marker = update["$set"]["dateupdated"]

        def write() -> bool:
            nonlocal attempts
            attempts += 1
            if self.store.jobs.update_one(guard, update).matched_count == 1:
                return True
            return attempts > 1 and self.store.jobs.count_documents(
                {"_id": guard["_id"], "worker": self.oid, "dateupdated": marker}, limit=1) == 1

        return retry_through_outage(write, what, log, maximum=maximum)

    def _move_running(self, job: RunningJob, action: str, score: float) -> None:
        """Atomically move a job id from our running set to the front of its queue ("q"), to its
        delayed set ("d", at `score`), or nowhere ("x"); then wake the workers."""
        keys = self.store.keys
        queue = job.source_queue
        self.store.scripts.requeue_running(
            keys=[keys.queue_ids(queue), keys.queue_running(queue, self.id), keys.queue_delayed(queue)],
            args=[job.key_id, action, repr(score)],
        )
        if action != "x":
            self.store.redis.publish(keys.notify_channel(queue), "1" if action == "q" else f"at:{score:f}")

    def _ack_one(self, job: RunningJob) -> None:
        self.store.redis.srem(self.store.keys.queue_running(job.source_queue, self.id), job.key_id)

    # --- service greenlets ---------------------------------------------------------------------------

    def _flush_logs(self) -> None:
        if self._log_handler is None or not self._log_handler.pending:
            return
        try:
            self._log_handler.flush()
        except Exception as exc:
            log.warning("storing job logs failed (%s); will retry", exc)

    def _flush_logs_forever(self) -> None:
        while True:
            self._logs_wake.wait(1.0)
            self._logs_wake.clear()
            self._flush_logs()
            gevent.sleep(0.05)  # let the lines of jobs ending together share one insert

    def _recover_forever(self) -> None:
        """Give back the jobs of workers whose lease expired; re-register if ours was lost."""
        interval = max(0.5, min(self.settings.worker_lease / 3.0, 5.0))
        while True:
            try:
                if self.lease is not None and self.lease.reregistered:
                    self.lease.reregistered = False
                    self._restore_running_sets()
                self._check_epoch()
                self.recovered_jobs += recovery.recover_expired(self.store, self.id, self.settings.max_recoveries)
            except Exception as exc:
                log.warning("recovering dead workers' jobs failed (%s); will retry", exc)
            gevent.sleep(interval)

    def _check_epoch(self) -> None:
        """If Redis lost its data (the epoch key is gone), the first worker to notice puts every
        waiting job MongoDB knows about back into Redis."""
        if self.store.redis.set(self.store.keys.epoch, self.id, nx=True):
            log.info("Redis has no mrq epoch key (new or emptied): checking MongoDB for waiting jobs to put back")
            maintenance.requeue_lost_jobs(self.store, min_age=0)

    def _restore_running_sets(self) -> None:
        """Our lease entry was gone: put our registration and running ids back."""
        log.error("this worker's lease had expired or Redis lost its data: its running jobs may have been "
                  "recovered by another worker and run twice; registering again")
        self.register()
        pipe = self.store.redis.pipeline(transaction=False)
        for job in list(self.running.values()):
            pipe.sadd(self.store.keys.queue_running(job.source_queue, self.id), job.key_id)
        pipe.execute()

    def report(self) -> None:
        try:
            self.stats.flush(self.store.redis, self.store.keys)
        except Exception as exc:
            log.debug("writing the throughput counters failed: %s", exc)
        try:
            self.store.workers.update_one({"_id": self.oid}, {"$set": build_report(self)}, upsert=True)
        except Exception as exc:
            log.debug("writing the worker report failed: %s", exc)

    def _report_forever(self) -> None:
        while True:
            self.report()
            max_memory = self.settings.max_memory
            if max_memory and not self.graceful_stop and memory_mb() > max_memory:
                log.warning("memory %.0f MB is over --max_memory %d MB: finishing running jobs and exiting",
                            memory_mb(), max_memory)
                self.stop()
            gevent.sleep(self.settings.report_interval)

    def _schedule_forever(self) -> None:
        assert self.scheduler is not None
        try:
            self.scheduler.sync()
        except Exception as exc:  # check() syncs first when this failed
            log.warning("scheduler sync failed (%s); will retry", exc)
        while not self.graceful_stop:
            self.scheduler.check()
            self._scheduler_stop.wait(self.settings.scheduler_interval)

    def _save_progress_forever(self) -> None:
        while True:
            gevent.sleep(1.0)
            for job in list(self.running.values()):
                if job.progress_dirty:
                    try:
                        job.save_progress()
                    except Exception as exc:
                        log.debug("saving progress of %s failed: %s", job.id, exc)
