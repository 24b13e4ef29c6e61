"""mrq.aio: queueing and reading jobs from asyncio code, with the sync API's documents, Redis
writes and guarantees (validation first, insert then push, nothing left queued when Redis is
down), on redis.asyncio and pymongo's AsyncMongoClient against the test servers (strict mode:
access control, notablescan)."""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from typing import Any

import pytest
from bson import ObjectId

from mrq import aio
from mrq.config import Settings
from mrq.exceptions import ConfigError, InvalidJob, InvalidQueueName, JobNotFound, MrqError, StoreUnavailable
from mrq.job import JobWaitTimeout, queue_job
from mrq.store import Store
from mrq.testing.stack import RedisServer
from tests.tasks import typed
from tests.test_jobs import queued_ids


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _queue_and_read(settings: Settings) -> tuple[ObjectId, list[ObjectId], dict[str, Any]]:
    async with aio.AsyncStore(settings) as astore:
        one = await aio.queue_job("tests.tasks.general.Add", {"a": 1, "b": 2}, store=astore)
        many = await aio.queue_jobs("tests.tasks.general.Add", [{"a": i, "b": 0} for i in range(5)], queue="bulk",
                                    batch_size=2, store=astore)
        job = await aio.Job(one, astore).fetch()
        return one, many, job.data or {}


def test_async_queueing_writes_what_the_sync_api_writes(store: Store, mrq_settings: Settings) -> None:
    pubsub = store.redis.pubsub()
    pubsub.subscribe(store.keys.notify_channel("default"))
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    one, many, data = run(_queue_and_read(mrq_settings))
    sync_id = queue_job("tests.tasks.general.Add", {"a": 1, "b": 2})
    sync_doc = store.jobs.find_one({"_id": sync_id})
    assert data["_id"] == one
    assert set(data) == set(sync_doc)  # the same document, field for field
    for field in ("path", "params", "queue", "status", "retry_count"):
        assert data[field] == sync_doc[field], field
    assert queued_ids(store) == [str(one), str(sync_id)]
    assert queued_ids(store, "bulk") == [str(i) for i in many]
    assert [store.jobs.find_one({"_id": i})["params"]["a"] for i in many] == list(range(5))
    assert store.redis.zscore(store.keys.known_queues, "bulk") is not None  # the queue registry
    message = pubsub.get_message(timeout=5)  # the wake-up message of docs/storage.md
    assert message is not None and message["data"] == b"1"
    pubsub.close()


@pytest.mark.parametrize(("args", "error", "text"), [
    (("tests/tasks.Add", {}), InvalidJob, "dotted Python path"),
    (("tests.tasks.general.Add", {"a": {1, 2}}), InvalidJob, "cannot be stored in MongoDB"),
    (("tests.tasks.general.Add", {}, "bad queue"), InvalidQueueName, "contains ' '"),
    (("tests.tasks.general.Add", {}, "x_raw"), InvalidJob, "is a raw queue"),
    (("tests.tasks.general.Add", {}, "default_reverse"), InvalidQueueName, "_reverse"),
    (("tests.tasks.general.Add", ["a"]), InvalidJob, "must be a dict"),
])
def test_bad_inputs_are_refused_before_anything_is_stored(store: Store, mrq_settings: Settings, args: tuple[Any, ...],
                                                         error: type[Exception], text: str) -> None:
    async def attempt() -> None:
        async with aio.AsyncStore(mrq_settings) as astore:
            if isinstance(args[1], list):
                await aio.queue_jobs(args[0], [{"a": 1}, *args[1]], store=astore)
            else:
                await aio.queue_job(*args, store=astore)

    with pytest.raises(error, match=None) as caught:
        run(attempt())
    assert text in str(caught.value)
    assert store.jobs.count_documents({}) == 0 and queued_ids(store) == []


def test_idempotent_ids(store: Store, mrq_settings: Settings) -> None:
    ids = [ObjectId(), ObjectId()]

    async def twice() -> tuple[list[ObjectId], list[ObjectId]]:
        async with aio.AsyncStore(mrq_settings) as astore:
            first = await aio.queue_jobs("tests.tasks.general.Add", [{"a": 1}, {"a": 2}], ids=ids, store=astore)
            second = await aio.queue_jobs("tests.tasks.general.Add", [{"a": 1}, {"a": 2}], ids=ids, store=astore)
            return first, second

    first, second = run(twice())
    assert first == ids and second == []
    assert queued_ids(store) == [str(i) for i in ids]  # queued once


