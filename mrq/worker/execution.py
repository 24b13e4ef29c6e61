"""Running one job and turning how it ended into a status, in one readable place.

`execute(job)` runs the task in the calling greenlet and returns an `Outcome`: the status and the
fields to store. It never raises for anything the task does (a missing task, an import error, an
exception, a retry, an abort, a timeout, an interrupt, a result that cannot be stored); the
worker writes the outcome.
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import bson
import bson.errors
import pymongo.errors
import redis.exceptions
from bson import ObjectId
from gevent import Greenlet

from .. import job as jobs
from ..clock import utcnow
from ..exceptions import (
    AbortInterrupt,
    JobInterrupt,
    MaxRetriesInterrupt,
    RetryInterrupt,
    ShutdownInterrupt,
    TaskImportError,
    TaskNotFound,
    TimeoutInterrupt,
)
from ..job import Job
from ..store import Store, TaskSettings
from ..task import load_task
from ..task import paths as task_paths

MAX_TRACEBACK_CHARS = 64 * 1024
MAX_RESULT_BYTES = 15 * 1024 * 1024
MAX_OUTAGE_RETRY_DELAY = 300.0
#: Exceptions that mean "the store is unreachable" rather than "the task is wrong".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    pymongo.errors.ConnectionFailure,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
)


class RunningJob(Job):
    """A job this worker has started: the document it loaded, the queue it came from, its
    greenlets (the job's own and any subpool ones), and its deadline."""

    def __init__(self, doc: dict[str, Any], queue: str, store: Store) -> None:
        super().__init__(doc["_id"], store)
        self.data = doc
        self.source_queue = queue
        self.running_queue: str | None = queue  # whose running set holds the id (raw jobs: their retry queue)
        self.settings: TaskSettings = store.task_settings(doc.get("path") or "")
        self.greenlets: set[Greenlet] = set()
        self.started_monotonic = time.monotonic()
        self.deadline = self.started_monotonic + self.settings.timeout  # monotonic
        self.datestarted: datetime | None = doc.get("datestarted")
        self.timed_out = False
        self.interrupted = False
        self.aborted = False
        self.raw = False  # from a raw queue: no running-set entry; retries go to its retry_queue
        self.no_storage: frozenset[str] = frozenset()  # statuses not written (raw queues' statuses_no_storage)
        self.inserted = True  # False while a raw job's document exists only here
        self.max_concurrency = self.settings.max_concurrency
        self.io_trace: Any = None  # with --trace_io: the calls this job made
        self.stored = True

    @property
    def key_id(self) -> str:
        return str(self.id)

    def add_greenlet(self, greenlet: Any) -> None:
        self.greenlets.add(greenlet)

    def remove_greenlet(self, greenlet: Any) -> None:
        self.greenlets.discard(greenlet)

    def kill(self, exception: type[BaseException] | BaseException) -> None:
        """Throw an interrupt into every greenlet of the job (does not wait)."""
        for greenlet in list(self.greenlets):
            if not greenlet.dead:
                greenlet.kill(exception, block=False)


@dataclass
class Outcome:
    status: str
    fields: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] | None = None  # the traceback_history entry, for error statuses
    retry: RetryInterrupt | None = None
    log_message: str = ""


#: Files whose frames open every job's traceback (the worker calling the task): left out of the top.
_CALLER_FILES = frozenset({__file__, task_paths.__file__})


def _from_the_task(tb: Any) -> Any:
    """The traceback without mrq's own frames on top (the worker calling the task), when frames of
    the task's code follow; unchanged when the error happened in mrq itself."""
    inner = tb
    while inner is not None and inner.tb_frame.f_code.co_filename in _CALLER_FILES:
        inner = inner.tb_next
    return inner if inner is not None else tb


def format_exception(exc_info: tuple[Any, Any, Any], original: Any = None) -> str:
    exc_type, exc, tb = exc_info
    text = "".join(traceback.format_exception(exc_type, exc, _from_the_task(tb)))
    if original:
        text += "\n---- Original exception: -----\n" + "".join(traceback.format_exception(*original))
    if len(text) > MAX_TRACEBACK_CHARS:
        keep = MAX_TRACEBACK_CHARS // 2
        text = text[:keep] + f"\n... [{len(text) - 2 * keep} characters cut] ...\n" + text[-keep:]
    return text


