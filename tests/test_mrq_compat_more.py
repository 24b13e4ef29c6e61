"""MRQ 0.9 compatibility, issue 16 items 9-12: pymongo 3 names on task connections, `_reverse`
worker arguments, requeue of a queued job, MRQ's queue names, dailytime microseconds, retry
expiry, raw listings as bytes, and what replaces mrq-agent. MRQ-style task modules and configs."""

from __future__ import annotations

from typing import Any

from mrq.job import queue_job
from mrq.store import Store
from tests.test_worker import wait_status

P3 = "tests.tasks.mrq09_pymongo3"


def test_pymongo3_method_names_in_a_task(store: Store, worker_factory: Any) -> None:
    worker_factory()
    result = wait_status(queue_job(f"{P3}.Pymongo3Calls", {}), "success")["result"]
    one = result["ids"][0]
    assert result["counts"] == {"all": 3, "b": 2, "cursor": 3, "cursor_limited": 2, "cursor_unlimited": 3}
    assert result["positional"] == {"n": 2, "nModified": 2, "ok": 1.0, "updatedExisting": True}
    assert result["single"]["n"] == 1 and result["single"]["updatedExisting"] is True
    assert result["upserted"] == {"n": 1, "nModified": 0, "ok": 1.0, "updatedExisting": False,
                                  "upserted": "new-one"}
    assert result["replaced"]["nModified"] == 1
    assert result["before"] == 1  # find_and_modify returns the document before the update by default
    assert result["after"] == {"_id": one, "n": 3}  # new=True, fields
    assert result["first_b"] == 13  # sort: the highest n
    assert result["made"] == {"_id": "made", "kind": "d"} and result["gone"] == "d"
    assert result["removed_one"] == {"n": 1, "ok": 1.0}
    assert result["removed"]["n"] == 4 and result["left"] == 0 and result["logs_count"] == 0
    assert "kind_1" in result["indexes"]
    assert store.connections.mongodb_jobs["tests_pymongo3"].count_documents({"_id": {"$in": ["new-one", "made"]}}) == 0


def test_pymongo3_bad_calls_fail_the_job_with_a_clear_error(store: Store, worker_factory: Any) -> None:
    worker_factory()
    expected = {
        "multi_replace": "update(multi=True) needs update operators",
        "both": "give update or remove=True, not both",
        "neither": "give update (a document) or remove=True",
        "empty": "insert() needs a document or a non-empty list",
    }
    for call, message in expected.items():
        data = wait_status(queue_job(f"{P3}.BadPymongo3Call", {"call": call}), "failed")
        assert message in data["traceback"], data["traceback"]


def test_only_task_connections_are_wrapped(mrq_settings: Any) -> None:
    import warnings

    import pymongo.collection
    import pytest

    from mrq import context, current, legacy_mongo
    from mrq.legacy_mongo import LegacyCollection, LegacyDatabase

    current.set_current_config(mrq_settings)
    try:
        store = current.get_current_store()
        assert type(store.jobs) is pymongo.collection.Collection  # mrq's own code: plain pymongo
        assert type(store.connections.mongodb_jobs) is not LegacyDatabase
        db = context.connections.mongodb_jobs
        assert isinstance(db, LegacyDatabase) and db.name == store.connections.mongodb_jobs.name
        assert isinstance(db.some_coll, LegacyCollection) and isinstance(db["a"].b, LegacyCollection)
        assert isinstance(db.get_collection("x").with_options(), LegacyCollection)
        legacy_mongo._warned.discard("count")  # other tests of this process may have warned already
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            db.tests_pymongo3.count({"_id": "nothing"})
            db.tests_pymongo3.count({"_id": "nothing"})
            with pytest.raises(TypeError, match="save\\(\\) needs a document"):
                db.tests_pymongo3.save(["not", "a", "dict"])
        assert [str(w.message) for w in caught if "count()" in str(w.message)] == [
            "pymongo 3's count() is deprecated: use count_documents(filter) or estimated_document_count() "
            "(mrq maps it for MRQ 0.9 task code)"]  # once per method name
    finally:
        current.reset()


def runs(store: Store, key: str) -> tuple[dict[bytes, bytes], list[bytes]]:
    return store.redis.hgetall(key), store.redis.lrange(key + ":order", 0, -1)


