"""The HTTP/JSON API: everything the pages show, the actions, and enqueue/poll for producers in any
language. docs/dashboard.md and GET /api/openapi.json describe every route."""

from __future__ import annotations

import json
from typing import Any

from bson import ObjectId
from flask import Blueprint, Response, jsonify, request

from mrq.exceptions import JobNotFound
from mrq.job import to_object_id
from mrq.joblogs import read_job_logs

from .formatting import jsonable, last_line
from .jobfilter import FIELDS, BadInput, object_id, parse_job_filter, parse_page
from .openapi import openapi_document
from .queries import MAX_QUEUE_PAGE, QUEUE_PAGE
from .state import actor, state
from .workflows import dependencies, group_view, member_args

api = Blueprint("api", __name__, url_prefix="/api")


def job_id_arg(value: str) -> ObjectId:
    return to_object_id(value)  # JobNotFound (404) for anything that is not an id


def group_id_arg(value: str) -> ObjectId:
    return object_id(value, "group id")  # BadInput (400) for anything that is not an id


def json_body(optional: bool = False) -> dict[str, Any]:
    raw = request.get_data(cache=True)
    if optional and not raw.strip():
        return {}
    if not request.is_json:
        raise BadInput("expected a JSON object body (Content-Type: application/json)")
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadInput("invalid JSON: the body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BadInput("invalid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise BadInput(f"expected a JSON object, got {type(body).__name__}")
    return body


def job_json(doc: dict[str, Any]) -> dict[str, Any]:
    """A job document for API clients: every stored field, plus `id` and `error` (type and message
    of the last error, null when there was none). List rows leave out the traceback, result and
    traceback history: their `error.message` is null."""
    data = jsonable(doc)
    data = {"id": data.pop("_id"), **data}
    error = None
    if doc.get("exceptiontype") or doc.get("traceback"):
        message = last_line(doc["traceback"], 1000) if "traceback" in doc else None
        error = {"type": doc.get("exceptiontype"), "message": message}
    data["error"] = error
    return data


# --- overview, queues -------------------------------------------------------------------------------


@api.get("/overview")
def overview() -> Response:
    return jsonify(state().reader.overview())


@api.get("/queues")
def queues() -> Response:
    after, limit, prefix = queue_page_args(request.args)
    page = state().reader.queues(after, limit, prefix)
    return jsonify({"queues": page.rows, "total": page.total, "next": page.next})


def queue_page_args(args: Any) -> tuple[str | None, int, str]:
    """`after` (a queue name), `limit` (1 to MAX_QUEUE_PAGE) and `prefix` of a page of queues."""
    after, prefix = args.get("after", "").strip(), args.get("prefix", "").strip()
    for name, value in (("after", after), ("prefix", prefix)):
        if len(value) > 400 or any(c in value for c in "\x00\r\n"):
            raise BadInput(f"{name}: {value[:60]!r} is not a queue name")
    limit_text = args.get("limit", "").strip()
    limit = QUEUE_PAGE
    if limit_text:
        if not limit_text.isdigit() or not 1 <= int(limit_text[:6]) <= MAX_QUEUE_PAGE:
            raise BadInput(f"limit: expected a number from 1 to {MAX_QUEUE_PAGE}, got {limit_text[:40]!r}")
        limit = int(limit_text)
    return after or None, limit, prefix


@api.post("/queues/<path:name>/pause")
def pause(name: str) -> Response:
    return jsonify(state().actions.pause(actor(), name, True))


@api.post("/queues/<path:name>/resume")
def resume(name: str) -> Response:
    return jsonify(state().actions.pause(actor(), name, False))


@api.get("/stats")
def stats() -> Response:
    minutes_text = request.args.get("minutes", "60")
    if not minutes_text.isdigit() or not 1 <= int(minutes_text[:5]) <= 120:
        raise BadInput(f"minutes: expected a number from 1 to 120, got {minutes_text[:20]!r}")
    return jsonify({"minutes": state().reader.throughput(int(minutes_text))})


# --- jobs ---------------------------------------------------------------------------------------------


@api.get("/jobs")
def jobs() -> Response:
    reader = state().reader
    flt = parse_job_filter(request.args, reader.store)
    page = parse_page(request.args)
    found = reader.list_jobs(flt, page)
    return jsonify({"jobs": [job_json(doc) for doc in found.jobs], "next": found.next,
                    "prev": found.prev, "count": reader.count_jobs(flt).as_dict(), "filter": flt.values})


@api.post("/jobs")
def enqueue() -> tuple[Response, int]:
    body = json_body()
    path, params, queue = body.get("path"), body.get("params", {}), body.get("queue")
    if not isinstance(path, str) or not path:
        raise BadInput("path: expected the task's dotted path, a string")
    if not isinstance(params, dict):
        raise BadInput(f"params: expected a JSON object, got {type(params).__name__}")
    if queue is not None and not isinstance(queue, str):
        raise BadInput(f"queue: expected a string, got {type(queue).__name__}")
    depends_on, on_failure = body.get("depends_on"), body.get("on_dependency_failure", "cancel")
    if depends_on is not None and (not isinstance(depends_on, list)
                                   or not all(isinstance(i, str) for i in depends_on)):
        raise BadInput("depends_on: expected a list of job ids (24-character hex strings)")
    if not isinstance(on_failure, str):
        raise BadInput("on_dependency_failure: expected \"cancel\" or \"run\"")
    job_id = state().actions.enqueue(path, params, queue or None, depends_on=depends_on or None,
                                     on_dependency_failure=on_failure)
    response = jsonify({"id": job_id})
    response.headers["Location"] = f"/api/jobs/{job_id}"
    return response, 201


@api.get("/jobs/<job_id>")
def job(job_id: str) -> Response:
    oid = job_id_arg(job_id)
    doc = state().reader.job(oid)
    if doc is None:
        raise JobNotFound(oid)
    # The jobs it waits for and that wait for it, SHOWN of each at most (dashboard/workflows.py).
    return jsonify({**job_json(doc), **dependencies(state().store, doc).as_json()})


@api.get("/jobs/<job_id>/logs")
def job_logs(job_id: str) -> Response:
    oid = job_id_arg(job_id)
    after_text = request.args.get("after", "")
    after = object_id(after_text, "after") if after_text else None
    store = state().store
    collection = store.logs
    if collection is None:
        return jsonify({"text": "", "last": after, "stored": False})
    if after is None and store.jobs.count_documents({"_id": oid}, limit=1) == 0:
        raise JobNotFound(oid)
    text, last = read_job_logs(collection, oid, after)
    return jsonify({"text": text, "last": last, "stored": True})


@api.post("/jobs/<job_id>/cancel")
def cancel(job_id: str) -> Response:
    return jsonify(state().actions.cancel(actor(), job_id_arg(job_id)))


@api.post("/jobs/<job_id>/requeue")
def requeue(job_id: str) -> Response:
    queue = json_body(optional=True).get("queue")
    if queue is not None and not isinstance(queue, str):
        raise BadInput(f"queue: expected a string, got {type(queue).__name__}")
    return jsonify(state().actions.requeue(actor(), job_id_arg(job_id), queue or None))


@api.post("/jobs/<job_id>/abort")
def abort(job_id: str) -> Response:
    return jsonify(state().actions.abort(actor(), job_id_arg(job_id)))


@api.post("/bulk/<action>")
def bulk(action: str) -> Response:
    body = json_body()
    raw_filter = body.get("filter", {})
    if not isinstance(raw_filter, dict):
        raise BadInput("filter: expected a JSON object of job filter fields")
    unknown = sorted(set(raw_filter) - set(FIELDS))
    if unknown:
        raise BadInput(f"filter: unknown field {unknown[0][:40]!r}")
    actions = state().actions
    flt = parse_job_filter(raw_filter, actions.store)
    if body.get("dry_run"):
        count = actions.preview(action, flt)
        return jsonify({"action": action, "dry_run": True, "count": count.as_dict(), "filter": flt.values,
                        "needs_confirm_all": flt.empty})
    return jsonify(actions.bulk(actor(), action, flt, confirm_all=body.get("confirm_all") is True))


# --- workflow groups ----------------------------------------------------------------------------------


@api.get("/groups/<group_id>")
def group(group_id: str) -> Response:
    oid = group_id_arg(group_id)
    flt, page = member_args(request.args, oid)
    view = group_view(state().reader, oid, flt, page)
    members = view.members
    return jsonify({"id": oid, "size": view.progress["total"], "datecreated": view.record.get("datecreated"),
                    "dateexpires": view.record.get("dateexpires"), "progress": view.progress,
                    "callback": view.callback_json(), "cancellable": view.cancellable,
                    "members": {"jobs": [job_json(doc) for doc in members.jobs], "next": members.next,
                                "prev": members.prev, "filter": flt.values}})


@api.post("/groups/<group_id>/cancel")
def cancel_group(group_id: str) -> Response:
    return jsonify(state().actions.cancel_group(actor(), group_id_arg(group_id)))


# --- workers, scheduler, statistics, audit --------------------------------------------------------------


@api.get("/workers")
def workers() -> Response:
    rows = state().reader.workers(include_stopped=request.args.get("all") == "1")
    return jsonify({"workers": [{"id": row.pop("_id"), **row} for row in rows]})


@api.get("/scheduled")
def scheduled() -> Response:
    return jsonify({"scheduled": [{"id": doc.pop("_id"), **doc} for doc in state().reader.scheduled()]})


@api.get("/taskpaths")
def taskpaths() -> Response:
    return jsonify({"taskpaths": state().reader.task_paths()})


@api.get("/exceptions")
def exceptions() -> Response:
    return jsonify({"exceptions": state().reader.exceptions()})


@api.get("/actions")
def actions() -> Response:
    before_text = request.args.get("before", "")
    before = object_id(before_text, "before") if before_text else None
    docs, more = state().reader.actions(before)
    return jsonify({"actions": [{"id": doc.pop("_id"), **doc} for doc in docs], "next": more})


@api.get("/health")
def health() -> tuple[Response, int]:
    connections = state().store.connections
    checks: dict[str, str] = {}
    for name, check in (("redis", connections.check_redis), ("mongodb", connections.check_mongodb)):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    ok = all(value == "ok" for value in checks.values())
    return jsonify({"ok": ok, **checks}), (200 if ok else 503)


@api.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())
