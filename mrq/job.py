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
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import bson
import pymongo
import pymongo.errors
import redis.exceptions
from bson import ObjectId

from . import current
from .clock import utcnow
from .connections import redact_text, redact_uri
from .exceptions import (
    AbortInterrupt,
    InvalidJob,
    InvalidStatusTransition,
    JobInterrupt,
    JobNotFound,
    MaxRetriesInterrupt,
    MrqError,
    RetryInterrupt,
    StoreUnavailable,
)
from .helpers import emit_metric
from .lifecycle import documents, operations
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
)
from .queue import Queue, RawQueue, RegularQueue, queue_kind
from .storage.keys import validate_queue_name
from .task import validate_task_path

if TYPE_CHECKING:
    from .store import Store

#: MongoDB refuses documents over 16 MiB; keep room for the fields added while the job runs.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024 - 64 * 1024
#: mongod stores documents nested at most 180 levels (its manual promises 100); the job document
#: is one level above its params.
MAX_PARAMS_DEPTH = 179


def to_object_id(job_id: object) -> ObjectId:
    if isinstance(job_id, ObjectId):
        return job_id
    if isinstance(job_id, bytes):
        job_id = job_id.decode("ascii", "replace")
    if isinstance(job_id, str) and ObjectId.is_valid(job_id):
        return ObjectId(job_id)
    raise JobNotFound(job_id)


# --- queueing -------------------------------------------------------------------------------------


