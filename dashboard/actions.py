"""What the dashboard changes: cancel, requeue and abort one job, the same in bulk on a filter,
cancel a workflow group, pause and resume a queue, enqueue a job for HTTP producers. Every action
except enqueueing is recorded in `mrq_actions` (who, from where, when, what, which filter, how
many).

Single-job actions are `mrq.job.Job`'s own guarded transitions; bulk actions are the lifecycle's
batch transitions (mrq.lifecycle.operations), BULK_BATCH jobs at a time: one `update_many` and
one Redis pipeline per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bson import ObjectId

from mrq.exceptions import InvalidStatusTransition, JobNotFound
from mrq.job import CANCEL, QUEUED, Job, queue_job
from mrq.lifecycle import operations
from mrq.lifecycle.statuses import CANCELLABLE_STATUSES, NOT_REQUEUABLE
from mrq.queue import pause_queue, resume_queue
from mrq.storage import mongo
from mrq.store import Store
from mrq.task import defined_in_source
from mrq.workflow import Group

from .formatting import utcnow
from .jobfilter import BadInput, JobFilter
from .queries import Count

BULK_BATCH = operations.BATCH
BULK_ACTIONS = ("cancel", "requeue")


class Conflict(Exception):
    """The job is not in a status the action applies to (HTTP 409)."""


class Forbidden(Exception):
    """The configuration does not allow this (HTTP 403)."""


class GroupNotFound(Exception):
    """No `mrq_groups` record with this id (HTTP 404)."""

    def __init__(self, group_id: ObjectId) -> None:
        super().__init__(f"no group with id {str(group_id)!r}")
        self.group_id = group_id


@dataclass(frozen=True)
class Actor:
    who: str  # the basic-auth user, "token" or "anonymous"
    addr: str | None


class Actions:
    def __init__(self, store: Store, *, enqueue_paths: list[str] | None = None, count_limit: int = 100_000) -> None:
        self.store = store
        self.enqueue_paths = list(enqueue_paths or [])
        self.count_limit = count_limit

    @property
    def audit(self) -> Any:
        return self.store.connections.mongodb_jobs[mongo.ACTIONS]

    def record(self, actor: Actor, action: str, *, target: str | None = None, flt: JobFilter | None = None,
               count: int | None = None, detail: str | None = None) -> None:
        self.audit.insert_one({"date": utcnow(), "who": actor.who, "addr": actor.addr, "action": action,
                               "target": target, "filter": None if flt is None else flt.values, "count": count,
                               "detail": detail})

    # --- one job ---------------------------------------------------------------------------------------

    def cancel(self, actor: Actor, job_id: ObjectId) -> dict[str, Any]:
        job = Job(job_id, self.store)
        try:
            cancelled = job.cancel()
        except InvalidStatusTransition as exc:
            raise Conflict(str(exc)) from None
        if not cancelled:
            status = job.fetch({"status": 1}).status
            raise Conflict(f"job {job_id} is {status}: only a job that has not started (queued, waiting for its "
                           f"dependencies, or waiting for a retry) can be cancelled; abort a running job instead")
        self.record(actor, "cancel", target=str(job_id), count=1)
        return {"id": job_id, "status": CANCEL}

    def requeue(self, actor: Actor, job_id: ObjectId, queue: str | None = None) -> dict[str, Any]:
        job = Job(job_id, self.store)
        try:
            job.requeue(queue=queue)
        except InvalidStatusTransition as exc:
            raise Conflict(str(exc)) from None
        self.record(actor, "requeue", target=str(job_id), count=1, detail=f"queue {queue}" if queue else None)
        return {"id": job_id, "status": QUEUED}

    def abort(self, actor: Actor, job_id: ObjectId) -> dict[str, Any]:
        try:
            receivers = Job(job_id, self.store).abort_running()
        except InvalidStatusTransition as exc:
            raise Conflict(str(exc)) from None
        if receivers == 0:
            raise Conflict(f"job {job_id} is started but no worker is listening: its worker may be dead "
                           "(its jobs are recovered once its lease expires)")
        self.record(actor, "abort", target=str(job_id), count=1)
        return {"id": job_id, "requested": True, "workers": receivers}

    # --- a workflow group ----------------------------------------------------------------------------

    def cancel_group(self, actor: Actor, group_id: ObjectId) -> dict[str, Any]:
        """`Group.cancel()`: every member that has not started, and the callback (members already
        running finish). Recorded with how many jobs it cancelled, 0 included."""
        group = Group(group_id, self.store)
        try:
            group.fetch()
        except JobNotFound:
            raise GroupNotFound(group_id) from None
        cancelled = group.cancel()
        self.record(actor, "cancel group", target=str(group_id), count=cancelled)
        return {"id": group_id, "cancelled": cancelled}

    # --- queues -------------------------------------------------------------------------------------------

    def pause(self, actor: Actor, queue: str, paused: bool) -> dict[str, Any]:
        (pause_queue if paused else resume_queue)(self.store, queue)
        self.record(actor, "pause" if paused else "resume", target=queue)
        return {"queue": queue, "paused": paused}

    # --- bulk ---------------------------------------------------------------------------------------------

    def bulk_query(self, action: str, flt: JobFilter) -> dict[str, Any] | None:
        """The filter narrowed to the jobs the action applies to (None: it applies to none)."""
        if action not in BULK_ACTIONS:
            raise BadInput(f"unknown bulk action {action[:40]!r} (known: {', '.join(BULK_ACTIONS)})")
        wanted = flt.query.get("status")
        asked = None if wanted is None else {wanted} if isinstance(wanted, str) else set(wanted["$in"])
        query = dict(flt.query)
        statuses: set[str] | None
        if action == "cancel":  # jobs that have not started, waiting ones included (and what waits for them)
            statuses = set(CANCELLABLE_STATUSES) if asked is None else (asked & CANCELLABLE_STATUSES)
        else:  # never a queued, running or waiting job (requeueing that one would ignore its dependencies)
            statuses = None if asked is None else (asked - set(NOT_REQUEUABLE))
        if statuses is not None and not statuses:
            return None
        if statuses is not None:
            query["status"] = {"$in": sorted(statuses)}
        else:
            query["status"] = {"$nin": list(NOT_REQUEUABLE)}
        return query

    def preview(self, action: str, flt: JobFilter) -> Count:
        query = self.bulk_query(action, flt)
        if query is None:
            return Count(0, False)
        value = self.store.jobs.count_documents(query, limit=self.count_limit)
        return Count(value, value >= self.count_limit)

    def bulk(self, actor: Actor, action: str, flt: JobFilter, confirm_all: bool = False) -> dict[str, Any]:
        if flt.empty and not confirm_all:
            raise BadInput(f"bulk {action} without a filter would touch every job: add a filter, or confirm "
                           "with confirm_all: true")
        query = self.bulk_query(action, flt)
        matched = changed = 0
        if query is not None:
            for found in operations.pages(self.store, query, {"queue": 1, "path": 1}, BULK_BATCH):
                matched += len(found)
                if action == "cancel":
                    changed += operations.cancel_batch(self.store, found)
                else:
                    changed += operations.requeue_batch(self.store, [doc["_id"] for doc in found],
                                                        query["status"])
        self.record(actor, f"bulk {action}", flt=flt, count=changed,
                    detail=f"{matched} matched" + (", confirmed without a filter" if flt.empty else ""))
        return {"action": action, "matched": matched, "changed": changed, "filter": flt.values}

    # --- enqueue (HTTP producers) ---------------------------------------------------------------------

    def enqueue(self, path: str, params: dict[str, Any], queue: str | None, *, depends_on: list[str] | None = None,
                on_dependency_failure: str = "cancel") -> ObjectId:
        allowed = self.enqueue_paths
        if not allowed:
            raise Forbidden("enqueueing by HTTP is off (set dashboard_enqueue_paths to the task paths, or "
                            "`prefix.*` patterns, it may enqueue)")
        if not enqueue_allowed(path, allowed):
            raise Forbidden(f"task path {path[:120]!r} may not be enqueued by HTTP (dashboard_enqueue_paths allows "
                            "exact task paths and `prefix.*` patterns)")
        if not defined_in_source(path):
            # Read from the source, never imported here: a name the module imports (`from subprocess
            # import run`) or assigns is not a task, whatever the allow-list says.
            raise Forbidden(f"task path {path[:120]!r} is not a Task class or function defined in its module "
                            "(checked in its source on the dashboard's sys.path)")
        return queue_job(path, params, queue=queue, store=self.store, depends_on=depends_on,
                         on_dependency_failure=on_dependency_failure)


def enqueue_allowed(path: str, allowed: list[str]) -> bool:
    """An entry allows its exact path (`tasks.reports.Daily`), or, ending in `.*`, every path
    under that prefix (`tasks.reports.*` allows `tasks.reports.Daily` and `tasks.reports.x.Job`,
    not `tasks.reportsX.Job` nor `tasks.reports` itself). Nothing else matches."""
    for entry in allowed:
        if entry.endswith(".*"):
            prefix = entry[:-1]  # keeps the dot
            if len(prefix) > 1 and path.startswith(prefix) and len(path) > len(prefix):
                return True
        elif path == entry:
            return True
    return False
