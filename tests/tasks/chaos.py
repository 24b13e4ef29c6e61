"""Tasks of the seeded fault schedules (mrq.testing.chaos).

Every task first records its execution in the ledger: a separate redis-server, never faulted,
named by the CHAOS_LEDGER_URL environment variable of the workers. One INCR of `x:<job id>` per
execution, and for raw jobs one INCR of `r:<raw param>` too, in one round trip, before the task
does anything else: the counts are exact whatever happens to mrq's own stores or to the worker
afterwards (a kill -9 after the INCR still counts as an execution, as it should).

The ledger client is made on first use in each process (workers fork under supervisord).
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from mrq.context import get_current_job, retry_current_job
from mrq.task import Task

LEDGER_ENV = "CHAOS_LEDGER_URL"

_ledger: redis.Redis | None = None
_ledger_pid = 0


def ledger() -> redis.Redis:
    global _ledger, _ledger_pid
    if _ledger is None or _ledger_pid != os.getpid():
        _ledger = redis.Redis.from_url(os.environ[LEDGER_ENV], socket_timeout=30)
        _ledger_pid = os.getpid()
    return _ledger


def record_execution(params: dict[str, Any]) -> None:
    job = get_current_job()
    pipe = ledger().pipeline(transaction=False)
    pipe.incr(f"x:{job.id}")
    if "raw" in params:
        pipe.incr(f"r:{params['raw']}")
    pipe.execute()


def spin(seconds: float) -> int:
    """Burn CPU in pure Python for `seconds` of wall time, never yielding to gevent."""
    deadline = time.perf_counter() + seconds
    turns = 0
    while time.perf_counter() < deadline:
        turns += 1
    return turns


class Quick(Task):
    """Sleeps `seconds` (a few milliseconds), yielding like any I/O-bound job."""

    def run(self, params):
        record_execution(params)
        time.sleep(params.get("seconds", 0))
        return "ok"


class Long(Task):
    """Sleeps several seconds: likely to be running when a fault strikes."""

    def run(self, params):
        record_execution(params)
        time.sleep(params["seconds"])
        return "ok"


class Cpu(Task):
    """A pure-Python loop for `seconds`, never yielding: the worker's greenlets all wait."""

    def run(self, params):
        record_execution(params)
        spin(params["seconds"])
        return "ok"


class CpuOverTimeout(Cpu):
    """Same loop, longer than the timeout its TASKS entry gives it: designed to end `timeout`."""


class Retrying(Task):
    """Retries itself `retries` times (retry_current_job, `delay` apart), then succeeds."""

    def run(self, params):
        record_execution(params)
        if get_current_job().retry_count < params["retries"]:
            retry_current_job(delay=params["delay"], max_retries=params["retries"])
        return "ok"


class Failing(Task):
    """Raises: designed to end `failed`."""

    def run(self, params):
        record_execution(params)
        raise ValueError("designed to fail")


def raw_factory(raw):
    """job_factory of the schedules' raw queue: the raw param is the job's only parameter. A param
    ending in `~<seconds>` makes a Long job of that many seconds (a raw job a kill can catch)."""
    raw = str(raw)
    _, sep, seconds = raw.rpartition("~")
    if sep:
        return {"path": "tests.tasks.chaos.Long", "params": {"raw": raw, "seconds": float(seconds)}}
    return {"path": "tests.tasks.chaos.Quick", "params": {"raw": raw}}
