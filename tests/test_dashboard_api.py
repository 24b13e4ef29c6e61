"""The dashboard through Flask's test client: every page and API route, every action and its
audit entry, every kind of bad input, authentication, CSRF, read-only mode, stores going down, and
the number of MongoDB commands a page costs with 100,000 jobs in the store."""

from __future__ import annotations

import base64
import datetime
import re
import subprocess
import sys
import time
from typing import Any

import pymongo
import pymongo.monitoring
import pytest
from bson import ObjectId
from flask import Flask
from flask.testing import FlaskClient

from mrq.config import Settings, load_settings
from mrq.connections import Connections
from mrq.job import ALL_STATUSES, Job, queue_job
from mrq.queue import Queue, paused_queues
from mrq.storage import mongo
from mrq.store import Store
from mrq.testing.stack import MongoTestServer, RedisServer, free_port
from mrq.testing.workers import CommandProcess, wait_until
from mrq_dashboard import create_app
from tests.test_worker import wait_status

TASKS = "tests.tasks.general"
API_ERROR_STATUSES = (400, 401, 403, 404, 409, 503)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def insert_job(store: Store, **fields: Any) -> ObjectId:
    """A job document written directly (as a producer in another language would)."""
    now = utcnow()
    doc = {"_id": ObjectId(), "path": f"{TASKS}.Add", "params": {"a": 1, "b": 2}, "queue": "default",
           "status": "queued", "datequeued": now, "dateupdated": now, "retry_count": 0, **fields}
    store.jobs.insert_one(doc)
    return doc["_id"]  # type: ignore[no-any-return]


def insert_worker(store: Store, name: str, age: float = 1.0, status: str = "wait", **fields: Any) -> ObjectId:
    oid = ObjectId()
    store.workers.insert_one({
        "_id": oid, "name": name, "host": "host-1", "pid": 4242, "queues": ["default"], "status": status,
        "greenlets": {"busy": 1, "total": 4}, "done_jobs": 17, "process": {"rss_mb": 51.5},
        "jobs": [{"id": str(ObjectId()), "path": f"{TASKS}.Sleep", "queue": "default", "elapsed": 3.0}],
        "config": {"report_interval": 5.0}, "datestarted": utcnow(),
        "datereported": utcnow() - datetime.timedelta(seconds=age), **fields,
    })
    return oid


@pytest.fixture
def app(mrq_settings: Settings, store: Store) -> Flask:
    return create_app(mrq_settings, store=store, cache_seconds=0)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """An API client: no cookies, the X-MRQ-Client header on every request."""
    client = app.test_client(use_cookies=False)
    client.environ_base["HTTP_X_MRQ_CLIENT"] = "tests"
    return client


def make_client(mrq_settings: Settings, store: Store, **changes: Any) -> FlaskClient:
    """A test client that acts as an API client (the X-MRQ-Client header on every request)."""
    client = create_app(mrq_settings.replace(**changes), store=store, cache_seconds=0).test_client(use_cookies=False)
    client.environ_base["HTTP_X_MRQ_CLIENT"] = "tests"
    return client


def error_of(response: Any, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.data[:500])
    assert response.is_json, response.data[:200]
    message = response.json["error"]
    assert isinstance(message, str) and message and "\n" not in message
    return message


# --- pages and reads --------------------------------------------------------------------------------


def test_every_page_renders_live_data(client: FlaskClient, store: Store) -> None:
    failed = insert_job(store, status="failed", exceptiontype="ValueError", path=f"{TASKS}.Fail",
                        traceback="Traceback (most recent call last):\nValueError: disk full", totaltime=0.25,
                        datefinished=utcnow())
    insert_job(store, status="success", result={"sum": 3}, totaltime=1.5, datefinished=utcnow())
    queue_job(f"{TASKS}.Add", {"a": 1, "b": 2}, queue="emails")
    insert_worker(store, "worker-alive")
    store.connections.mongodb_jobs[mongo.SCHEDULED_JOBS].insert_one(
        {"hash": "h1", "path": "tasks.reports.Daily", "params": {}, "queue": None, "dailytime": "03:30:00",
         "datelastqueued": utcnow(), "datenextqueued": utcnow() + datetime.timedelta(hours=3), "lastjob": failed})
    expected = {
        "/": ["Workers alive", "emails", "Throughput", "<svg"],
        "/jobs": ["3 jobs match", "emails", f"{TASKS}.Fail", "ValueError"],
        f"/jobs/{failed}": ["ValueError: disk full", "Params", "mrq-run tests.tasks.general.Fail"],
        "/workers": ["worker-alive", "host-1", "alive", "1 / 4", "51.5 MB"],
        "/scheduled": ["tasks.reports.Daily", "at 03:30:00 UTC"],
        "/taskpaths": [f"{TASKS}.Add", f"{TASKS}.Fail", "100.0 %"],
        "/exceptions": ["ValueError", "ValueError: disk full"],
        "/actions": ["No action yet"],
    }
    for url, texts in expected.items():
        response = client.get(url)
        assert response.status_code == 200, (url, response.data[:300])
        assert response.mimetype == "text/html"
        page = response.data.decode()
        for text in texts:
            assert text in page, (url, text)


