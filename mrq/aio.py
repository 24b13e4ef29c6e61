"""Queueing and reading jobs from asyncio code (FastAPI, Starlette, aiohttp...): `queue_job`,
`queue_jobs` and `Job`, with redis.asyncio and pymongo's AsyncMongoClient, so that the event loop
never blocks on a store.

    from mrq import aio

    job_id = await aio.queue_job("tasks.io.Fetch", {"url": url})
    result = await aio.Job(job_id).wait(timeout=30)

The guarantees are the sync producer's (mrq/queue/producer.py), and so is the code that decides
what is stored: the same validation and job documents (`prepare_jobs`), the same Redis writes
and wake-up message (`RegularQueue.add_push`), docs/storage.md's protocol. A job is inserted in
MongoDB (`queued`), then its id is pushed on its queue in one Redis pipeline; if Redis stays
down for `redis_timeout` seconds the inserted documents are removed, so that an error means
"not queued". Ids given with `ids=` make queueing idempotent, as in the sync API.

Connections come from the same settings as everywhere (the config file, MRQ_* variables, or a
Settings object): `aio.setup(settings)` (or nothing: the first use reads the config file and the
environment), `await aio.close()` at shutdown. An `AsyncStore` may also be passed explicitly.
Clients belong to the event loop that opened them: close the store before that loop ends (a
closed store opens new clients in the next loop that uses it; an open one refuses another loop).
Redis URIs: redis://, rediss:// and unix:// (not Sentinel nor Cluster, which the sync API
supports).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pymongo
import pymongo.errors
import redis.asyncio
import redis.exceptions
from bson import ObjectId
from pymongo.asynchronous.collection import AsyncCollection

from .config import Settings, load_settings
from .connections import mongo_database_name, redact_uri, store_error
from .exceptions import ConfigError, MrqError, StoreUnavailable
from .helpers import emit_metric
from .job import DocumentFields, JobNotFound, to_object_id
from .lifecycle.statuses import QUEUED
from .queue.producer import duplicate_indexes, prepare_jobs, refused_batch, unpushed_filter
from .queue.regular import RegularQueue
from .storage import mongo
from .store import Store

__all__ = ["AsyncStore", "Job", "close", "get_store", "queue_job", "queue_jobs", "setup"]


class AsyncStore:
    """The asyncio clients of one set of settings: `redis` (redis.asyncio) and `jobs` (the
    `mrq_jobs` collection through pymongo's AsyncMongoClient), created on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Keys, per-task settings and the once-a-minute registry notes: a Store that never connects.
        self.model = Store(settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._redis: redis.asyncio.Redis | None = None
        self._mongo: pymongo.AsyncMongoClient | None = None

    def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        if self._redis is not None or self._mongo is not None:
            raise MrqError("this mrq.aio store's connections belong to another event loop: `await store.close()` "
                           "(or `await aio.close()`) before that loop ends, or use one AsyncStore per loop")
        self._loop = loop

    @property
    def redis(self) -> redis.asyncio.Redis:
        self._check_loop()
        if self._redis is None:
            self._redis = make_async_redis(self.settings)
        return self._redis

    @property
    def jobs(self) -> AsyncCollection:
        self._check_loop()
        if self._mongo is None:
            self._mongo = make_async_mongo(self.settings)
        return self._mongo[mongo_database_name(self.settings.mongodb_jobs)][mongo.JOBS]

    async def close(self) -> None:
        """Close the clients (they are opened again, in the running loop, if the store is used
        after)."""
        redis_client, mongo_client = self._redis, self._mongo
        self._redis = self._mongo = None
        self._loop = None
        if redis_client is not None:
            await redis_client.aclose()
        if mongo_client is not None:
            await mongo_client.close()

    async def __aenter__(self) -> AsyncStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def make_async_redis(settings: Settings) -> redis.asyncio.Redis:
    uri = settings.redis
    if uri.split("://", 1)[0].lower() not in ("redis", "rediss", "unix"):
        raise ConfigError(f"mrq.aio: Redis URI {redact_uri(uri)}: only redis://, rediss:// and unix:// are supported "
                          "from asyncio code (queue from a thread with the sync API for Sentinel or Cluster)")
    return redis.asyncio.Redis.from_url(
        uri, max_connections=settings.redis_max_connections, socket_timeout=settings.redis_timeout,
        socket_connect_timeout=min(settings.redis_timeout, 5.0), health_check_interval=30, decode_responses=False)


def make_async_mongo(settings: Settings) -> pymongo.AsyncMongoClient:
    ms = int(settings.mongodb_timeout * 1000)
    uri = settings.mongodb_jobs
    try:
        return pymongo.AsyncMongoClient(uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms,
                                        socketTimeoutMS=max(ms * 6, 30_000), appname="mrq", tz_aware=False,
                                        connect=False)
    except (pymongo.errors.ConfigurationError, pymongo.errors.InvalidURI, ValueError, TypeError) as exc:
        raise ConfigError(f"invalid MongoDB URI {redact_uri(uri)}: {str(exc).splitlines()[0]}") from None


# --- the current store (one per process, as mrq.context's) ------------------------------------------

_store: AsyncStore | None = None


def setup(settings: Settings | None = None, **overrides: Any) -> AsyncStore:
    """Use these settings (default: the config file and MRQ_* variables, plus `overrides`) for the
    module's functions. The previous store's clients are dropped (close it first to close them)."""
    global _store
    if settings is None:
        settings, _ = load_settings(None, overrides=overrides)
    _store = AsyncStore(settings)
    return _store


def get_store() -> AsyncStore:
    return _store if _store is not None else setup()


async def close() -> None:
    """Close the current store's clients (at the application's shutdown)."""
    global _store
    if _store is not None:
        await _store.close()
        _store = None


# --- queueing -----------------------------------------------------------------------------------------


async def queue_jobs(path: str, params_list: Sequence[Mapping[str, Any]], queue: str | None = None,
                     batch_size: int = 1000, *, store: AsyncStore | None = None,
                     ids: Sequence[ObjectId] | None = None) -> list[ObjectId]:
    """Queue one job per params dict; returns their ids in order (mrq.job.queue_jobs' semantics:
    everything validated before anything is stored, one insert_many and one Redis pipeline per
    batch, `ids` for idempotent queueing)."""
    store = store or get_store()
    queue, job_ids, docs = prepare_jobs(store.model, path, params_list, queue, batch_size, ids)
    store.redis  # noqa: B018 - an unusable Redis URI is refused before anything is inserted
    queued: list[ObjectId] = []
    for start in range(0, len(docs), batch_size):
        batch_ids = job_ids[start:start + batch_size]
        try:
            await store.jobs.insert_many(docs[start:start + batch_size], ordered=ids is None)
        except pymongo.errors.BulkWriteError as exc:
            existing = duplicate_indexes(exc, ids is not None)  # these ids were queued before: skip them
            if existing is None:  # refused (a validator, a limit): remove what this batch inserted
                await store.jobs.delete_many({"_id": {"$in": batch_ids}, "status": QUEUED})
                raise refused_batch(exc, start, len(queued)) from None
            await _push_unpushed(store, queue, [job_id for index, job_id in enumerate(batch_ids) if index in existing])
            batch_ids = [job_id for index, job_id in enumerate(batch_ids) if index not in existing]
        except pymongo.errors.PyMongoError as exc:
            raise _mongo_unavailable(store, exc) from None
        emit_metric(store.settings.metric_hook, "jobs.status.queued", len(batch_ids))
        await _push_ids(store, queue, batch_ids)
        queued.extend(batch_ids)
    return queued


async def queue_job(path: str, params: Mapping[str, Any], queue: str | None = None, *,
                    store: AsyncStore | None = None) -> ObjectId:
    """Queue one job; returns its id (an ObjectId)."""
    return (await queue_jobs(path, [params], queue=queue, store=store))[0]


async def _push_unpushed(store: AsyncStore, queue: str, ids: list[ObjectId]) -> None:
    """Ids queued by an earlier attempt that may have failed between its insert and its push."""
    try:
        waiting = [doc["_id"] async for doc in store.jobs.find(
            unpushed_filter(ids, store.settings.redis_timeout), {"_id": 1})]
    except pymongo.errors.PyMongoError as exc:
        raise _mongo_unavailable(store, exc) from None
    if waiting:
        await _push_ids(store, queue, waiting, just_inserted=False)


async def _push_ids(store: AsyncStore, queue: str, ids: list[ObjectId], *, just_inserted: bool = True) -> None:
    """Push ids on their queue and publish the wake-up, in one pipeline. Retried for
    `redis_timeout` seconds; then the just-inserted documents are removed ("not queued")."""
    if not ids:
        return
    deadline = time.monotonic() + store.settings.redis_timeout
    delay = 0.05
    while True:
        try:
            pipe = store.redis.pipeline(transaction=False)
            for channel, message in RegularQueue(queue, store.model).add_push(pipe, [str(i) for i in ids]):
                pipe.publish(channel, message)
            await pipe.execute()
            return
        except (redis.exceptions.RedisError, OSError) as exc:
            store.model.forget_notes()  # the registry note and the stats expiry may not have been written
            if time.monotonic() + delay < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if just_inserted:
                try:
                    await store.jobs.delete_many({"_id": {"$in": ids}, "status": QUEUED})
                except pymongo.errors.PyMongoError:
                    pass  # they stay queued in MongoDB; RequeueLostJobs will queue them (at-least-once)
            raise StoreUnavailable(store_error("Redis", store.settings.redis, exc)) from None


def _mongo_unavailable(store: AsyncStore, exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(store_error("MongoDB", store.settings.mongodb_jobs, exc, store.settings.mongodb_timeout))


# --- reading a job ------------------------------------------------------------------------------------


class Job(DocumentFields):
    """A handle on one job document for asyncio code: `await job.fetch()` loads it (then `status`,
    `result`... read its fields), `await job.wait(timeout=...)` waits for its end."""

    def __init__(self, job_id: object, store: AsyncStore | None = None) -> None:
        self.id = to_object_id(job_id)
        self._store = store
        self.data: dict[str, Any] | None = None

    @property
    def store(self) -> AsyncStore:
        if self._store is None:
            self._store = get_store()
        return self._store

    async def fetch(self, full_data: bool | dict[str, Any] = True) -> Job:
        """Load the document; raises JobNotFound when there is none (never queued, or expired)."""
        projection = None if full_data is True else (full_data or {"path": 1, "params": 1, "status": 1})
        data = await self._find(projection)
        if data is None:
            raise JobNotFound(self.id)
        self.data = data
        return self

    async def _find(self, projection: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] | None = await self.store.jobs.find_one({"_id": self.id}, projection)
        except pymongo.errors.PyMongoError as exc:
            raise _mongo_unavailable(self.store, exc) from None
        return found

    def _field(self, name: str) -> Any:
        if self.data is None:
            raise MrqError(f"job {self.id}: `await job.fetch()` before reading its {name}")
        return self.data.get(name)


    async def wait(self, timeout: float | None = None, poll_interval: float = 0.1, full_data: bool = False) -> Any:
        """Wait (without blocking the loop) until the job leaves `queued`/`started`/`delayed`;
        return `{result, status}` (or the whole document with full_data). Raises JobWaitTimeout
        after `timeout` seconds, JobNotFound when there is no such job."""
        deadline = None if timeout is None else time.monotonic() + timeout
        projection = None if full_data else {"result": 1, "status": 1, "_id": 0}
        while True:
            data = await self._find(projection)
            if self._waited(data, full_data, deadline, timeout):
                return data
            await asyncio.sleep(poll_interval)
