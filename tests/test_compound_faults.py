"""Two faults at once, runaway tasks, and writes MongoDB refuses: each test injects the fault into
real workers and real servers, then checks that every job ends with a final status, runs once
unless a crash explains a second run (counted in `recoveries`), and leaves no id behind.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from bson import ObjectId

from mrq import current
from mrq.config import Settings
from mrq.job import Job, queue_job, queue_jobs
from mrq.queue import RegularQueue, pause_queue, paused_queues, resume_queue
from mrq.store import Store
from mrq.testing.stack import MongoTestServer, RedisServer
from mrq.testing.workers import wait_until

RECORD = "tests.tasks.general.RecordExecution"
FAST = {"MRQ_WORKER_LEASE": "2", "MRQ_MONGODB_TIMEOUT": "2"}
#: Params that make a job document just under what `queue_job` accepts (16 MiB minus 64 KiB).
NEAR_LIMIT = 16 * 1024 * 1024 - 100 * 1024


def executions(store: Store) -> dict[Any, int]:
    return {d["_id"]: d["count"] for d in store.connections.mongodb_jobs.executions.find()}


def statuses(store: Store, ids: list[ObjectId]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for doc in store.jobs.find({"_id": {"$in": ids}}, {"status": 1}):
        counts[doc["status"]] = counts.get(doc["status"], 0) + 1
    return counts


def wait_status(store: Store, ids: list[ObjectId], status: str, timeout: float = 60.0) -> None:
    try:
        wait_until(lambda: store.jobs.count_documents({"_id": {"$in": ids}, "status": status}) == len(ids),
                   timeout, interval=0.1, message=f"{len(ids)} jobs {status}")
    except TimeoutError:
        raise AssertionError(f"not all {status}: {statuses(store, ids)}") from None


def running_entries(store: Store) -> int:
    """Ids held in any worker's running set, of any queue."""
    keys = list(store.redis.scan_iter(match=f"{{{store.keys.prefix}:q:*}}:running:*", count=1000))
    return sum(int(store.redis.scard(key)) for key in keys)


@pytest.fixture
def own_stores(mrq_settings: Settings, own_redis: RedisServer, own_mongo: MongoTestServer) -> Iterator[Settings]:
    """Settings on a Redis and a MongoDB of this test's own (they get frozen, killed, emptied)."""
    settings = mrq_settings.replace(redis=own_redis.url, mongodb_jobs=own_mongo.uri + "/faults")
    current.set_current_config(settings)
    yield settings
    current.reset()


# --- 1. shutdown while MongoDB hangs --------------------------------------------------------------


@pytest.mark.testserver_only
def test_sigint_while_mongodb_hangs_leaves_the_lease_and_loses_nothing(
        own_stores: Settings, own_mongo: MongoTestServer, worker_factory: Any) -> None:
    store = current.get_current_store()
    job_id = queue_job(RECORD, {"seconds": 1.5})
    worker = worker_factory("--greenlets", "2", settings=own_stores, env=FAST)
    wait_until(lambda: executions(store).get(job_id) == 1, 20, message="job running")
    own_mongo.freeze()  # a partition: requests hang, nothing is refused
    try:
        worker.send(signal.SIGINT)  # the job finishes; its final write cannot be stored
        code = worker.wait(60)
        assert code == 5, worker.output()[-2000:]
        assert "leaving this worker's lease to expire" in worker.output()
        assert running_entries(store) == 1  # the id stayed where recovery will look
        assert store.redis.zcard(store.keys.workers) == 1  # the lease was not released
    finally:
        own_mongo.thaw()
    worker_factory("--greenlets", "2", settings=own_stores, env=FAST)
    wait_status(store, [job_id], "success", timeout=40)
    doc = Job(job_id).fetch().data
    assert doc is not None
    # Either the hung write was applied when MongoDB came back (one run), or the job was recovered
    # and ran again: then the second run is counted.
    assert executions(store)[job_id] == 1 + doc.get("recoveries", 0)
    wait_until(lambda: running_entries(store) == 0, 10, message="running sets empty")


# --- 2. reconciliation after Redis lost data --------------------------------------------------------


