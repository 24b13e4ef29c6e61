"""The one timing method every system's tasks share (imported by each system's app module).

A task calls `record(start, end, enq)` once: one `write()` of a fixed-format line
`"<start> <end> <enq>\\n"` (unix seconds from `time.time()`, microseconds) to the file named by
`BENCH_TIMES`, opened with O_APPEND. Such a write is atomic, so threads, greenlets and forked
processes (RQ's work horse, mrq's --processes) can share the file, and it costs no Redis or
MongoDB command, which keeps the overhead counts of workload E about the queue alone. The harness
reads the file after the run: throughput is (jobs) / (last end - first start), pickup latency is
start - enq (enq: the producer's clock just before its enqueue call).
"""

from __future__ import annotations

import os
import time

_fd: int | None = None
_pid: int | None = None


def record(start: float, end: float, enq: float = 0.0) -> None:
    global _fd, _pid
    if _pid != os.getpid():  # first call in this process (or in a forked child)
        _fd = os.open(os.environ["BENCH_TIMES"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _pid = os.getpid()
    assert _fd is not None
    os.write(_fd, b"%.6f %.6f %.6f\n" % (start, end, enq))


def noop(enq: float = 0.0) -> int:
    """The no-op job of workloads A, B, E, F, G: returns a small value."""
    start = time.time()
    record(start, time.time(), enq)
    return 42


def sleep(seconds: float, enq: float = 0.0) -> int:
    """The IO-bound job of workload C (time.sleep: gevent-patched in greenlet workers)."""
    start = time.time()
    time.sleep(seconds)
    record(start, time.time(), enq)
    return 42
