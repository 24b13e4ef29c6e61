"""Jobs: the job document in `mrq_jobs`, its statuses, and the MRQ-compatible functions to queue
jobs and read them back.

A job is one MongoDB document (its `_id`, an ObjectId, is the job id everywhere) plus, while it
waits, its id in a Redis structure of its queue. Every status change is one guarded MongoDB
update: the filter names the statuses the job may leave that way, so a finished job never goes
back to `started` and a job recovered from a dead worker is not overwritten by that worker.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from .exceptions import (
    AbortInterrupt,
    InvalidStatusTransition,
    JobInterrupt,
    JobNotFound,
    MaxRetriesInterrupt,
    MrqError,
    RetryInterrupt,
)
from .lifecycle import operations
from .lifecycle.statuses import (  # noqa: F401 - MRQ-compatible names, importable from mrq.job
    ABORT,
    ALL_STATUSES,
    CANCEL,
    DEFAULT_QUEUE,
    DELAYED,
    ERROR_STATUSES,
    FAILED,
    FINAL_STATUSES,
    INTERRUPT,
    MAXRETRIES,
    QUEUED,
    RETRY,
    STARTABLE_STATUSES,
    STARTED,
    SUCCESS,
    TIMEOUT,
    TRANSIENT_STATUSES,
    WAITING,
)
from .queue.producer import (  # noqa: F401 - the producer functions, importable from mrq.job as in MRQ
    MAX_DOCUMENT_BYTES,
    _current_store,
    queue_job,
    queue_jobs,
    queue_raw_jobs,
    resolve_queue,
    send_raw_tasks,
    send_task,
    send_tasks,
)
from .storage.keys import validate_job_queue, validate_queue_name

if TYPE_CHECKING:
    from .store import Store


def to_object_id(job_id: object) -> ObjectId:
    if isinstance(job_id, ObjectId):
        return job_id
    if isinstance(job_id, bytes):
        job_id = job_id.decode("ascii", "replace")
    if isinstance(job_id, str) and ObjectId.is_valid(job_id):
        return ObjectId(job_id)
    raise JobNotFound(job_id)


# --- reading and acting on one job ----------------------------------------------------------------


class DocumentFields:
    """A job document's fields as attributes (`job.status`, `job.result`...), read through
    `_field`: the sync `Job` below and `mrq.aio.Job` share them."""

    id: ObjectId
    data: dict[str, Any] | None

    def _field(self, name: str) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        status = self.data.get("status") if self.data else "?"
        return f"<Job {self.id} {status}>"

    def _waited(self, data: dict[str, Any] | None, full_data: bool, deadline: float | None,
                timeout: float | None) -> bool:
        """One look of `wait()` (sync or async): True when the job has left `queued`/`started`/
        `delayed`; raises JobNotFound when it is gone, JobWaitTimeout past the deadline."""
        if data is None:
            raise JobNotFound(self.id)
        if data.get("status") not in (WAITING, QUEUED, STARTED, DELAYED):
            if full_data:
                self.data = data
            return True
        if deadline is not None and time.monotonic() >= deadline:
            raise JobWaitTimeout(f"job {self.id} still {data.get('status')} after {timeout:g}s")
        return False

    status = property(lambda self: self._field("status"))
    result = property(lambda self: self._field("result"))
    traceback = property(lambda self: self._field("traceback"))
    exceptiontype = property(lambda self: self._field("exceptiontype"))
    path = property(lambda self: self._field("path"))
    params = property(lambda self: self._field("params"))
    queue = property(lambda self: self._field("queue"))
    progress = property(lambda self: self._field("progress"))
    retry_count = property(lambda self: self._field("retry_count") or 0)


class Job(DocumentFields):
    """A handle on one job document. `fetch()` loads it; attributes read its fields."""

    def __init__(self, job_id: object, store: Store | None = None) -> None:
        self.id = to_object_id(job_id)
        self._store = store
        self.data: dict[str, Any] | None = None
        self.progress_dirty = False
        self.stored = True  # False for a job run in-process by mrq-run: nothing is written

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = _current_store()
        return self._store

    def fetch(self, full_data: bool | dict[str, Any] = True) -> Job:
        """Load the document; raises JobNotFound when there is none (never queued, or expired)."""
        projection = None if full_data is True else (full_data or {"path": 1, "params": 1, "status": 1})
        data = self.store.jobs.find_one({"_id": self.id}, projection)
        if data is None:
            raise JobNotFound(self.id)
        self.data = data
        return self

    def exists(self) -> bool:
        return self.store.jobs.count_documents({"_id": self.id}, limit=1) == 1

    def _field(self, name: str) -> Any:
        if self.data is None:
            self.fetch()
        assert self.data is not None
        return self.data.get(name)


    def wait(self, timeout: float | None = None, poll_interval: float = 0.1, full_data: bool = False) -> Any:
        """Block until the job leaves `waiting`/`queued`/`started`/`delayed`; return `{result, status}` (or
        the whole document with full_data). Raises JobWaitTimeout after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        projection = None if full_data else {"result": 1, "status": 1, "_id": 0}
        while True:
            data = self.store.jobs.find_one({"_id": self.id}, projection)
            if self._waited(data, full_data, deadline, timeout):
                return data
            time.sleep(poll_interval)

    def cancel(self) -> bool:
        """Cancel a job that has not started: it will never run. Returns False when it had already
        left the waiting statuses (raises for a running job: abort it instead)."""
        return operations.cancel_one(self.store, self.id)

    def abort_running(self) -> int:
        """Ask the worker running this job to stop it now (status `abort`). Returns how many
        workers received the request (0: no worker listening, nothing happened). A job that is
        not running raises InvalidStatusTransition (cancel a queued job instead)."""
        store = self.store
        current_doc = store.jobs.find_one({"_id": self.id}, {"status": 1})
        if current_doc is None:
            raise JobNotFound(self.id)
        if current_doc["status"] != STARTED:
            raise InvalidStatusTransition(f"job {self.id} is {current_doc['status']}, not running: nothing to abort")
        return int(store.redis.publish(store.keys.control_channel, f"abort {self.id}"))

    def requeue(self, queue: str | None = None, retry_count: int = 0) -> None:
        """Queue a job again (after it failed, was cancelled, interrupted...); a queued job goes to
        the back of its queue (or of `queue`), as in MRQ. A running job is left alone
        (InvalidStatusTransition)."""
        operations.requeue_one(self.store, self.id, queue, retry_count)

    # --- used from inside the running job (mrq.context) --------------------------------------------

    def retry(self, delay: float | None = None, max_retries: int | None = None, queue: str | None = None) -> None:
        """Raise the interrupt that makes the worker retry this job (or end it as maxretries)."""
        settings = self.store.task_settings(self.path)
        limit = settings.max_retries if max_retries is None else max_retries
        pending = sys.exc_info()
        if self.retry_count >= limit:
            exc: JobInterrupt = MaxRetriesInterrupt(f"max retries reached ({limit})")
        else:
            target = validate_job_queue(queue) if queue else validate_queue_name(self.queue or DEFAULT_QUEUE)
            exc = RetryInterrupt(settings.retry_delay if delay is None else float(delay), target,
                                 self.retry_count + 1)
        if pending[0] is not None:
            exc.original_exception = pending
        raise exc

    def abort(self) -> None:
        exc = AbortInterrupt("job aborted")
        pending = sys.exc_info()
        if pending[0] is not None:
            exc.original_exception = pending
        raise exc

    def set_progress(self, ratio: float, save: bool = False) -> None:
        ratio = min(max(float(ratio), 0.0), 1.0)
        if self.data is None:
            self.data = {}
        self.data["progress"] = ratio
        self.progress_dirty = True
        if save:
            self.save_progress()

    def save_progress(self) -> None:
        if self.data is None or "progress" not in self.data or not self.stored:
            return
        self.progress_dirty = False
        self.store.jobs.update_one({"_id": self.id, "status": STARTED}, {"$set": {"progress": self.data["progress"]}})


class JobWaitTimeout(MrqError, TimeoutError):
    """Job.wait() gave up before the job finished."""


def get_job_result(job_id: object, *, store: Store | None = None) -> dict[str, Any] | None:
    """`{"result": ..., "status": ...}` of a job, or None when there is no such job."""
    store = store or _current_store()
    return store.jobs.find_one({"_id": to_object_id(job_id)}, {"result": 1, "status": 1, "_id": 0})