def test_redis_down_leaves_nothing_queued(store: Store, mrq_settings: Settings, own_redis: RedisServer) -> None:
    settings = mrq_settings.replace(redis=own_redis.url, redis_timeout=1.0)

    async def queue_while_down() -> None:
        async with aio.AsyncStore(settings) as astore:
            await aio.queue_job("tests.tasks.general.Add", {"a": 1}, store=astore)  # connects while it is up
            own_redis.stop()
            await aio.queue_jobs("tests.tasks.general.Add", [{"a": 2}, {"a": 3}], store=astore)

    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        run(queue_while_down())
    assert "cannot reach Redis at" in str(caught.value) and "MRQ_REDIS" in str(caught.value)
    assert 0.5 < time.monotonic() - started < 10  # retried for redis_timeout, then gave up
    assert [doc["params"]["a"] for doc in store.jobs.find({"status": "queued"})] == [1]  # the two were removed


def test_mongodb_down_is_a_one_line_error(mrq_settings: Settings) -> None:
    settings = mrq_settings.replace(mongodb_jobs="mongodb://127.0.0.1:9/mrq", mongodb_timeout=0.5)

    async def attempt() -> None:
        async with aio.AsyncStore(settings) as astore:
            await aio.queue_job("tests.tasks.general.Add", {"a": 1}, store=astore)

    with pytest.raises(StoreUnavailable) as caught:
        run(attempt())
    message = str(caught.value)
    assert "cannot reach MongoDB at mongodb://127.0.0.1:9/mrq" in message and "\n" not in message
    assert "Topology" not in message
    # pymongo's async client leaves the socket of a refused connection to the garbage collector:
    # collected here, rather than warned about in whichever test the collector next runs in.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def test_sentinel_and_cluster_uris_are_refused_clearly(store: Store, mrq_settings: Settings) -> None:
    settings = mrq_settings.replace(redis="redis+sentinel://127.0.0.1:26379/main")

    async def attempt() -> None:
        async with aio.AsyncStore(settings) as astore:
            await aio.queue_job("tests.tasks.general.Add", {}, store=astore)

    with pytest.raises(ConfigError, match="only redis://, rediss:// and unix://"):
        run(attempt())
    assert store.jobs.count_documents({}) == 0  # refused before the insert


def test_job_wait_and_the_decorator_with_a_worker(store: Store, mrq_settings: Settings, worker_factory: Any) -> None:
    worker_factory("--greenlets", "2", "typed_high", "default")

    async def scenario() -> tuple[Any, ...]:
        aio.setup(mrq_settings)
        try:
            job_id = await typed.add.aqueue(a=2, b=3)
            ids = await typed.add.aqueue_many([{"a": 1}, {"a": 10}])
            with pytest.raises(InvalidJob, match="unexpected keyword argument 'c'"):
                await typed.add.aqueue(a=1, c=2)  # type: ignore[call-arg]
            waited = await aio.Job(job_id).wait(timeout=20)
            results = [(await aio.Job(i).wait(timeout=20))["result"] for i in ids]
            job = await aio.Job(job_id).fetch()
            slow = await typed.slow.aqueue(seconds=30)
            with pytest.raises(JobWaitTimeout):
                await aio.Job(slow).wait(timeout=0.2)
            with pytest.raises(JobNotFound):
                await aio.Job(ObjectId()).fetch()
            return waited, results, job.status, job.result, job.queue
        finally:
            await aio.close()

    waited, results, status, result, queue = run(scenario())
    assert waited == {"status": "success", "result": 5}
    assert results == [3, 12] and (status, result, queue) == ("success", 5, "typed_high")


def test_a_closed_store_serves_a_new_event_loop_and_an_open_one_says_what_to_do(store: Store,
                                                                                   mrq_settings: Settings) -> None:
    astore = aio.AsyncStore(mrq_settings)

    async def queue_and_close(a: int) -> ObjectId:
        try:
            return await aio.queue_job("tests.tasks.general.Add", {"a": a}, store=astore)
        finally:
            await astore.close()

    first = run(queue_and_close(1))
    second = run(queue_and_close(2))  # another asyncio.run: new clients
    assert queued_ids(store) == [str(first), str(second)]

    async def queue_only() -> ObjectId:
        return await aio.queue_job("tests.tasks.general.Add", {"a": 3}, store=astore)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(queue_only())
        with pytest.raises(MrqError, match="belong to another event loop"):
            run(queue_only())
        loop.run_until_complete(astore.close())
    finally:
        loop.close()
    assert len(queued_ids(store)) == 3


def test_reading_a_field_before_fetch_says_so() -> None:
    with pytest.raises(Exception, match="fetch"):
        _ = aio.Job(ObjectId()).status