def test_documents_of_unexpected_shapes_never_break_a_page(client: FlaskClient, store: Store) -> None:
    """Documents written by hand or by a producer in another language may hold anything."""
    odd = insert_job(store, worker={"not": "an id"}, datequeued="yesterday", datestarted=5, progress="half",
                     traceback_history="none", params="not a dict", status="weird", totaltime="long",
                     result=float("nan"), exceptiontype=["list"], traceback=42, path=7, queue=None)
    insert_job(store, status="failed", path={"a": 1}, datefinished="later", traceback=["x"], worker=[1])
    store.workers.insert_one({"_id": ObjectId(), "name": None, "greenlets": "x", "jobs": "y", "process": 3,
                              "datereported": "yesterday", "config": [], "queues": "q", "status": 1})
    store.workers.insert_one({"_id": ObjectId(), "name": "ok", "greenlets": {"busy": "1"}, "jobs": [1, {"id": 2}],
                              "datereported": utcnow(), "config": {"report_interval": "5"}})
    store.connections.mongodb_jobs[mongo.SCHEDULED_JOBS].insert_one({"hash": "odd", "path": 1, "interval": "x"})
    store.connections.mongodb_jobs[mongo.ACTIONS].insert_one({"date": "now", "filter": "x", "action": None})
    for url in ("/", "/jobs", f"/jobs/{odd}", "/workers", "/workers?all=1", "/scheduled", "/taskpaths",
                "/exceptions", "/actions", "/api/overview", "/api/jobs", f"/api/jobs/{odd}", "/api/workers",
                "/api/scheduled", "/api/taskpaths", "/api/exceptions", "/api/actions"):
        assert client.get(url).status_code == 200, url


def test_overview_api_counts_queues_workers_and_throughput(client: FlaskClient, store: Store) -> None:
    queue_job(f"{TASKS}.Add", {"a": 1, "b": 2}, queue="q1")
    queue_job(f"{TASKS}.Add", {"a": 1, "b": 2}, queue="q1")
    insert_job(store, status="failed")
    Queue("q1", store).pause()
    insert_worker(store, "alive-1")
    insert_worker(store, "dead-1", age=600)
    data = client.get("/api/overview").json
    assert data["statuses"]["queued"] == {"value": 2, "capped": False}
    assert data["statuses"]["failed"]["value"] == 1
    queues = {q["name"]: q for q in data["queues"]}
    assert queues["q1"]["size"] == 2 and queues["q1"]["paused"] is True and queues["q1"]["in_rate"] > 0
    assert 0 <= queues["q1"]["oldest_age"] < 60
    assert data["workers"] == {"alive": 1, "dead": 1, "busy": 1, "greenlets": 4}
    assert len(data["throughput"]) == 60 and data["throughput"][-1]["in"] == 2
    assert client.get("/api/queues").json["queues"][0]["name"] == "q1"
    stats = client.get("/api/stats?minutes=5").json["minutes"]
    assert len(stats) == 5 and stats[-1]["in"] == 2
    assert "minutes" in error_of(client.get("/api/stats?minutes=0"), 400)


def test_jobs_filters(client: FlaskClient, store: Store) -> None:
    worker = insert_worker(store, "crawler-7")
    old = insert_job(store, _id=ObjectId.from_datetime(datetime.datetime(2024, 5, 1, 12)), queue="crawl/a.com")
    ids = {
        "failed": insert_job(store, status="failed", exceptiontype="KeyError", path="tasks.io.Fetch",
                             queue="crawl/b.com", worker=worker),
        "timeout": insert_job(store, status="timeout", exceptiontype="TimeoutInterrupt", path="tasks.io.Parse"),
        "success": insert_job(store, status="success", path="tasks.other.Task", worker=worker),
    }

    def listed(query: str) -> set[ObjectId]:
        response = client.get("/api/jobs?" + query)
        assert response.status_code == 200, response.data
        return {ObjectId(job["id"]) for job in response.json["jobs"]}

    assert listed("status=failed") == {ids["failed"]}
    assert listed("status=failed,timeout") == {ids["failed"], ids["timeout"]}
    assert listed("queue=crawl/") == {old, ids["failed"]}
    assert listed("queue=crawl/b.com") == {ids["failed"]}
    assert listed("path=tasks.io.*") == listed("path=tasks.io.") == {ids["failed"], ids["timeout"]}
    assert listed("path=tasks.io.Parse") == {ids["timeout"]}
    assert listed("exceptiontype=KeyError") == {ids["failed"]}
    assert listed(f"worker={worker}") == listed("worker=crawler-7") == {ids["failed"], ids["success"]}
    assert listed("worker=nobody") == set()
    assert listed(f"id={ids['timeout']}") == {ids["timeout"]}
    assert listed("to=2024-05-01") == {old}
    assert listed("from=2024-05-01T12:00&to=2024-05-01T12:00:01Z") == {old}
    assert old not in listed("from=2024-05-02")
    data = client.get("/api/jobs?status=failed").json
    assert data["count"] == {"value": 1, "capped": False} and data["filter"] == {"status": "failed"}
    assert data["jobs"][0]["error"] == {"type": "KeyError", "message": None}  # lists leave tracebacks out
    page = client.get("/jobs?path=tasks.io.*").data.decode()
    assert "2 jobs match" in page and "tasks.io.Fetch" in page and "tasks.other.Task" not in page