def nesting_depth(value: Any, limit: int) -> int:
    """Levels of non-empty dicts and lists in `value` as MongoDB counts them, stopping past
    `limit` (iterative: a hostile value cannot exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if not isinstance(item, (dict, list, tuple)) or not item:
            continue
        deepest = max(deepest, level)
        if deepest > limit:
            break
        stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _check_document(doc: dict[str, Any], index: int) -> None:
    if nesting_depth(doc.get("params"), MAX_PARAMS_DEPTH) > MAX_PARAMS_DEPTH:
        where = f"params #{index}" if index else "params"
        raise InvalidJob(f"{where} nest more than {MAX_PARAMS_DEPTH} levels of dicts and lists; MongoDB refuses "
                         "documents nested that deep")
    try:
        size = len(bson.encode(doc))
    except (bson.errors.InvalidDocument, OverflowError, TypeError, ValueError) as exc:
        where = f"params #{index}" if index else "params"
        raise InvalidJob(f"{where} cannot be stored in MongoDB: {exc}") from None
    if size > MAX_DOCUMENT_BYTES:
        raise InvalidJob(
            f"params #{index} make a {size / 1048576:.1f} MiB job document; MongoDB documents are limited to "
            "16 MiB (store large data elsewhere and pass a reference)"
        )


def resolve_queue(store: Store, path: str, queue: str | None) -> str:
    name = queue or store.task_settings(path).queue or DEFAULT_QUEUE
    return validate_queue_name(name)


def queue_jobs(
    path: str,
    params_list: Sequence[Mapping[str, Any]],
    queue: str | None = None,
    batch_size: int = 1000,
    *,
    store: Store | None = None,
    ids: Sequence[ObjectId] | None = None,
) -> list[ObjectId]:
    """Queue one job per params dict; returns their ids in order. One `insert_many` and one Redis
    pipeline per batch. Everything is validated before anything is stored.

    `queue` defaults to the task's queue in TASKS, else "default". `store` defaults to the
    current context's (see mrq.context.setup_context). `ids` (one per params dict) are the job
    ids to use instead of new ones; a job whose id exists already is not queued again and is left
    out of the returned list (idempotent queueing: the scheduler's one job per occurrence)."""
    store = store or _current_store()
    validate_task_path(path)
    queue = resolve_queue(store, path, queue)
    if queue_kind(queue) != "regular":
        raise InvalidJob(f"queue {queue!r} is a raw queue: use queue_raw_jobs() to put parameters on it")
    if batch_size < 1:
        raise InvalidJob("batch_size must be >= 1")
    params_list = list(params_list)
    if ids is not None and (len(ids) != len(params_list) or not all(isinstance(i, ObjectId) for i in ids)):
        raise InvalidJob("ids must be one ObjectId per params dict")
    now = utcnow()
    docs = []
    for index, params in enumerate(params_list):
        if not isinstance(params, Mapping):
            raise InvalidJob(f"params #{index} must be a dict, got {type(params).__name__}")
        doc = documents.new_job(ObjectId() if ids is None else ids[index], path, dict(params), queue, now)
        _check_document(doc, index)
        docs.append(doc)

    queued: list[ObjectId] = []
    for start in range(0, len(docs), batch_size):
        batch = docs[start:start + batch_size]
        try:
            store.jobs.insert_many(batch, ordered=ids is None)
        except pymongo.errors.BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or [{}]
            refused = [error for error in errors if error.get("code") != 11000]
            if refused or ids is None:
                # The server refused a document (a validator, a limit): not an outage. Remove what
                # this batch inserted so that the error means "these were not queued".
                store.jobs.delete_many({"_id": {"$in": [doc["_id"] for doc in batch]}, "status": QUEUED})
                first = (refused or errors)[0]
                raise InvalidJob(
                    f"MongoDB refused job #{start + int(first.get('index', 0))}: {first.get('errmsg', exc)}"
                    + (f" ({len(queued)} jobs of earlier batches were queued)" if queued else "")
                ) from None
            existing = {error["index"] for error in errors}  # these ids were queued before: skip them
            _push_unpushed(store, queue, [doc["_id"] for index, doc in enumerate(batch) if index in existing])
            batch = [doc for index, doc in enumerate(batch) if index not in existing]
        except pymongo.errors.PyMongoError as exc:
            raise _unavailable("MongoDB", store.settings.mongodb_jobs, exc) from None
        batch_ids: list[ObjectId] = [doc["_id"] for doc in batch]
        emit_metric(store.settings.metric_hook, "jobs.status.queued", len(batch))
        _push_ids(store, queue, batch_ids)
        queued.extend(batch_ids)
    return queued


def _push_unpushed(store: Store, queue: str, ids: list[ObjectId]) -> None:
    """Ids queued before by an attempt that may have failed between its insert and its push (and
    its clean-up): those still `queued` well after that attempt are pushed again. If the first push
    did happen, workers drop the second copy (the job will have started)."""
    settled = utcnow() - timedelta(seconds=store.settings.redis_timeout + 1)
    try:
        waiting = [doc["_id"] for doc in store.jobs.find(
            {"_id": {"$in": ids}, "status": QUEUED, "datequeued": {"$lt": settled}}, {"_id": 1})]
    except pymongo.errors.PyMongoError as exc:
        raise _unavailable("MongoDB", store.settings.mongodb_jobs, exc) from None
    if waiting:
        _push_ids(store, queue, waiting, just_inserted=False)


def _push_ids(store: Store, queue: str, ids: list[ObjectId], *, just_inserted: bool = True) -> None:
    """Push ids on their queue and wake the idle workers. Retried for a few seconds; if Redis stays
    down the just-inserted documents are removed so that the error means "not queued"."""
    deadline = time.monotonic() + store.settings.redis_timeout
    delay = 0.05
    while True:
        try:
            RegularQueue(queue, store).push([str(i) for i in ids])
            return
        except (redis.exceptions.RedisError, OSError) as exc:
            if time.monotonic() + delay < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if not just_inserted:
                raise _unavailable("Redis", store.settings.redis, exc) from None
            try:
                store.jobs.delete_many({"_id": {"$in": ids}, "status": QUEUED})
            except pymongo.errors.PyMongoError:
                pass  # they stay queued in MongoDB; RequeueLostJobs will queue them (at-least-once)
            raise _unavailable("Redis", store.settings.redis, exc) from None


def _unavailable(what: str, uri: str, exc: BaseException) -> StoreUnavailable:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return StoreUnavailable(f"{what} at {redact_uri(uri)} failed: {redact_text(first, uri)}")


def queue_job(path: str, params: Mapping[str, Any], queue: str | None = None, *,
              store: Store | None = None) -> ObjectId:
    """Queue one job; returns its id (an ObjectId)."""
    return queue_jobs(path, [params], queue=queue, store=store)[0]


def _current_store() -> Store:
    return current.get_current_store()


# --- reading and acting on one job ----------------------------------------------------------------


class Job:
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

    def __repr__(self) -> str:
        status = self.data.get("status") if self.data else "?"
        return f"<Job {self.id} {status}>"

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

    status = property(lambda self: self._field("status"))
    result = property(lambda self: self._field("result"))
    traceback = property(lambda self: self._field("traceback"))
    exceptiontype = property(lambda self: self._field("exceptiontype"))
    path = property(lambda self: self._field("path"))
    params = property(lambda self: self._field("params"))
    queue = property(lambda self: self._field("queue"))
    progress = property(lambda self: self._field("progress"))
    retry_count = property(lambda self: self._field("retry_count") or 0)

    def wait(self, timeout: float | None = None, poll_interval: float = 0.1, full_data: bool = False) -> Any:
        """Block until the job leaves `queued`/`started`/`delayed`; return `{result, status}` (or
        the whole document with full_data). Raises JobWaitTimeout after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        projection = None if full_data else {"result": 1, "status": 1, "_id": 0}
        while True:
            data = self.store.jobs.find_one({"_id": self.id}, projection)
            if data is None:
                raise JobNotFound(self.id)
            if data.get("status") not in (QUEUED, STARTED, DELAYED):
                if full_data:
                    self.data = data
                return data
            if deadline is not None and time.monotonic() >= deadline:
                raise JobWaitTimeout(f"job {self.id} still {data.get('status')} after {timeout:g}s")
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
        """Queue a job again (after it failed, was cancelled, interrupted...). A job that is queued
        or running is left alone (InvalidStatusTransition)."""
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
            target = validate_queue_name(queue or self.queue or DEFAULT_QUEUE)
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


def queue_raw_jobs(queue: str, params: Any, *, store: Store | None = None) -> int:
    """Put raw params on a raw queue (`_raw`, `_set`: a list; `_sorted_set`, `_timed_set`: a list,
    or a dict param -> score / unix time). The queue needs a RAW_QUEUES entry. Returns the count."""
    store = store or _current_store()
    target = Queue(validate_queue_name(queue), store)
    if not isinstance(target, RawQueue):
        raise InvalidJob(f"queue {queue!r} is a regular queue: use queue_jobs() (raw queues end in "
                         "_raw, _set, _sorted_set or _timed_set)")
    return target.enqueue_raw_jobs(params)
