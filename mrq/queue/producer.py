"""Queueing jobs: the MRQ-compatible producer functions (`queue_job`, `queue_jobs`,
`queue_raw_jobs`, and MRQ's older `send_task`, `send_tasks`, `send_raw_tasks`), importable from
here, from mrq.job and from mrq.context.

A job is queued by inserting its document (`queued`) in MongoDB, then pushing its id on its
queue in Redis; if the push fails for good the documents are removed, so that an error means
"not queued". A single new job (`queue_job` without `job_id` or `depends_on`, on a single Redis)
has its push written before its insert is sent, and both replies awaited together
(`_queue_one`): one wait instead of two. Each document is encoded to BSON once: the encoding is
the check that MongoDB can store it, and the bytes are what is inserted. A raw queue only needs
its name: its RAW_QUEUES entry is the worker's business.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

import bson
import pymongo
import pymongo.errors
import redis.exceptions
from bson import ObjectId
from bson.raw_bson import RawBSONDocument

from .. import current
from ..clock import utcnow
from ..connections import Commands, is_cluster, send_commands_during, store_error
from ..exceptions import InvalidJob, StoreUnavailable
from ..helpers import emit_metric
from ..lifecycle import dependencies, documents
from ..lifecycle.statuses import DEFAULT_QUEUE, QUEUED, WAITING
from ..storage.keys import validate_job_queue, validate_queue_name
from ..task.paths import load_task, validate_task_path
from .base import Queue, queue_kind
from .raw import RawQueue
from .regular import RegularQueue

if TYPE_CHECKING:
    from ..store import Store

#: MongoDB refuses documents over 16 MiB; keep room for the fields added while the job runs.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024 - 64 * 1024
#: mongod stores documents nested at most 180 levels (its manual promises 100); the job document
#: is one level above its params.
MAX_PARAMS_DEPTH = 179
#: Fields a job document gets during its life (docs/storage.md): extra_fields may not set them.
RESERVED_FIELDS = frozenset({
    "_id", "path", "params", "queue", "status", "datequeued", "datestarted", "dateupdated", "datefinished",
    "dateexpires", "dateretry", "raw_queue", "worker", "result", "traceback", "exceptiontype", "traceback_history",
    "retry_count", "progress", "recoveries", "totaltime", "depends_on", "dependencies_ended", "dependents",
    "on_dependency_failure",
})
#: Params nested deeper than MAX_PARAMS_DEPTH encode to this many bytes at least (each non-empty
#: level holds an element: a type byte, a key, a 4-byte length, a terminator): a smaller job
#: document cannot be too deep, and skips the walk that counts its levels.
MIN_BYTES_TOO_DEEP = 7 * (MAX_PARAMS_DEPTH + 1)
_CONTAINERS = (dict, list, tuple)


def nesting_depth(value: Any, limit: int) -> int:
    """Levels of non-empty dicts and lists in `value` as MongoDB counts them, stopping past
    `limit` (iterative: a hostile value cannot exhaust the stack; depth first: a value that holds
    itself is found too deep at once). Only containers are stacked, not every value."""
    if not (isinstance(value, _CONTAINERS) and value):
        return 0
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > deepest:
            deepest = level
            if deepest > limit:
                break
        below = level + 1
        stack.extend([(child, below) for child in (item.values() if isinstance(item, dict) else item)
                      if isinstance(child, _CONTAINERS) and child])
    return deepest


def _too_deep(doc: dict[str, Any], index: int) -> InvalidJob | None:
    if nesting_depth(doc.get("params"), MAX_PARAMS_DEPTH) <= MAX_PARAMS_DEPTH:
        return None
    where = f"params #{index}" if index else "params"
    return InvalidJob(f"{where} nest more than {MAX_PARAMS_DEPTH} levels of dicts and lists; MongoDB refuses "
                      "documents nested that deep")


def encode_document(doc: dict[str, Any], index: int) -> RawBSONDocument:
    """The job document encoded once, as it is inserted (pymongo sends a RawBSONDocument's bytes
    as they are): encoding is the check that MongoDB can store it. Raises InvalidJob for params
    that cannot be encoded, nest too deep (checked first) or make the document too large."""
    try:
        data = bson.encode(doc)
    except (bson.errors.InvalidDocument, OverflowError, TypeError, ValueError, RecursionError) as exc:
        # RecursionError: nested deeper than the encoder recurses, or holding itself.
        where = f"params #{index}" if index else "params"
        raise _too_deep(doc, index) or InvalidJob(f"{where} cannot be stored in MongoDB: {exc}") from None
    if len(data) >= MIN_BYTES_TOO_DEEP:
        too_deep = _too_deep(doc, index)
        if too_deep is not None:
            raise too_deep
    if len(data) > MAX_DOCUMENT_BYTES:
        raise InvalidJob(
            f"params #{index} make a {len(data) / 1048576:.1f} MiB job document; MongoDB documents are limited to "
            "16 MiB (store large data elsewhere and pass a reference)"
        )
    return RawBSONDocument(data)


def resolve_queue(store: Store, path: str, queue: str | None) -> str:
    name = queue or store.task_settings(path).queue or DEFAULT_QUEUE
    return validate_job_queue(name)


def dependency_ids(depends_on: Any, on_failure: str = "cancel") -> list[ObjectId]:
    """`depends_on` as a list of distinct ObjectIds (in order): ids, their hex strings, or Job
    handles. Raises InvalidJob for anything else."""
    if on_failure not in dependencies.ON_FAILURE:
        raise InvalidJob(f"on_dependency_failure must be one of {', '.join(dependencies.ON_FAILURE)}, "
                         f"got {on_failure!r}")
    if depends_on is None:
        return []
    if isinstance(depends_on, (str, bytes, ObjectId)) or not isinstance(depends_on, (Sequence, set, frozenset)):
        depends_on = [depends_on]
    found: dict[ObjectId, None] = {}
    for item in depends_on:
        item = getattr(item, "id", item)  # a Job handle
        if isinstance(item, str) and ObjectId.is_valid(item):
            item = ObjectId(item)
        if not isinstance(item, ObjectId):
            raise InvalidJob(f"depends_on must list job ids (ObjectIds or their 24-character hex strings), got "
                             f"{item!r:.60}")
        found[item] = None
    if len(found) > dependencies.MAX_DEPENDENCIES:
        raise InvalidJob(f"depends_on lists {len(found)} jobs; a job may wait for at most "
                         f"{dependencies.MAX_DEPENDENCIES} (chain groups of jobs through one job instead)")
    return list(found)


class PreparedJobs(NamedTuple):
    """A validated queueing request: its queue, and per job its id and its document, encoded."""

    queue: str
    ids: list[ObjectId]
    documents: list[RawBSONDocument]


def prepare_jobs(store: Store, path: str, params_list: Sequence[Mapping[str, Any]], queue: str | None,
                 batch_size: int, ids: Sequence[ObjectId] | None, depends_on: Sequence[ObjectId] = (),
                 on_dependency_failure: str = "cancel",
                 extra_fields: Mapping[str, Any] | None = None) -> PreparedJobs:
    """Validate a queueing request (path, queue, params, ids, dependencies as from
    dependency_ids(), extra top-level fields) and build its job documents, without touching a
    store. Shared by queue_jobs and mrq.aio."""
    validate_task_path(path)
    queue = resolve_queue(store, path, queue)
    if queue_kind(queue) != "regular":
        if depends_on:
            raise InvalidJob(f"depends_on cannot be used on raw queue {queue!r}: a raw queue holds parameters, not "
                             "job documents, so nothing there can wait for other jobs (use a regular queue)")
        raise InvalidJob(f"queue {queue!r} is a raw queue: use queue_raw_jobs() to put parameters on it")
    if batch_size < 1:
        raise InvalidJob("batch_size must be >= 1")
    params_list = list(params_list)
    if ids is not None and (len(ids) != len(params_list) or not all(isinstance(i, ObjectId) for i in ids)):
        raise InvalidJob("ids must be one ObjectId per params dict")
    if ids is not None and depends_on and set(ids) & set(depends_on):
        raise InvalidJob("depends_on names a job queued by this same call: a job cannot wait for itself (a cycle)")
    if extra_fields and params_list:
        taken = [name for name in extra_fields if name in RESERVED_FIELDS]
        if taken:
            raise InvalidJob(f"extra_fields may not set {', '.join(sorted(taken))}: mrq writes those")
    now = utcnow()
    job_ids = [ObjectId() for _ in params_list] if ids is None else list(ids)
    docs = []
    for index, params in enumerate(params_list):
        if not isinstance(params, Mapping):
            raise InvalidJob(f"params #{index} must be a dict, got {type(params).__name__}")
        doc = documents.new_job(job_ids[index], path, dict(params), queue, now)
        if depends_on:
            doc.update(documents.waiting_fields(list(depends_on), on_dependency_failure))
        if extra_fields:
            doc.update(extra_fields)
        docs.append(encode_document(doc, index))
    return PreparedJobs(queue, job_ids, docs)


def check_dependencies_exist(store: Store, depends_on: Sequence[ObjectId]) -> None:
    """Every dependency must be a job in the store (a job cannot wait for one that will never end)."""
    known: set[ObjectId] = set()
    for start in range(0, len(depends_on), 1000):
        chunk = list(depends_on[start:start + 1000])
        known.update(doc["_id"] for doc in store.jobs.find({"_id": {"$in": chunk}}, {"_id": 1}))
    missing = [i for i in depends_on if i not in known]
    if missing:
        raise InvalidJob(f"depends_on: no job {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1
                                                                 else "")
                         + " in the store: it never existed, or ended and expired")


def refused_batch(exc: pymongo.errors.BulkWriteError, start: int, earlier: int) -> InvalidJob:
    """The error of a batch whose insert the server refused (a validator, a limit)."""
    errors = exc.details.get("writeErrors") or [{}]
    first = ([error for error in errors if error.get("code") != 11000] or errors)[0]
    return InvalidJob(f"MongoDB refused job #{start + int(first.get('index', 0))}: {first.get('errmsg', exc)}"
                      + (f" ({earlier} jobs of earlier batches were queued)" if earlier else ""))


def duplicate_indexes(exc: pymongo.errors.BulkWriteError, idempotent: bool) -> set[int] | None:
    """The batch indexes of documents refused only because their id exists already (idempotent
    queueing: they were queued before), or None when the server refused something else."""
    errors = exc.details.get("writeErrors") or [{}]
    if not idempotent or any(error.get("code") != 11000 for error in errors):
        return None
    return {error["index"] for error in errors}


def unpushed_filter(ids: list[ObjectId], redis_timeout: float) -> dict[str, Any]:
    """The jobs among `ids` still `queued` well after an attempt's push could have ended: an
    attempt may have failed between its insert and its push (and its clean-up)."""
    settled = utcnow() - timedelta(seconds=redis_timeout + 1)
    return {"_id": {"$in": ids}, "status": QUEUED, "datequeued": {"$lt": settled}}


def queue_jobs(
    path: str,
    params_list: Sequence[Mapping[str, Any]],
    queue: str | None = None,
    batch_size: int = 1000,
    *,
    store: Store | None = None,
    ids: Sequence[ObjectId] | None = None,
    depends_on: Any = None,
    on_dependency_failure: str = "cancel",
    extra_fields: Mapping[str, Any] | None = None,
) -> list[ObjectId]:
    """Queue one job per params dict; returns their ids in order. One `insert_many` and one Redis
    pipeline per batch. Everything is validated before anything is stored.

    `depends_on` (job ids, their hex strings or Job handles): each job waits (status `waiting`)
    until every one of those ended, and is queued when they all ended `success`; when one ends
    otherwise it is cancelled with the reason, or, with `on_dependency_failure="run"`, it runs
    anyway. Not possible on raw queues. See docs/workflows.md.

    `extra_fields`: more top-level fields for every document (mrq.workflow's `group`); they may
    not replace a field mrq writes.

    `queue` defaults to the task's queue in TASKS, else "default". `store` defaults to the
    current context's (see mrq.context.setup_context). `ids` (one per params dict) are the job
    ids to use instead of new ones; a job whose id exists already is not queued again and is left
    out of the returned list (idempotent queueing: the scheduler's one job per occurrence)."""
    store = store or _current_store()
    waits_for = dependency_ids(depends_on, on_dependency_failure)
    queue, job_ids, docs = prepare_jobs(store, path, params_list, queue, batch_size, ids, waits_for,
                                        on_dependency_failure, extra_fields)
    if waits_for:
        try:
            check_dependencies_exist(store, waits_for)
        except pymongo.errors.PyMongoError as exc:
            raise _unavailable("MongoDB", store.settings.mongodb_jobs, exc, store.settings.mongodb_timeout) from None
    if len(docs) == 1 and ids is None and not waits_for and not is_cluster(store.redis):
        emit_metric(store.settings.metric_hook, "jobs.status.queued", 1)
        _queue_one(store, queue, job_ids[0], docs[0])
        return job_ids
    queued: list[ObjectId] = []
    for start in range(0, len(docs), batch_size):
        batch_ids = job_ids[start:start + batch_size]
        try:
            _insert(store, docs[start:start + batch_size], ordered=ids is None)
        except pymongo.errors.BulkWriteError as exc:
            existing = duplicate_indexes(exc, ids is not None)  # these ids were queued before: skip them
            if existing is None:
                # The server refused a document (a validator, a limit): not an outage. Remove what
                # this batch inserted so that the error means "these were not queued".
                store.jobs.delete_many({"_id": {"$in": batch_ids}, "status": {"$in": [QUEUED, WAITING]}})
                raise refused_batch(exc, start, len(queued)) from None
            known = [job_id for index, job_id in enumerate(batch_ids) if index in existing]
            if waits_for:  # an earlier attempt may have stopped before registering them: again (idempotent)
                dependencies.register(store, known, waits_for)
            else:
                _push_unpushed(store, queue, known)
            batch_ids = [job_id for index, job_id in enumerate(batch_ids) if index not in existing]
        except pymongo.errors.PyMongoError as exc:
            raise _unavailable("MongoDB", store.settings.mongodb_jobs, exc, store.settings.mongodb_timeout) from None
        if waits_for:  # stored waiting: queued by the end of their dependencies, not pushed now
            dependencies.register(store, batch_ids, waits_for)
            queued.extend(batch_ids)
            continue
        emit_metric(store.settings.metric_hook, "jobs.status.queued", len(batch_ids))
        _push_ids(store, queue, batch_ids)
        queued.extend(batch_ids)
    return queued


def _insert(store: Store, batch: list[RawBSONDocument], ordered: bool) -> None:
    """`insert_many`, or for one job `insert_one` (a third less client CPU: no bulk machinery), its
    write error raised in insert_many's shape so that one caller handles both."""
    if len(batch) > 1:
        store.jobs.insert_many(batch, ordered=ordered)
        return
    try:
        store.jobs.insert_one(batch[0])
    except pymongo.errors.WriteError as exc:  # DuplicateKeyError included
        details = {"index": 0, "code": exc.code, "errmsg": (exc.details or {}).get("errmsg", str(exc))}
        raise pymongo.errors.BulkWriteError({"writeErrors": [details], "nInserted": 0}) from None


def _queue_one(store: Store, queue: str, job_id: ObjectId, doc: RawBSONDocument) -> None:
    """One new job: its push is written to Redis, its insert sent to MongoDB, then the push's
    reply read, so that the call waits for the two servers at once rather than one after the
    other. A worker may therefore take the id a moment before the document is stored: it waits
    for it (worker/starting.py, IN_FLIGHT). If the insert fails, the id is taken back off the
    queue (a worker that took it already drops it once the document is clearly not coming) and
    the error raised means "not queued"; if only the push failed, it is sent again as queue_jobs
    does (`_push_ids`: retried, then the document removed)."""
    commands = Commands()
    messages = RegularQueue(queue, store).add_push(commands, [str(job_id)])
    outcome = send_commands_during(store.redis, commands, messages, lambda: _insert(store, [doc], ordered=True))
    if outcome.redis_error is not None:
        store.forget_notes()  # the once-a-minute notes it carried count as not written
    if outcome.error is not None:
        if outcome.redis_error is None:
            _unpush(store, queue, str(job_id))
        if isinstance(outcome.error, pymongo.errors.BulkWriteError):
            raise refused_batch(outcome.error, 0, 0) from None
        if isinstance(outcome.error, pymongo.errors.PyMongoError):
            raise _unavailable("MongoDB", store.settings.mongodb_jobs, outcome.error,
                               store.settings.mongodb_timeout) from None
        raise outcome.error
    if outcome.redis_error is not None:
        _push_ids(store, queue, [job_id])


def _unpush(store: Store, queue: str, job_id: str) -> None:
    """Take back the id of a job whose insert failed (best effort: if Redis fails now, the workers
    drop the id once its document is clearly not coming)."""
    try:
        store.redis.lrem(store.keys.queue_ids(queue), 0, job_id)
    except (redis.exceptions.RedisError, OSError):
        pass


def _push_unpushed(store: Store, queue: str, ids: list[ObjectId]) -> None:
    """Ids queued before by an attempt that may have failed between its insert and its push (and
    its clean-up): those still `queued` well after that attempt are pushed again. If the first push
    did happen, workers drop the second copy (the job will have started)."""
    try:
        waiting = [doc["_id"] for doc in store.jobs.find(unpushed_filter(ids, store.settings.redis_timeout),
                                                         {"_id": 1})]
    except pymongo.errors.PyMongoError as exc:
        raise _unavailable("MongoDB", store.settings.mongodb_jobs, exc, store.settings.mongodb_timeout) from None
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


def _unavailable(what: str, uri: str, exc: BaseException, timeout: float | None = None) -> StoreUnavailable:
    return StoreUnavailable(store_error(what, uri, exc, timeout))


def queue_job(path: str, params: Mapping[str, Any], queue: str | None = None, *,
              store: Store | None = None, depends_on: Any = None, on_dependency_failure: str = "cancel",
              job_id: ObjectId | None = None) -> ObjectId:
    """Queue one job; returns its id (an ObjectId). `depends_on`: see queue_jobs. `job_id`: the
    id to give it (a job with that id already stored is not queued again)."""
    return queue_jobs(path, [params], queue=queue, store=store, depends_on=depends_on,
                      on_dependency_failure=on_dependency_failure,
                      ids=None if job_id is None else [job_id])[0]


def _current_store() -> Store:
    return current.get_current_store()


def queue_raw_jobs(queue: str, params: Any, *, store: Store | None = None) -> int:
    """Put raw params on a raw queue (`_raw`, `_set`: a list; `_sorted_set`, `_timed_set`: a list,
    or a dict param -> score / unix time). The worker taking them needs a RAW_QUEUES entry, the
    producer does not. Returns the count."""
    store = store or _current_store()
    target = Queue(validate_queue_name(queue), store)
    if not isinstance(target, RawQueue):
        raise InvalidJob(f"queue {queue!r} is a regular queue: use queue_jobs() (raw queues end in "
                         "_raw, _set, _sorted_set or _timed_set)")
    return target.enqueue_raw_jobs(params)


# --- MRQ's pre-queue_job names (still used by older code) -----------------------------------------


def send_task(path: str, params: Mapping[str, Any], **kwargs: Any) -> ObjectId:
    """MRQ's `send_task`: `queue_job(path, params, **kwargs)`."""
    return queue_job(path, params, **kwargs)


def send_tasks(path: str, params_list: Sequence[Mapping[str, Any]], queue: str | None = None, sync: bool = False,
               batch_size: int = 1000) -> list[Any]:
    """MRQ's `send_tasks`: `queue_jobs(...)`, or with `sync=True` run each task here, in this
    process, and return their results (no job document)."""
    if sync:
        task = load_task(validate_task_path(path))
        return [task(dict(params)) for params in params_list]
    return queue_jobs(path, params_list, queue=queue, batch_size=batch_size)


def send_raw_tasks(queue: str, params: Any, **kwargs: Any) -> int:
    """MRQ's `send_raw_tasks`: `queue_raw_jobs(queue, params)`."""
    return queue_raw_jobs(queue, params, **kwargs)
