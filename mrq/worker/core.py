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
from typing import Any

import gevent
import gevent.event
import gevent.pool
from bson import ObjectId
from greenlet import getcurrent

from .. import current, maintenance
from ..backoff import STORE_ERRORS, retry_through_outage
from ..clock import utcnow
from ..config import Settings
from ..connections import Connections
from ..exceptions import AbortInterrupt, ConfigError, ShutdownInterrupt, StoreUnavailable, TimeoutInterrupt
from ..helpers import emit_metric
from ..joblogs import JobLogHandler
from ..metrics import WorkerMetrics
from ..queue import Queue, RawQueue, paused_queues
from ..scheduler import Scheduler, validate_schedule
from ..startup import run_startup_checks
from ..stats import StatsBuffer
from ..store import Store
from . import recovery
from .admin import AdminServer
from .execution import RunningJob, execute
from .lease import LeaseKeeper
from .notify import NotificationListener
from .outcomes import OutcomeRecorder
from .report import build_report, memory_mb
from .selection import QueueSelector
from .starting import JobStarter
from .tracing import JobTracing
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
EXIT_USAGE = 2
EXIT_STORE_UNAVAILABLE = 3


class Worker:
    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        # Patient MongoDB clients: a task's own calls wait out a short outage (a failover, a hung
        # server) rather than failing the job.
        self.store = store or Store(settings, Connections(settings, patience=max(60.0, settings.mongodb_timeout)))
        self.oid = ObjectId()
        self.id = str(self.oid)
        self.name = settings.name or f"{socket.gethostname().split('.')[0]}.{os.getpid()}"
        self.pool = gevent.pool.Pool(settings.greenlets)
        self.writer = StatusWriter(self.store, self.id)
        self.running: dict[str, RunningJob] = {}
        self.selector = QueueSelector(self.store, settings.queues, settings.dequeue_strategy, self.id,
                                      self._register_queue, lambda: self.graceful_stop, self._known_ids)
        self._check_raw_queues()
        self.starter = JobStarter(self.store, self.id, self.oid, self.running, self.writer.pending_ids)
        self.wake = gevent.event.Event()
        self._logs_wake = gevent.event.Event()
        self._scheduler_stop = gevent.event.Event()
        self._scheduler_greenlet: gevent.Greenlet | None = None
        self.status = "init"
        self.done_jobs = 0
        self.started_jobs = 0
        self.recovered_jobs = 0
        self.stats = StatsBuffer()
        self.tracing = JobTracing(settings)
        self.metrics = WorkerMetrics(self)
        self.admin: AdminServer | None = None
        self.recorder = OutcomeRecorder(self.store, self.id, self.oid, self.writer, self.stats, self._forget,
                                        self.metrics.job_ended)
        self.datestarted = utcnow()
        self.paused: set[str] = set()
        self.lease: LeaseKeeper | None = None
        self.exitcode = EXIT_OK
        self.graceful_stop = False
        self.shutdown_now = False
        self.started_at = time.monotonic()
        self._registered: list[Queue] = []
        self.last_empty_take = 0.0  # monotonic time of the last look at the queues that found nothing
        self._listener: NotificationListener | None = None
        self._log_handler: JobLogHandler | None = None
        self._service_greenlets: list[gevent.Greenlet] = []
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
        except ConfigError as exc:
            log.error("%s", exc)
            return EXIT_USAGE
        try:
            self.loop()
        finally:
            self.finish()
        return self.exitcode

    def init(self) -> None:
        if self.settings.admin_port:
            self.admin = AdminServer(self, self.settings.admin_ip, self.settings.admin_port)
            self.admin.start()
        self.install_signal_handlers()
        self.store.connections.check()
        if self.settings.ensure_indexes:
            created = maintenance.ensure_all_indexes(self.store)
            log.info("indexes: %s", ", ".join(created) if created else "all present")
        run_startup_checks(self.store, ensure=self.settings.ensure_indexes)
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
            self.store.redis, [*self.selector.channels(), keys.control_channel], self.selector.patterns(),
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
                 " ".join(self.selector.names), self.settings.greenlets)

    def register(self) -> None:
        """Take the lease and record the queues where this worker will hold running ids (more are
        added as subqueues are discovered, before their first dequeue)."""
        keys = self.store.keys
        self.store.scripts.lease(keys=[keys.workers], args=[self.id, "register", self.settings.worker_lease])
        names = [e.name for e in self.selector.entries if isinstance(e, Queue) and not e.is_raw]
        names += [q.name for q in self._registered]
        if names:
            self.store.redis.sadd(keys.worker_queues(self.id), *names)

    def _register_queue(self, queue: Queue) -> None:
        """Before the first dequeue from a queue: a crash after it must find our running set there."""
        if queue.is_raw:
            return
        retry_through_outage(lambda: self.store.redis.sadd(self.store.keys.worker_queues(self.id), queue.name),
                             "Redis worker registration", log, give_up=lambda: self.graceful_stop)
        self._registered.append(queue)

    def _check_raw_queues(self) -> None:
        """A raw queue without a valid RAW_QUEUES entry stops the worker at start."""
        for name in self.settings.queues:
            probe = Queue(name.rstrip("/") if name.endswith("/") else name, self.store)
            if isinstance(probe, RawQueue):
                probe.config  # noqa: B018 - raises ConfigError naming the queue

    def _known_ids(self) -> set[str]:
        return set(self.running) | self.writer.pending_ids()

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
        profile = self.tracing.worker_profile()
        if profile:
            log.info("worker profile (top functions by cumulative time):\n%s", profile)
        self.report(extra={"profile": profile} if profile else None)
        if self.admin is not None:
            self.admin.stop()
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
            try:
                taken = self.selector.take(free, self.paused)
            except STORE_ERRORS:
                break  # stopping during a Redis outage: take nothing more
            if taken:
                self.set_status("spawn")
                self.start_jobs(taken)
                gevent.sleep(0)  # let the new jobs start before looking at the queues again
                continue
            self.last_empty_take = time.monotonic()
            if burst:
                if not self.running:
                    break
                self.wake.wait(1.0)
                continue
            self.set_status("wait")
            self.wake.wait(self._idle_timeout())

    def _idle_timeout(self) -> float:
        timeout = IDLE_RECHECK
        if self.selector.next_due is not None:
            timeout = min(timeout, max(0.0, self.selector.next_due - time.time()) + 0.001)
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
                self.selector.note_due(float(data[3:]))
            except ValueError:
                pass
        if channel is not None:
            self.selector.notified(channel[len(self.store.keys.notify_channel("")):])
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

    def start_jobs(self, taken: list[tuple[Queue, list[Any]]]) -> None:
        hook = self.settings.metric_hook
        if hook is not None:
            for queue, items in taken:
                emit_metric(hook, f"queues.{queue.name}.dequeued", len(items))
                emit_metric(hook, "queues.all.dequeued", len(items))
        started = self.starter.start(taken)
        if hook is not None and started:
            emit_metric(hook, "jobs.status.started", len(started))
        for job in started:
            self.running[job.key_id] = job
            self.started_jobs += 1
            greenlet = self.pool.spawn(self.perform, job)
            greenlet.link(self._slot_freed)  # runs after the pool released the slot

    # --- one job ------------------------------------------------------------------------------------

    def perform(self, job: RunningJob) -> None:
        me = getcurrent()
        current.set_current_job(job, me)
        job.add_greenlet(me)
        timer = gevent.get_hub().loop.timer(max(job.settings.timeout, 0.001))
        timer.start(self._on_timeout, job)
        traced = self.tracing.before(job) if self.tracing.active else None
        try:
            outcome = execute(job, self.oid)
        finally:
            timer.close()
            job.remove_greenlet(me)
        if traced is not None:
            outcome.fields.update(self.tracing.after(job, traced, [me]))
        try:
            self.recorder.record(job, outcome)
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
            # A producer inserts the document, then pushes the id (retrying for redis_timeout): jobs
            # younger than that may be on their way. Look at them once they are old enough.
            grace = self.settings.redis_timeout + 1
            maintenance.requeue_lost_jobs(self.store, min_age=grace)
            gevent.spawn_later(grace, self._requeue_lost_later, grace)

    def _requeue_lost_later(self, grace: float) -> None:
        try:
            maintenance.requeue_lost_jobs(self.store, min_age=grace)
        except Exception as exc:
            log.warning("putting back waiting jobs failed (%s); run mrq.basetasks.cleaning.RequeueLostJobs", exc)

    def _restore_running_sets(self) -> None:
        """Our lease entry was gone: put our registration and running ids back."""
        log.error("this worker's lease had expired or Redis lost its data: its running jobs may have been "
                  "recovered by another worker and run twice; registering again")
        self.register()
        pipe = self.store.redis.pipeline(transaction=False)
        for job in list(self.running.values()):
            if not job.raw:
                pipe.sadd(self.store.keys.queue_running(job.source_queue, self.id), job.key_id)
        pipe.execute()

    def report(self, extra: dict[str, Any] | None = None) -> None:
        try:
            self.stats.flush(self.store.redis, self.store.keys)
        except Exception as exc:
            log.debug("writing the throughput counters failed: %s", exc)
        try:
            self.store.workers.update_one({"_id": self.oid}, {"$set": {**build_report(self), **(extra or {})}},
                                          upsert=True)
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
