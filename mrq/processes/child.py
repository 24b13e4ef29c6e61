"""In a worker supervised by `mrq-worker --processes` (see mrq/processes/__init__.py): what the
parent tells it through the environment, and the helpers it runs so that supervisord restarts it
at once after a clean exit and so that it stops when the parent is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import psutil

log = logging.getLogger("mrq.processes")

#: Set in the environment of supervised workers: they never become supervisors themselves.
SUBPROCESS_ENV = "MRQ_IS_SUBPROCESS"
#: The pid of the `mrq-worker --processes` parent, for `watch_for_orphaning` in the workers.
PARENT_PID_ENV = "MRQ_PARENT_PID"
#: Environment variable telling a supervised worker its number (0..N-1): with --admin_port P, process
#: k listens on P + k.
PROCESS_NUM_ENV = "MRQ_PROCESS_NUM"
#: supervisord's `startsecs`: a worker that exits sooner counts as a failed start (backoff). Two
#: seconds, not one: on a loaded machine importing a worker can take more than a second, and a
#: worker crashing at start must still be a failed start (delayed restarts), not a quick exit.
START_SECONDS = 2


def is_subprocess() -> bool:
    """Whether this process is a worker supervised by `mrq-worker --processes`."""
    return os.environ.get(SUBPROCESS_ENV, "") not in ("", "0")


def watch_for_orphaning(parent_pid: int, interval: float = 1.0) -> threading.Thread:
    """In a supervised worker: SIGTERM this process (interrupt and requeue its jobs, exit) once
    supervisord is gone or has lost the `mrq-worker --processes` parent, so that a SIGKILLed
    parent does not leave workers finishing hours-long jobs that nobody can stop. A thread (a
    greenlet under gevent) that looks every `interval` seconds."""
    supervisord_pid = os.getppid()

    def supervised() -> bool:
        if os.getppid() != supervisord_pid:
            return False
        try:
            return psutil.Process(supervisord_pid).ppid() == parent_pid
        except psutil.Error:
            return False

    def watch() -> None:
        while supervised():
            time.sleep(interval)
        log.warning("the mrq-worker --processes parent is gone: stopping this worker")
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="mrq-orphan-watch", daemon=True)
    thread.start()
    return thread


def wait_out_start_seconds(start_seconds: float = START_SECONDS) -> None:
    """In a supervised worker exiting cleanly: live at least `start_seconds`, so that supervisord
    restarts it at once instead of treating it as a failed start (and delaying the restart)."""
    remaining = start_seconds + 0.1 - _process_age()
    if remaining > 0:
        time.sleep(remaining)


_IMPORTED_AT = time.monotonic()


def _process_age() -> float:
    """Seconds since this process was forked (Linux: /proc and the boot clock, which, unlike
    psutil's create_time, do not depend on the wall clock); else since this module's import."""
    try:
        with open("/proc/self/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, `starttime`, in clock ticks
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic() - _IMPORTED_AT
