"""What the dashboard reads, each answer in a bounded number of commands that indexes serve.

- Queue sizes, ages, paused flags and throughput come from Redis only (`mrq.queue.queue_infos`,
  `mrq.stats.read_minutes`).
- Counts are bounded (`count_documents(..., limit=count_limit)`; shown as "100,000+") and cached
  for a few seconds, and never unfiltered: the total of the jobs list without a filter is the sum
  of the per-status counts, each of which reads one range of the `status_id` index.
- Lists are keyset-paginated on `_id` (every `mrq_jobs` index ends with `_id`).
- Statistics (task paths, exceptions) are cached aggregates: one command over a bounded sample of
  the most recent jobs, computed at most once a minute and shared by every request.
- Queues are read a page at a time from the queue registry (mrq/queue/registry.py).
"""

from __future__ import annotations

import datetime
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pymongo
from bson import ObjectId

from mrq.job import ALL_STATUSES, ERROR_STATUSES, FINAL_STATUSES, RETRY, SUCCESS
from mrq.queue import count_known, queue_infos, queue_names_page
from mrq.stats import read_minutes
from mrq.storage import mongo
from mrq.storage.leases import Leases
from mrq.store import Store

from .formatting import as_datetime, last_line, utcnow
from .jobfilter import JobFilter, Page, keyset_query

T = TypeVar("T")

#: Fields left out of list rows (they can be large; the job page shows them): the dependency lists
#: hold up to 10,000 ids each (a group's callback waits for every member).
LIST_PROJECTION = {"traceback": 0, "traceback_history": 0, "result": 0, "depends_on": 0, "dependencies_ended": 0,
                   "dependents": 0}
#: Statuses counted as failures in rates and charts.
FAILURE_STATUSES = ("failed", "maxretries", "timeout")
RATE_WINDOW_MINUTES = 5
TASK_PATHS_SAMPLE = 20_000
#: Seconds the task-path and exception statistics are reused before they are computed again.
STATISTICS_SECONDS = 60.0
MAX_TASK_PATHS = 200
EXCEPTIONS_SAMPLE = 2000
MAX_WORKERS = 500
MAX_CACHED = 1000
#: Queues per page of the overview, the queues API and /metrics.
QUEUE_PAGE = 100
MAX_QUEUE_PAGE = 1000


