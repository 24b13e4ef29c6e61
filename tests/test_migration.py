"""Moving from MRQ 0.9 (docs/migrating-from-mrq.md): what an MRQ database and an MRQ Redis hold
when the new workers start, and the MRQ config keys that changed meaning."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from bson import ObjectId
from pymongo import ASCENDING

from mrq.clock import utcnow
from mrq.config import Settings, load_settings
from mrq.exceptions import ConfigError
from mrq.job import Job, queue_job
from mrq.storage.mongo import INDEXES, JOBS, SCHEDULED_JOBS, WORKERS, ensure_indexes, missing_indexes
from mrq.store import Store
from mrq.testing.workers import wait_until

TASKS = "tests.tasks.general"

#: The indexes MRQ 0.9's EnsureIndexes created (mrq/basetasks/indexes.py), under MRQ's names.
MRQ_INDEXES = {
    JOBS: [([("status", 1)], {}), ([("path", 1)], {}), ([("worker", 1)], {"sparse": True}), ([("queue", 1)], {}),
           ([("dateexpires", 1)], {"sparse": True, "expireAfterSeconds": 0}), ([("dateretry", 1)], {"sparse": True}),
           ([("datequeued", 1)], {}), ([("queue", 1), ("status", 1), ("datequeued", 1), ("_id", 1)], {}),
           ([("status", 1), ("queue", 1), ("path", 1)], {})],
    WORKERS: [([("status", 1)], {}), ([("datereported", 1)], {"expireAfterSeconds": 3600})],
    SCHEDULED_JOBS: [([("hash", 1)], {"unique": True})],
}


def test_ensure_indexes_on_an_mrq_database(store: Store) -> None:
    """MongoDB refuses a second index on the same keys under another name: the indexes MRQ made
    count as present, only the others are created, and the start-up check agrees."""
    db = store.connections.mongodb_jobs
    for name in set(db.list_collection_names()) & set(INDEXES):  # strict mode's fixture created ours
        db[name].drop_indexes()
    for collection, indexes in MRQ_INDEXES.items():
        for keys, options in indexes:
            db[collection].create_index([(k, ASCENDING) for k, _ in keys], **options)
    before = {collection: {i["name"] for i in db[collection].list_indexes()} for collection in INDEXES}
    ensure_indexes(db, db)
    mrq_patterns = {(collection, tuple(k for k, _ in keys)) for collection, indexes in MRQ_INDEXES.items()
                    for keys, _ in indexes}
    for collection, indexes in INDEXES.items():
        created = {i["name"] for i in db[collection].list_indexes()} - before[collection]
        for index in indexes:
            already = (collection, tuple(k for k, _ in index.keys)) in mrq_patterns
            assert (index.name in created) is not already, (collection, index.name)
    assert "ttl_dateexpires" in {i["name"] for i in db["mrq_logs"].list_indexes()}
    assert sorted(i["name"] for i in db[JOBS].list_indexes() if list(i["key"]) == ["dateexpires"]) == \
        ["dateexpires_1"]
    assert missing_indexes(db, db) == []
    assert ensure_indexes(db, db) == []


def test_jobs_queued_by_mrq_run_when_the_new_workers_start(store: Store, worker_factory: Any) -> None:
    """MRQ 0.9 kept regular jobs in MongoDB only (status queued, no id in Redis). The first worker
    on a Redis without mrq's epoch key puts every waiting job back on its queue."""
    now = utcnow().replace(microsecond=0)  # naive UTC, as MRQ stored it
    docs = [{"_id": ObjectId(), "path": f"{TASKS}.Add", "params": {"a": i, "b": 1}, "queue": "default",
             "datequeued": now - timedelta(minutes=5), "status": "queued"} for i in range(5)]
    docs.append({"_id": ObjectId(), "path": f"{TASKS}.Add", "params": {"a": 10, "b": 1}, "queue": "default",
                 "datequeued": now - timedelta(minutes=5), "status": "retry", "retry_count": 1,
                 "dateretry": now - timedelta(minutes=1)})
    store.jobs.insert_many(docs)
    worker_factory("--greenlets", "5")
    for doc in docs:
        wait_until(lambda d=doc: Job(d["_id"]).fetch().status == "success", 20, message=f"job {doc['_id']}")
    assert sorted(Job(d["_id"]).fetch().result for d in docs) == [1, 2, 3, 4, 5, 11]


