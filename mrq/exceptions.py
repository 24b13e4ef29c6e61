"""Every error mrq raises, in one tree rooted at `MrqError`, plus the job control interrupts.

Errors (`MrqError` and below) are things that went wrong; user code may catch them.
Interrupts (`JobInterrupt` and below) are control flow that stops a running job: they derive
from `BaseException` (through gevent's `GreenletExit` where a greenlet is killed) so that a
task's `except Exception:` never swallows a retry, an abort, a timeout or a shutdown.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class MrqError(Exception):
    """Root of every error raised by mrq."""


class ConfigError(MrqError):
    """The configuration is invalid: a broken config file, a bad value, an unknown flag."""


class StoreUnavailable(MrqError):
    """Redis or MongoDB cannot be reached (the message names the URI, never its password)."""


class JobNotFound(MrqError):
    """No job with this id exists (it was never queued, or it expired)."""

    def __init__(self, job_id: object) -> None:
        super().__init__(f"no job with id {job_id}")
        self.job_id = job_id


class InvalidJob(MrqError):
    """The job cannot be queued as given (bad path, params that cannot be stored, too large)."""


class InvalidQueueName(MrqError):
    """A queue name that cannot be used (spaces, key separators, empty...)."""


class SupervisorFailed(MrqError):
    """supervisord is missing, could not start, or died: the message says why, in one line."""


class TaskNotFound(MrqError):
    """The task path does not name an importable task."""


class TaskImportError(TaskNotFound):
    """The task module exists but raised while being imported."""


class InvalidStatusTransition(MrqError):
    """A guarded status write found the job in a status it may not leave this way."""


# --- Job control interrupts (not errors) -------------------------------------------------------


class JobInterrupt(BaseException):
    """Base of the exceptions that stop a running job for a reason other than a bug in it.

    `original_exception` holds the exc_info that was being handled when the interrupt was
    raised (e.g. the error a task retries on), so that its traceback is stored too.
    """

    status = "interrupt"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.original_exception: ExcInfo | None = None


class RetryInterrupt(JobInterrupt):
    """Raised by `retry_current_job()`: the job goes to `retry` and runs again after `delay`."""

    status = "retry"

    def __init__(self, delay: float, queue: str, retry_count: int) -> None:
        super().__init__(f"retry #{retry_count} in {delay:g}s on queue {queue}")
        self.delay = delay
        self.queue = queue
        self.retry_count = retry_count


class MaxRetriesInterrupt(JobInterrupt):
    """Raised by `retry_current_job()` when the job has no retries left."""

    status = "maxretries"


class AbortInterrupt(JobInterrupt):
    """Raised by `abort_current_job()`: the job ends as `abort` and is not retried."""

    status = "abort"


class TimeoutInterrupt(JobInterrupt):
    """Thrown into a job's greenlets when it runs past its timeout."""

    status = "timeout"


class ShutdownInterrupt(JobInterrupt):
    """Thrown into running jobs when the worker is stopped now (SIGTERM or a second SIGINT)."""

    status = "interrupt"


class CancelInterrupt(JobInterrupt):
    """Thrown into a running job that was aborted from outside (dashboard, API)."""

    status = "abort"
