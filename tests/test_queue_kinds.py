"""Raw queues (_raw, _set, _sorted_set, _timed_set), _reverse, subqueues, dequeue strategies and
max_concurrency, with real workers."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from mrq.config import Settings
from mrq.exceptions import ConfigError, InvalidJob, InvalidQueueName
from mrq.job import queue_job, queue_jobs, queue_raw_jobs
from mrq.queue import Queue
from mrq.store import Store
from mrq.testing.workers import wait_until

FACTORIES = "tests.tasks.factories"


def raw_env(**queues: dict[str, Any]) -> dict[str, str]:
    return {"MRQ_RAW_QUEUES": json.dumps(queues)}


@pytest.fixture
def raw_store(mrq_settings: Settings) -> Any:
    """A current Store whose RAW_QUEUES matches what the workers of these tests get."""
    from mrq import current

    settings = mrq_settings.replace(raw_queues=RAW)
    store = current.set_current_config(settings)
    yield store
    current.reset()


RAW = {
    "q_raw": {"job_factory": f"{FACTORIES}.record"},
    "q_set": {"job_factory": f"{FACTORIES}.record"},
    "q_sorted_set": {"job_factory": f"{FACTORIES}.mrq_style"},
    "q_timed_set": {"job_factory": f"{FACTORIES}.record"},
    "fast_raw": {"job_factory": f"{FACTORIES}.failing_task", "statuses_no_storage": ["started", "success"]},
    "nostore_raw": {"job_factory": f"{FACTORIES}.record", "statuses_no_storage": ["started", "success"]},
    "factory_raw": {"job_factory": f"{FACTORIES}.failing_on_bad"},
    "retry_raw": {"job_factory": f"{FACTORIES}.retrying", "retry_queue": "raw_retries"},
}


def runs(store: Store) -> list[str]:
    return [d["value"] for d in store.connections.mongodb_jobs.raw_runs.find().sort("time", 1)]


def test_raw_list_runs_in_order_and_stores_jobs(raw_store: Store, worker_factory: Any) -> None:
    assert queue_raw_jobs("q_raw", ["a", "b", "c", "a"]) == 4
    assert Queue("q_raw").size() == 4
    assert Queue("q_raw").list_raw_jobs() == [b"a", b"b", b"c", b"a"]  # bytes, as MRQ
    worker_factory("--greenlets", "1", "q_raw", env=raw_env(**RAW))
    wait_until(lambda: len(runs(raw_store)) == 4, 15, message="4 raw jobs run")
    assert runs(raw_store) == ["a", "b", "c", "a"]  # a list keeps order and duplicates
    docs = list(raw_store.jobs.find())
    assert len(docs) == 4
    assert all(d["status"] == "success" and d["raw_queue"] == "q_raw" and d["queue"] == "default" for d in docs)
    assert Queue("q_raw").size() == 0


def test_raw_set_is_unique(raw_store: Store, worker_factory: Any) -> None:
    queue_raw_jobs("q_set", ["x", "x", "y"])
    assert Queue("q_set").size() == 2
    worker_factory("q_set", env=raw_env(**RAW))
    wait_until(lambda: len(runs(raw_store)) == 2, 15, message="2 raw jobs run")
    time.sleep(0.3)
    assert sorted(runs(raw_store)) == ["x", "y"]


def test_raw_sorted_set_orders_by_score_and_is_unique(raw_store: Store, worker_factory: Any) -> None:
    queue = Queue("q_sorted_set")
    queue_raw_jobs("q_sorted_set", {"c": 3, "a": 1, "b": 2, "d": 4})
    queue_raw_jobs("q_sorted_set", {"a": 10})  # re-scored, not duplicated
    assert queue.size() == 4
    assert queue.list_raw_jobs() == [b"b", b"c", b"d", b"a"]
    worker_factory("--greenlets", "1", "q_sorted_set", env=raw_env(**RAW))  # mrq_style factory: .decode()
    wait_until(lambda: len(runs(raw_store)) == 4, 15, message="4 raw jobs run")
    assert runs(raw_store) == ["b", "c", "d", "a"]


def test_raw_timed_set_runs_when_due(raw_store: Store, worker_factory: Any) -> None:
    worker_factory("q_timed_set", env=raw_env(**RAW))
    due = time.time() + 2
    queue_raw_jobs("q_timed_set", {"later": due})
    queue_raw_jobs("q_timed_set", ["now"])  # a plain list is due now
    wait_until(lambda: "now" in runs(raw_store), 5, message="the due job")
    time.sleep(max(0.0, due - time.time() - 0.3))
    assert runs(raw_store) == ["now"]  # not before its time
    wait_until(lambda: "later" in runs(raw_store), 6, message="the timed job")
    ran_at = next(d["time"] for d in raw_store.connections.mongodb_jobs.raw_runs.find() if d["value"] == "later")
    assert due - 0.05 <= ran_at < due + 1.0


def test_statuses_no_storage(raw_store: Store, worker_factory: Any) -> None:
    queue_raw_jobs("nostore_raw", ["ok1", "ok2"])
    queue_raw_jobs("fast_raw", ["boom"])  # its factory makes a failing job
    worker_factory("nostore_raw", "fast_raw", env=raw_env(**RAW))
    wait_until(lambda: raw_store.jobs.count_documents({"status": "failed"}) == 1, 15, message="the failed job")
    wait_until(lambda: len(runs(raw_store)) == 2, 15, message="2 successful raw jobs")
    # successes left no document; the failure is stored with its traceback and origin
    assert raw_store.jobs.count_documents({}) == 1
    failed = raw_store.jobs.find_one({})
    assert failed["raw_queue"] == "fast_raw" and "raw boom" in failed["traceback"]
    assert failed["path"] == "tests.tasks.general.Fail" and failed["params"] == {"message": "raw boom"}


def test_job_factory_failure_fails_that_job_only(raw_store: Store, worker_factory: Any) -> None:
    queue_raw_jobs("factory_raw", ["good1", "bad", "good2"])
    worker_factory("--greenlets", "1", "factory_raw", env=raw_env(**RAW))
    wait_until(lambda: len(runs(raw_store)) == 2, 15, message="2 good raw jobs")
    failed = wait_until(lambda: raw_store.jobs.find_one({"status": "failed"}), 5, message="the factory failure")
    assert failed["exceptiontype"] == "ValueError" and "cannot make a job of 'bad'" in failed["traceback"]
    assert failed["params"] == {"raw": "bad"} and failed["raw_queue"] == "factory_raw"


def test_raw_job_retries_through_its_retry_queue(raw_store: Store, worker_factory: Any) -> None:
    queue_raw_jobs("retry_raw", ["r1"])
    worker_factory("retry_raw", "raw_retries", env=raw_env(**RAW))
    doc = wait_until(lambda: raw_store.jobs.find_one({"status": "success"}), 15, message="retried raw job done")
    assert doc["queue"] == "raw_retries" and doc["retry_count"] == 1 and doc["result"] == "r1"
    assert doc["raw_queue"] == "retry_raw"


# --- bad input ----------------------------------------------------------------------------------


def test_raw_queue_without_config_is_refused(store: Store, worker_factory: Any) -> None:
    # As in MRQ, a producer needs no RAW_QUEUES (tests/test_mrq_compat.py); a worker does.
    assert queue_raw_jobs("unknown_raw", ["x"]) == 1
    worker = worker_factory("unknown_raw", wait=False)
    assert worker.wait(20) == 2
    assert "unknown_raw' has no RAW_QUEUES entry" in worker.output()


def test_bad_raw_params(raw_store: Store) -> None:
    with pytest.raises(InvalidJob, match="must be a finite number"):
        queue_raw_jobs("q_timed_set", {"x": "tomorrow"})
    with pytest.raises(InvalidJob, match="takes a list of params"):
        queue_raw_jobs("q_raw", {"x": 1})
    with pytest.raises(InvalidJob, match="must be a string"):
        queue_raw_jobs("q_raw", [{"not": "a string"}])
    with pytest.raises(InvalidJob, match="is a regular queue"):
        queue_raw_jobs("default", ["x"])
    with pytest.raises(InvalidQueueName, match="ends with '/'"):
        queue_raw_jobs("q_raw/", ["x"])
    assert Queue("q_timed_set").size() == 0 and Queue("q_raw").size() == 0


def test_bad_raw_queue_config(mrq_settings: Settings) -> None:
    from mrq.queue import raw_queue_config

    with pytest.raises(ConfigError, match="job_factory is required"):
        raw_queue_config({"a_raw": {}}, "a_raw")
    with pytest.raises(ConfigError, match=r"cannot import 'tests\.tasks\.factories\.nope'"):
        raw_queue_config({"a_raw": {"job_factory": "tests.tasks.factories.nope"}}, "a_raw")
    with pytest.raises(ConfigError, match="retry_queue 'x_raw' must be a regular queue"):
        raw_queue_config({"a_raw": {"job_factory": f"{FACTORIES}.record", "retry_queue": "x_raw"}}, "a_raw")
    with pytest.raises(ConfigError, match="unknown status 'done'"):
        raw_queue_config({"a_raw": {"job_factory": f"{FACTORIES}.record", "statuses_no_storage": ["done"]}}, "a_raw")
    with pytest.raises(ConfigError, match="unknown key 'job_factroy'"):
        raw_queue_config({"a_raw": {"job_factroy": f"{FACTORIES}.record"}}, "a_raw")


@pytest.mark.parametrize("value", [0, -1, "two"])
def test_bad_max_concurrency(tmp_path: Any, value: Any) -> None:
    from mrq.config import load_settings

    with pytest.raises(ConfigError, match=r"TASKS\['tests.tasks'\]\.max_concurrency"):
        load_settings([], env={"MRQ_TASKS": json.dumps({"tests.tasks": {"max_concurrency": value}})}, cwd=tmp_path)


# --- regular queue variants ---------------------------------------------------------------------


def order_of_starts(store: Store, ids: list[Any]) -> list[Any]:
    docs = store.jobs.find({"_id": {"$in": ids}})
    return [d["_id"] for d in sorted(docs, key=lambda d: (d["datestarted"], d["_id"]))]


def test_reverse_worker_argument_is_lifo(store: Store, worker_factory: Any) -> None:
    from mrq.queue import worker_queue

    ids = queue_jobs("tests.tasks.general.Add", [{"a": i, "b": 0} for i in range(5)], queue="stack")
    assert Queue("stack").list_job_ids() == [str(i) for i in ids]
    assert worker_queue("stack_reverse").list_job_ids() == [str(i) for i in reversed(ids)]
    worker_factory("--greenlets", "1", "stack_reverse")  # MRQ's meaning: the queue `stack`, newest first
    wait_until(lambda: store.jobs.count_documents({"status": "success"}) == 5, 15, message="5 done")
    assert order_of_starts(store, ids) == list(reversed(ids))


def test_subqueues_are_discovered_and_served_fairly(store: Store, worker_factory: Any) -> None:
    a = queue_jobs("tests.tasks.general.Sleep", [{"seconds": 0.05}] * 100, queue="crawl/a.example")
    b = queue_jobs("tests.tasks.general.Sleep", [{"seconds": 0.05}] * 100, queue="crawl/b.example")
    worker_factory("--greenlets", "4", "crawl/")

    def halfway() -> bool:
        return store.jobs.count_documents({"status": "success"}) >= 60

    wait_until(halfway, 30, message="60 jobs done")
    done_a = store.jobs.count_documents({"_id": {"$in": a}, "status": {"$in": ["success", "started"]}})
    done_b = store.jobs.count_documents({"_id": {"$in": b}, "status": {"$in": ["success", "started"]}})
    assert done_a >= 20 and done_b >= 20, (done_a, done_b)  # interleaved, not one after the other
    # a subqueue that appears while the worker runs is picked up without a restart
    c = queue_job("tests.tasks.general.Add", {"a": 1, "b": 2}, queue="crawl/c.example")
    wait_until(lambda: store.jobs.find_one({"_id": c, "status": "success"}), 30, message="new subqueue served")
    wait_until(lambda: store.jobs.count_documents({"status": "success"}) == 201, 30, message="all done")


def test_parallel_strategy_alternates(store: Store, worker_factory: Any) -> None:
    first = queue_jobs("tests.tasks.general.Sleep", [{"seconds": 0.2}] * 6, queue="pa")
    second = queue_jobs("tests.tasks.general.Sleep", [{"seconds": 0.2}] * 6, queue="pb")
    worker_factory("--greenlets", "2", "--dequeue_strategy", "parallel", "pa", "pb")
    wait_until(lambda: store.jobs.count_documents({"status": "success"}) == 12, 20, message="12 done")
    starts = order_of_starts(store, first + second)
    assert set(starts[:4]) & set(second) and set(starts[:4]) & set(first)


def test_sequential_strategy_drains_in_priority_order(store: Store, worker_factory: Any) -> None:
    first = queue_jobs("tests.tasks.general.Sleep", [{"seconds": 0.1}] * 4, queue="sa")
    second = queue_jobs("tests.tasks.general.Sleep", [{"seconds": 0.1}] * 4, queue="sb")
    worker_factory("--greenlets", "2", "sa", "sb")
    wait_until(lambda: store.jobs.count_documents({"status": "success"}) == 8, 20, message="8 done")
    assert set(order_of_starts(store, first + second)[:4]) == set(first)


def test_max_concurrency_across_workers(store: Store, worker_factory: Any) -> None:
    env = {"MRQ_TASKS": json.dumps({"tests.tasks.general.Concurrent": {"max_concurrency": 2}})}
    ids = queue_jobs("tests.tasks.general.Concurrent", [{"seconds": 0.4}] * 10)
    worker_factory("--greenlets", "10", env=env)
    worker_factory("--greenlets", "10", env=env)
    wait_until(lambda: store.jobs.count_documents({"_id": {"$in": ids}, "status": "success"}) == 10, 40,
               message="10 limited jobs done")
    counter = store.connections.mongodb_jobs.concurrency.find_one({"_id": "counter"})
    assert counter["peak"] == 2  # used the 2 slots, never more
    assert max(d["result"] for d in store.jobs.find({"_id": {"$in": ids}})) <= 2
    assert store.redis.zcard(store.keys.concurrency("tests.tasks.general.Concurrent")) == 0  # slots released


def test_mrq_style_max_concurrency_class_attribute(store: Store, worker_factory: Any) -> None:
    ids = queue_jobs("tests.tasks.general.ConcurrentOne", [{"seconds": 0.3}] * 4)
    worker_factory("--greenlets", "4")
    wait_until(lambda: store.jobs.count_documents({"_id": {"$in": ids}, "status": "success"}) == 4, 30,
               message="4 limited jobs done")
    assert store.connections.mongodb_jobs.concurrency.find_one({"_id": "counter"})["peak"] == 1


def test_a_raw_job_whose_worker_is_killed_is_recovered(raw_store: Store, worker_factory: Any) -> None:
    """An inserted raw job is held in its retry queue's running set: recovered like a regular job."""
    queue_raw_jobs("q_raw", [json.dumps({"value": "slow", "seconds": 3})])
    env = {**raw_env(**RAW), "MRQ_WORKER_LEASE": "2"}
    victim = worker_factory("--greenlets", "1", "q_raw", env=env)
    wait_until(lambda: len(runs(raw_store)) == 1, 15, message="the raw job running")
    victim.kill()
    worker_factory("--greenlets", "1", "q_raw", "default", env=env)  # default: q_raw's retry queue
    wait_until(lambda: raw_store.jobs.count_documents({"status": "success"}) == 1, 30, message="recovered, done")
    doc = raw_store.jobs.find_one({})
    assert doc is not None and doc["recoveries"] == 1 and doc["raw_queue"] == "q_raw"
    assert runs(raw_store) == ["slow", "slow"]  # ran twice: the crash explains it, and it is counted
