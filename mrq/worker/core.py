"""The worker: one process running many jobs at once in a pool of gevent greenlets.

The loop takes only as many job ids as it has free greenlets (no prefetch), moving them
atomically from the queue into its running set in Redis (a Lua script), marks them `started` in
MongoDB with one guarded update, and runs each in a greenlet. When nothing is queued, a worker of
one queue waits inside Redis for the next id (a blocking move, pickup.py); any other waits on an
event set by queue notifications (pub/sub), finished jobs, due retries and signals: a new job
starts within milliseconds, and an idle worker costs nothing. Every change of a job's status goes
through the lifecycle (mrq.lifecycle.HeldJobs).

Signals: the first SIGINT stops taking jobs and lets the running ones finish; a second SIGINT or
a SIGTERM interrupts the running jobs (queued again at once) and exits. A worker releases its
lease only when nothing is left in its running sets and every write is acknowledged; otherwise
it exits leaving the lease to expire, and another worker takes its jobs back.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from types import FrameType
from typing import Any

import gevent
import gevent.event
import gevent.pool
from bson import ObjectId
from greenlet import getcurrent

from .. import current, maintenance, subpool
from ..backoff import STORE_ERRORS, retry_through_outage
from ..clock import utcnow
from ..config import Settings
from ..connections import Connections
from ..exceptions import AbortInterrupt, ConfigError, ShutdownInterrupt, StoreUnavailable, TimeoutInterrupt
from ..helpers import emit_metric
from ..joblogs import JobLogHandler
from ..lifecycle import HeldJobs
from ..queue import Queue, RawQueue, RegularQueue, paused_queues, worker_queue
from ..queue.registry import adopt_legacy
from ..scheduler import Scheduler, validate_schedule
from ..startup import run_startup_checks
from ..stats import StatsBuffer
from ..storage.leases import Leases
from ..store import Store
from .admin import AdminServer
from .execution import RunningJob, execute
from .exiting import jobs_left, within
from .housekeeping import Housekeeping
from .lease import LeaseKeeper
from .metrics import WorkerMetrics
from .notify import NotificationListener, due_time
from .outcomes import OutcomeRecorder
from .pickup import BlockingPickup
from .report import build_report
from .selection import QueueSelector
from .starting import JobStarter
from .taskfilter import TaskFilter
from .tracing import JobTracing
from .watchdog import EXIT_RUNAWAY, Watchdog
from .writer import StatusWriter

log = logging.getLogger("mrq.worker")

#: How long an idle worker waits before looking at its queues again without being woken (a
#: safety net for a lost notification; pickup never depends on it).
IDLE_RECHECK = 5.0
#: At exit, how long the worker waits for its last final statuses to be stored and acknowledged
#: (MongoDB or Redis unreachable): past it, it exits and leaves its lease to expire.
SHUTDOWN_WRITE_WAIT = 20.0

# Exit codes
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_STORE_UNAVAILABLE = 3
#: A job kept the CPU past its timeout and could not be interrupted (watchdog.py).
EXIT_RUNAWAY_JOB = EXIT_RUNAWAY
#: The worker stopped with jobs it could not finish or acknowledge; they are recovered once its
#: lease expires.
EXIT_JOBS_LEFT = 5


class Worker:
    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        # Patient MongoDB clients: a task's own calls wait out a short outage (a failover, a hung
        # server) rather than failing the job. They count their round trips (the worker's metrics).
        self.store = store or Store(settings, Connections(settings, patience=max(60.0, settings.mongodb_timeout),
                                                          count_io=True))
        self.oid = ObjectId()
        self.id = str(self.oid)
        self.name = settings.name or f"{socket.gethostname().split('.')[0]}.{os.getpid()}"
        self.pool = gevent.pool.Pool(settings.greenlets)
        self.running: dict[str, RunningJob] = {}
        self.held = HeldJobs(self.store, self.id, self.oid, forget=self._forget)
        self.writer = StatusWriter(self.held)
        self.leases = Leases(self.store.redis, self.store.keys)
        self.graceful_stop = False
        self.shutdown_now = False
        self.selector = QueueSelector(self.store, settings.queues, settings.dequeue_strategy, self,
                                      TaskFilter.from_settings(settings))
        self._check_raw_queues()
        self.starter = JobStarter(self.store, self.held, self.oid, self.running, self.writer.pending)
        self.wake = gevent.event.Event()
        self.pickup = BlockingPickup(self.store, self.id, settings.redis_timeout)
        self._block_until = 0.0  # unix time at which the current blocking pickup ends by itself
        self.status = "init"
        self.done_jobs = 0
        self.started_jobs = 0
        self.recovered_jobs = 0
        self.stats = StatsBuffer()
        self.tracing = JobTracing(settings)
        self.metrics = WorkerMetrics(self)
        self.admin: AdminServer | None = None
        self.recorder = OutcomeRecorder(self.store, self.held, self.writer, self.stats, self.metrics.job_ended)
        self.datestarted = utcnow()
        self.paused: set[str] = set()
        self.lease: LeaseKeeper | None = None
        self.watchdog: Watchdog | None = None
        self.exitcode = EXIT_OK
        self.started_at = time.monotonic()
        self._registered: list[Queue] = []
        self.last_empty_take = 0.0  # monotonic time of the last look at the queues that found nothing
        self._listener: NotificationListener | None = None
        self.log_handler: JobLogHandler | None = None
        # Validated now, so that a bad SCHEDULER_TASKS entry stops the worker before it takes a job.
        self.scheduler = Scheduler(self.store, validate_schedule(settings.scheduler_tasks)) \
            if settings.scheduler else None
        self.housekeeping = Housekeeping(self)

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
            self.admin = AdminServer(self, self.settings.admin_ip, self.settings.admin_port, self.settings.admin_token)
            self.admin.start()
        if self.install_signal_handlers():
            self.watchdog = Watchdog(job_in_frames, current.get_current_job, self.settings.worker_lease)
            self.watchdog.start()
        self.store.connections.check()
        if self.settings.ensure_indexes:
            created = maintenance.ensure_all_indexes(self.store)
            log.info("indexes: %s", ", ".join(created) if created else "all present")
        run_startup_checks(self.store, ensure=self.settings.ensure_indexes)
        adopted = adopt_legacy(self.store)
        if adopted:
            log.info("queue registry: %d queue names adopted from the sets of an earlier version", adopted)
        logs = self.store.logs
        if logs is not None:
            self.log_handler = JobLogHandler(logs, self.settings.default_job_ttl)
            logging.getLogger("mrq.current").addHandler(self.log_handler)
        self.register()
        self.paused = paused_queues(self.store)
        self.lease = LeaseKeeper(self.settings, self.id)
        self.lease.start()
        channels = self.selector.channels(self.pickup.queue_name(self.selector))
        self._listener = NotificationListener(self.store.redis, [*channels, self.store.keys.control_channel],
                                              self.selector.patterns(), self._on_message)
        self._listener.start()
        self.housekeeping.start()
        log.info("worker %s (%s) started: queues %s, %d greenlets", self.name, self.id,
                 " ".join(self.selector.names), self.settings.greenlets)

    def register(self) -> None:
        """Take the lease and record the queues where this worker will hold running ids (more are
        added as subqueues are discovered, before their first dequeue)."""
        self.leases.register(self.id, self.settings.worker_lease)
        names = [e.name for e in self.selector.entries if isinstance(e, Queue) and not e.is_raw]
        self.leases.add_queues(self.id, names + [q.name for q in self._registered])

    def register_queue(self, queue: Queue) -> None:
        """Before the first dequeue from a queue: a crash after it must find our running set there."""
        if queue.is_raw:
            return
        retry_through_outage(lambda: self.leases.add_queues(self.id, [queue.name]), "Redis worker registration",
                             log, give_up=lambda: self.graceful_stop)
        self._registered.append(queue)

    def _check_raw_queues(self) -> None:
        """A raw queue without a valid RAW_QUEUES entry stops the worker at start."""
        for name in self.settings.queues:
            probe = Queue(name.rstrip("/"), self.store) if name.endswith("/") else worker_queue(name, self.store)
            if isinstance(probe, RawQueue):
                probe.config  # noqa: B018 - raises ConfigError naming the queue

    def known_ids(self) -> set[str]:
        """Ids of our running sets that this process knows about (running or finishing)."""
        return set(self.running) | set(self.writer.pending())

    def finish(self) -> None:
        self.set_status("kill" if self.shutdown_now else "join")
        if self.shutdown_now:
            self._interrupt_running()
            self.pool.join(timeout=30)
        else:
            self.pool.join()  # a second SIGINT or a SIGTERM interrupts the jobs and ends this wait
        self.writer.wait_idle(timeout=SHUTDOWN_WRITE_WAIT)
        self.pickup.close()
        if self._listener is not None:
            self._listener.stop()
        self.housekeeping.stop()
        within(5.0, self.housekeeping.flush_logs)
        if self.log_handler is not None:
            logging.getLogger("mrq.current").removeHandler(self.log_handler)
        left = jobs_left(self, self.leases)
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.lease is not None:
            # Jobs still running (stuck in C code...) or not acknowledged keep their ids in the running
            # sets: the lease then expires and another worker recovers them.
            self.lease.stop(release=not left)
        if left:
            log.warning("stopping with %s: leaving this worker's lease to expire; another worker takes these jobs "
                        "back within %gs", left, self.settings.worker_lease + self.settings.worker_lease / 3)
            self.exitcode = self.exitcode or EXIT_JOBS_LEFT
        else:
            within(5.0, lambda: self.store.redis.delete(self.store.keys.worker_queues(self.id)))
        self.set_status("stop")
        profile = self.tracing.worker_profile()
        if profile:
            log.info("worker profile (top functions by cumulative time):\n%s", profile)
        within(5.0, lambda: self.report(extra={"profile": profile} if profile else None))
        if self.admin is not None:
            self.admin.stop()
        log.info("worker %s stopped after %d jobs", self.name, self.done_jobs)
        current.set_current_worker(None)

    def install_signal_handlers(self) -> bool:
        """True when this is the process's main greenlet (the worker owns the process)."""
        if getcurrent().parent is not None:
            return False  # not the main greenlet (tests running a worker inside gevent): no signals
        try:
            gevent.signal_handler(signal.SIGINT, self.on_sigint)
            gevent.signal_handler(signal.SIGTERM, self.on_sigterm)
        except ValueError:
            return False  # not the main thread
        return True

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
        self.housekeeping.scheduler_stop.set()
        if now:
            self.shutdown_now = True
            self.set_status("kill")
            gevent.spawn(self._interrupt_running)
        self.wake.set()
        self.pickup.unblock()

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
            if not self._wait_blocking():
                self.wake.wait(self._idle_timeout())

    def _wait_blocking(self) -> bool:
        """An idle worker of one queue waits inside Redis for its next job and starts it
        (pickup.py). False when it cannot (several queues, a paused queue...)."""
        queue = self.selector.sole_queue(self.paused)
        if queue is None or not self.pickup.supports(queue):
            return False
        timeout = self._idle_timeout()
        self._block_until = time.time() + timeout
        try:
            items = self.pickup.take(queue, timeout)
        except STORE_ERRORS as exc:
            log.debug("blocking pickup failed: %s", exc)
            self.wake.wait(0.5)  # the next take goes through the outage's retries
            return True
        if not self.pickup.enabled and self._listener is not None:  # refused (an old Redis, an ACL)
            self._listener.resubscribe([*self.selector.channels(), self.store.keys.control_channel])
        if items:
            self.set_status("spawn")
            self.start_jobs([(queue, items)])
            if self.shutdown_now:  # the stop's interruption may have run before these started
                self._interrupt_running()
            gevent.sleep(0)  # let the job start before looking at the queues again
        return True

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
        due = due_time(data)
        if due is not None:
            self.selector.note_due(due)
            if due < self._block_until:
                self.pickup.unblock()
        if channel is not None:
            for prefix in (self.store.keys.notify_channel(""), self.store.keys.due_channel("")):
                if channel.startswith(prefix):
                    self.selector.notified(channel[len(prefix):])
        self.wake.set()

    def _on_control(self, data: bytes) -> None:
        command, _, argument = data.decode(errors="replace").partition(" ")
        if command == "paused":
            gevent.spawn(self._paused_changed)
            return
        if command == "abort":
            job = self.running.get(argument.strip())
            if job is not None and not job.aborted:
                job.aborted = True
                log.warning("job %s (%s): abort requested, stopping it", job.id, job.path)
                job.kill(AbortInterrupt("job aborted from outside while running"))

    def _paused_changed(self) -> None:
        self.housekeeping.refresh_paused()
        self.pickup.unblock()  # a blocking pickup must not take a job of a queue paused meanwhile

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
            if self.log_handler is not None and self.log_handler.pending:
                self.housekeeping.logs_wake.set()

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

    # --- reports and lost leases ---------------------------------------------------------------------

    def restore_running_sets(self) -> None:
        """Our lease entry was gone: put our registration and running ids back."""
        log.error("this worker's lease had expired or Redis lost its data: its running jobs may have been "
                  "recovered by another worker and run twice; registering again")
        self.register()
        by_queue: dict[str, list[str]] = {}
        for job in list(self.running.values()):
            if job.running_queue is not None:
                by_queue.setdefault(job.running_queue, []).append(job.key_id)
        for name, ids in by_queue.items():
            RegularQueue(name, self.store).hold(self.id, ids)

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


def job_in_frames(frame: FrameType | None) -> RunningJob | None:
    """The job whose greenlet owns a stack (read from another thread: the watchdog): the frames
    are walked up to a job greenlet's entry, `Worker.perform` or a subpool greenlet's."""
    while frame is not None:
        if frame.f_code is _PERFORM_CODE:
            job = frame.f_locals.get("job")
            return job if isinstance(job, RunningJob) else None
        if frame.f_code is subpool.ENTRY_CODE:
            job = getattr(frame.f_locals.get("self"), "job", None)
            return job if isinstance(job, RunningJob) else None
        frame = frame.f_back
    return None


_PERFORM_CODE = Worker.perform.__code__
