"""Nothing is lost: real workers killed, signalled, and real servers killed, emptied and frozen.

Each test queues jobs that record every execution (tests.tasks.general.RecordExecution: an $inc
per run in the `executions` collection), injects the fault, waits for the end, and checks that
every job ended in `success` and that executions == jobs + what the crash explains.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import psutil
import pytest

from mrq import current
from mrq.config import Settings
from mrq.job import Job, queue_jobs
from mrq.store import Store
from mrq.testing.stack import MongoTestServer, RedisServer
from mrq.testing.workers import wait_until

RECORD = "tests.tasks.general.RecordExecution"
FAST_LEASE = {"MRQ_WORKER_LEASE": "2"}


def count(store: Store, **query: Any) -> int:
    return store.jobs.count_documents(query)


def executions(store: Store) -> dict[Any, int]:
    return {d["_id"]: d["count"] for d in store.connections.mongodb_jobs.executions.find()}


def wait_all(store: Store, ids: list[Any], status: str = "success", timeout: float = 60.0) -> None:
    try:
        wait_until(lambda: store.jobs.count_documents({"_id": {"$in": ids}, "status": status}) == len(ids),
                   timeout, interval=0.1, message=f"{len(ids)} jobs {status}")
    except TimeoutError:
        docs = list(store.jobs.find({"_id": {"$in": ids}}, {"status": 1, "traceback": 1}))
        statuses = {d["status"] for d in docs}
        odd = [d.get("traceback", "")[-600:] for d in docs if d["status"] != status][:2]
        raise AssertionError(f"not all {status}: statuses seen {statuses}; {odd}") from None


def test_kill_9_mid_job_loses_nothing(store: Store, worker_factory: Any) -> None:
    ids = queue_jobs(RECORD, [{"seconds": 3}] * 30)
    victim = worker_factory("--greenlets", "20", env=FAST_LEASE)
    wait_until(lambda: len(executions(store)) == 20, 20, message="20 jobs running")
    assert count(store, status="started") == 20 and count(store, status="queued") == 10
    victim.send(signal.SIGKILL)
    killed_at = time.monotonic()
    victim.wait(10)
    worker_factory("--greenlets", "30", env=FAST_LEASE)
    wait_until(lambda: count(store, _id={"$in": ids}, recoveries=1) == 20, 30, message="20 jobs recovered")
    recovery_seconds = time.monotonic() - killed_at
    print(f"\nrecovery of 20 jobs after kill -9: {recovery_seconds:.1f}s (lease 2s)")
    assert recovery_seconds < 15
    wait_all(store, ids)
    runs = executions(store)
    assert len(runs) == 30
    recovered = {d["_id"] for d in store.jobs.find({"_id": {"$in": ids}, "recoveries": 1})}
    # the 20 killed mid-run ran twice (the crash explains it), the 10 queued ones once
    assert {job_id for job_id, n in runs.items() if n == 2} == recovered
    assert sum(runs.values()) == 30 + 20
    for doc in store.jobs.find({"_id": {"$in": list(recovered)}}):
        assert doc["traceback_history"][0]["exceptiontype"] == "WorkerLost"


def test_sigterm_interrupts_and_requeues(store: Store, worker_factory: Any) -> None:
    ids = queue_jobs(RECORD, [{"seconds": 30}] * 20)
    worker = worker_factory("--greenlets", "20")
    wait_until(lambda: len(executions(store)) == 20, 20, message="20 jobs running")
    started = time.monotonic()
    assert worker.stop(signal.SIGTERM, timeout=20) == 0
    assert time.monotonic() - started < 10  # did not wait for the 30 s jobs
    assert count(store, status="queued") == 20
    assert store.redis.llen(store.keys.queue_ids("default")) == 20
    for doc in store.jobs.find({}):
        assert doc["traceback_history"][-1]["status"] == "interrupt"
        assert doc["traceback_history"][-1]["exceptiontype"] == "ShutdownInterrupt"
    store.jobs.update_many({}, {"$set": {"params.seconds": 0}})
    worker_factory("--greenlets", "20")
    wait_all(store, ids)
    assert sum(executions(store).values()) == 40  # each ran once before the SIGTERM, once after


def test_single_sigint_finishes_running_jobs(store: Store, worker_factory: Any) -> None:
    running = queue_jobs(RECORD, [{"seconds": 2}] * 2)
    worker = worker_factory("--greenlets", "2")
    wait_until(lambda: count(store, status="started") == 2, 20, message="2 jobs started")
    waiting = queue_jobs(RECORD, [{"seconds": 0}] * 3)
    worker.send(signal.SIGINT)
    assert worker.wait(20) == 0
    assert count(store, _id={"$in": running}, status="success") == 2
    assert count(store, _id={"$in": waiting}, status="queued") == 3  # no new job was taken
    report = store.workers.find_one({})
    assert report is not None and report["status"] == "stop" and report["done_jobs"] == 2
    assert not store.redis.zscore(store.keys.workers, str(report["_id"]))  # lease released


def test_double_sigint_interrupts(store: Store, worker_factory: Any) -> None:
    ids = queue_jobs(RECORD, [{"seconds": 30}] * 3)
    worker = worker_factory("--greenlets", "3")
    wait_until(lambda: count(store, status="started") == 3, 20, message="3 jobs started")
    worker.send(signal.SIGINT)
    worker.wait_for_output("SIGINT again to interrupt")
    worker.send(signal.SIGINT)
    assert worker.wait(20) == 0
    assert count(store, _id={"$in": ids}, status="queued") == 3
    assert all(d["traceback_history"][-1]["status"] == "interrupt" for d in store.jobs.find({}))


def test_poison_job_is_recovered_n_times_then_failed(store: Store, worker_factory: Any) -> None:
    poison = queue_jobs("tests.tasks.general.Exit", [{}])[0]
    others = queue_jobs(RECORD, [{"seconds": 0}] * 5)
    env = {**FAST_LEASE, "MRQ_MAX_RECOVERIES": "2"}
    deaths = 0
    deadline = time.monotonic() + 90
    while Job(poison).fetch().status != "failed":
        assert time.monotonic() < deadline, f"still {Job(poison).fetch().status} after {deaths} deaths"
        worker = worker_factory("--greenlets", "1", env=env)
        while worker.running and Job(poison).fetch().status != "failed":
            time.sleep(0.1)
        if not worker.running:
            deaths += 1
        worker.kill()
    data = Job(poison).fetch().data
    assert data is not None
    assert data["exceptiontype"] == "PoisonJob" and "died 3 times" in data["traceback"]
    assert data["recoveries"] == 3 and deaths == 3
    # the other jobs were not harmed (one worker at a time, one greenlet: never beside the poison)
    worker_factory("--greenlets", "2")
    wait_all(store, others)


def test_redis_restart_without_data_loses_no_queued_job(mrq_settings: Settings, own_redis: RedisServer,
                                                        worker_factory: Any) -> None:
    settings = mrq_settings.replace(redis=own_redis.url)
    store = current.set_current_config(settings)
    try:
        ids = queue_jobs(RECORD, [{"seconds": 0}] * 500)
        assert store.redis.llen(store.keys.queue_ids("default")) == 500
        own_redis.kill()
        own_redis.start()  # same port, empty
        assert store.redis.llen(store.keys.queue_ids("default")) == 0
        # a worker notices that Redis was emptied and puts back what MongoDB knows is waiting
        # (jobs younger than redis_timeout + 1 s are given that long to be pushed by their producer)
        worker_factory("--greenlets", "20", settings=settings, env={"MRQ_REDIS_TIMEOUT": "2"})
        wait_all(store, ids)
        assert sum(executions(store).values()) == 500
    finally:
        current.reset()


def test_requeue_lost_jobs_task(mrq_settings: Settings, own_redis: RedisServer) -> None:
    from mrq.basetasks.cleaning import RequeueLostJobs

    settings = mrq_settings.replace(redis=own_redis.url)
    store = current.set_current_config(settings)
    try:
        queued = queue_jobs(RECORD, [{}] * 7)
        own_redis.kill()
        own_redis.start()
        assert RequeueLostJobs().run({"min_age": 0}) == {"queued": 7, "delayed": 0, "waiting_queued": 0,
                                                         "waiting_cancelled": 0}
        assert sorted(i.decode() for i in store.redis.lrange(store.keys.queue_ids("default"), 0, -1)) == \
            sorted(str(i) for i in queued)
        assert RequeueLostJobs().run({"min_age": 0})["queued"] == 0  # idempotent
    finally:
        current.reset()


@pytest.mark.testserver_only
def test_frozen_mongodb_is_waited_for(mrq_settings: Settings, own_mongo: MongoTestServer,
                                      worker_factory: Any) -> None:
    settings = mrq_settings.replace(mongodb_jobs=own_mongo.uri + "/frozen")
    store = current.set_current_config(settings)
    try:
        ids = queue_jobs(RECORD, [{"seconds": 0.3}] * 60)
        worker = worker_factory("--greenlets", "5", settings=settings)
        wait_until(lambda: store.jobs.count_documents({"status": "success"}) >= 5, 20, message="first jobs done")
        process = psutil.Process(worker.pid)
        cpu_before = sum(process.cpu_times()[:2])
        own_mongo.freeze()
        time.sleep(10)
        cpu_frozen = sum(process.cpu_times()[:2]) - cpu_before
        own_mongo.thaw()
        assert worker.running
        assert cpu_frozen < 3, f"worker used {cpu_frozen:.1f}s of CPU while MongoDB was frozen (busy loop?)"
        wait_all(store, ids, timeout=90)
        # A task whose own MongoDB call was cut by the outage was retried (not failed): each such
        # retry explains at most one more execution.
        retries = sum(d.get("retry_count", 0) for d in store.jobs.find({"_id": {"$in": ids}}))
        assert 60 <= sum(executions(store).values()) <= 60 + retries
    finally:
        current.reset()


@pytest.mark.testserver_only
def test_mongodb_restarted_empty_workers_reconnect(mrq_settings: Settings, own_mongo: MongoTestServer,
                                                   worker_factory: Any) -> None:
    settings = mrq_settings.replace(mongodb_jobs=own_mongo.uri + "/restarted")
    store = current.set_current_config(settings)
    try:
        first = queue_jobs(RECORD, [{"seconds": 0}] * 5)
        worker = worker_factory("--greenlets", "5", settings=settings)
        wait_all(store, first)
        own_mongo.kill()
        time.sleep(2)  # an outage: the worker keeps trying
        own_mongo.start()
        assert worker.running
        second = queue_jobs(RECORD, [{"seconds": 0}] * 5)
        wait_all(store, second, timeout=60)
        assert worker.running
    finally:
        current.reset()


def test_frozen_redis_is_waited_for(mrq_settings: Settings, own_redis: RedisServer, worker_factory: Any) -> None:
    settings = mrq_settings.replace(redis=own_redis.url)
    store = current.set_current_config(settings)
    try:
        ids = queue_jobs(RECORD, [{"seconds": 0.2}] * 60)
        worker = worker_factory("--greenlets", "5", settings=settings, env={"MRQ_REDIS_TIMEOUT": "2"})
        wait_until(lambda: store.jobs.count_documents({"status": "success"}) >= 5, 20, message="first jobs done")
        process = psutil.Process(worker.pid)
        cpu_before = sum(process.cpu_times()[:2])
        own_redis.freeze()
        time.sleep(6)
        cpu_frozen = sum(process.cpu_times()[:2]) - cpu_before
        own_redis.thaw()
        assert worker.running
        assert cpu_frozen < 3, f"worker used {cpu_frozen:.1f}s of CPU while Redis was frozen (busy loop?)"
        wait_all(store, ids, timeout=90)
        # shorter than the lease (15 s): nothing was recovered, so nothing ran twice
        assert sum(executions(store).values()) == 60
        assert "retrying with backoff" in worker.output()
    finally:
        current.reset()