def test_jobs_mrq_left_started_are_requeued_at_once(store: Store, worker_factory: Any) -> None:
    """The switch-over step of docs/migrating-from-mrq.md: RequeueStartedJobs with a negative
    timeout requeues the `started` jobs of MRQ's (dead) workers, never those of live mrq workers."""
    from mrq.basetasks.cleaning import RequeueStartedJobs

    live = worker_factory("--greenlets", "1")
    running = queue_job(f"{TASKS}.Sleep", {"seconds": 3})
    wait_until(lambda: Job(running).fetch().status == "started", 15, message="a job running in mrq")
    orphan = ObjectId()
    store.jobs.insert_one({"_id": orphan, "path": f"{TASKS}.Add", "params": {"a": 1, "b": 1}, "queue": "default",
                           "status": "started", "worker": ObjectId(), "datestarted": utcnow()})
    assert RequeueStartedJobs().run({"timeout": -86400}) == {"requeued": 1}
    assert Job(running).fetch().status == "started"  # held by a live worker: left alone
    wait_until(lambda: Job(orphan).fetch().status == "success", 20, message="the orphan ran")
    assert Job(orphan).fetch().result == 2 and live.running


def test_mrq_raw_queue_keys_renamed(store: Store, mrq_settings: Settings, worker_factory: Any) -> None:
    """MRQ 0.9 kept a raw queue in `<prefix>:q:<queue>`; mrq in `{<prefix>:q:<queue>}:raw`, same
    Redis type: RENAME moves waiting params over (docs/migrating-from-mrq.md)."""
    client = redis.Redis.from_url(mrq_settings.redis)
    prefix = mrq_settings.redis_prefix
    client.rpush(f"{prefix}:q:crawl_raw", "a", "b")
    client.rename(f"{prefix}:q:crawl_raw", store.keys.raw_queue("crawl_raw"))
    client.close()
    raw = {"crawl_raw": {"job_factory": "tests.tasks.factories.record"}}
    worker_factory("crawl_raw", env={"MRQ_RAW_QUEUES": json.dumps(raw)})
    runs = store.connections.mongodb_jobs.raw_runs
    wait_until(lambda: sorted(d["value"] for d in runs.find()) == ["a", "b"], 15, message="2 raw jobs run")


@pytest.mark.parametrize(("line", "message"), [
    ('LOG_FORMAT = "%(asctime)s [%(levelname)s] %(message)s"', "LOG_FORMAT: expected one of text, json"),
    ("SCHEDULER_INTERVAL = -1", "SCHEDULER_INTERVAL"),
])
def test_mrq_config_values_that_changed_meaning_are_refused_in_one_line(tmp_path: Path, line: str,
                                                                        message: str) -> None:
    path = tmp_path / "mrq-config.py"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError) as raised:
        load_settings([], env={}, config_file=path, default_file=False)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_mrq_keys_that_are_not_settings_pass_through(tmp_path: Path) -> None:
    path = tmp_path / "mrq-config.py"
    path.write_text("QUEUES_CONFIG = {'x_raw': {}}\nDASHBOARD_HTTPAUTH = 'a:b'\nMY_KEY = 1\n")
    settings, _ = load_settings([], env={}, config_file=path, default_file=False)
    assert settings["my_key"] == 1
    assert settings["queues_config"] == {"x_raw": {}} and settings.raw_queues == {}  # read nowhere: rename it
    assert settings.dashboard_auth == ""  # likewise: DASHBOARD_HTTPAUTH is now DASHBOARD_AUTH
