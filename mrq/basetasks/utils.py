"""`mrq.basetasks.utils.JobAction`: MRQ's bulk cancel/requeue task, by filter.

    mrq-run mrq.basetasks.utils.JobAction '{"action": "requeue", "status": "failed", "path": "tasks.Fetch"}'
    queue_job("mrq.basetasks.utils.JobAction", {"action": "cancel", "queue": "crawl"})

Params (MRQ's): `action` (`cancel`, `requeue`, `requeue_retry`), and the filters `id`, `queue` (a
list: any of them; a name ending in `/`: the queue and its subqueues), `status`, `path`,
`exceptiontype`, `worker` (a list: any of them), `dateretry` (a MongoDB condition), `params` (a
dict or its JSON: equality on each `params.<key>`); `destination_queue` for the requeues. Run as a
job without `id`, it only touches jobs created before it. Returns MRQ's counts,
`{"requeued": n, "cancelled": n}`. The transitions are the lifecycle's (the same functions as the
dashboard's bulk actions): only waiting jobs are cancelled, only jobs neither queued nor running
are requeued.
"""

from __future__ import annotations

import json
import re
from typing import Any

from bson import ObjectId

from .. import current
from ..exceptions import InvalidJob
from ..lifecycle.operations import act_on_matching
from ..task import Task

ACTIONS = ("cancel", "requeue", "requeue_retry")
FILTERS = ("id", "queue", "status", "path", "exceptiontype", "worker", "dateretry", "params")


def _any_of(value: Any) -> Any:
    return {"$in": list(value)} if isinstance(value, list | tuple) else value


def _object_ids(key: str, value: Any) -> Any:
    values = value if isinstance(value, list | tuple) else [value]
    try:
        ids = [v if isinstance(v, ObjectId) else ObjectId(str(v)) for v in values]
    except Exception:
        raise InvalidJob(f"JobAction: {key} must be a job/worker id (24 hex digits) or a list of them, "
                         f"got {value!r}") from None
    return {"$in": ids} if isinstance(value, list | tuple) else ids[0]


def job_query(params: dict[str, Any]) -> dict[str, Any]:
    """The MongoDB filter of JobAction params (raises InvalidJob on a bad one)."""
    query: dict[str, Any] = {}
    if params.get("id") is not None:
        query["_id"] = _object_ids("id", params["id"])
    if params.get("worker") is not None:
        query["worker"] = _object_ids("worker", params["worker"])
    queue = params.get("queue")
    if isinstance(queue, str) and queue.endswith("/"):
        query["queue"] = {"$regex": "^" + re.escape(queue[:-1]) + "(/|$)"}
    elif queue is not None:
        query["queue"] = _any_of(queue)
    for key in ("status", "path", "exceptiontype", "dateretry"):
        if params.get(key) is not None:
            query[key] = _any_of(params[key])
    job_params = params.get("params")
    if isinstance(job_params, str):
        try:
            job_params = json.loads(job_params)
        except ValueError as exc:
            raise InvalidJob(f"JobAction: params must be a dict or its JSON: {exc}") from None
    if job_params is not None:
        if not isinstance(job_params, dict):
            raise InvalidJob(f"JobAction: params must be a dict or its JSON, got {type(job_params).__name__}")
        query.update({f"params.{key}": value for key, value in job_params.items()})
    return query


class JobAction(Task):
    def run(self, params: dict[str, Any]) -> dict[str, int]:
        action = params.get("action")
        if action not in ACTIONS:
            raise InvalidJob(f"JobAction: action must be one of {', '.join(ACTIONS)}, got {action!r}")
        unknown = sorted(set(params) - {"action", "destination_queue", *FILTERS})
        if unknown:
            raise InvalidJob(f"JobAction: unknown param {unknown[0]!r} (known: action, destination_queue, "
                             f"{', '.join(FILTERS)})")
        query = job_query(params)
        job = current.get_current_job()
        if "_id" not in query and job is not None and getattr(job, "stored", True):
            query["_id"] = {"$lte": job.id}  # only the jobs created before this action
        changed = act_on_matching(current.get_current_store(), action, query,
                                  queue=params.get("destination_queue"))
        return {"requeued": 0 if action == "cancel" else changed, "cancelled": changed if action == "cancel" else 0}