@pytest.mark.testserver_only
def test_reconciliation_is_retried_until_mongodb_answers_and_restores_paused_queues(
        own_stores: Settings, own_redis: RedisServer, own_mongo: MongoTestServer, worker_factory: Any) -> None:
    store = current.get_current_store()
    pause_queue(store, "held")
    ids = queue_jobs(RECORD, [{}] * 40, queue="held")
    worker = worker_factory("--greenlets", "5", "held", settings=own_stores, env=FAST)
    own_mongo.freeze()
    try:
        own_redis.kill()
        own_redis.start()  # Redis is back, empty, while MongoDB hangs...
        time.sleep(35)  # ...longer than a worker's MongoDB socket timeout (30 s): the first passes fail
    finally:
        own_mongo.thaw()
    queue = RegularQueue("held", store)
    try:
        wait_until(lambda: queue.size() == 40, 60, message="40 ids put back")
    except TimeoutError:
        raise AssertionError(f"{queue.size()} ids put back; worker output:\n{worker.output()[-4000:]}") from None
    assert paused_queues(store) == {"held"}  # still paused: nothing ran while Redis had forgotten it
    assert store.jobs.count_documents({"status": "queued"}) == 40
    resume_queue(store, "held")
    wait_status(store, ids, "success")
    assert sum(executions(store).values()) == 40
    assert "reconciling Redis with MongoDB failed" in worker.output()  # tried while MongoDB hung, then again


def test_a_failover_that_lost_recent_writes_is_reconciled(own_stores: Settings, own_redis: RedisServer,
                                                          worker_factory: Any) -> None:
    """The epoch key survives (an old snapshot) but the server is another one: reconcile."""
    store = current.get_current_store()
    pause_queue(store, "q")
    worker = worker_factory("--greenlets", "5", "q", settings=own_stores, env=FAST)
    wait_until(lambda: store.redis.get(store.keys.epoch), 20, message="first reconciliation")
    kept = queue_jobs(RECORD, [{}] * 10, queue="q")
    store.redis.save()  # what the replica had
    lost = queue_jobs(RECORD, [{}] * 10, queue="q")  # written after: lost by the "failover"
    own_redis.kill()
    own_redis.start()  # loads the snapshot: epoch present, paused flag present, `lost` ids missing
    assert store.redis.get(store.keys.epoch) is not None
    queue = RegularQueue("q", store)
    assert queue.size() == 10
    wait_until(lambda: queue.size() == 20, 30, message="the lost ids put back")
    resume_queue(store, "q")
    wait_status(store, kept + lost, "success")
    assert sorted(executions(store).values()) == [1] * 20  # the kept ids were not pushed twice
    assert worker.running


# --- 3. writes MongoDB refuses -------------------------------------------------------------------------


@pytest.mark.testserver_only
def test_a_refused_retry_write_ends_the_job_failed_with_an_expiry(store: Store, worker_factory: Any) -> None:
    job_id = queue_job("tests.tasks.runaway.RetryWithHugeTraceback", {"blob": "b" * NEAR_LIMIT})
    worker = worker_factory("--greenlets", "2", env=FAST)
    wait_status(store, [job_id], "failed", timeout=30)
    doc = store.jobs.find_one({"_id": job_id}, {"params": 0})
    assert doc is not None
    assert doc["exceptiontype"] == "StatusWriteError" and "17419" in doc["traceback"]
    assert doc["dateexpires"] is not None
    wait_until(lambda: running_entries(store) == 0, 10, message="the id acknowledged")
    assert "MongoDB refused the write" in worker.output()
    job2 = queue_job("tests.tasks.general.Add", {"a": 1, "b": 2})  # the worker goes on
    wait_status(store, [job2], "success")


@pytest.mark.testserver_only
def test_a_refused_success_write_ends_the_job_failed_with_an_expiry(store: Store, worker_factory: Any) -> None:
    job_id = queue_job("tests.tasks.runaway.ReturnLarge", {"blob": "b" * NEAR_LIMIT})
    worker_factory("--greenlets", "2", env=FAST)
    wait_status(store, [job_id], "failed", timeout=30)
    doc = store.jobs.find_one({"_id": job_id}, {"params": 0})
    assert doc is not None and doc["exceptiontype"] == "StatusWriteError" and doc["dateexpires"] is not None
    assert "result" not in doc
    wait_until(lambda: running_entries(store) == 0, 10, message="the id acknowledged")


def test_a_result_nested_deeper_than_mongodb_stores_ends_the_job_failed(store: Store, worker_factory: Any) -> None:
    """mongod refuses documents nested past 180 levels (code 15, Overflow): the same refusal path."""
    job_id = queue_job("tests.tasks.runaway.ReturnDeep", {"levels": 190})
    worker_factory("--greenlets", "2", env=FAST)
    wait_status(store, [job_id], "failed", timeout=30)
    doc = store.jobs.find_one({"_id": job_id})
    assert doc is not None and doc["exceptiontype"] == "StatusWriteError" and "code 15" in doc["traceback"]
    assert "result" not in doc and doc["dateexpires"] is not None
    wait_until(lambda: running_entries(store) == 0, 10, message="the id acknowledged")


