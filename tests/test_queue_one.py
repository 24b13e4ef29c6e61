"""A single `queue_job` writes its push to Redis before it sends its insert to MongoDB and waits
for both replies together (producer._queue_one). A worker may therefore take an id whose
document is not stored yet: it waits for it while the id is young, and drops it once it is too
old to be on its way. An insert that fails takes the id back off the queue. Real worker
processes, a real outage (a MongoDB address where nothing listens)."""

from __future__ import annotations

import signal
import time
from datetime import timedelta
from typing import Any

import psutil
import pytest
from bson import ObjectId

from mrq.clock import utcnow
from mrq.config import Settings
from mrq.exceptions import StoreUnavailable
from mrq.job import queue_job
from mrq.queue import RegularQueue
from mrq.queue.producer import prepare_jobs
from mrq.store import Store
from mrq.testing.stack import free_port
from mrq.testing.workers import wait_until

RECORD = "tests.tasks.general.RecordExecution"


def executions(store: Store) -> dict[Any, int]:
    return {d["_id"]: d["count"] for d in store.connections.mongodb_jobs.executions.find()}


def everywhere(store: Store, queue: str, job_id: str) -> list[str]:
    """The Redis structures of the queue that hold the id (its list, delayed set, running sets)."""
    keys = store.keys
    found = []
    if job_id.encode() in store.redis.lrange(keys.queue_ids(queue), 0, -1):
        found.append("queue")
    if store.redis.zscore(keys.queue_delayed(queue), job_id) is not None:
        found.append("delayed")
    for key in store.redis.scan_iter(match=keys.queue_running(queue, "*")):
        if store.redis.sismember(key, job_id):
            found.append("running")
    for key in store.redis.scan_iter(match=keys.queue_landing(queue, "*")):
        if job_id.encode() in store.redis.lrange(key, 0, -1):
            found.append("landing")
    return found


def test_a_worker_waits_for_the_document_of_an_id_pushed_before_its_insert(store: Store,
                                                                          worker_factory: Any) -> None:
    worker = worker_factory("--greenlets", "3", "default")
    prepared = prepare_jobs(store, RECORD, [{}], None, 1000, None)
    job_id = prepared.ids[0]
    RegularQueue("default", store).push([str(job_id)])
    time.sleep(1.5)  # past the worker's quick retries: the id now waits in the delayed set
    assert everywhere(store, "default", str(job_id)), "the id of a young job without a document was dropped"
    store.jobs.insert_one(prepared.documents[0])
    wait_until(lambda: executions(store).get(job_id) == 1, 20, message="the job ran once its document came")
    assert store.jobs.find_one({"_id": job_id})["status"] == "success"
    assert "has no document" not in worker.output()
    time.sleep(1.5)
    assert executions(store) == {job_id: 1}
    assert everywhere(store, "default", str(job_id)) == []


def test_an_old_id_without_a_document_is_dropped_at_once(store: Store, worker_factory: Any) -> None:
    worker = worker_factory("--greenlets", "3", "default")
    old = ObjectId.from_datetime(utcnow() - timedelta(minutes=5))
    RegularQueue("default", store).push([str(old)])
    wait_until(lambda: "has no document" in worker.output(), 20, message="the old id dropped, said in the log")
    assert everywhere(store, "default", str(old)) == []
    job_id = queue_job(RECORD, {})  # the worker goes on
    wait_until(lambda: executions(store).get(job_id) == 1, 20, message="the next job ran")


def test_a_failed_insert_takes_the_id_back_off_the_queue(store: Store, mrq_settings: Settings) -> None:
    nowhere = mrq_settings.replace(mongodb_jobs=f"mongodb://127.0.0.1:{free_port()}/nowhere", mongodb_timeout=1.0)
    broken = Store(nowhere)
    try:
        before = store.redis.llen(store.keys.queue_ids("default"))
        with pytest.raises(StoreUnavailable, match="cannot reach MongoDB"):
            queue_job(RECORD, {}, store=broken)
        assert store.redis.llen(store.keys.queue_ids("default")) == before == 0
    finally:
        broken.close()
    # The same store with MongoDB reachable queues normally: the push and the insert both land.
    job_id = queue_job(RECORD, {}, store=store)
    assert store.redis.lrange(store.keys.queue_ids("default"), 0, -1) == [str(job_id).encode()]
    assert store.jobs.find_one({"_id": job_id})["status"] == "queued"


def test_a_document_stored_between_the_start_and_the_look_is_started(store: Store, worker_factory: Any) -> None:
    """The worker's start found no document, and the insert lands before the worker looks why:
    the document says `queued`, so the worker starts it (it must not drop an id whose job waits)."""
    worker = worker_factory("--greenlets", "3", "default", env={"MRQ_TEST_STOP_AT": "start_missed"})
    prepared = prepare_jobs(store, RECORD, [{}], None, 1000, None)
    job_id = prepared.ids[0]
    RegularQueue("default", store).push([str(job_id)])
    process = psutil.Process(worker.pid)
    wait_until(lambda: process.status() == psutil.STATUS_STOPPED, 20, message="worker frozen at start_missed")
    store.jobs.insert_one(prepared.documents[0])
    process.send_signal(signal.SIGCONT)
    wait_until(lambda: executions(store).get(job_id) == 1, 20, message="the job ran")
    assert store.jobs.find_one({"_id": job_id})["status"] == "success"
    assert everywhere(store, "default", str(job_id)) == []


def test_a_worker_killed_while_it_waits_for_a_document_loses_nothing(store: Store, worker_factory: Any) -> None:
    """Two faults at once: the worker took an id whose document is not stored yet, and it dies
    (kill -9) there. Once the document arrives, the next worker takes the id back from the dead
    one's running set and runs the job once; nothing is left `started` or in Redis."""
    lease = {"MRQ_WORKER_LEASE": "2"}
    victim = worker_factory("--greenlets", "3", "default", env={**lease, "MRQ_TEST_STOP_AT": "start_missed"})
    prepared = prepare_jobs(store, RECORD, [{}], None, 1000, None)
    job_id = prepared.ids[0]
    RegularQueue("default", store).push([str(job_id)])
    process = psutil.Process(victim.pid)
    wait_until(lambda: process.status() == psutil.STATUS_STOPPED, 20, message="worker frozen at start_missed")
    assert everywhere(store, "default", str(job_id)) == ["running"]
    victim.send(signal.SIGKILL)
    victim.wait(10)
    store.jobs.insert_one(prepared.documents[0])  # the producer's insert lands after the crash
    worker_factory("--greenlets", "3", "default", env=lease)
    wait_until(lambda: executions(store).get(job_id) == 1, 30, message="the job recovered and ran")
    wait_until(lambda: store.jobs.find_one({"_id": job_id})["status"] == "success", 10, message="success stored")
    time.sleep(1.0)
    assert executions(store) == {job_id: 1}
    assert store.jobs.count_documents({"status": "started"}) == 0
    assert everywhere(store, "default", str(job_id)) == []
