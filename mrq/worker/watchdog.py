"""Runaway tasks: stopping a job whose code never yields to the gevent hub.

A job's timeout is a gevent timer, and a timer fires only when the hub runs: a task computing in
pure Python (or blocked in a call gevent did not patch) would run past its deadline forever,
while the lease thread kept it alive. So:

1. A hub timer ticks every HUB_TICK seconds. A tick that comes late measures how long the hub was
   blocked (the worker metrics' hub-blocked counters). Nothing runs per greenlet switch.
2. A native OS thread looks every TICK seconds. When the hub has not ticked for BLOCKED seconds,
   it reads the main thread's stack (`sys._current_frames`) to find the job running there; when
   that job is past its deadline it marks it timed out and sends SIGUSR2 to the main thread. The
   handler runs in the blocking greenlet itself, checks that it belongs to that job, and raises
   the job's TimeoutInterrupt there (a BaseException: `except Exception` in the task does not
   swallow it), logging the stack where it was. The job ends `timeout`; the worker goes on.
3. If the hub still has not run HARD_GRACE seconds later (a task that catches every exception in
   a loop), the thread logs every stack and exits the process hard (os._exit): the lease
   expires, the job is recovered elsewhere and poison-job counting applies.
4. C code that holds the GIL stops every Python thread, this one and the lease's included: a
   dead man's switch (faulthandler, a C thread) that this thread re-arms every TICK exits the
   process when it has not been re-armed for `deadman` seconds (60 % of the lease, so the
   process is gone before its lease expires and no second copy of the job runs beside it).
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

import gevent

from ..exceptions import TimeoutInterrupt
from .lease import _original

log = logging.getLogger("mrq.worker")

TICK = 0.25
HUB_TICK = 0.1
#: A job past its deadline is interrupted once the hub has not run for this long.
BLOCKED = 0.5
#: After the interrupt, how long the hub may still not run before the process exits.
HARD_GRACE = 5.0
#: A hub tick this late (beyond its period) counts in the hub-blocked metrics.
REPORT_BLOCK = 0.1
EXIT_RUNAWAY = 4


class Watchdog:
    def __init__(self, job_in_frames: Callable[[FrameType | None], Any], current_job: Callable[[], Any],
                 lease_seconds: float) -> None:
        self.job_in_frames = job_in_frames  # the main thread's top frame -> the job running there, or None
        self.current_job = current_job  # in the main thread: the job of the running greenlet
        self.deadman = max(1.0, 0.6 * lease_seconds)
        self.last_tick = time.monotonic()
        self.blocked_seconds = 0.0  # total time the hub was blocked >= REPORT_BLOCK at once
        self.blocked_count = 0
        self.longest_block = 0.0
        self.interrupts = 0
        self._target: Any = None
        self._signalled_at = 0.0
        self._timer: Any = None
        # The OS thread's id (threading's is a greenlet's under gevent's monkey-patching); built in
        # the main thread, which is where jobs run and where the signal must go.
        self._main_ident: int = _original("_thread", "get_ident")()
        self._stop = _original("_thread", "allocate_lock")()
        self._running = False

    # --- main thread -------------------------------------------------------------------------------

    def start(self) -> None:
        signal.signal(signal.SIGUSR2, self._on_signal)
        self._timer = gevent.get_hub().loop.timer(HUB_TICK, HUB_TICK)
        self._timer.start(self._tick)
        self._stop.acquire()
        self._running = True
        _original("_thread", "start_new_thread")(self._run, ())

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._stop.release()
        if self._timer is not None:
            self._timer.close()
        faulthandler.cancel_dump_traceback_later()

    def _tick(self) -> None:
        now = time.monotonic()
        late = now - self.last_tick - HUB_TICK
        if late >= REPORT_BLOCK:
            self.blocked_seconds += late
            self.blocked_count += 1
            self.longest_block = max(self.longest_block, late)
        self.last_tick = now

    def _on_signal(self, _signum: int, frame: Any) -> None:
        target = self._target
        if target is None or self.current_job() is not target:
            return  # the job yielded meanwhile (its gevent timer ends it), or this is another greenlet
        stack = "".join(traceback.format_stack(frame)[-12:])
        log.error("job %s (%s) kept the CPU past its timeout of %gs without yielding: interrupting it where it "
                  "was:\n%s", target.id, target.path, target.settings.timeout, stack)
        raise TimeoutInterrupt(f"job exceeded its timeout of {target.settings.timeout:g}s (it never yielded: "
                               "stopped by the worker's watchdog)")

    # --- the watchdog thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while self._running:
            faulthandler.dump_traceback_later(self.deadman, exit=True, file=sys.stderr)
            try:
                self._look()
            except Exception as exc:  # never let the watchdog die of a surprise
                log.warning("watchdog: %s", exc)
            if self._stop.acquire(timeout=TICK):
                break
        faulthandler.cancel_dump_traceback_later()

    def _look(self) -> None:
        now = time.monotonic()
        if now - self.last_tick < BLOCKED:
            self._target = None
            return
        job = self.job_in_frames(sys._current_frames().get(self._main_ident))
        if job is None or now < job.deadline:
            self._target = None
            return
        if self._target is not job:
            job.timed_out = True
            self._target = job
            self._signalled_at = now
            self.interrupts += 1
            signal.pthread_kill(self._main_ident, signal.SIGUSR2)
            return
        if now - self._signalled_at < HARD_GRACE:
            signal.pthread_kill(self._main_ident, signal.SIGUSR2)  # again: it may have caught it
            return
        log.critical("job %s (%s) still holds the CPU %.0fs after its timeout was raised in it (it catches "
                     "BaseException, or blocks in C code): exiting the worker process; its jobs are recovered "
                     "once its lease expires", job.id, job.path, now - self._signalled_at)
        for handler in logging.getLogger().handlers:
            try:
                handler.flush()
            except Exception:
                pass
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(EXIT_RUNAWAY)
