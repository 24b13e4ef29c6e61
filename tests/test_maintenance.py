"""The maintenance tasks (MRQ names): each repairs what it promises and is idempotent."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from bson import ObjectId

from mrq.basetasks.cleaning import RequeueInterruptedJobs, RequeueRetryJobs, RequeueStartedJobs
from mrq.basetasks.indexes import EnsureIndexes
from mrq.clock import utcnow
from mrq.job import Job, queue_jobs
from mrq.storage.mongo import INDEXES, JOBS
from mrq.store import Store


def queued_ids(store: Store, queue: str = "default") -> list[str]:
    return [i.decode() for i in store.redis.lrange(store.keys.queue_ids(queue), 0, -1)]


def test_requeue_interrupted_jobs(store: Store) -> None:
    ids = queue_jobs("tests.tasks.general.Add", [{}] * 3)
    store.redis.delete(store.keys.queue_ids("default"))
    store.jobs.update_many({"_id": {"$in": ids[:2]}}, {"$set": {"status": "interrupt", "retry_count": 1}})
    assert RequeueInterruptedJobs().run({}) == {"requeued": 2}
    assert sorted(queued_ids(store)) == sorted(str(i) for i in ids[:2])
    assert Job(ids[0]).fetch().status == "queued" and Job(ids[0]).retry_count == 1
    assert RequeueInterruptedJobs().run({}) == {"requeued": 0}


def test_requeue_retry_jobs_only_when_due(store: Store) -> None:
    due, later = queue_jobs("tests.tasks.general.Add", [{}] * 2)
    store.redis.delete(store.keys.queue_ids("default"))
    store.jobs.update_one({"_id": due}, {"$set": {"status": "retry", "dateretry": utcnow() - timedelta(seconds=1)}})
    store.jobs.update_one({"_id": later}, {"$set": {"status": "retry", "dateretry": utcnow() + timedelta(hours=1)}})
    assert RequeueRetryJobs().run({}) == {"requeued": 1}
    assert queued_ids(store) == [str(due)]
    assert Job(later).fetch().status == "retry"


def test_requeue_started_jobs_of_dead_workers_only(store: Store) -> None:
    alive_worker, dead_worker = ObjectId(), ObjectId()
    store.scripts.lease(keys=[store.keys.workers], args=[str(alive_worker), "register", 60])
    old = utcnow() - timedelta(hours=3)
    stale, alive, recent = queue_jobs("tests.tasks.general.Add", [{}] * 3)
    store.redis.delete(store.keys.queue_ids("default"))
    store.jobs.update_one({"_id": stale}, {"$set": {"status": "started", "worker": dead_worker, "datestarted": old}})
    store.jobs.update_one({"_id": alive}, {"$set": {"status": "started", "worker": alive_worker, "datestarted": old}})
    store.jobs.update_one({"_id": recent}, {"$set": {"status": "started", "worker": dead_worker,
                                                     "datestarted": utcnow()}})
    store.redis.sadd(store.keys.queue_running("default", str(dead_worker)), str(stale))
    # default task timeout 3600 s + 300 s: only the 3 h old job of the dead worker qualifies
    assert RequeueStartedJobs().run({"timeout": 300}) == {"requeued": 1}
    data = Job(stale).fetch().data
    assert data["status"] == "queued" and data["recoveries"] == 1
    assert queued_ids(store) == [str(stale)]
    assert not store.redis.sismember(store.keys.queue_running("default", str(dead_worker)), str(stale))
    assert Job(alive).fetch().status == "started" and Job(recent).fetch().status == "started"


@pytest.mark.skipif(bool(os.environ.get("MRQ_TEST_MONGO_STRICT")),
                    reason="strict mode creates the indexes before each test, as an operator would")
def test_ensure_indexes_creates_every_index_once(store: Store) -> None:
    created = EnsureIndexes().run({})["created"]
    assert {index.name for index in INDEXES[JOBS]} <= set(created)
    names = {info["name"] for info in store.jobs.list_indexes()}
    assert {index.name for index in INDEXES[JOBS]} <= names
    assert EnsureIndexes().run({}) == {"created": []}