def test_keyset_pagination_both_ways_and_in_both_orders(client: FlaskClient, store: Store) -> None:
    ids = [insert_job(store, _id=ObjectId.from_datetime(utcnow() - datetime.timedelta(seconds=100 - i)))
           for i in range(25)]
    newest_first = list(reversed(ids))

    def page(query: str) -> tuple[list[ObjectId], str | None, str | None]:
        data = client.get("/api/jobs?limit=10&" + query).json
        return [ObjectId(j["id"]) for j in data["jobs"]], data["next"], data["prev"]

    first, after, prev = page("")
    assert first == newest_first[:10] and prev is None
    second, after2, prev2 = page(f"after={after}")
    assert second == newest_first[10:20] and prev2 == str(second[0])
    third, after3, _ = page(f"after={after2}")
    assert third == newest_first[20:] and after3 is None
    back, _, _ = page(f"before={prev2}")
    assert back == first
    oldest, next_oldest, _ = page("sort=oldest")
    assert oldest == ids[:10]
    assert page(f"sort=oldest&after={next_oldest}")[0] == ids[10:20]
    # a cursor past the end: an empty page, never an error
    assert page("after=000000000000000000000000") == ([], None, None)
    assert page("sort=oldest&after=ffffffffffffffffffffffff")[0] == []
    html = client.get(f"/jobs?limit=10&after={after}").data.decode()
    assert f"before={second[0]}" in html and f"after={second[-1]}" in html


@pytest.mark.parametrize(("query", "reason"), [
    ("id=xyz", "id: 'xyz' is not an id"),
    ("status=nope", "status: unknown status 'nope'"),
    ("path=a%20b", "path: 'a b' is not a task path"),
    ("queue=bad%20queue", "queue: queue name 'bad queue' contains"),
    ("exceptiontype=%3Cscript%3E", "exceptiontype: '<script>' is not an exception class name"),
    ("from=yesterday", "from: 'yesterday' is not a date"),
    ("from=2024-05-03&to=2024-05-01", "from: the start of the date range is after its end"),
    ("from=99999-01-01", "from: '99999-01-01' is not a date"),
    ("sort=random", "sort: expected newest or oldest"),
    ("limit=0", "limit: expected a number from 1 to 200"),
    ("limit=99999999999999999999999", "limit: expected a number from 1 to 200"),
    ("limit=abc", "limit: expected a number"),
    ("after=123", "after: '123' is not an id"),
    ("after=6b06e6bd7a2271bde4af03a0&before=6b06e6bd7a2271bde4af03a0", "after and before cannot be combined"),
])
def test_malformed_filters_are_400_with_the_reason(client: FlaskClient, query: str, reason: str) -> None:
    assert reason in error_of(client.get("/api/jobs?" + query), 400)
    page = client.get("/jobs?" + query)
    assert page.status_code == 400 and page.mimetype == "text/html"
    assert reason.replace("'", "&#39;").replace("<", "&lt;").replace(">", "&gt;") in page.data.decode()


def test_job_detail_logs_and_unknown_ids(client: FlaskClient, store: Store, worker_factory: Any) -> None:
    worker_factory()
    job_id = queue_job(f"{TASKS}.Logs", {"lines": ["first line", "second line"]})
    wait_status(job_id, "success")
    logs = wait_until(lambda: client.get(f"/api/jobs/{job_id}/logs").json if "second line" in
                      client.get(f"/api/jobs/{job_id}/logs").json["text"] else None, message="logs stored")
    assert "first line" in logs["text"] and logs["stored"] is True
    assert client.get(f"/api/jobs/{job_id}/logs?after={logs['last']}").json["text"] == ""
    assert "after: 'zz' is not an id" in error_of(client.get(f"/api/jobs/{job_id}/logs?after=zz"), 400)
    data = client.get(f"/api/jobs/{job_id}").json
    assert data["id"] == str(job_id) and data["status"] == "success" and data["result"] == 2
    assert data["error"] is None and data["worker"]
    page = client.get(f"/jobs/{job_id}").data.decode()
    assert "first line" in page and "success" in page
    missing = ObjectId()
    for url in (f"/api/jobs/{missing}", "/api/jobs/not-an-id", f"/api/jobs/{missing}/logs"):
        assert "no job with id" in error_of(client.get(url), 404)
    for action in ("cancel", "requeue", "abort"):
        assert "no job with id" in error_of(client.post(f"/api/jobs/{missing}/{action}"), 404)
    page = client.get(f"/jobs/{missing}")
    assert page.status_code == 404 and b"no job with id" in page.data and b"Back to the jobs" in page.data
    assert "not found: /api/nothing" in error_of(client.get("/api/nothing"), 404)
    assert client.get("/nothing").status_code == 404
    assert "method GET not allowed" in error_of(client.get(f"/api/jobs/{job_id}/cancel"), 405)


# --- actions -------------------------------------------------------------------------------------------


def audit(store: Store) -> list[dict[str, Any]]:
    return list(store.connections.mongodb_jobs[mongo.ACTIONS].find({}).sort("_id", 1))


