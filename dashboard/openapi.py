"""The OpenAPI 3.1 document of the JSON API (GET /api/openapi.json). A test checks that it lists
exactly the API routes the app serves."""

from __future__ import annotations

from typing import Any

from mrq.job import ALL_STATUSES
from mrq.version import __version__

Schema = dict[str, Any]

ERROR: Schema = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
ANY_OBJECT: Schema = {"type": "object", "additionalProperties": True}
ID: Schema = {"type": "string", "pattern": "^[0-9a-f]{24}$"}
COUNT: Schema = {"type": "object", "properties": {"value": {"type": "integer"}, "capped": {"type": "boolean"}},
                 "description": "A bounded count: when capped, there are at least `value`."}
JOB: Schema = {
    "type": "object",
    "description": "Every stored field of the job (docs/storage.md), with `id` and `error`.",
    "properties": {
        "id": ID, "path": {"type": "string"}, "queue": {"type": "string"},
        "status": {"type": "string", "enum": list(ALL_STATUSES)},
        "params": ANY_OBJECT, "result": {}, "progress": {"type": "number"},
        "error": {"type": ["object", "null"], "properties": {"type": {"type": ["string", "null"]},
                                                             "message": {"type": ["string", "null"]}}},
        "traceback": {"type": "string"}, "traceback_history": {"type": "array", "items": ANY_OBJECT},
        "retry_count": {"type": "integer"}, "recoveries": {"type": "integer"}, "worker": ID,
        "datequeued": {"type": "string", "format": "date-time"},
        "datestarted": {"type": "string", "format": "date-time"},
        "datefinished": {"type": "string", "format": "date-time"},
        "totaltime": {"type": "number"},
        "depends_on": {"type": "array", "items": ID, "description": "The jobs it waits for, in order."},
        "dependencies_ended": {"type": "array", "items": ID, "description": "Those of depends_on that ended."},
        "on_dependency_failure": {"type": "string", "enum": ["run"], "description": "Absent: cancel."},
        "dependents": {"type": "array", "items": ID, "description": "The jobs that wait for it."},
        "group": {**ID, "description": "The workflow group it is a member of."},
        "group_callback": {**ID, "description": "The workflow group it is the callback of."},
    },
    "additionalProperties": True,
}
RELATED_JOB: Schema = {"type": "object", "properties": {
    "id": ID, "status": {"type": ["string", "null"], "description": "null: no longer stored"},
    "path": {"type": ["string", "null"]}, "ended": {"type": "boolean", "description": "In dependencies_ended."}}}
JOB_DETAIL: Schema = {
    **JOB,
    "description": "Every stored field of the job (docs/storage.md), with `id` and `error`, and the jobs it waits "
                   "for and that wait for it: the first 100 of each, with their status, and how many more.",
    "properties": {
        **JOB["properties"],
        "waits_for": {"type": ["object", "null"], "properties": {
            "total": {"type": "integer"}, "ended": {"type": "integer"}, "more": {"type": "integer"},
            "on_dependency_failure": {"type": "string", "enum": ["cancel", "run"]},
            "jobs": {"type": "array", "items": RELATED_JOB, "maxItems": 100}}},
        "waited_for_by": {"type": ["object", "null"], "properties": {
            "total": {"type": "integer"}, "more": {"type": "integer"},
            "jobs": {"type": "array", "items": RELATED_JOB, "maxItems": 100}}},
    },
}
FILTER_FIELDS: dict[str, str] = {
    "id": "A job id.",
    "queue": "A queue name; `name/` matches every subqueue of name.",
    "status": f"One status or several, comma separated ({', '.join(ALL_STATUSES)}).",
    "path": "A task path; `prefix*` or `prefix.` matches every task under a dotted prefix.",
    "worker": "A worker id or name.",
    "group": "A workflow group's id: its members.",
    "exceptiontype": "The exception class name of the last error.",
    "from": "Queued at or after this UTC date or datetime (2024-05-01, 2024-05-01T12:30).",
    "to": "Queued before this UTC datetime (a date alone includes that whole day).",
}
FILTER: Schema = {"type": "object", "properties": {k: {"type": "string", "description": v}
                                                    for k, v in FILTER_FIELDS.items()}, "additionalProperties": False}


def query(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema or {"type": "string"}}