# --- 4. runaway tasks -----------------------------------------------------------------------------------


def test_a_cpu_bound_task_past_its_timeout_ends_timeout_and_the_worker_goes_on(
        store: Store, worker_factory: Any) -> None:
    tasks = {"tests.tasks.runaway.Spin": {"timeout": 1}}
    spin = queue_job("tests.tasks.runaway.Spin", {"seconds": 30})
    forever = queue_job("tests.tasks.runaway.Spin", {})
    started = time.monotonic()
    worker = worker_factory("--greenlets", "1", env={**FAST, "MRQ_TASKS": json.dumps(tasks)})
    wait_status(store, [spin, forever], "timeout", timeout=20)
    assert time.monotonic() - started < 15  # seconds, not the 30 s the first one asked for
    doc = Job(spin).fetch().data
    assert doc is not None and "never yielded" in doc["traceback"]
    assert "kept the CPU past its timeout" in worker.output()
    after = queue_job("tests.tasks.general.Add", {"a": 1, "b": 2})
    wait_status(store, [after], "success")
    assert worker.running


def test_a_subpool_greenlet_spinning_past_the_timeout_ends_its_job(store: Store, worker_factory: Any) -> None:
    tasks = {"tests.tasks.runaway.SpinInSubpool": {"timeout": 1}}
    job_id = queue_job("tests.tasks.runaway.SpinInSubpool", {})
    worker = worker_factory("--greenlets", "2", env={**FAST, "MRQ_TASKS": json.dumps(tasks)})
    wait_status(store, [job_id], "timeout", timeout=20)
    after = queue_job("tests.tasks.general.Add", {"a": 1, "b": 2})
    wait_status(store, [after], "success")
    assert worker.running


def test_a_task_swallowing_its_interrupt_makes_the_worker_exit_and_is_recovered(
        store: Store, worker_factory: Any) -> None:
    tasks = {"tests.tasks.runaway.SpinSwallowingEverything": {"timeout": 1}}
    env = {**FAST, "MRQ_TASKS": json.dumps(tasks), "MRQ_MAX_RECOVERIES": "0"}
    job_id = queue_job("tests.tasks.runaway.SpinSwallowingEverything", {})
    worker = worker_factory("--greenlets", "1", env=env)
    assert worker.wait(30) == 4, worker.output()[-2000:]
    assert "still holds the CPU" in worker.output()
    worker_factory("--greenlets", "1", env=env)  # recovers it: a poison job at once (max_recoveries 0)
    wait_status(store, [job_id], "failed", timeout=30)
    assert Job(job_id).fetch().exceptiontype == "PoisonJob"


def test_a_task_holding_the_gil_exits_the_process_before_its_lease_expires(
        store: Store, worker_factory: Any) -> None:
    env = {**FAST, "MRQ_MAX_RECOVERIES": "0"}
    job_id = queue_job("tests.tasks.runaway.HoldGil", {})
    victim = worker_factory("--greenlets", "1", env=env)
    wait_until(lambda: Job(job_id).fetch().status == "started", 20, message="job started")
    started = time.monotonic()
    assert victim.wait(20) != 0
    assert time.monotonic() - started < 2.0 + 1.0  # within the lease (2 s): no second copy ran beside it
    assert "Timeout" in victim.output() or "Thread" in victim.output()  # faulthandler's stacks
    worker_factory("--greenlets", "1", env=env)
    wait_status(store, [job_id], "failed", timeout=30)
    assert Job(job_id).fetch().exceptiontype == "PoisonJob"


# --- 5. duplicates, bounded sweeps, logs -----------------------------------------------------------------


def test_an_id_taken_from_two_queues_leaves_no_running_entry(store: Store, worker_factory: Any) -> None:
    job_id = queue_job(RECORD, {}, queue="q1")
    RegularQueue("q2", store).push([str(job_id)])  # the same id on a second queue
    queue_job(RECORD, {}, queue="q2")
    worker = worker_factory("--greenlets", "5", "q1", "q2", env=FAST)
    wait_status(store, [job_id], "success")
    wait_until(lambda: running_entries(store) == 0, 10, message="running sets empty")
    assert executions(store)[job_id] == 1
    assert worker.running


def test_cancel_and_requeue_twice_runs_the_job_once(store: Store, worker_factory: Any) -> None:
    job_id = queue_job(RECORD, {})
    for _ in range(3):
        Job(job_id).cancel()
        Job(job_id).requeue()
    # Each requeue pushed a copy; the old ones are dropped by the cancel mark or found started.
    worker_factory("--greenlets", "5", "--dequeue_strategy", "burst", env=FAST).wait(30)
    assert Job(job_id).fetch().status == "success"
    assert executions(store) == {job_id: 1}
    assert running_entries(store) == 0
    assert RegularQueue("default", store).size() == 0