class TTLCache:
    """A tiny time-based cache shared by the requests of one app (thread- and greenlet-safe)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._values: dict[str, tuple[float, Any]] = {}
        self._computing: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: str, compute: Callable[[], T], seconds: float | None = None) -> T:
        """The cached value, else `compute()`. One request computes a key at a time: while it does,
        the others get the expired value when there is one, else wait for it."""
        ttl = self.seconds if seconds is None else seconds
        if ttl <= 0:
            return compute()
        with self._lock:
            hit = self._values.get(key)
            computing = self._computing.setdefault(key, threading.Lock())
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        if not computing.acquire(blocking=hit is None):
            return hit[1]  # type: ignore[index]  # another request is computing it: the expired value meanwhile
        try:
            with self._lock:
                hit = self._values.get(key)
            if hit is not None and hit[0] > time.monotonic():  # computed while this request waited
                return hit[1]
            value = compute()
            now = time.monotonic()
            with self._lock:
                if len(self._values) >= MAX_CACHED:
                    self._values = {k: v for k, v in self._values.items() if v[0] > now}
                    if len(self._values) >= MAX_CACHED:  # many distinct filters at once: start afresh
                        self._values.clear()
                    self._computing = {k: v for k, v in self._computing.items() if k in self._values or v.locked()}
                self._values[key] = (now + ttl, value)
            return value
        finally:
            computing.release()

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


@dataclass
class Count:
    value: int
    capped: bool  # the real number is at least `value`

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "capped": self.capped}


@dataclass
class Reader:
    store: Store
    cache: TTLCache
    count_limit: int = 100_000
    report_grace: float = 3.0  # a worker is dead after this many missed report intervals

    # --- counts -------------------------------------------------------------------------------------

    def _bounded_count(self, query: dict[str, Any]) -> Count:
        assert query, "never count the whole collection"
        value = self.store.jobs.count_documents(query, limit=self.count_limit)
        return Count(value, value >= self.count_limit)

    def status_counts(self) -> dict[str, Count]:
        """Jobs per status: one bounded count per status (the `status_id` index), cached."""
        def compute() -> dict[str, Count]:
            return {status: self._bounded_count({"status": status}) for status in ALL_STATUSES}

        return self.cache.get("status_counts", compute)

    def count_jobs(self, flt: JobFilter) -> Count:
        if flt.empty:
            counts = self.status_counts().values()
            return Count(sum(c.value for c in counts), any(c.capped for c in counts))
        return self.cache.get("count:" + flt.cache_key(), lambda: self._bounded_count(flt.query))

    # --- overview ------------------------------------------------------------------------------------

    def throughput(self, minutes: int = 60) -> list[dict[str, Any]]:
        """Per minute (oldest first): jobs queued, succeeded, failed, other outcomes, over all queues."""
        series = []
        for start, counts in read_minutes(self.store.redis, self.store.keys, minutes):
            row = {"t": start, "in": 0, "success": 0, "failed": 0, "other": 0}
            for name, count in counts.items():
                kind, _, _queue = name.partition(":")
                if kind == "in":
                    row["in"] += count
                elif kind == SUCCESS:
                    row["success"] += count
                elif kind in FAILURE_STATUSES:
                    row["failed"] += count
                elif kind != RETRY:
                    row["other"] += count
            series.append(row)
        return series

    def queues(self, after: str | None = None, limit: int = QUEUE_PAGE, prefix: str = "") -> QueuePage:
        """A page of the known queues in name order (after `after`, starting with `prefix`): size,
        delayed, paused, oldest job age, jobs/s in and out, failures/s over the last few minutes.
        Redis only, a bounded number of commands whatever the number of queues: the page's names
        (one ZRANGEBYLEX), the registry's size, four commands per queue of the page, the paused
        set, and RATE_WINDOW_MINUTES reads of the per-minute counters."""
        names = queue_names_page(self.store, after, limit + 1, prefix)
        more = len(names) > limit
        names = names[:limit]
        seconds, flows = self._flows()
        rows = []
        for info in queue_infos(self.store, names):
            flow = flows.get(info.name, {"in": 0, "out": 0, "failed": 0})
            rows.append({**info.as_dict(), "in_rate": flow["in"] / seconds, "out_rate": flow["out"] / seconds,
                         "failed_rate": flow["failed"] / seconds})
        return QueuePage(rows, count_known(self.store), names[-1] if more and names else None)

    def _flows(self) -> tuple[float, dict[str, dict[str, int]]]:
        """The window's length in seconds and, per queue, jobs in, out and failed over the last
        RATE_WINDOW_MINUTES minutes (cached: the per-minute hashes hold a field per active queue)."""
        def compute() -> tuple[float, dict[str, dict[str, int]]]:
            minutes = read_minutes(self.store.redis, self.store.keys, RATE_WINDOW_MINUTES)
            seconds = (RATE_WINDOW_MINUTES - 1) * 60 + max(time.time() - minutes[-1][0], 1.0)
            flows: dict[str, dict[str, int]] = {}
            for _start, counts in minutes:
                for name, count in counts.items():
                    kind, _, queue = name.partition(":")
                    if not queue:
                        continue
                    flow = flows.setdefault(queue, {"in": 0, "out": 0, "failed": 0})
                    if kind == "in":
                        flow["in"] += count
                    elif kind != RETRY:
                        flow["out"] += count
                        if kind in FAILURE_STATUSES:
                            flow["failed"] += count
            return seconds, flows

        return self.cache.get("flows", compute)

    def overview(self, after: str | None = None, limit: int = QUEUE_PAGE, prefix: str = "") -> dict[str, Any]:
        workers = self.workers()
        alive = [w for w in workers if w["state"] == "alive"]
        queues = self.queues(after, limit, prefix)
        return {
            "queues": queues.rows,
            "queues_total": queues.total,
            "queues_next": queues.next,
            "statuses": {status: count.as_dict() for status, count in self.status_counts().items()},
            "workers": {
                "alive": len(alive),
                "dead": sum(1 for w in workers if w["state"] == "dead"),
                "busy": int(sum(number_in(w, "greenlets", "busy") for w in alive)),
                "greenlets": int(sum(number_in(w, "greenlets", "total") for w in alive)),
            },
            "throughput": self.throughput(),
        }

    # --- jobs -----------------------------------------------------------------------------------------

    def list_jobs(self, flt: JobFilter, page: Page) -> JobList:
        query, direction = keyset_query(sorted_read(flt.query), page)
        docs = list(self.store.jobs.find(query, LIST_PROJECTION).sort("_id", direction).limit(page.limit + 1)
                    .batch_size(page.limit + 1))  # one command, whatever the page size
        more = len(docs) > page.limit
        docs = docs[:page.limit]
        if page.before is not None:
            docs.reverse()
        result = JobList(jobs=docs)
        if docs:
            if more or page.before is not None:
                result.next = docs[-1]["_id"]
            if page.after is not None or (page.before is not None and more):
                result.prev = docs[0]["_id"]
        return result

    def job(self, job_id: ObjectId) -> dict[str, Any] | None:
        return self.store.jobs.find_one({"_id": job_id})

    def worker_names(self, ids: list[Any]) -> dict[str, str]:
        """Worker id (as a string) -> name, for the ids that are ObjectIds."""
        unique = list({i for i in ids if isinstance(i, ObjectId)})
        if not unique:
            return {}
        return {str(doc["_id"]): str(doc.get("name") or doc["_id"])
                for doc in self.store.workers.find({"_id": {"$in": unique}}, {"name": 1})}

    # --- workers -------------------------------------------------------------------------------------

    def workers(self, include_stopped: bool = False, stopped_within: float = 3600.0) -> list[dict[str, Any]]:
        """Worker reports, newest first, each with `state` (alive / dead / stopped), `report_age`
        and `lease` (seconds left on its Redis lease, None when it has none)."""
        docs = list(self.store.workers.find({}).sort("datereported", pymongo.DESCENDING).limit(MAX_WORKERS))
        leases = Leases(self.store.redis, self.store.keys).deadlines()
        now = utcnow()
        rows = []
        for doc in docs:
            reported = doc.get("datereported")
            age = (now - reported).total_seconds() if isinstance(reported, datetime.datetime) else None
            interval = number_in(doc, "config", "report_interval") or 5.0
            lease_left = leases.get(str(doc["_id"]))
            if doc.get("status") == "stop":
                state = "stopped"
                if not include_stopped and (age is None or age > stopped_within):
                    continue
            elif age is None or age > self.report_grace * interval + 1 or (lease_left is not None and
                                                                           lease_left < -1):
                state = "dead"
            else:
                state = "alive"
            jobs = doc.get("jobs") if isinstance(doc.get("jobs"), list) else []
            doc["jobs"] = jobs = [job for job in jobs if isinstance(job, dict)]
            for job in jobs:
                if isinstance(job.get("elapsed"), int | float) and age is not None and state == "alive":
                    job["elapsed_now"] = job["elapsed"] + age
                else:
                    job["elapsed_now"] = job.get("elapsed")
            rows.append({**doc, "state": state, "report_age": age, "lease": lease_left})
        return rows

    # --- scheduler, task paths, exceptions, audit log -----------------------------------------------

    def scheduled(self) -> list[dict[str, Any]]:
        collection = self.store.connections.mongodb_jobs[mongo.SCHEDULED_JOBS]
        return list(collection.find({}).sort([("path", 1), ("_id", 1)]).limit(1000))

    def task_paths(self) -> list[dict[str, Any]]:
        """Per task path, over the last TASK_PATHS_SAMPLE jobs queued (all paths together): how
        many, how many finished and running, average and p95 duration, failure rate. A cached
        aggregate: one command (the `_id` index, newest first, limited) at most every
        STATISTICS_SECONDS, shared by every request of this dashboard process."""
        return self.cache.get("task_paths", self._task_paths, seconds=max(self.cache.seconds, STATISTICS_SECONDS))

    def _task_paths(self) -> list[dict[str, Any]]:
        finished, failures = sorted(FINAL_STATUSES), sorted(FAILURE_STATUSES)
        pipeline: list[dict[str, Any]] = [
            {"$sort": {"_id": -1}},
            {"$limit": TASK_PATHS_SAMPLE},
            {"$group": {
                "_id": "$path",
                "count": {"$sum": 1},
                "finished": {"$sum": {"$cond": [{"$in": ["$status", finished]}, 1, 0]}},
                "failures": {"$sum": {"$cond": [{"$in": ["$status", failures]}, 1, 0]}},
                "running": {"$sum": {"$cond": [{"$eq": ["$status", "started"]}, 1, 0]}},
                "times": {"$push": {"$cond": [{"$in": ["$status", finished]}, "$totaltime", None]}},
            }},
            {"$sort": {"count": -1, "_id": 1}},
            {"$limit": MAX_TASK_PATHS},
        ]
        rows = []
        for group in self.store.jobs.aggregate(pipeline):
            if not isinstance(group.get("_id"), str):
                continue
            times = sorted(float(t) for t in group.get("times") or []
                           if isinstance(t, int | float) and not isinstance(t, bool))
            done = int(group.get("finished") or 0)
            rows.append({
                "path": group["_id"],
                "count": int(group.get("count") or 0),
                "finished": done,
                "running": int(group.get("running") or 0),
                "avg": sum(times) / len(times) if times else None,
                "p95": times[max(math.ceil(len(times) * 0.95) - 1, 0)] if times else None,  # nearest rank
                "failure_rate": int(group.get("failures") or 0) / done if done else None,
            })
        rows.sort(key=lambda row: row["path"])
        return rows

    def exceptions(self) -> list[dict[str, Any]]:
        """Errors of the last EXCEPTIONS_SAMPLE jobs in an error status, grouped by exception type
        and message (the traceback's last line), most frequent first. A cached aggregate: one
        bounded find (the `status_id` index, newest first per status) at most every
        STATISTICS_SECONDS, shared by every request of this dashboard process."""
        return self.cache.get("exceptions", self._exceptions, seconds=max(self.cache.seconds, STATISTICS_SECONDS))

    def _exceptions(self) -> list[dict[str, Any]]:
        statuses = sorted(ERROR_STATUSES)
        fields = {"exceptiontype": 1, "traceback": 1, "path": 1, "status": 1, "datefinished": 1, "dateupdated": 1}
        docs = self.store.jobs.find({"status": {"$in": statuses}}, fields).sort("_id", -1) \
            .limit(EXCEPTIONS_SAMPLE).batch_size(EXCEPTIONS_SAMPLE)
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for doc in docs:
            kind = str(doc.get("exceptiontype") or "unknown")
            message = last_line(doc.get("traceback"), 300)
            when = as_datetime(doc.get("datefinished")) or as_datetime(doc.get("dateupdated")) or \
                as_datetime(doc["_id"]) or utcnow()
            group = groups.get((kind, message))
            if group is None:
                group = groups[(kind, message)] = {"exceptiontype": kind, "message": message, "count": 0,
                                                   "first": when, "last": when, "paths": {}, "statuses": {},
                                                   "example": doc["_id"]}
            group["count"] += 1
            group["first"] = min(group["first"], when)
            group["last"] = max(group["last"], when)
            path, status = str(doc.get("path")), str(doc.get("status"))
            group["paths"][path] = group["paths"].get(path, 0) + 1
            group["statuses"][status] = group["statuses"].get(status, 0) + 1
        rows = sorted(groups.values(), key=lambda g: (-g["count"], g["exceptiontype"], g["message"]))
        for row in rows:
            row["paths"] = sorted(row["paths"], key=lambda p: -row["paths"][p])[:5]
            row["statuses"] = ",".join(sorted(s for s in row["statuses"] if s))
        return rows

    def actions(self, before: ObjectId | None = None, limit: int = 50) -> tuple[list[dict[str, Any]], Any]:
        collection = self.store.connections.mongodb_jobs[mongo.ACTIONS]
        query = {"_id": {"$lt": before}} if before is not None else {}
        docs = list(collection.find(query).sort("_id", -1).limit(limit + 1))
        more = len(docs) > limit
        docs = docs[:limit]
        return docs, (docs[-1]["_id"] if more else None)


def number_in(doc: dict[str, Any], key: str, field_name: str) -> float:
    """doc[key][field_name] when it is a number, else 0 (worker reports are read defensively)."""
    inner = doc.get(key)
    value = inner.get(field_name) if isinstance(inner, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def sorted_read(query: dict[str, Any]) -> dict[str, Any]:
    """The query, made to read newest-first from an index: the (queue|path|worker|group, status, _id)
    indexes give `_id` order only per status, so a queue, path, worker or group without a status lists every
    status (MongoDB then merges the per-status ranges instead of sorting every matching job)."""
    if "status" in query or isinstance(query.get("_id"), ObjectId):
        return query
    worker = query.get("worker")
    if isinstance(query.get("queue"), str) or isinstance(query.get("path"), str) or isinstance(worker, ObjectId) or \
            (isinstance(worker, dict) and isinstance(worker.get("$in"), list)) or \
            isinstance(query.get("group"), ObjectId):
        return {**query, "status": {"$in": list(ALL_STATUSES)}}
    return query


@dataclass
class QueuePage:
    rows: list[dict[str, Any]]
    total: int  # known queues, subqueues included
    next: str | None  # the next page starts after this name


@dataclass
class JobList:
    jobs: list[dict[str, Any]] = field(default_factory=list)
    next: ObjectId | None = None
    prev: ObjectId | None = None
