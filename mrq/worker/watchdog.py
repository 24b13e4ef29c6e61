"""Runaway tasks: stopping a job whose code never yields to the gevent hub.

A job's timeout is a gevent timer, and a timer fires only when the hub runs: a task computing in
pure Python (or blocked in a call gevent did not patch) would run past its deadline forever,
while the lease thread kept it alive. So:

1. Every greenlet switch is noted (greenlet.settrace: which greenlet got the CPU, and when). The
   time a greenlet kept the CPU is added to the hub-blocked counters (worker metrics).
2. A native OS thread looks every TICK seconds. When the greenlet on the CPU belongs to a job
   that is past its deadline and has not yielded for BLOCKED seconds, it marks the job timed out
   and sends SIGUSR2 to the main thread. The handler runs in that very greenlet (it checks) and
   raises the job's TimeoutInterrupt there (a BaseException: `except Exception` in the task does
   not swallow it), logging the stack where it was. The job ends `timeout`; the worker goes on.
3. If the greenlet still holds the CPU HARD_GRACE seconds later (a task that catches every
   exception in a loop), the thread logs every stack and exits the process hard (os._exit): the
   lease expires, the job is recovered elsewhere and poison-job counting applies.
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
from typing import Any

import greenlet

from ..exceptions import TimeoutInterrupt
from .lease import _original

log = logging.getLogger("mrq.worker")

TICK = 0.25
#: A job past its deadline is interrupted once its greenlet has kept the CPU this long.
BLOCKED = 0.5
#: After the interrupt, how long the greenlet may still keep the CPU before the process exits.
HARD_GRACE = 5.0
#: A greenlet keeping the CPU at least this long counts in the hub-blocked metrics.
REPORT_BLOCK = 0.1
EXIT_RUNAWAY = 4


class Watchdog:
    def __init__(self, job_of: Callable[[Any], Any], lease_seconds: float) -> None:
        self.job_of = job_of  # greenlet -> the job it runs (or None)
        self.deadman = max(1.0, 0.6 * lease_seconds)
        self.on_cpu: Any = None
        self.since = time.monotonic()
        self.blocked_seconds = 0.0  # total time greenlets kept the CPU >= REPORT_BLOCK at once
        self.blocked_count = 0
        self.longest_block = 0.0
        self.interrupts = 0
        self._target: tuple[Any, Any] | None = None
        self._signalled_at = 0.0
        self._previous_trace: Any = None
        # The OS thread's id (threading's is a greenlet's under gevent's monkey-patching); built in
        # the main thread, which is where jobs run and where the signal must go.
        self._main_ident: int = _original("_thread", "get_ident")()
        self._stop = _original("_thread", "allocate_lock")()
        self._running = False

    # --- main thread -------------------------------------------------------------------------------

    def start(self) -> None:
        signal.signal(signal.SIGUSR2, self._on_signal)
        self._previous_trace = greenlet.settrace(self._trace)
        self._stop.acquire()
        self._running = True
        _original("_thread", "start_new_thread")(self._run, ())

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._stop.release()
        faulthandler.cancel_dump_traceback_later()

    def _trace(self, event: str, args: Any) -> None:
        if event in ("switch", "throw"):
            now = time.monotonic()
            held = now - self.since
            if held >= REPORT_BLOCK and self.on_cpu is not None and self.job_of(self.on_cpu) is not None:
                self.blocked_seconds += held
                self.blocked_count += 1
                self.longest_block = max(self.longest_block, held)
            self.on_cpu = args[1]
            self.since = now
        if self._previous_trace is not None:
            self._previous_trace(event, args)

    def _on_signal(self, _signum: int, frame: Any) -> None:
        target = self._target
        if target is None or greenlet.getcurrent() is not target[0]:
            return  # it yielded meanwhile: its gevent timer ends it
        job = target[1]
        stack = "".join(traceback.format_stack(frame)[-12:])
        log.error("job %s (%s) kept the CPU past its timeout of %gs without yielding: interrupting it where it "
                  "was:\n%s", job.id, job.path, job.settings.timeout, stack)
        raise TimeoutInterrupt(f"job exceeded its timeout of {job.settings.timeout:g}s (it never yielded: stopped "
                               "by the worker's watchdog)")

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
        on_cpu, since = self.on_cpu, self.since
        now = time.monotonic()
        job = self.job_of(on_cpu) if on_cpu is not None else None
        if job is None or now - since < BLOCKED or now < job.deadline:
            self._target = None
            return
        if self._target is None or self._target[0] is not on_cpu:
            job.timed_out = True
            self._target = (on_cpu, job)
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
