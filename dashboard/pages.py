"""The HTML pages, rendered on the server (Jinja2, autoescaped). A page's live region
(`[data-live]`) is re-rendered alone when requested with the X-Mrq-Partial header: static/app.js
swaps it in every few seconds, so there is one rendering of every value, escaped once."""

from __future__ import annotations

import json
import shlex
from datetime import datetime
from typing import Any

from flask import Blueprint, render_template, request, url_for

from mrq.exceptions import JobNotFound
from mrq.job import FINAL_STATUSES, STARTED, to_object_id
from mrq.joblogs import read_job_logs
from mrq.lifecycle.statuses import CANCELLABLE_STATUSES, NOT_REQUEUABLE
from mrq.queue import queue_names_page

from .api import group_id_arg, queue_page_args
from .chart import throughput_chart
from .jobfilter import object_id, parse_job_filter, parse_page
from .queries import EXCEPTIONS_SAMPLE, QUEUE_PAGE, TASK_PATHS_SAMPLE
from .state import state
from .workflows import dependencies, group_of, group_view, member_args

pages = Blueprint("pages", __name__)

def render(template: str, title: str, **context: Any) -> str:
    return render_template(template, title=title, **context)


def job_actions(doc: dict[str, Any]) -> list[str]:
    """The actions that apply to a job in its status (a waiting job can be cancelled, not requeued)."""
    status = doc.get("status")
    found = []
    if status in CANCELLABLE_STATUSES:
        found.append("cancel")
    if status not in NOT_REQUEUABLE:
        found.append("requeue")
    if status == STARTED:
        found.append("abort")
    return found


@pages.get("/")
def overview() -> str:
    after, limit, prefix = queue_page_args(request.args)
    data = state().reader.overview(after, limit, prefix)
    base: dict[str, Any] = {k: v for k, v in (("limit", request.args.get("limit")), ("prefix", prefix)) if v}
    more = url_for("pages.overview", **base, after=data["queues_next"]) if data["queues_next"] else None
    first = url_for("pages.overview", **base) if after else None
    return render("overview.html", "Overview", data=data, chart=throughput_chart(data["throughput"]),
                  queues_more=more, queues_first=first, queues_prefix=prefix)


@pages.get("/jobs")
def jobs() -> str:
    reader = state().reader
    flt = parse_job_filter(request.args, reader.store)
    page = parse_page(request.args)
    found = reader.list_jobs(flt, page)
    names = reader.worker_names([doc.get("worker") for doc in found.jobs])
    base: dict[str, Any] = {k: v for k, v in request.args.items() if k not in ("after", "before") and v}
    links = {
        "newer" if page.sort == "newest" else "older":
            url_for("pages.jobs", **base, before=str(found.prev)) if found.prev else None,
        "older" if page.sort == "newest" else "newer":
            url_for("pages.jobs", **base, after=str(found.next)) if found.next else None,
    }
    return render("jobs.html", "Jobs", found=found, flt=flt, page=page, count=reader.count_jobs(flt),
                  worker_names=names, links=links, queues=queue_names_page(reader.store, limit=QUEUE_PAGE),
                  args=request.args, actions_for=job_actions, filter_json=json.dumps(flt.values), group_of=group_of)


@pages.get("/jobs/<job_id>")
def job(job_id: str) -> str:
    reader = state().reader
    oid = to_object_id(job_id)
    doc = reader.job(oid)
    if doc is None:
        raise JobNotFound(oid)
    history = doc.get("traceback_history")
    doc["traceback_history"] = [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []
    names = reader.worker_names([doc.get("worker"), *[h.get("worker") for h in doc["traceback_history"]]])
    logs_text, logs_last, logs_stored = "", None, reader.store.logs is not None
    if reader.store.logs is not None and not request.headers.get("X-Mrq-Partial"):
        logs_text, logs_last = read_job_logs(reader.store.logs, oid)
    params_json = json.dumps(doc.get("params") or {}, default=str, ensure_ascii=False)
    command = f"mrq-run {shlex.quote(str(doc.get('path')))} {shlex.quote(params_json)}"
    queued, started = doc.get("datequeued"), doc.get("datestarted")
    waited = (started - queued).total_seconds() if isinstance(queued, datetime) and isinstance(started, datetime) \
        else None
    return render("job.html", f"Job {oid}", job=doc, worker_names=names, logs_text=logs_text, logs_last=logs_last,
                  logs_stored=logs_stored, actions=job_actions(doc), final=doc.get("status") in FINAL_STATUSES,
                  command=command, waited=waited, deps=dependencies(reader.store, doc))


@pages.get("/groups/<group_id>")
def group(group_id: str) -> str:
    reader = state().reader
    oid = group_id_arg(group_id)
    flt, page = member_args(request.args, oid)
    view = group_view(reader, oid, flt, page)
    members = view.members
    names = reader.worker_names([doc.get("worker") for doc in members.jobs])
    base: dict[str, Any] = {k: v for k, v in request.args.items() if k not in ("after", "before") and v}
    links = {"previous": url_for("pages.group", group_id=str(oid), **base, before=str(members.prev))
             if members.prev else None,
             "next": url_for("pages.group", group_id=str(oid), **base, after=str(members.next))
             if members.next else None}
    return render("group.html", f"Group {oid}", view=view, worker_names=names, links=links, page=page,
                  actions_for=job_actions, group_of=lambda _doc: None)  # no group link on its own page


@pages.get("/workers")
def workers() -> str:
    show_all = request.args.get("all") == "1"
    return render("workers.html", "Workers", workers=state().reader.workers(include_stopped=show_all),
                  show_all=show_all)


@pages.get("/scheduled")
def scheduled() -> str:
    return render("scheduled.html", "Scheduled tasks", entries=state().reader.scheduled())


@pages.get("/taskpaths")
def taskpaths() -> str:
    return render("taskpaths.html", "Task paths", rows=state().reader.task_paths(), sample=TASK_PATHS_SAMPLE)


@pages.get("/exceptions")
def exceptions() -> str:
    return render("exceptions.html", "Exceptions", rows=state().reader.exceptions(), sample=EXCEPTIONS_SAMPLE)


@pages.get("/actions")
def actions() -> str:
    before_text = request.args.get("before", "")
    before = object_id(before_text, "before") if before_text else None
    docs, more = state().reader.actions(before)
    return render("actions.html", "Actions", entries=docs,
                  older=url_for("pages.actions", before=str(more)) if more else None)