def test_reverse_worker_argument_as_in_mrq(store: Store, worker_factory: Any) -> None:
    import pytest

    from mrq.exceptions import InvalidQueueName
    from mrq.testing.workers import wait_until

    key = f"{store.keys.prefix}:runs"
    for name in ("first", "second", "third"):
        queue_job(f"{P3}.CountRuns", {"key": key, "name": name})  # on `default`, as MRQ producers do
    worker_factory("default_reverse", "--greenlets", "1")
    wait_until(lambda: len(runs(store, key)[1]) == 3, 15, message="3 jobs run")
    counts, order = runs(store, key)
    assert order == [b"third", b"second", b"first"] and set(counts.values()) == {b"1"}
    with pytest.raises(InvalidQueueName, match="ends with _reverse: that form only tells a worker to take the queue "
                                               "'default' newest first"):
        queue_job(f"{P3}.CountRuns", {"key": key, "name": "x"}, queue="default_reverse")
    refused = worker_factory("crawl_raw_reverse", wait=False)
    assert refused.wait(20) == 2
    assert "applies to regular queues only, and 'crawl_raw' is a raw queue" in refused.output()


def test_requeue_of_a_queued_job_and_mrq_queue_names(store: Store, worker_factory: Any) -> None:
    from mrq.job import Job
    from mrq.testing.workers import wait_until

    key = f"{store.keys.prefix}:runs"
    first = queue_job(f"{P3}.CountRuns", {"key": key, "name": "first"}, queue="parking")
    queue_job(f"{P3}.CountRuns", {"key": key, "name": "second"}, queue="parking")
    Job(first).requeue()  # MRQ: to the back of its queue
    Job(first).requeue()
    slash_end = queue_job(f"{P3}.CountRuns", {"key": key, "name": "main/"}, queue="main/")
    slash_start = queue_job(f"{P3}.CountRuns", {"key": key, "name": "/main"}, queue="/main")
    sub = queue_job(f"{P3}.CountRuns", {"key": key, "name": "main/sub"}, queue="main/sub")
    worker_factory("parking", "main/", "/main", "--greenlets", "1")
    wait_until(lambda: len(runs(store, key)[1]) == 5, 15, message="5 jobs run")
    counts, order = runs(store, key)
    assert order[:2] == [b"second", b"first"] and set(counts.values()) == {b"1"}  # each job ran once
    assert sorted(order[2:]) == [b"/main", b"main/", b"main/sub"]  # `main/` takes main/ and main/sub
    assert [Job(i).fetch().queue for i in (slash_end, slash_start, sub)] == ["main/", "/main", "main/sub"]


def test_dailytime_microseconds_retry_expiry_and_raw_bytes(store: Store, worker_factory: Any, tmp_path: Any) -> None:
    import datetime

    from mrq.job import queue_raw_jobs
    from mrq.queue import Queue
    from mrq.testing.workers import wait_until
    from tests.test_mrq_compat import mrq_config

    config = mrq_config(tmp_path, """import datetime
DEFAULT_JOB_TTL = 1000
SCHEDULER_TASKS = [
    {"path": "tests.tasks.mrq09.Tick", "params": {"kind": "micro"}, "dailytime": datetime.time(3, 4, 5, 678901)},
]
""")
    worker_factory("--config", config, "--scheduler")  # MRQ's config starts (it used to stop the worker)
    scheduled = store.connections.mongodb_jobs["mrq_scheduled_jobs"]
    entry = wait_until(lambda: scheduled.find_one(), 10, message="entry stored")  # the only entry
    assert entry["dailytime"] == "03:04:05"

    retried = wait_status(queue_job(f"{P3}.RetryLater", {"delay": 600}), "retry")
    assert retried["dateexpires"] - retried["dateretry"] == datetime.timedelta(seconds=1000)  # never before
    assert retried["dateretry"] - retried["dateupdated"] == datetime.timedelta(seconds=600)

    queue_raw_jobs("later_raw", ["b", "a"])
    queue_raw_jobs("later_set", ["z"])
    assert Queue("later_raw").list_raw_jobs() == [b"b", b"a"] and Queue("later_set").list_raw_jobs() == [b"z"]
