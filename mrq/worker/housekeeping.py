"""The worker's service greenlets, beside the jobs: storing job logs and progress, taking back
dead workers' jobs, reconciling Redis after it lost data, the worker report, the paused queues,
the scheduler. Each loops forever, survives store errors (logged, tried again) and is killed
when the worker stops."""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING

import gevent
import gevent.event

from ..backoff import STORE_ERRORS
from ..queue import forget_empty_subqueues, paused_queues
from ..reconcile import Reconciler
from . import recovery
from .report import memory_mb

if TYPE_CHECKING:
    from .view import WorkerView

log = logging.getLogger("mrq.worker")

#: Seconds between re-reads of the paused queues (a `paused` control message also triggers one).
PAUSED_REFRESH = 1.0
#: Seconds between a worker's sweeps of the queue registry (empty subqueues unused for a while).
REGISTRY_SWEEP = 300.0


class Housekeeping:
    def __init__(self, worker: WorkerView) -> None:
        self.worker = worker
        self.reconciler = Reconciler(worker.store, worker.id)
        self.logs_wake = gevent.event.Event()
        self.scheduler_stop = gevent.event.Event()
        self._greenlets: list[gevent.Greenlet] = []
        self._scheduler: gevent.Greenlet | None = None

    def start(self) -> None:
        worker = self.worker
        if worker.log_handler is not None:
            self._greenlets.append(gevent.spawn(self._flush_logs_forever))
        for loop in (self._save_progress_forever, self._recover_forever, self._report_forever,
                     self._refresh_paused_forever):
            self._greenlets.append(gevent.spawn(loop))
        if worker.scheduler is not None:
            self._scheduler = gevent.spawn(self._schedule_forever)

    def stop(self) -> None:
        self.scheduler_stop.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout=10)  # let a check in progress complete
            self._scheduler.kill(block=True, timeout=2)
        for greenlet in self._greenlets:
            greenlet.kill(block=True, timeout=2)

    # --- job logs and progress ----------------------------------------------------------------------

    def flush_logs(self) -> None:
        handler = self.worker.log_handler
        if handler is None or not handler.pending:
            return
        try:
            handler.flush()
        except Exception as exc:
            log.warning("storing job logs failed (%s); will retry", exc)

    def _flush_logs_forever(self) -> None:
        while True:
            self.logs_wake.wait(1.0)
            self.logs_wake.clear()
            self.flush_logs()
            gevent.sleep(0.05)  # let the lines of jobs ending together share one insert

    def _save_progress_forever(self) -> None:
        while True:
            gevent.sleep(1.0)
            for job in list(self.worker.running.values()):
                if job.progress_dirty:
                    try:
                        job.save_progress()
                    except Exception as exc:
                        log.debug("saving progress of %s failed: %s", job.id, exc)

    # --- recovery and reconciliation ------------------------------------------------------------------

    def _recover_forever(self) -> None:
        """Give back the jobs of workers whose lease expired; re-register if ours was lost;
        reconcile Redis with MongoDB when Redis lost data."""
        worker = self.worker
        interval = max(0.5, min(worker.settings.worker_lease / 3.0, 5.0))
        next_sweep = time.monotonic() + random.uniform(0, REGISTRY_SWEEP)  # workers started together spread out
        while True:
            # Three independent steps: one failing (a store error, a refused query) never stops the others.
            try:
                if worker.lease is not None and worker.lease.reregistered:
                    worker.lease.reregistered = False
                    worker.restore_running_sets()
            except Exception as exc:
                worker.lease.reregistered = True  # type: ignore[union-attr]  # try again next time
                log.warning("putting this worker's running ids back failed (%s); will retry", exc)
            try:
                self.reconciler.check()
            except Exception as exc:
                log.warning("reconciling Redis with MongoDB failed (%s); will retry", exc)
            try:
                worker.recovered_jobs += recovery.recover_expired(worker.store, worker.id,
                                                                  worker.settings.max_recoveries)
            except Exception as exc:
                log.warning("recovering dead workers' jobs failed (%s); will retry", exc)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + REGISTRY_SWEEP
                try:
                    forgotten = forget_empty_subqueues(worker.store, worker.settings.forget_subqueues_after)
                    if forgotten:
                        log.info("forgot %d empty subqueues unused for %.0f s", len(forgotten),
                                 worker.settings.forget_subqueues_after)
                except Exception as exc:
                    log.warning("sweeping the known queues failed (%s); will retry", exc)
            gevent.sleep(interval)

    # --- report, paused queues, scheduler --------------------------------------------------------------

    def _report_forever(self) -> None:
        worker = self.worker
        while True:
            worker.report()
            max_memory = worker.settings.max_memory
            if max_memory and not worker.graceful_stop and memory_mb() > max_memory:
                log.warning("memory %.0f MB is over --max_memory %d MB: finishing running jobs and exiting",
                            memory_mb(), max_memory)
                worker.stop()
            gevent.sleep(worker.settings.report_interval)

    def refresh_paused(self) -> None:
        worker = self.worker
        try:
            paused = paused_queues(worker.store)
        except STORE_ERRORS:
            return
        if paused != worker.paused:
            resumed = worker.paused - paused
            worker.paused = paused
            if resumed:
                worker.wake.set()

    def _refresh_paused_forever(self) -> None:
        while True:
            self.refresh_paused()
            gevent.sleep(PAUSED_REFRESH)

    def _schedule_forever(self) -> None:
        worker = self.worker
        scheduler = worker.scheduler
        assert scheduler is not None
        try:
            scheduler.sync()
        except Exception as exc:  # check() syncs first when this failed
            log.warning("scheduler sync failed (%s); will retry", exc)
        while not worker.graceful_stop:
            scheduler.check()
            self.scheduler_stop.wait(worker.settings.scheduler_interval)
