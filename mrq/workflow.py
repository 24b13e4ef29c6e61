"""Workflows on top of job dependencies (docs/workflows.md): chains and groups.

    from mrq.workflow import chain, group, Group

    ids = chain([("tasks.fetch", {"url": u}), ("tasks.parse", {}), ("tasks.store", {})])
    g = group([("tasks.resize", {"image": i}) for i in images], then=("tasks.zip", {"name": "all"}))
    g.wait(timeout=600)        # the callback ended; g.callback.result is its result
    g.progress()               # {"total": 1000, "ended": 412, "by_status": {...}}
    g.cancel()                 # cancels what has not started, the callback included

Inside a task, `mrq.context.get_dependency_results()` returns the results of the jobs the
running job waited for, in the order of its `depends_on` (a group's callback: the members').
A chain or a group is nothing but jobs with `depends_on`: what a worker does with them, what
survives a crash, and what the dashboard shows are those of any job (docs/guarantees.md).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from itertools import groupby
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from .clock import utcnow
from .exceptions import InvalidJob, JobNotFound
from .job import Job, JobWaitTimeout, _current_store, to_object_id
from .lifecycle import operations
from .lifecycle.dependencies import DEPENDENCY_ENDS
from .lifecycle.statuses import CANCELLABLE_STATUSES
from .queue.producer import queue_jobs

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Group", "chain", "dependency_results", "group"]

#: How long a group's record is kept after it was created (its jobs keep their own TTLs).
GROUP_TTL_DAYS = 30


def _step(item: Any, index: int) -> tuple[str, dict[str, Any], str | None]:
    """(path, params[, queue]) or {"path", "params", "queue"}."""
    if isinstance(item, Mapping):
        path, params, queue = item.get("path"), item.get("params", {}), item.get("queue")
    elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
        path, params, queue = item[0], item[1], item[2] if len(item) == 3 else None
    else:
        raise InvalidJob(f"job #{index} must be (path, params), (path, params, queue) or a dict with path and "
                         f"params, got {item!r:.80}")
    if not isinstance(path, str):
        raise InvalidJob(f"job #{index}: the task path must be a string, got {path!r:.60}")
    if not isinstance(params, Mapping):
        raise InvalidJob(f"job #{index}: params must be a dict, got {type(params).__name__}")
    return path, dict(params), queue


def chain(steps: Sequence[Any], *, on_dependency_failure: str = "cancel", store: Store | None = None
          ) -> list[ObjectId]:
    """Queue jobs that run one after the other: each waits for the one before it (depends_on).
    Returns their ids. A step that fails cancels the rest (or, with
    on_dependency_failure="run", the next runs anyway). Each step reads the previous one's result
    with `mrq.context.get_dependency_results()[0]`."""
    parsed = [_step(item, index) for index, item in enumerate(steps)]
    if not parsed:
        raise InvalidJob("a chain needs at least one job")
    store = store or _current_store()
    ids: list[ObjectId] = []
    for path, params, queue in parsed:
        ids.extend(queue_jobs(path, [params], queue, store=store, depends_on=ids[-1:] or None,
                              on_dependency_failure=on_dependency_failure))
    return ids


def group(jobs: Sequence[Any], then: Any = None, *, on_dependency_failure: str = "cancel",
          store: Store | None = None) -> Group:
    """Queue jobs that run in parallel and, with `then=(path, params[, queue])`, one more job that
    waits for all of them and reads their results (in order) with
    `mrq.context.get_dependency_results()`. When a member does not end `success`, the callback is
    cancelled with the reason, unless on_dependency_failure="run". Returns the Group."""
    parsed = [_step(item, index) for index, item in enumerate(jobs)]
    if not parsed:
        raise InvalidJob("a group needs at least one job (a group of 0 jobs would never end)")
    callback = _step(then, len(parsed)) if then is not None else None
    store = store or _current_store()
    group_id = ObjectId()
    now = utcnow()
    ids = [ObjectId() for _ in parsed]  # increasing: the members' `_id` order is the group's order
    store.groups.insert_one({"_id": group_id, "size": len(parsed), "datecreated": now,
                             "dateexpires": now + timedelta(days=GROUP_TTL_DAYS)})
    # Consecutive members with the same task and queue go in one queue_jobs call.
    position = 0
    for (path, queue), members in groupby(parsed, key=lambda step: (step[0], step[2])):
        params_list = [params for _, params, _ in members]
        queue_jobs(path, params_list, queue, store=store, ids=ids[position:position + len(params_list)],
                   extra_fields={"group": group_id})
        position += len(params_list)
    if callback is not None:
        path, params, queue = callback
        callback_id = queue_jobs(path, [params], queue, store=store, depends_on=ids,
                                 on_dependency_failure=on_dependency_failure,
                                 extra_fields={"group_callback": group_id})[0]
        store.groups.update_one({"_id": group_id}, {"$set": {"then": callback_id}})
    return Group(group_id, store)


class Group:
    """A handle on a group: its members (jobs with `group: <id>`), its callback, its progress."""

    def __init__(self, group_id: object, store: Store | None = None) -> None:
        self.id = to_object_id(group_id)
        self._store = store
        self.data: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"<Group {self.id}>"

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = _current_store()
        return self._store

    def fetch(self) -> Group:
        data = self.store.groups.find_one({"_id": self.id})
        if data is None:
            raise JobNotFound(f"group {self.id}")
        self.data = data
        return self

    @property
    def size(self) -> int:
        if self.data is None:
            self.fetch()
        assert self.data is not None
        return int(self.data["size"])

    @property
    def callback(self) -> Job | None:
        """The job that runs after the members (None for a group without `then`)."""
        if self.data is None or "then" not in self.data:
            self.fetch()
        assert self.data is not None
        then = self.data.get("then")
        return None if then is None else Job(then, self.store)

    def member_ids(self) -> list[ObjectId]:
        return [doc["_id"] for doc in self.store.jobs.find({"group": self.id}, {"_id": 1}).sort("_id", 1)]

    def progress(self) -> dict[str, Any]:
        """{"total": members, "ended": members in a final status, "by_status": {status: n}}."""
        by_status = {doc["_id"]: doc["n"] for doc in self.store.jobs.aggregate([
            {"$match": {"group": self.id}}, {"$group": {"_id": "$status", "n": {"$sum": 1}}}])}
        return {"total": self.size, "ended": sum(n for s, n in by_status.items() if s in DEPENDENCY_ENDS),
                "by_status": by_status}

    def results(self) -> list[Any]:
        """The members' results in order (None for a member that did not succeed)."""
        return [doc.get("result") for doc in self.store.jobs.find({"group": self.id}, {"result": 1}).sort("_id", 1)]

    def wait(self, timeout: float | None = None, poll_interval: float = 0.2) -> Group:
        """Block until the group is over: its callback ended (or every member, without one).
        Raises JobWaitTimeout after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            callback = self.callback
            if callback is not None:
                doc = self.store.jobs.find_one({"_id": callback.id}, {"status": 1})
                if doc is None:
                    raise JobNotFound(callback.id)
                over = doc["status"] in DEPENDENCY_ENDS
            else:
                progress = self.progress()
                over = progress["ended"] >= progress["total"]
            if over:
                return self
            if deadline is not None and time.monotonic() >= deadline:
                raise JobWaitTimeout(f"group {self.id} not over after {timeout:g}s: {self.progress()}")
            time.sleep(poll_interval)

    def cancel(self) -> int:
        """Cancel every member that has not started, and the callback. Running members finish
        (abort them with Job.abort_running()); the callback is cancelled whatever they end with.
        Returns how many jobs were cancelled."""
        cancelled = 0
        callback = self.callback
        if callback is not None:
            cancelled += operations.act_on_matching(self.store, "cancel", {"_id": callback.id})
        waiting = {"group": self.id, "status": {"$in": sorted(CANCELLABLE_STATUSES)}}
        cancelled += operations.act_on_matching(self.store, "cancel", waiting)
        return cancelled


def dependency_results(job: Any, store: Store | None = None) -> list[Any]:
    """The results of the jobs `job` (a Job, or a job document) waited for, in its `depends_on`
    order; None for one that did not succeed or is gone."""
    data = job if isinstance(job, Mapping) else (job.data or job.fetch().data)
    store = store or getattr(job, "store", None) or _current_store()
    depends_on = list(data.get("depends_on") or ())
    if not depends_on and "depends_on" not in data and "_id" in data:
        found = store.jobs.find_one({"_id": data["_id"]}, {"depends_on": 1}) or {}
        depends_on = list(found.get("depends_on") or ())
    results: dict[ObjectId, Any] = {}
    for start in range(0, len(depends_on), 1000):
        for doc in store.jobs.find({"_id": {"$in": depends_on[start:start + 1000]}}, {"result": 1, "status": 1}):
            results[doc["_id"]] = doc.get("result")
    return [results.get(job_id) for job_id in depends_on]
