"""Queueing jobs and reading them back, without a worker: the documents, the Redis side, the
round trips, and every bad input (clear error, nothing stored)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from bson import ObjectId
from pymongo import monitoring

from mrq import iocount
from mrq.exceptions import InvalidJob, InvalidQueueName, JobNotFound, StoreUnavailable
from mrq.job import Job, get_job_result, queue_job, queue_jobs
from mrq.queue import Queue, RegularQueue
from mrq.store import Store
from mrq.testing.stack import free_port


def queued_ids(store: Store, queue: str = "default") -> list[str]:
    return [i.decode() for i in store.redis.lrange(store.keys.queue_ids(queue), 0, -1)]


def test_queue_job_stores_document_then_id(store: Store) -> None:
    job_id = queue_job("tests.tasks.general.Add", {"a": 1, "b": 2})
    assert isinstance(job_id, ObjectId)
    doc = store.jobs.find_one({"_id": job_id})
    assert doc is not None
    assert doc["path"] == "tests.tasks.general.Add"
    assert doc["params"] == {"a": 1, "b": 2}
    assert doc["status"] == "queued" and doc["queue"] == "default"
    assert doc["retry_count"] == 0 and doc["datequeued"] is not None
    assert "dateexpires" not in doc
    assert queued_ids(store) == [str(job_id)]
    assert store.redis.zscore(store.keys.known_queues, "default") is not None  # the registry ZSET


def test_queue_jobs_keeps_order_and_batches(store: Store) -> None:
    ids = queue_jobs("tests.tasks.general.Add", [{"a": i, "b": 0} for i in range(25)], queue="bulk", batch_size=10)
    assert len(ids) == 25 and len(set(ids)) == 25
    assert queued_ids(store, "bulk") == [str(i) for i in ids]
    docs = {d["_id"]: d["params"]["a"] for d in store.jobs.find({"queue": "bulk"})}
    assert [docs[i] for i in ids] == list(range(25))
    assert Queue("bulk", store).size() == 25


class CommandCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append(event.command_name)

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


def test_bulk_queue_round_trips(store: Store, mrq_settings: Any) -> None:
    """10,000 jobs: one insert per batch of 1,000 and one Redis round trip per batch."""
    counter = CommandCounter()
    monitoring.register(counter)  # applies to clients created afterwards
    try:
        from mrq.connections import Connections

        counted = Store(mrq_settings, Connections(mrq_settings, count_io=True))
        counted.connections.check()  # connected: the handshakes are not counted below
        counter.commands.clear()
        trips = iocount.redis_round_trips
        ids = queue_jobs("tests.tasks.general.Add", [{"a": i, "b": 1} for i in range(10_000)], store=counted)
        assert len(ids) == 10_000
        assert counter.commands.count("insert") == 10
        assert len(counter.commands) <= 30
        assert iocount.redis_round_trips - trips == 10  # one push (RPUSH, stats, PUBLISH) per batch
        assert store.redis.llen(store.keys.queue_ids("default")) == 10_000
        counted.close()
    finally:
        monitoring._LISTENERS.command_listeners.remove(counter)


def test_task_routing_picks_the_default_queue(mrq_settings: Any) -> None:
    settings = mrq_settings.replace(tasks={"tests.tasks": {"queue": "routed"}, "tests.tasks.general.Fail": {
        "queue": "failing"}})
    store = Store(settings)
    try:
        assert Job(queue_job("tests.tasks.general.Add", {}, store=store), store).fetch().queue == "routed"
        assert Job(queue_job("tests.tasks.general.Fail", {}, store=store), store).fetch().queue == "failing"
        assert Job(queue_job("other.Task", {}, store=store), store).fetch().queue == "default"
        assert Job(queue_job("tests.tasks.general.Add", {}, queue="explicit", store=store), store).fetch().queue \
            == "explicit"
    finally:
        store.close()


# --- bad input: clear errors, nothing stored ---------------------------------------------------


def assert_nothing_stored(store: Store) -> None:
    assert store.jobs.count_documents({}) == 0
    assert store.redis.keys(f"{{{store.keys.prefix}:q:*") == []


def test_params_that_cannot_be_stored(store: Store) -> None:
    with pytest.raises(InvalidJob, match="params #1 cannot be stored in MongoDB"):
        queue_jobs("tests.tasks.general.Add", [{"a": 1}, {"a": object()}])
    assert_nothing_stored(store)


def test_params_over_16_mib(store: Store) -> None:
    with pytest.raises(InvalidJob, match=r"17\.0 MiB job document; MongoDB documents are limited to 16 MiB"):
        queue_job("tests.tasks.general.Echo", {"blob": "x" * (17 * 1024 * 1024)})
    assert_nothing_stored(store)


def test_params_nested_deeper_than_mongodb_stores(store: Store) -> None:
    def nested(levels: int) -> dict[str, Any]:
        value: Any = {"leaf": 1}
        for i in range(levels - 1):  # one level each; lists count too
            value = {"n": value} if i % 2 or i == levels - 2 else [value]
        return value

    def compact(levels: int) -> dict[str, Any]:  # the smallest encoding of that many levels: 7 bytes each
        value: dict[str, Any] = {"": None}
        for _ in range(levels - 1):
            value = {"": value}
        return value

    holds_itself: dict[str, Any] = {}
    holds_itself["self"] = holds_itself
    with pytest.raises(InvalidJob, match="params #1 nest more than 179 levels"):
        queue_jobs("tests.tasks.general.Echo", [{}, nested(180)])
    for too_deep in (compact(180), nested(100_000), holds_itself, {"x": object(), "deep": nested(180)}):
        with pytest.raises(InvalidJob, match=r"^params nest more than 179 levels"):  # depth is said first
            queue_job("tests.tasks.general.Echo", too_deep)
    assert_nothing_stored(store)
    job_id = queue_job("tests.tasks.general.Echo", nested(179))  # the job document: 180 levels, mongod's limit
    assert store.jobs.find_one({"_id": job_id}, {"_id": 1}) is not None


def test_params_not_a_dict(store: Store) -> None:
    with pytest.raises(InvalidJob, match="must be a dict, got list"):
        queue_job("tests.tasks.general.Echo", [1, 2])  # type: ignore[arg-type]
    assert_nothing_stored(store)


@pytest.mark.parametrize("path", ["", "noDots", "tests.tasks.general.", "tests..x", "1tests.x", None, "a.b c"])
def test_invalid_task_path(store: Store, path: Any) -> None:
    with pytest.raises(InvalidJob, match="task path must be a dotted Python path"):
        queue_job(path, {})
    assert_nothing_stored(store)


@pytest.mark.parametrize(
    ("queue", "reason"),
    [
        ("my queue", "contains ' '"),
        ("a:b", "contains ':'"),
        ("/crawl/", "a name starting with '/' is a plain queue"),
        ("/crawl/a", "a name starting with '/' is a plain queue"),
        ("{tag}", "contains '{', '}'"),
        ("a//b", "empty part"),
        ("x" * 201, "longer than 200"),
    ],
)
def test_invalid_queue_names(store: Store, queue: str, reason: str) -> None:
    with pytest.raises(InvalidQueueName) as info:
        queue_job("tests.tasks.general.Echo", {}, queue=queue)
    assert reason in str(info.value)
    assert_nothing_stored(store)


def test_raw_queue_refuses_regular_jobs(store: Store) -> None:
    with pytest.raises(InvalidJob, match="raw queue"):
        queue_job("tests.tasks.general.Echo", {}, queue="crawl_raw")
    assert_nothing_stored(store)


def test_unreachable_redis_at_enqueue_leaves_no_job(mrq_settings: Any) -> None:
    settings = mrq_settings.replace(redis=f"redis://127.0.0.1:{free_port()}/0", redis_timeout=1)
    store = Store(settings)
    try:
        with pytest.raises(StoreUnavailable, match=r"Redis at redis://127\.0\.0\.1:"):
            queue_job("tests.tasks.general.Echo", {"x": 1}, store=store)
        assert store.jobs.count_documents({}) == 0
    finally:
        store.close()


def test_a_push_that_succeeds_on_a_retry_still_registers_its_queue(mrq_settings: Any, own_redis: Any) -> None:
    """The registry note and the stats expiry ride in the push's pipeline, written once a minute:
    a pipeline that failed must not count as written."""
    import threading

    from mrq.stats import minute_of

    settings = mrq_settings.replace(redis=own_redis.url, redis_timeout=10)
    store = Store(settings)
    try:
        queue_job("tests.tasks.general.Echo", {"x": 0}, queue="first", store=store)  # connections made
        own_redis.stop()
        restart = threading.Timer(0.5, own_redis.start)
        restart.start()
        job_id = queue_job("tests.tasks.general.Echo", {"x": 1}, queue="retried", store=store)
        restart.join()
        assert store.redis.lrange(store.keys.queue_ids("retried"), 0, -1) == [str(job_id).encode()]
        assert store.redis.zscore(store.keys.known_queues, "retried") is not None
        assert store.redis.ttl(store.keys.stats(minute_of(time.time()))) > 0
    finally:
        store.close()


def test_job_not_found(store: Store) -> None:
    with pytest.raises(JobNotFound, match="no job with id"):
        Job(ObjectId()).fetch()
    with pytest.raises(JobNotFound, match="not-an-id"):
        Job("not-an-id")
    assert get_job_result(ObjectId()) is None


# --- acting on queued jobs -------------------------------------------------------------------


def test_cancel_queued_job_takes_it_out_of_the_queue(store: Store) -> None:
    keep, drop = queue_jobs("tests.tasks.general.Echo", [{"n": 1}, {"n": 2}])
    queue = RegularQueue("default", store)
    assert Job(drop).cancel() is True
    job = Job(drop).fetch()
    assert job.status == "cancel" and job.data["dateexpires"] is not None
    assert queue.size() == 1  # the cancelled id is not counted...
    assert queue.dequeue(10, "w1") == ([str(keep)], None)  # ...and never handed to a worker
    assert store.redis.llen(store.keys.queue_ids("default")) == 0
    assert store.redis.zcard(store.keys.queue_cancelled("default")) == 0  # the mark went with its id
    assert Job(drop).cancel() is False  # already cancelled: nothing to do


def test_cancel_does_not_scan_the_queue(store: Store) -> None:
    """Cancel costs the same with a million ids queued before the job (no LREM)."""
    store.redis.rpush(store.keys.queue_ids("default"), *[str(ObjectId()) for _ in range(200_000)])
    job_id = queue_job("tests.tasks.general.Echo", {})
    before = store.redis.info("commandstats")
    assert Job(job_id).cancel() is True
    after = store.redis.info("commandstats")
    assert "cmdstat_lrem" not in after or after["cmdstat_lrem"] == before.get("cmdstat_lrem")
    assert RegularQueue("default", store).size() == 200_000


def test_requeue_a_cancelled_job(store: Store) -> None:
    job_id = queue_job("tests.tasks.general.Echo", {})
    Job(job_id).cancel()
    Job(job_id).requeue()
    job = Job(job_id).fetch()
    assert job.status == "queued" and "dateexpires" not in job.data
    queue = RegularQueue("default", store)
    assert queue.size() == 1
    # The old copy is dropped by the cancel mark, the new one is handed out: the job runs once.
    assert queue.dequeue(10, "w1") == ([str(job_id)], None)
    assert queue.size() == 0


def test_requeue_a_queued_job_moves_it_to_the_back(store: Store) -> None:
    first, second, third = (queue_job("tests.tasks.general.Echo", {"n": n}) for n in range(3))
    Job(first).requeue()  # as in MRQ: to the back of its queue
    assert queued_ids(store) == [str(second), str(third), str(first)]
    Job(first).requeue()
    Job(first).requeue()
    assert queued_ids(store) == [str(second), str(third), str(first)]  # never two copies
    # cancelled, requeued (old copy + cancel mark + new copy), requeued while queued: one copy, no mark
    Job(second).cancel()
    Job(second).requeue()
    Job(second).requeue()
    assert queued_ids(store) == [str(third), str(first), str(second)]
    queue = RegularQueue("default", store)
    assert queue.dequeue(10, "w1") == ([str(third), str(first), str(second)], None)
    # to another queue: out of this one, at the back of that one
    moved = queue_job("tests.tasks.general.Echo", {}, queue="q1")
    Job(moved).requeue(queue="q2")
    assert RegularQueue("q1", store).size() == 0 and RegularQueue("q2", store).list_job_ids() == [str(moved)]
    assert Job(moved).fetch().queue == "q2"
    with pytest.raises(InvalidQueueName, match="ends with _reverse"):
        Job(moved).requeue(queue="q2_reverse")


def test_get_job_result_and_wait_timeout(store: Store) -> None:
    job_id = queue_job("tests.tasks.general.Echo", {})
    assert get_job_result(job_id) == {"status": "queued"}
    from mrq.job import JobWaitTimeout

    with pytest.raises(JobWaitTimeout, match=r"still queued after 0\.2s"):
        Job(job_id).wait(timeout=0.2, poll_interval=0.05)
