"""Every MongoDB collection mrq uses and its indexes, in one place. docs/storage.md describes the
documents. `ensure_indexes()` creates what is missing and is safe to run at any time, from any
number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pymongo
import pymongo.collection
import pymongo.database
import pymongo.errors
from pymongo import ASCENDING, DESCENDING

JOBS = "mrq_jobs"
LOGS = "mrq_logs"
WORKERS = "mrq_workers"
SCHEDULED_JOBS = "mrq_scheduled_jobs"
ACTIONS = "mrq_actions"  # the dashboard's audit log: who did what, when, to how many jobs
QUEUES = "mrq_queues"  # per-queue state that must survive Redis losing its data (paused)
GROUPS = "mrq_groups"  # mrq.workflow groups: their size and callback


@dataclass(frozen=True)
class Index:
    keys: list[tuple[str, int]]
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def model(self) -> pymongo.IndexModel:
        return pymongo.IndexModel(self.keys, name=self.name, **self.options)


# Each index names the queries it serves. Sorts end with _id so that ties are deterministic.
INDEXES: dict[str, list[Index]] = {
    JOBS: [
        # Finished jobs are removed once dateexpires passes (set from result_ttl etc. at the end).
        Index([("dateexpires", ASCENDING)], "ttl_dateexpires", {"expireAfterSeconds": 0, "sparse": True}),
        # Jobs list by status (newest first), maintenance by status (started/queued/interrupt).
        Index([("status", ASCENDING), ("_id", DESCENDING)], "status_id"),
        # Jobs list by queue (+status), queue introspection counts.
        Index([("queue", ASCENDING), ("status", ASCENDING), ("_id", DESCENDING)], "queue_status_id"),
        # Jobs list by task path (+status), task path statistics.
        Index([("path", ASCENDING), ("status", ASCENDING), ("_id", DESCENDING)], "path_status_id"),
        # Running jobs of a worker (recovery of a dead worker's jobs; worker page).
        Index([("worker", ASCENDING), ("status", ASCENDING), ("_id", DESCENDING)], "worker_status_id",
              {"sparse": True}),
        # Exceptions grouped by type.
        Index([("exceptiontype", ASCENDING), ("_id", DESCENDING)], "exceptiontype_id", {"sparse": True}),
        # Retry jobs that are due (RequeueRetryJobs safety net).
        Index([("dateretry", ASCENDING)], "dateretry", {"sparse": True}),
        # A group's members by status (its progress, its cancel, the dashboard's group page).
        Index([("group", ASCENDING), ("status", ASCENDING), ("_id", ASCENDING)], "group_status_id",
              {"sparse": True}),
    ],
    GROUPS: [
        # A group goes when its jobs have (its dateexpires follows the longest job TTL).
        Index([("dateexpires", ASCENDING)], "ttl_dateexpires", {"expireAfterSeconds": 0, "sparse": True}),
    ],
    LOGS: [
        Index([("job", ASCENDING), ("_id", ASCENDING)], "job_id", {"sparse": True}),
        Index([("worker", ASCENDING), ("_id", ASCENDING)], "worker_id", {"sparse": True}),
        Index([("dateexpires", ASCENDING)], "ttl_dateexpires", {"expireAfterSeconds": 0, "sparse": True}),
    ],
    WORKERS: [
        Index([("status", ASCENDING)], "status"),
        # The dashboard's jobs filter by worker name.
        Index([("name", ASCENDING)], "name"),
        # Reports of workers gone for a week disappear.
        Index([("datereported", ASCENDING)], "ttl_datereported", {"expireAfterSeconds": 7 * 24 * 3600}),
    ],
    SCHEDULED_JOBS: [
        Index([("hash", ASCENDING)], "hash_unique", {"unique": True}),
    ],
    QUEUES: [
        # Reconciliation restores the paused queues after Redis lost its data.
        Index([("paused", ASCENDING)], "paused"),
    ],
    ACTIONS: [
        # The audit log is read newest first by _id; entries go after 90 days.
        Index([("date", ASCENDING)], "ttl_date", {"expireAfterSeconds": 90 * 24 * 3600}),
    ],
}


def _existing(collection: pymongo.collection.Collection) -> tuple[set[str], set[tuple[tuple[str, int], ...]]]:
    """Names and key patterns of a collection's indexes (none when it does not exist yet)."""
    try:
        infos = list(collection.list_indexes())
    except pymongo.errors.OperationFailure:  # the collection does not exist yet
        return set(), set()
    return {info["name"] for info in infos}, {_pattern(info["key"].items()) for info in infos}


def _pattern(keys: Any) -> tuple[tuple[str, int], ...]:
    return tuple((name, int(direction)) for name, direction in keys)


def _missing(collection: pymongo.collection.Collection, indexes: list[Index]) -> list[Index]:
    """The indexes the collection lacks. An index on the same keys under another name (MRQ 0.9
    created `dateexpires_1`, `status_1`, `hash_1`...) counts as present: MongoDB refuses a second
    index on the same keys, and the existing one serves the same queries. A capped collection
    (mrq_logs with mongodb_logs_size) takes no TTL index: MongoDB does not support one there, and
    the cap is what removes old documents."""
    names, patterns = _existing(collection)
    missing = [index for index in indexes if index.name not in names and _pattern(index.keys) not in patterns]
    if any("expireAfterSeconds" in index.options for index in missing) and is_capped(collection):
        missing = [index for index in missing if "expireAfterSeconds" not in index.options]
    return missing


def is_capped(collection: pymongo.collection.Collection) -> bool:
    return bool(collection.options().get("capped"))


def ensure_capped_logs(logs_db: pymongo.database.Database, size: int) -> str:
    """Make mrq_logs a capped collection of `size` bytes (`mongodb_logs_size`): created so, or, as
    MRQ did, converted (MongoDB's convertToCapped keeps the newest documents that fit and drops
    the indexes, created again here). A collection already capped is left as it is (to resize it,
    convert it again by hand). Returns "created", "converted" or "capped"."""
    collection = logs_db[LOGS]
    try:
        logs_db.create_collection(LOGS, capped=True, size=size)
        outcome = "created"
    except pymongo.errors.CollectionInvalid:  # it exists
        if is_capped(collection):
            return "capped"
        logs_db.command("convertToCapped", LOGS, size=size)
        outcome = "converted"
    missing = _missing(collection, INDEXES[LOGS])
    if missing:
        collection.create_indexes([index.model() for index in missing])
    return outcome


def ensure_indexes(jobs_db: pymongo.database.Database, logs_db: pymongo.database.Database | None) -> list[str]:
    """Create the missing indexes; returns the names created. Logs indexes go to the logs database."""
    created: list[str] = []
    for collection_name, indexes in INDEXES.items():
        db = logs_db if collection_name == LOGS else jobs_db
        if db is None:
            continue
        missing = _missing(db[collection_name], indexes)
        if missing:
            created.extend(db[collection_name].create_indexes([index.model() for index in missing]))
    return created


def missing_indexes(jobs_db: pymongo.database.Database, logs_db: pymongo.database.Database | None) -> list[str]:
    """Names of the indexes that ensure_indexes() would create (`collection.index`)."""
    missing: list[str] = []
    for collection_name, indexes in INDEXES.items():
        db = logs_db if collection_name == LOGS else jobs_db
        if db is None:
            continue
        missing.extend(f"{collection_name}.{index.name}" for index in _missing(db[collection_name], indexes))
    return missing