def _monitor(url: str, stop: str, commands: list[list[str]], ready: threading.Event) -> None:
    client = redis.Redis.from_url(url)
    with client.monitor() as monitor:
        ready.set()
        for event in monitor.listen():
            parts = str(event["command"]).split()
            commands.append(parts)
            if parts[:2] == ["ECHO", stop]:
                return


def test_requeue_lost_jobs_reads_redis_a_window_at_a_time(store: Store, redis_url: str) -> None:
    from mrq.maintenance import requeue_lost_jobs

    waiting = queue_jobs(RECORD, [{}] * 30)
    store.redis.delete(store.keys.queue_ids("default"))  # lost
    filler = [str(ObjectId()) for _ in range(45_000)]
    for start in range(0, len(filler), 5000):
        store.redis.rpush(store.keys.queue_ids("default"), *filler[start:start + 5000])
    commands: list[list[str]] = []
    ready = threading.Event()
    watcher = threading.Thread(target=_monitor, args=(redis_url, "done-monitoring", commands, ready), daemon=True)
    watcher.start()
    ready.wait(5)
    assert requeue_lost_jobs(store, min_age=0) == {"queued": 30, "delayed": 0}
    store.redis.echo("done-monitoring")
    watcher.join(10)
    ranges = [c for c in commands if c and c[0] == "LRANGE"]
    assert len(ranges) >= 5  # a window at a time...
    for command in ranges:
        start, stop = int(command[2].strip('"')), int(command[3].strip('"'))
        assert stop != -1 and stop - start + 1 <= 10_000  # ...never the whole list in one command
    assert RegularQueue("default", store).size() == 45_030
    assert requeue_lost_jobs(store, min_age=0) == {"queued": 0, "delayed": 0}  # and nothing twice
    assert len(waiting) == 30


def test_requeue_started_jobs_of_dead_workers_in_batches(store: Store) -> None:
    from mrq.maintenance import requeue_started_jobs

    ids = queue_jobs(RECORD, [{}] * 2500)
    dead = ObjectId()
    long_ago = Job(ids[0]).fetch().data["datequeued"].replace(year=2000)  # type: ignore[index]
    store.jobs.update_many({}, {"$set": {"status": "started", "worker": dead, "datestarted": long_ago}})
    store.redis.delete(store.keys.queue_ids("default"))
    assert requeue_started_jobs(store, timeout=0) == 2500
    assert store.jobs.count_documents({"status": "queued", "recoveries": 1}) == 2500
    assert RegularQueue("default", store).size() == 2500
    assert requeue_started_jobs(store, timeout=0) == 0


def test_job_logs_are_stored_once_when_an_insert_half_fails(store: Store) -> None:
    import logging

    from mrq.joblogs import JobLogHandler

    logs = store.connections.mongodb_jobs["mrq_logs"]
    first, second = ObjectId(), ObjectId()
    # A unique index makes the insert of `first`'s lines fail while `second`'s are stored: one
    # unordered insert, half done (as when an outage cuts it, and the retry finds ids stored).
    logs.create_index("job", unique=True, name="one_per_job")
    logs.insert_one({"job": first, "logs": "stored earlier"})
    handler = JobLogHandler(logs, 3600)

    def emit(job_id: ObjectId, text: str) -> None:
        class Running:
            id = job_id
            stored = True

        current.set_current_job(Running())
        handler.emit(logging.LogRecord("mrq.current", logging.INFO, __file__, 1, text, None, None))
        current.set_current_job(None)

    for n in range(3):
        emit(first, f"first {n}")
        emit(second, f"second {n}")
    handler.flush()
    logs.drop_index("one_per_job")
    handler.flush()  # a second flush must not send what the first one stored
    assert handler.pending == 0
    assert logs.count_documents({"job": second}) == 1
    # Many long lines: split into documents MongoDB accepts, none lost.
    for n in range(1100):
        emit(second, "y" * 16_000 + str(n))
    handler.flush()
    assert handler.pending == 0
    assert sum(d["logs"].count("\n") + 1 for d in logs.find({"job": second})) == 3 + 1100


# --- bad input -------------------------------------------------------------------------------------------