def path_param(name: str, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


def json_response(description: str, schema: Schema) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error(description: str) -> Schema:
    return json_response(description, {"$ref": "#/components/schemas/Error"})


def body(schema: Schema, required: bool = True) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def operation(summary: str, ok: Schema, *, params: list[Schema] | None = None, request: Schema | None = None,
              errors: tuple[int, ...] = (), action: bool = False, status: str = "200", missing: str = "job") -> Schema:
    responses: Schema = {status: ok}
    reasons = {400: "Malformed input (the message says why).", 401: "Authentication required.",
               403: "Refused: read-only dashboard, CSRF check, or not allowed by the configuration.",
               404: f"No such {missing}.", 409: "The job is not in a status this action applies to.",
               503: "MongoDB or Redis cannot be reached."}
    codes = {*errors, 401, 503} | ({400, 403} if action else set())
    for code in sorted(codes):
        responses[str(code)] = error(reasons[code])
    op: Schema = {"summary": summary, "responses": responses}
    if params:
        op["parameters"] = params
    if request:
        op["requestBody"] = request
    return op


JOB_ID = path_param("job_id", "The job id (24 hexadecimal characters).")
GROUP_ID = path_param("group_id", "The group id (24 hexadecimal characters; anything else is a 400).")
QUEUE = path_param("name", "The queue name (subqueues contain '/').")
PAGE_PARAMS = [
    *(query(k, v) for k, v in FILTER_FIELDS.items()),
    query("sort", "newest (default) or oldest first.", {"type": "string", "enum": ["newest", "oldest"]}),
    query("after", "Keyset cursor: the `next` of the previous answer."),
    query("before", "Keyset cursor: the `prev` of the previous answer."),
    query("limit", "Jobs per page, 1 to 200 (default 50).", {"type": "integer", "minimum": 1, "maximum": 200}),
]


def paths() -> Schema:
    cursor: Schema = {"type": ["string", "null"]}
    listed = {"type": "object", "properties": {"jobs": {"type": "array", "items": JOB}, "next": cursor,
                                               "prev": cursor, "count": COUNT, "filter": ANY_OBJECT},
              "description": "List rows leave out traceback, traceback_history, result and the dependency lists."}
    group = {"type": "object", "properties": {
        "id": ID, "size": {"type": "integer"}, "datecreated": {"type": "string", "format": "date-time"},
        "dateexpires": {"type": "string", "format": "date-time"},
        "progress": {"type": "object", "properties": {
            "total": {"type": "integer"}, "ended": {"type": "integer"},
            "by_status": {"type": "object", "additionalProperties": {"type": "integer"}}}},
        "callback": {"type": ["object", "null"], "properties": {
            "id": ID, "stored": {"type": "boolean"}, "status": {"type": ["string", "null"]},
            "path": {"type": ["string", "null"]}, "queue": {"type": ["string", "null"]},
            "summary": {"type": ["string", "null"], "description": "Its result on one line (300 characters)."},
            "error": {"type": ["object", "null"]}}},
        "cancellable": {"type": "boolean", "description": "A member or the callback has not started."},
        "members": {"type": "object", "properties": {"jobs": {"type": "array", "items": JOB}, "next": cursor,
                                                     "prev": cursor, "filter": ANY_OBJECT}}}}
    return {
        "/api/overview": {"get": operation(
            "Queues, counts by status, workers and throughput of the last hour.",
            json_response("Overview", ANY_OBJECT))},
        "/api/queues": {"get": operation(
            "Every known queue: size, delayed, paused, oldest job age (s), jobs/s in, out and failed.",
            json_response("Queues", ANY_OBJECT))},
        "/api/queues/{name}/pause": {"post": operation(
            "Pause a queue: workers stop taking its jobs (a root name pauses its subqueues).",
            json_response("Paused", ANY_OBJECT), params=[QUEUE], action=True)},
        "/api/queues/{name}/resume": {"post": operation(
            "Resume a paused queue.", json_response("Resumed", ANY_OBJECT), params=[QUEUE], action=True)},
        "/api/stats": {"get": operation(
            "Jobs queued, succeeded, failed and other outcomes per minute (oldest first).",
            json_response("Per-minute counts", ANY_OBJECT),
            params=[query("minutes", "How many minutes, 1 to 120 (default 60).", {"type": "integer"})], errors=(400,))},
        "/api/jobs": {
            "get": operation("Jobs matching a filter, newest first, keyset-paginated.",
                             json_response("A page of jobs", listed), params=PAGE_PARAMS, errors=(400,)),
            "post": operation(
                "Enqueue a job (only task paths allowed by dashboard_enqueue_paths).",
                json_response("Queued", {"type": "object", "properties": {"id": ID}}), status="201", action=True,
                request=body({"type": "object", "required": ["path"], "properties": {
                    "path": {"type": "string"}, "params": ANY_OBJECT, "queue": {"type": "string"},
                    "depends_on": {"type": "array", "items": ID},
                    "on_dependency_failure": {"type": "string", "enum": ["cancel", "run"]}}})),
        },
        "/api/jobs/{job_id}": {"get": operation(
            "One job: status, result, error, timings, params, traceback history, the jobs it waits for and "
            "that wait for it (100 of each at most).", json_response("The job", JOB_DETAIL),
            params=[JOB_ID], errors=(404,))},
        "/api/jobs/{job_id}/logs": {"get": operation(
            "The job's log lines, or those after a cursor (poll with `after` = the last answer's `last`).",
            json_response("Log text", {"type": "object", "properties": {
                "text": {"type": "string"}, "last": {"type": ["string", "null"]}, "stored": {"type": "boolean"}}}),
            params=[JOB_ID, query("after", "The `last` of the previous answer.")], errors=(400, 404))},
        "/api/jobs/{job_id}/cancel": {"post": operation(
            "Cancel a job that has not started (queued, waiting, retry, delayed), and what waits for it.",
            json_response("Cancelled", ANY_OBJECT), params=[JOB_ID], errors=(404, 409),
            action=True)},
        "/api/jobs/{job_id}/requeue": {"post": operation(
            "Queue a finished job again (failed, cancelled, interrupted...), optionally on another queue.",
            json_response("Queued", ANY_OBJECT), params=[JOB_ID], errors=(404, 409), action=True,
            request=body({"type": "object", "properties": {"queue": {"type": "string"}}}, required=False))},
        "/api/jobs/{job_id}/abort": {"post": operation(
            "Ask the worker running the job to stop it now (status abort).", json_response("Requested", ANY_OBJECT),
            params=[JOB_ID], errors=(404, 409), action=True)},
        "/api/bulk/{action}": {"post": operation(
            "Cancel (jobs that have not started, waiting ones included) or requeue (jobs neither queued, running "
            "nor waiting) every job matching a filter. With dry_run, only count them. An empty filter is refused "
            "unless confirm_all is true.",
            json_response("Counted or done", ANY_OBJECT), action=True,
            params=[path_param("action", "cancel or requeue")],
            request=body({"type": "object", "properties": {"filter": FILTER, "dry_run": {"type": "boolean"},
                                                            "confirm_all": {"type": "boolean"}}}))},
        "/api/groups/{group_id}": {"get": operation(
            "A workflow group: size, progress (members ended, counts by status), its callback (status, result "
            "summary, error) and a keyset page of its members (in the group's order unless sort says otherwise).",
            json_response("The group", group), missing="group", errors=(400, 404), params=[
                GROUP_ID, query("status", "Members in these statuses only (comma separated)."),
                *PAGE_PARAMS[len(FILTER_FIELDS):]])},
        "/api/groups/{group_id}/cancel": {"post": operation(
            "Cancel every member that has not started, and the callback (running members finish). Recorded in "
            "the audit log as `cancel group`.",
            json_response("Cancelled", {"type": "object", "properties": {
                "id": ID, "cancelled": {"type": "integer", "description": "Jobs cancelled, the callback included."}}}),
            params=[GROUP_ID], errors=(404,), missing="group", action=True)},
        "/api/workers": {"get": operation(
            "Worker reports with their state (alive, dead, stopped).", json_response("Workers", ANY_OBJECT),
            params=[query("all", "1 to include workers stopped more than an hour ago.")])},
        "/api/scheduled": {"get": operation(
            "Scheduled tasks with their last and next run.", json_response("Scheduled tasks", ANY_OBJECT))},
        "/api/taskpaths": {"get": operation(
            "Per task path: jobs, average and p95 duration and failure rate over its recent jobs.",
            json_response("Task paths", ANY_OBJECT))},
        "/api/exceptions": {"get": operation(
            "Recent errors grouped by exception type and message, with counts and first/last seen.",
            json_response("Exceptions", ANY_OBJECT))},
        "/api/actions": {"get": operation(
            "The audit log of actions, newest first.", json_response("Actions", ANY_OBJECT),
            params=[query("before", "Keyset cursor: the `next` of the previous answer.")], errors=(400,))},
        "/api/health": {"get": operation(
            "Whether Redis and MongoDB answer.", json_response("Both answer", ANY_OBJECT))},
        "/api/openapi.json": {"get": operation("This document.", json_response("OpenAPI 3.1", ANY_OBJECT))},
    }


def openapi_document() -> Schema:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mrq dashboard API",
            "version": __version__,
            "description": "Read queues, jobs, workers and statistics; act on jobs; enqueue jobs from any "
                           "language. Errors are {\"error\": \"one line\"}. Authenticate with HTTP basic auth or "
                           "`Authorization: Bearer <token>` when the dashboard is configured with them. State "
                           "changes are POST with a JSON body; browsers must also send the X-CSRF-Token header.",
        },
        "paths": paths(),
        "components": {
            "schemas": {"Error": ERROR, "Job": JOB, "JobDetail": JOB_DETAIL, "Filter": FILTER},
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic"},
                                "bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"basic": []}, {"bearer": []}],
    }