def _error(status: str, exc_info: tuple[Any, Any, Any], worker_oid: ObjectId, now: datetime,
           type_name: str | None = None, text: str | None = None) -> Outcome:
    exc = exc_info[1]
    original = getattr(exc, "original_exception", None)
    tb = text if text is not None else format_exception(exc_info, original)
    exctype = type_name or (type(exc).__name__ if exc is not None else "Exception")
    entry = {"date": now, "status": status, "exceptiontype": exctype, "traceback": tb, "worker": worker_oid}
    if original:
        entry["original_traceback"] = "".join(traceback.format_exception(*original))[-MAX_TRACEBACK_CHARS:]
    return Outcome(status, {"traceback": tb, "exceptiontype": exctype}, history=entry,
                   log_message=f"{status}: {exctype}: {str(exc)[:500]}")


def check_result(result: Any) -> str | None:
    """Why the result cannot be stored, or None when it can."""
    try:
        size = len(bson.encode({"result": result}))
    except (bson.errors.InvalidDocument, OverflowError, TypeError, ValueError) as exc:
        return f"the task returned a result that cannot be stored in MongoDB: {exc}"
    if size > MAX_RESULT_BYTES:
        return f"the task returned a {size / 1048576:.1f} MiB result; results are limited to 15 MiB"
    return None


def execute(job: RunningJob, worker_oid: ObjectId) -> Outcome:
    """Run the job's task in this greenlet and describe how it ended."""
    try:
        runner = load_task(job.path)
        result = runner(job.params or {})
    except RetryInterrupt as exc:
        if job.timed_out:
            return _error(jobs.TIMEOUT, sys.exc_info(), worker_oid, utcnow(), "TimeoutInterrupt")
        outcome = _error(jobs.RETRY, sys.exc_info(), worker_oid, utcnow())
        outcome.retry = exc
        return outcome
    except MaxRetriesInterrupt:
        return _error(jobs.MAXRETRIES, sys.exc_info(), worker_oid, utcnow())
    except AbortInterrupt:
        return _error(jobs.ABORT, sys.exc_info(), worker_oid, utcnow())
    except TimeoutInterrupt:
        return _error(jobs.TIMEOUT, sys.exc_info(), worker_oid, utcnow())
    except ShutdownInterrupt:
        return _error(jobs.INTERRUPT, sys.exc_info(), worker_oid, utcnow())
    except JobInterrupt as exc:
        return _error(exc.status, sys.exc_info(), worker_oid, utcnow())
    except TaskImportError as exc:
        details = getattr(exc, "details", "") or format_exception(sys.exc_info())
        return _error(jobs.FAILED, sys.exc_info(), worker_oid, utcnow(), "TaskImportError", f"{exc}\n\n{details}")
    except TaskNotFound as exc:
        return _error(jobs.FAILED, sys.exc_info(), worker_oid, utcnow(), "TaskNotFound", str(exc))
    except Exception:
        if job.timed_out:
            return _error(jobs.TIMEOUT, sys.exc_info(), worker_oid, utcnow(), "TimeoutInterrupt")
        if job.interrupted:
            return _error(jobs.INTERRUPT, sys.exc_info(), worker_oid, utcnow(), "ShutdownInterrupt")
        if job.aborted:
            return _error(jobs.ABORT, sys.exc_info(), worker_oid, utcnow(), "AbortInterrupt")
        if isinstance(sys.exc_info()[1], CONNECTION_ERRORS) and job.store.settings.retry_on_connection_errors \
                and job.retry_count < job.settings.max_retries:
            # An outage (or a failover) is not the task's fault: run it again later.
            outcome = _error(jobs.RETRY, sys.exc_info(), worker_oid, utcnow())
            delay = min(job.settings.retry_delay * (2 ** job.retry_count), MAX_OUTAGE_RETRY_DELAY)
            outcome.retry = RetryInterrupt(delay, job.queue or jobs.DEFAULT_QUEUE, job.retry_count + 1)
            return outcome
        return _error(jobs.FAILED, sys.exc_info(), worker_oid, utcnow())
    # The task returned. A task that swallowed its timeout or interrupt does not get a success.
    if job.timed_out or job.interrupted or job.aborted:
        status, name = (jobs.TIMEOUT, "TimeoutInterrupt") if job.timed_out else \
            (jobs.INTERRUPT, "ShutdownInterrupt") if job.interrupted else (jobs.ABORT, "AbortInterrupt")
        text = f"{name}: the job kept running after it was stopped (the task caught the interrupt)"
        return _error(status, (None, None, None), worker_oid, utcnow(), name, text)
    problem = check_result(result) if jobs.SUCCESS not in job.no_storage else None
    if problem is not None:
        return _error(jobs.FAILED, (None, None, None), worker_oid, utcnow(), "InvalidResult", problem)
    fields: dict[str, Any] = {}
    if result is not None:
        fields["result"] = result
    if job.data and "progress" in job.data:
        fields["progress"] = 1.0
    return Outcome(jobs.SUCCESS, fields)