def test_junk_ids_in_a_queue_and_in_a_dead_workers_running_set_are_dropped(store: Store,
                                                                          worker_factory: Any) -> None:
    good = queue_jobs(RECORD, [{}] * 3)
    store.redis.rpush(store.keys.queue_ids("default"), "not-a-job-id", "{junk}")
    dead = str(ObjectId())
    store.redis.zadd(store.keys.workers, {dead: 1.0})  # a lease that expired long ago
    store.redis.sadd(store.keys.worker_queues(dead), "default")
    store.redis.sadd(store.keys.queue_running("default", dead), "garbage", str(good[0]))
    worker = worker_factory("--greenlets", "5", env=FAST)
    wait_status(store, good, "success")
    wait_until(lambda: "not a job id" in worker.output(), 10, message="a line about the junk id")
    wait_until(lambda: "not job ids" in worker.output(), 10, message="a line about the junk running entry")
    wait_until(lambda: running_entries(store) == 0, 10, message="running sets empty")
    assert worker.running
    assert sum(executions(store).values()) == 3  # good[0], in two places, started once


def test_a_lease_deleted_by_hand_is_taken_again_and_nothing_runs_twice(store: Store, worker_factory: Any) -> None:
    ids = queue_jobs(RECORD, [{"seconds": 3}] * 3)
    worker = worker_factory("--greenlets", "3", env=FAST)
    wait_status(store, ids, "started", timeout=20)
    store.redis.delete(store.keys.workers)  # someone deletes the lease registry
    wait_until(lambda: "registering again" in worker.output(), 10, message="lease taken again")
    wait_status(store, ids, "success", timeout=30)
    assert sum(executions(store).values()) == 3
    assert running_entries(store) == 0


def test_a_worker_dead_before_redis_lost_its_lease_has_its_jobs_recovered(
        own_stores: Settings, own_redis: RedisServer, worker_factory: Any) -> None:
    """kill -9, then Redis loses everything (the lease and the running set with it) before any
    worker saw the lease expire: reconciliation finds the `started` job of a worker with no lease."""
    store = current.get_current_store()
    job_id = queue_job(RECORD, {"seconds": 30})
    env = {**FAST, "MRQ_WORKER_LEASE": "4"}
    victim = worker_factory("--greenlets", "1", settings=own_stores, env=env)
    wait_until(lambda: executions(store).get(job_id) == 1, 20, message="job running")
    victim.kill()
    store.redis.flushall()  # within the lease: nobody recovered it yet
    store.jobs.update_one({"_id": job_id}, {"$set": {"params.seconds": 0}})
    worker_factory("--greenlets", "1", settings=own_stores, env=env)
    wait_status(store, [job_id], "success", timeout=40)
    assert Job(job_id).fetch().data["recoveries"] == 1  # type: ignore[index]
    assert executions(store)[job_id] == 2


def test_queueing_an_id_again_pushes_a_job_an_earlier_attempt_left_unpushed(store: Store) -> None:
    """An earlier attempt inserted the document and died before its push (and its clean-up): the
    idempotent retry (same id, as the scheduler does) pushes it."""
    from datetime import timedelta

    from mrq.clock import utcnow

    job_id = ObjectId()
    assert queue_jobs(RECORD, [{}], ids=[job_id]) == [job_id]
    store.redis.delete(store.keys.queue_ids("default"))  # as if that push never happened
    store.jobs.update_one({"_id": job_id}, {"$set": {"datequeued": utcnow() - timedelta(minutes=1)}})
    assert queue_jobs(RECORD, [{}], ids=[job_id]) == []  # not queued twice...
    assert RegularQueue("default", store).list_job_ids() == [str(job_id)]  # ...but pushed


def test_the_reconciliation_lock_of_a_dead_worker_is_taken_over_not_waited_out(store: Store) -> None:
    """A worker killed while reconciling leaves the lock behind: a live worker's lock is respected,
    a lock whose holder has no lease is taken over at once (not after its expiry)."""
    from mrq.reconcile import Reconciler
    from mrq.storage.leases import Leases

    key = store.keys.reconcile_lock
    Leases(store.redis, store.keys).register("alive-worker", 30)
    store.redis.set(key, "alive-worker", ex=300)
    assert not Reconciler(store, "other")._acquire()
    assert store.redis.get(key) == b"alive-worker"

    store.redis.set(key, "dead-worker", ex=300)  # no lease: it died holding the lock
    taker = Reconciler(store, "other")
    assert taker._acquire()
    assert store.redis.get(key) == b"other"
    Leases(store.redis, store.keys).register("other", 30)
    assert not Reconciler(store, "third")._acquire()
    Reconciler(store, "third")._release()  # releasing someone else's lock does nothing
    assert store.redis.get(key) == b"other"
    taker._release()
    assert store.redis.get(key) is None
