"""Retrying an operation on Redis or MongoDB through an outage: exponential backoff, one warning
when the outage starts and one line when it ends, never a busy loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import pymongo.errors
import redis.exceptions

T = TypeVar("T")

#: Errors that mean "the store is unreachable or failing over", worth waiting for.
STORE_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
    pymongo.errors.AutoReconnect,
    pymongo.errors.ServerSelectionTimeoutError,
    pymongo.errors.NetworkTimeout,
    pymongo.errors.NotPrimaryError,
    pymongo.errors.ExecutionTimeout,
    pymongo.errors.WTimeoutError,
    OSError,
)


class Backoff:
    def __init__(self, first: float = 0.05, maximum: float = 5.0) -> None:
        self.first = first
        self.maximum = maximum
        self.delay = first

    def next(self) -> float:
        delay = self.delay
        self.delay = min(self.delay * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self.delay = self.first


def retry_through_outage(
    operation: Callable[[], T],
    what: str,
    log: logging.Logger,
    *,
    give_up: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
    maximum: float = 5.0,
    waits_for: Callable[[BaseException], bool] = lambda exc: False,
) -> T:
    """Run `operation` until it succeeds. Store errors (and errors for which `waits_for` is true)
    are retried with backoff (logged once at the start and once at recovery); other errors
    propagate. When give_up() turns true during an outage, the last error is raised."""
    backoff = Backoff(maximum=maximum)
    failing_since: float | None = None
    while True:
        try:
            result = operation()
        except Exception as exc:
            if not isinstance(exc, STORE_ERRORS) and not waits_for(exc):
                raise
            if failing_since is None:
                failing_since = time.monotonic()
                log.warning("%s failed (%s: %s); retrying with backoff", what, type(exc).__name__,
                            str(exc).splitlines()[0][:200] if str(exc) else "")
            if give_up():
                raise
            sleep(backoff.next())
            continue
        if failing_since is not None:
            log.warning("%s works again after %.1fs", what, time.monotonic() - failing_since)
        return result