def test_cancel_requeue_and_the_audit_log(client: FlaskClient, store: Store) -> None:
    job_id = queue_job(f"{TASKS}.Add", {"a": 1, "b": 2}, queue="held")
    response = client.post(f"/api/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json == {"id": str(job_id), "status": "cancel"}
    assert Job(job_id, store).fetch().status == "cancel"
    assert Queue("held", store).size() == 0
    assert "only a job that has not started" in error_of(client.post(f"/api/jobs/{job_id}/cancel"), 409)
    assert client.post(f"/api/jobs/{job_id}/requeue").json["status"] == "queued"
    assert Job(job_id, store).fetch().status == "queued" and Queue("held", store).size() == 1
    assert client.post(f"/api/jobs/{job_id}/requeue").json["status"] == "queued"  # queued: to the back (MRQ)
    assert Queue("held", store).size() == 1  # once
    assert "nothing to abort" in error_of(client.post(f"/api/jobs/{job_id}/abort"), 409)
    other = client.post(f"/api/jobs/{job_id}/cancel")
    assert other.status_code == 200
    moved = client.post(f"/api/jobs/{job_id}/requeue", json={"queue": "elsewhere"})
    assert moved.status_code == 200 and Job(job_id, store).fetch().queue == "elsewhere"
    assert "queue: expected a string" in error_of(client.post(f"/api/jobs/{job_id}/requeue", json={"queue": 3}), 400)
    assert "queue name" in error_of(client.post(f"/api/jobs/{job_id}/requeue", json={"queue": "a b"}), 400)
    entries = audit(store)
    assert [e["action"] for e in entries] == ["cancel", "requeue", "requeue", "cancel", "requeue"]
    assert all(e["who"] == "anonymous" and e["addr"] == "127.0.0.1" and e["target"] == str(job_id) for e in entries)
    assert entries[-1]["detail"] == "queue elsewhere"
    listed = client.get("/api/actions").json
    assert [a["action"] for a in listed["actions"]] == ["requeue", "cancel", "requeue", "requeue", "cancel"]
    assert "requeue" in client.get("/actions").data.decode()


def test_abort_a_running_job(client: FlaskClient, store: Store, worker_factory: Any) -> None:
    worker_factory()
    job_id = queue_job(f"{TASKS}.Sleep", {"seconds": 30})
    wait_status(job_id, "started")
    response = client.post(f"/api/jobs/{job_id}/abort")
    assert response.status_code == 200 and response.json["requested"] is True
    assert wait_status(job_id, "abort", timeout=10)["status"] == "abort"
    assert audit(store)[-1]["action"] == "abort"


def test_pause_and_resume_a_queue(client: FlaskClient, store: Store) -> None:
    assert client.post("/api/queues/crawl/example.com/pause").json == {"queue": "crawl/example.com", "paused": True}
    assert paused_queues(store) == {"crawl/example.com"}
    assert client.post("/api/queues/crawl/example.com/resume").json["paused"] is False
    assert paused_queues(store) == set()
    assert "queue name" in error_of(client.post("/api/queues/bad%20name/pause"), 400)
    assert [(e["action"], e["target"]) for e in audit(store)] == [("pause", "crawl/example.com"),
                                                                  ("resume", "crawl/example.com")]


def test_bulk_actions_preview_then_apply(client: FlaskClient, store: Store) -> None:
    queued = [queue_job(f"{TASKS}.Add", {"a": i, "b": 1}, queue="bulk") for i in range(5)]
    failed = [insert_job(store, status="failed", queue="bulk", exceptiontype="ValueError") for _ in range(3)]
    insert_job(store, status="failed", queue="other")

    def bulk(action: str, body: dict[str, Any]) -> Any:
        return client.post(f"/api/bulk/{action}", json=body)

    preview = bulk("cancel", {"filter": {"queue": "bulk"}, "dry_run": True}).json
    assert preview["count"] == {"value": 5, "capped": False} and preview["needs_confirm_all"] is False
    assert Job(queued[0], store).fetch().status == "queued"  # a preview changes nothing
    done = bulk("cancel", {"filter": {"queue": "bulk"}}).json
    assert done["matched"] == 5 and done["changed"] == 5
    assert all(Job(i, store).fetch().status == "cancel" for i in queued) and Queue("bulk", store).size() == 0
    assert bulk("requeue", {"filter": {"queue": "bulk", "status": "failed"}, "dry_run": True}).json["count"][
        "value"] == 3
    done = bulk("requeue", {"filter": {"queue": "bulk", "status": "failed"}}).json
    assert done["changed"] == 3 and Queue("bulk", store).size() == 3
    assert all(Job(i, store).fetch().status == "queued" for i in failed)
    # a filter whose statuses the action does not apply to touches nothing
    assert bulk("cancel", {"filter": {"status": "success"}}).json["changed"] == 0
    # no filter: counted, refused unless confirmed
    preview = bulk("requeue", {"filter": {}, "dry_run": True}).json
    assert preview["needs_confirm_all"] is True and preview["count"]["value"] == 6  # 5 cancelled + 1 failed
    assert "without a filter would touch every job" in error_of(bulk("requeue", {"filter": {}}), 400)
    assert "without a filter" in error_of(bulk("requeue", {}), 400)
    assert bulk("requeue", {"filter": {}, "confirm_all": True}).json["changed"] == 6
    assert "unknown bulk action 'delete'" in error_of(bulk("delete", {"filter": {"queue": "bulk"}}), 400)
    assert "unknown field 'colour'" in error_of(bulk("cancel", {"filter": {"colour": "red"}}), 400)
    assert "status: unknown status" in error_of(bulk("cancel", {"filter": {"status": "gone"}}), 400)
    assert "filter: expected a JSON object" in error_of(bulk("cancel", {"filter": []}), 400)
    entries = [e for e in audit(store) if e["action"].startswith("bulk")]
    assert [(e["action"], e["filter"], e["count"]) for e in entries] == [
        ("bulk cancel", {"queue": "bulk"}, 5), ("bulk requeue", {"queue": "bulk", "status": "failed"}, 3),
        ("bulk cancel", {"status": "success"}, 0), ("bulk requeue", {}, 6)]
    assert "confirmed without a filter" in entries[-1]["detail"]


def test_enqueue_and_poll_over_http(mrq_settings: Settings, store: Store, worker_factory: Any) -> None:
    closed = make_client(mrq_settings, store)
    assert "enqueueing by HTTP is off" in error_of(closed.post("/api/jobs", json={"path": f"{TASKS}.Add"}), 403)
    client = make_client(mrq_settings, store, dashboard_enqueue_paths=[f"{TASKS}.Add", "tests.tasks.dashboard.*"])
    response = client.post("/api/jobs", json={"path": f"{TASKS}.Add", "params": {"a": 40, "b": 2}})
    assert response.status_code == 201
    job_id = response.json["id"]
    assert response.headers["Location"] == f"/api/jobs/{job_id}"
    assert client.get(f"/api/jobs/{job_id}").json["status"] == "queued"
    failing = client.post("/api/jobs", json={"path": "tests.tasks.dashboard.FailWith", "queue": "default",
                                             "params": {"type": "KeyError", "message": "no such user"}})
    assert failing.status_code == 201
    worker_factory()
    wait_status(job_id, "success")
    data = client.get(f"/api/jobs/{job_id}").json
    assert data["status"] == "success" and data["result"] == 42 and data["error"] is None
    wait_status(failing.json["id"], "failed")
    assert client.get(f"/api/jobs/{failing.json['id']}").json["error"] == {"type": "KeyError",
                                                                            "message": "KeyError: 'no such user'"}

    def enqueue(body: Any, **kwargs: Any) -> Any:
        return client.post("/api/jobs", json=body, **kwargs) if "data" not in kwargs else \
            client.post("/api/jobs", **kwargs)

    assert "may not be enqueued by HTTP" in error_of(enqueue({"path": f"{TASKS}.Fail"}), 403)
    assert "may not be enqueued" in error_of(enqueue({"path": "tests.tasks.dashboardX.Task"}), 403)
    assert "invalid JSON" in error_of(enqueue(None, data="{nope", content_type="application/json"), 400)
    deep = '{"path": "x", "params": ' + '{"a": ' * 100_000 + "1" + "}" * 100_001
    assert "nested too deeply" in error_of(enqueue(None, data=deep, content_type="application/json"), 400)
    deep_params: Any = 1
    for _ in range(200):
        deep_params = {"a": deep_params}
    assert "nest more than 179 levels" in error_of(enqueue({"path": f"{TASKS}.Add", "params": deep_params}), 400)
    assert "expected a JSON object body" in error_of(enqueue(None, data="path=x"), 400)
    assert "expected a JSON object, got list" in error_of(enqueue([1, 2]), 400)
    assert "path: expected" in error_of(enqueue({"params": {}}), 400)
    assert "params: expected a JSON object" in error_of(enqueue({"path": f"{TASKS}.Add", "params": [1]}), 400)
    assert "queue: expected a string" in error_of(enqueue({"path": f"{TASKS}.Add", "queue": 5}), 400)
    assert "queue name" in error_of(enqueue({"path": f"{TASKS}.Add", "queue": "no spaces"}), 400)
    assert "request body over" in error_of(enqueue({"path": f"{TASKS}.Add", "params": {"x": "a" * 17_000_000}}),
                                           413)
    assert audit(store) == []  # producers' enqueues are not audited


# --- security -------------------------------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_and_bearer_token(mrq_settings: Settings, store: Store) -> None:
    client = make_client(mrq_settings, store, dashboard_auth="admin:s3cr:et", dashboard_token="t0ken-t0ken")
    for url in ("/", "/api/overview", "/static/app.js", "/api/openapi.json"):
        response = client.get(url)
        response.close()
        assert response.status_code == 401, url
        assert response.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert "authentication required" in error_of(client.get("/api/jobs", headers=basic("admin", "wrong")), 401)
    assert client.get("/api/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/jobs", headers={"Authorization": "Basic %%%"}).status_code == 401
    assert client.get("/", headers=basic("admin", "s3cr:et")).status_code == 200
    with client.get("/static/app.js", headers=basic("admin", "s3cr:et")) as response:
        assert response.status_code == 200
    assert client.get("/api/jobs", headers={"Authorization": "Bearer t0ken-t0ken"}).status_code == 200
    job_id = queue_job(f"{TASKS}.Add", {"a": 1, "b": 1})
    assert client.post(f"/api/jobs/{job_id}/cancel", headers=basic("admin", "s3cr:et")).status_code == 200
    assert client.post(f"/api/jobs/{job_id}/requeue", headers={"Authorization": "Bearer t0ken-t0ken"}).status_code \
        == 200
    assert [e["who"] for e in audit(store)] == ["admin", "token"]
    token_only = make_client(mrq_settings, store, dashboard_token="t0ken-t0ken")
    assert token_only.get("/").headers["WWW-Authenticate"].startswith("Bearer")


def test_readonly_refuses_every_action(mrq_settings: Settings, store: Store) -> None:
    client = make_client(mrq_settings, store, dashboard_readonly=True, dashboard_enqueue_paths=["tests"])
    job_id = queue_job(f"{TASKS}.Add", {"a": 1, "b": 1})
    for url, body in ((f"/api/jobs/{job_id}/cancel", None), (f"/api/jobs/{job_id}/requeue", None),
                      (f"/api/jobs/{job_id}/abort", None), ("/api/queues/default/pause", None),
                      ("/api/queues/default/resume", None), ("/api/bulk/cancel", {"filter": {"queue": "default"}}),
                      ("/api/jobs", {"path": f"{TASKS}.Add"})):
        assert "read-only" in error_of(client.post(url, json=body), 403), url
    assert Job(job_id, store).fetch().status == "queued" and audit(store) == []
    page = client.get("/jobs").data.decode()
    assert "read-only" in page and "data-action" not in page and 'id="bulk"' not in page
    assert client.get("/api/jobs").status_code == 200


def test_csrf_for_browser_requests(app: Flask, store: Store) -> None:
    browser = app.test_client()  # keeps cookies, like a browser
    job_id = queue_job(f"{TASKS}.Add", {"a": 1, "b": 1})
    page = browser.get(f"/jobs/{job_id}")
    cookie = page.headers["Set-Cookie"]
    assert "mrq_csrf=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    token = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.data.decode())[1]  # type: ignore[index]
    assert browser.get_cookie("mrq_csrf").value == token  # type: ignore[union-attr]
    url = f"/api/jobs/{job_id}/cancel"
    assert "CSRF token" in error_of(browser.post(url), 403)
    assert "CSRF token" in error_of(browser.post(url, headers={"X-CSRF-Token": "x" * 43}), 403)
    same_origin = {"Origin": "http://localhost", "X-CSRF-Token": token}
    assert "another origin" in error_of(browser.post(url, headers={**same_origin, "Origin": "http://evil.example"}),
                                        403)
    assert "cross-site" in error_of(browser.post(url, headers={**same_origin, "Sec-Fetch-Site": "cross-site"}), 403)
    no_cookie = app.test_client(use_cookies=False)
    assert "CSRF token" in error_of(no_cookie.post(url, headers={"Origin": "http://localhost"}), 403)
    # Nothing at all (no Origin, no cookie, no token: a form post some clients make) is refused too.
    assert "X-MRQ-Client" in error_of(no_cookie.post(url), 403)
    assert "X-MRQ-Client" in error_of(no_cookie.post(url, data={"x": "1"}), 403)
    # A browser holding the session cookie must send the token, even with the API header.
    assert "CSRF token" in error_of(browser.post(url, headers={"X-MRQ-Client": "x"}), 403)
    # An API client from another origin is refused whatever it sends.
    assert "another origin" in error_of(no_cookie.post(url, headers={"X-MRQ-Client": "x",
                                                                     "Origin": "http://evil.example"}), 403)
    assert Job(job_id, store).fetch().status == "queued"
    assert browser.post(url, headers=same_origin).status_code == 200
    assert Job(job_id, store).fetch().status == "cancel"


def test_security_headers_and_dns_rebinding(mrq_settings: Settings, store: Store, client: FlaskClient) -> None:
    for url in ("/", "/api/overview", "/static/app.css"):
        with client.get(url) as response:
            headers = response.headers
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/api/overview").headers["Cache-Control"] == "no-store"
    assert "unexpected Host" in error_of(client.get("/api/overview", headers={"Host": "evil.example:5555"}), 400)
    assert client.get("/api/overview", headers={"Host": "127.0.0.1:5555"}).status_code == 200
    assert client.get("/api/overview", headers={"Host": "[::1]:5555"}).status_code == 200
    public = make_client(mrq_settings, store, dashboard_bind="0.0.0.0")
    assert public.get("/api/overview", headers={"Host": "queue.example.com"}).status_code == 200
    proxied = make_client(mrq_settings, store, dashboard_token="t0ken-t0ken")  # loopback, behind a proxy
    assert proxied.get("/api/overview", headers={"Host": "queue.example.com",
                                                 "Authorization": "Bearer t0ken-t0ken"}).status_code == 200
    page = client.get("/").data.decode()
    assert "<script src=\"/static/app.js\" defer></script>" in page
    assert len(re.findall(r"<script", page)) == 1 and " style=" not in page and " on" not in page.replace(
        " onerror", "")


def test_partial_render_is_the_live_region_only(client: FlaskClient) -> None:
    response = client.get("/", headers={"X-Mrq-Partial": "1"})
    body = response.data.decode().strip()
    assert body.startswith("<div data-live") and "<html" not in body and "Workers alive" in body


def test_openapi_documents_every_api_route(app: Flask, client: FlaskClient) -> None:
    document = client.get("/api/openapi.json").json
    assert document["openapi"].startswith("3.1")
    served = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:  # type: ignore[operator]
            served.add((method.lower(), path))
    documented = {(method, path) for path, ops in document["paths"].items() for method in ops}
    assert served == documented
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            assert op["summary"] and "503" in op["responses"], (method, path)
            params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert params == set(re.findall(r"{([a-z_]+)}", path)), (method, path)


def test_task_paths_exceptions_and_workers(client: FlaskClient, store: Store) -> None:
    for seconds in range(1, 21):  # with the failures' 1 s: p95 (nearest rank, 24th of 25) is 19 s
        insert_job(store, path="tasks.a.Slow", status="success", totaltime=float(seconds))
    for _ in range(5):
        insert_job(store, path="tasks.a.Slow", status="failed", totaltime=1.0, exceptiontype="IOError",
                   traceback="Traceback...\nOSError: disk full")
    insert_job(store, path="tasks.a.Slow", status="started")
    insert_job(store, path="tasks.b.Other", status="timeout", exceptiontype="TimeoutInterrupt",
               traceback="Traceback...\nTimeoutInterrupt: took 60s")
    rows = {r["path"]: r for r in client.get("/api/taskpaths").json["taskpaths"]}
    slow = rows["tasks.a.Slow"]
    assert slow["count"] == 26 and slow["finished"] == 25 and slow["running"] == 1
    assert slow["p95"] == 19.0 and slow["failure_rate"] == pytest.approx(5 / 25)
    assert slow["avg"] == pytest.approx((210 + 5) / 25)
    groups = client.get("/api/exceptions").json["exceptions"]
    assert [(g["exceptiontype"], g["message"], g["count"]) for g in groups] == [
        ("IOError", "OSError: disk full", 5), ("TimeoutInterrupt", "TimeoutInterrupt: took 60s", 1)]
    assert groups[0]["paths"] == ["tasks.a.Slow"] and groups[0]["statuses"] == "failed"
    assert groups[0]["first"] <= groups[0]["last"]
    page = client.get("/exceptions").data.decode()
    assert "/jobs?exceptiontype=IOError&amp;status=failed" in page
    alive = insert_worker(store, "w-alive", age=2)
    dead = insert_worker(store, "w-dead", age=60)
    insert_worker(store, "w-stopped-now", status="stop", age=5)
    insert_worker(store, "w-stopped-long-ago", status="stop", age=7200)
    store.redis.zadd(store.keys.workers, {str(alive): time.time() + 10})
    states = {w["name"]: w["state"] for w in client.get("/api/workers").json["workers"]}
    assert states == {"w-alive": "alive", "w-dead": "dead", "w-stopped-now": "stopped"}
    assert "w-stopped-long-ago" in {w["name"] for w in client.get("/api/workers?all=1").json["workers"]}
    workers_page = client.get("/workers").data.decode()
    assert "state-dead" in workers_page and str(dead) in workers_page and "left" in workers_page
    scheduled = client.get("/api/scheduled").json
    assert scheduled == {"scheduled": []}
    assert client.get("/api/health").json == {"ok": True, "redis": "ok", "mongodb": "ok"}


def test_health_and_pages_while_stores_are_down_then_back(tmp_path: Any) -> None:
    redis_server, mongo_server = RedisServer(), MongoTestServer()
    stores: list[Store] = []
    redis_server.start()
    mongo_server.start()
    try:
        settings, _ = load_settings([], env={}, default_file=False, overrides={
            "redis": redis_server.url, "mongodb_jobs": mongo_server.uri + "/down_test",
            "redis_timeout": 1.0, "mongodb_timeout": 1.0})
        app = create_app(settings, cache_seconds=0)
        stores.append(app.extensions["mrq"].store)
        client = app.test_client(use_cookies=False)
        client.environ_base["HTTP_X_MRQ_CLIENT"] = "tests"
        assert client.get("/").status_code == 200
        redis_server.stop()
        page = client.get("/")
        assert page.status_code == 503 and b'class="banner"' in page.data and b"Redis" in page.data
        assert "Redis" in error_of(client.get("/api/overview"), 503)
        health = client.get("/api/health")
        assert health.status_code == 503 and health.json["mongodb"] == "ok" and "Redis" in health.json["redis"]
        redis_server.start()
        assert wait_until(lambda: client.get("/").status_code == 200, timeout=10)
        mongo_server.stop()
        page = client.get("/jobs")
        assert page.status_code == 503 and b"MongoDB is unreachable" in page.data
        assert "MongoDB" in error_of(client.get("/api/jobs"), 503)
        assert "MongoDB" in error_of(client.post(f"/api/jobs/{ObjectId()}/cancel"), 503)
        partial = client.get("/jobs", headers={"X-Mrq-Partial": "1"})
        assert partial.status_code == 503 and partial.data.strip().startswith(b"<div data-live")
        mongo_server.start()
        assert wait_until(lambda: client.get("/jobs").status_code == 200, timeout=15)
    finally:
        for opened in stores:
            opened.close()
        redis_server.close()
        mongo_server.close()


# --- cost with 100,000 jobs ----------------------------------------------------------------------------------


class CommandLog(pymongo.monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []

    def started(self, event: pymongo.monitoring.CommandStartedEvent) -> None:
        if event.command_name not in ("hello", "isMaster", "ping", "endSessions"):
            self.commands.append({"name": event.command_name, **dict(event.command)})

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


class MonitoredConnections(Connections):
    """The app's own connections, with a command listener on its MongoDB client."""

    def __init__(self, settings: Settings, listener: CommandLog) -> None:
        super().__init__(settings)
        self.listener = listener

    def _mongo_client(self, uri: str) -> pymongo.MongoClient:
        if uri not in self._mongo_clients:
            self._mongo_clients[uri] = pymongo.MongoClient(uri, event_listeners=[self.listener], connect=False,
                                                           serverSelectionTimeoutMS=5000)
        return self._mongo_clients[uri]


def scans_whole_collection(command: dict[str, Any]) -> bool:
    """A command that reads every job: an unfiltered count/aggregate, a find without filter and limit."""
    name = command["name"]
    if command.get(name) != mongo.JOBS:
        return False
    if name == "count":
        return not command.get("query")
    if name == "aggregate":
        first = command["pipeline"][0] if command["pipeline"] else {}
        return not first.get("$match")
    if name == "find":
        return not command.get("filter") and not command.get("limit")
    return name == "distinct"


def test_pages_cost_a_bounded_number_of_commands_with_100k_jobs(mrq_settings: Settings, store: Store,
                                                                request: pytest.FixtureRequest) -> None:
    statuses = ["success"] * 6 + ["failed", "queued", "started", "cancel"]
    base = ObjectId.from_datetime(utcnow() - datetime.timedelta(days=1)).generation_time
    for start in range(0, 100_000, 10_000):
        store.jobs.insert_many([
            {"_id": ObjectId.from_datetime(base + datetime.timedelta(seconds=i)), "path": f"tasks.t{i % 7}.Run",
             "queue": f"q{i % 3}", "status": statuses[i % 10], "params": {"i": i}, "retry_count": 0,
             "exceptiontype": "ValueError" if statuses[i % 10] == "failed" else None}
            for i in range(start, start + 10_000)], ordered=False)
    listener = CommandLog()
    monitored = Store(mrq_settings, MonitoredConnections(mrq_settings, listener))
    request.addfinalizer(monitored.close)
    app = create_app(mrq_settings, store=monitored)
    client = app.test_client(use_cookies=False)

    def cost(url: str) -> list[dict[str, Any]]:
        listener.commands.clear()
        response = client.get(url)
        assert response.status_code == 200, response.data[:300]
        return list(listener.commands)

    overview = cost("/")
    assert len(overview) <= 14, [c["name"] for c in overview]  # 12 bounded status counts + worker reports
    assert not [c for c in overview if scans_whole_collection(c)]
    assert all(c["pipeline"][1] == {"$limit": 100_000} for c in overview if c["name"] == "aggregate")
    assert len(cost("/")) <= 1  # the counts come from the cache for a few seconds
    jobs = cost("/jobs?queue=q1&status=failed")
    assert [c["name"] for c in jobs] == ["find", "aggregate"]
    assert jobs[0]["limit"] == 51 and jobs[0]["sort"] == {"_id": -1}
    assert not [c for c in jobs if scans_whole_collection(c)]
    assert b"3,333 jobs match" in client.get("/jobs?queue=q1&status=failed").data
    assert len(cost("/jobs?queue=q1&status=failed")) == 1  # the count is cached
    unfiltered = cost("/jobs?sort=oldest")
    assert [c["name"] for c in unfiltered] == ["find"]  # total = the cached per-status counts
    assert unfiltered[0]["limit"] == 51
    listing = cost("/api/jobs?path=tasks.t3.Run&limit=10")
    assert not [c for c in listing if scans_whole_collection(c)] and listing[0]["limit"] == 11
    assert listing[0]["filter"]["status"] == {"$in": list(ALL_STATUSES)}  # read per status, newest first


# --- the command line ---------------------------------------------------------------------------------


class DashboardProcess(CommandProcess):
    module = "mrq_dashboard.cli"


def test_mrq_dashboard_serves_warns_and_stops(mrq_settings: Settings) -> None:
    help_text = subprocess.run([sys.executable, "-m", "mrq_dashboard.cli", "--help"], capture_output=True, text=True,
                               timeout=60)
    assert help_text.returncode == 0
    for flag in ("--port", "--bind", "--dashboard-auth", "--dashboard-token", "--dashboard-readonly",
                 "--dashboard-enqueue-paths", "--redis", "--mongodb-jobs", "--config"):
        assert flag in help_text.stdout
    bad = DashboardProcess(mrq_settings, ["--dashboard_auth", "nocolon"])
    bad.start()
    assert bad.wait(30) == 2 and "dashboard_auth: expected 'user:password'" in bad.output()
    bad.close()
    port = free_port()
    server = DashboardProcess(mrq_settings, ["--bind", "0.0.0.0", "--port", str(port)])
    try:
        server.start(ready_text="mrq-dashboard: listening on", timeout=30)
        out = server.output()
        assert "WARNING: listening on 0.0.0.0" in out and "WITHOUT authentication" in out
        assert f"http://0.0.0.0:{port}/" in out
        assert "MonkeyPatchWarning" not in out  # gevent patches before anything imports ssl or socket
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=10) as response:
            assert response.status == 200 and b'"ok":true' in response.read()
        busy = DashboardProcess(mrq_settings, ["--port", str(port)])
        busy.start()
        assert busy.wait(30) == 2 and f"cannot listen on 127.0.0.1:{port}" in busy.output()
        busy.close()
        assert server.stop() == 0 and "mrq-dashboard: stopped" in server.output()
    finally:
        server.close()


def test_dashboard_metrics_endpoint(store: Any, mrq_settings: Any) -> None:
    from mrq.job import queue_jobs
    from mrq_dashboard import create_app

    queue_jobs("tests.tasks.general.Add", [{"a": 1, "b": 1}] * 3, queue="metered")
    app = create_app(mrq_settings, store=store, cache_seconds=0)
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert 'mrq_queue_size{kind="regular",queue="metered"} 3.0' in text
    assert 'mrq_jobs{status="queued"} 3.0' in text
    assert 'mrq_up{store="redis"} 1.0' in text and 'mrq_up{store="mongodb"} 1.0' in text
