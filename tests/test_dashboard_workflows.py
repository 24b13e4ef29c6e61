"""Workflows in the dashboard, through Flask's test client on the real stores: a job's page shows
what it waits for and what waits for it (100 of each at most, then "and N more"), a group's page
and API (progress, callback, members paged by keyset), cancelling a group through the action
machinery (read-only mode, CSRF, authentication, the audit log), bad ids, waiting jobs in the
lists, the overview and the bulk actions, and the number of MongoDB commands these pages cost."""

from __future__ import annotations

import re
from typing import Any

import pytest
from bson import ObjectId
from flask.testing import FlaskClient

from mrq.config import Settings
from mrq.job import Job, queue_job, queue_jobs
from mrq.queue import Queue
from mrq.store import Store
from mrq.workflow import Group, group
from mrq_dashboard import create_app
from tests.test_dashboard_api import CommandLog, MonitoredConnections, audit, error_of, insert_job, make_client
from tests.test_dashboard_scale import check_commands

SQUARE = "tests.tasks.workflow.Square"
TOTAL = "tests.tasks.workflow.Total"
AUTHENTICATION = ("saslStart", "saslContinue", "authenticate")


@pytest.fixture
def client(mrq_settings: Settings, store: Store) -> FlaskClient:
    return make_client(mrq_settings, store)


def statuses(store: Store, ids: list[ObjectId]) -> list[str]:
    found = {doc["_id"]: doc["status"] for doc in store.jobs.find({"_id": {"$in": ids}}, {"status": 1})}
    return [found[i] for i in ids]


def section(page: str, element_id: str) -> str:
    """The HTML of the page's <section id=...>."""
    start = page.index(f'<section id="{element_id}">')
    return page[start:page.index("</section>", start)]


class Monitored:
    """A dashboard on the test's stores whose MongoDB commands are counted."""

    def __init__(self, settings: Settings, request: pytest.FixtureRequest) -> None:
        self.listener = CommandLog()
        store = Store(settings, MonitoredConnections(settings, self.listener))
        request.addfinalizer(store.close)
        self.client = create_app(settings, store=store, cache_seconds=0).test_client(use_cookies=False)

    def cost(self, url: str) -> tuple[list[dict[str, Any]], Any]:
        self.listener.commands.clear()
        response = self.client.get(url)
        assert response.status_code == 200, (url, response.data[:300])
        # (in strict mode, a new connection authenticates first: not a command of the page)
        return [c for c in self.listener.commands if c["name"] not in AUTHENTICATION], response


def dependency_reads(commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The finds of a job's dependencies or dependents: by `_id $in`."""
    return [c for c in commands if c["name"] == "find" and isinstance(c.get("filter", {}).get("_id"), dict)
            and "$in" in c["filter"]["_id"]]


# --- a job's dependencies and dependents ------------------------------------------------------------


def test_a_job_page_shows_what_it_waits_for_and_what_waits_for_it(client: FlaskClient, store: Store) -> None:
    a = queue_job(SQUARE, {"n": 2}, queue="held")
    b = queue_job(SQUARE, {"n": 3}, queue="held")
    c = queue_job(TOTAL, {}, queue="held", depends_on=[a, b], on_dependency_failure="run")
    d = queue_job(TOTAL, {}, queue="held", depends_on=[c])
    assert Job(a, store).cancel()  # ended: counted in c's dependencies_ended (c runs whatever they end with)
    assert statuses(store, [a, b, c, d]) == ["cancel", "queued", "waiting", "waiting"]

    data = client.get(f"/api/jobs/{c}").json
    assert data["status"] == "waiting" and data["depends_on"] == [str(a), str(b)]
    assert data["waits_for"] == {
        "total": 2, "ended": 1, "more": 0, "on_dependency_failure": "run",
        "jobs": [{"id": str(a), "status": "cancel", "path": SQUARE, "ended": True},
                 {"id": str(b), "status": "queued", "path": SQUARE, "ended": False}]}
    assert data["waited_for_by"] == {"total": 1, "more": 0, "jobs": [{"id": str(d), "status": "waiting",
                                                                      "path": TOTAL}]}
    parent = client.get(f"/api/jobs/{a}").json
    assert parent["waits_for"] is None
    assert parent["waited_for_by"]["jobs"] == [{"id": str(c), "status": "waiting", "path": TOTAL}]
    assert client.get(f"/api/jobs/{d}").json["waits_for"]["on_dependency_failure"] == "cancel"

    page = client.get(f"/jobs/{c}").data.decode()
    waits = section(page, "waits-for")
    assert "1 of 2 ended" in waits and "on_dependency_failure run: it runs whatever they end with" in waits
    assert f'href="/jobs/{a}"' in waits and f'href="/jobs/{b}"' in waits and "✓ ended" in waits
    assert waits.index(str(a)) < waits.index(str(b))  # in depends_on's order
    assert f'href="/jobs/{d}"' in section(page, "waited-for-by")
    assert '<span class="status status-waiting">waiting</span>' in page
    assert f"/api/jobs/{c}/cancel" in page and f"/api/jobs/{c}/requeue" not in page  # cancel yes, requeue no
    assert "on_dependency_failure cancel: a dependency that does not succeed cancels it" in section(
        client.get(f"/jobs/{d}").data.decode(), "waits-for")
    plain = client.get(f"/jobs/{b}").data.decode()
    assert 'id="waits-for"' not in plain and f'href="/jobs/{c}"' in section(plain, "waited-for-by")

    store.jobs.delete_one({"_id": b})  # expired meanwhile
    assert client.get(f"/api/jobs/{c}").json["waits_for"]["jobs"][1] == {"id": str(b), "status": None, "path": None,
                                                                         "ended": False}
    assert "no longer stored" in section(client.get(f"/jobs/{c}").data.decode(), "waits-for")


def test_dependents_and_dependencies_are_read_100_at_most_with_and_n_more(mrq_settings: Settings, store: Store,
                                                                            request: pytest.FixtureRequest) -> None:
    a = queue_job(SQUARE, {"n": 1}, queue="held")
    dependents = queue_jobs(SQUARE, [{"n": i} for i in range(150)], "held", depends_on=[a])
    monitored = Monitored(store.settings, request)

    commands, response = monitored.cost(f"/api/jobs/{a}")
    waited = response.json["waited_for_by"]
    assert waited["total"] == 150 and waited["more"] == 50 and len(waited["jobs"]) == 100
    assert [row["id"] for row in waited["jobs"]] == [str(i) for i in dependents[:100]]
    assert {row["status"] for row in waited["jobs"]} == {"waiting"}
    reads = dependency_reads(commands)
    assert len(reads) == 1 and len(reads[0]["filter"]["_id"]["$in"]) == 100
    assert reads[0]["projection"] == {"status": 1, "path": 1}
    assert len(commands) == 2, [c["name"] for c in commands]  # the job, its dependents
    check_commands(commands)

    commands, response = monitored.cost(f"/jobs/{a}")
    page = response.data.decode()
    shown = section(page, "waited-for-by")
    assert "and 50 more" in shown and shown.count("<tr data-job=") == 100 and "(150 jobs)" in shown
    assert str(dependents[99]) in shown and str(dependents[100]) not in shown
    assert len(dependency_reads(commands)) == 1 and len(commands) <= 3, [c["name"] for c in commands]  # + logs

    # A group's callback waits for every member: the page shows 100 and links to the group's page.
    g = group([(SQUARE, {"n": n}, "held") for n in range(250)], then=(TOTAL, {}, "held"))
    callback = g.callback
    assert callback is not None
    commands, response = monitored.cost(f"/api/jobs/{callback.id}")
    waits = response.json["waits_for"]
    assert waits["total"] == 250 and waits["more"] == 150 and waits["ended"] == 0 and len(waits["jobs"]) == 100
    assert [len(c["filter"]["_id"]["$in"]) for c in dependency_reads(commands)] == [100]
    _commands, response = monitored.cost(f"/jobs/{callback.id}")
    waits_html = section(response.data.decode(), "waits-for")
    assert "and 150 more" in waits_html and f'href="/groups/{g.id}"' in waits_html
    assert "0 of 250 ended" in waits_html


def test_dependency_fields_of_unexpected_shapes_never_break_a_page(client: FlaskClient, store: Store) -> None:
    """Documents written by hand or by a producer in another language may hold anything."""
    odd = insert_job(store, status="waiting", depends_on="not a list", dependencies_ended=5, dependents=[1, "x"],
                     on_dependency_failure=["run"], group={"not": "an id"}, group_callback="zz")
    holder = insert_job(store, depends_on=[odd, ObjectId(), "x"], dependencies_ended=[odd, odd], group=ObjectId())
    group_id = ObjectId()
    store.groups.insert_one({"_id": group_id, "size": "many", "then": "nothing"})
    insert_job(store, group=group_id, status="success")
    for url in (f"/jobs/{odd}", f"/api/jobs/{odd}", f"/jobs/{holder}", f"/api/jobs/{holder}", f"/groups/{group_id}",
                f"/api/groups/{group_id}", f"/jobs?group={group_id}"):
        assert client.get(url).status_code == 200, url
    assert client.get(f"/api/jobs/{odd}").json["waits_for"] == {"total": 0, "ended": 0, "more": 0, "jobs": [],
                                                                "on_dependency_failure": "cancel"}
    waits = client.get(f"/api/jobs/{holder}").json["waits_for"]
    assert waits["total"] == 2 and waits["ended"] == 1 and waits["jobs"][1]["status"] is None
    data = client.get(f"/api/groups/{group_id}").json
    assert data["progress"]["total"] == 1 and data["callback"] is None


# --- groups ----------------------------------------------------------------------------------------------


def test_a_group_page_and_api_after_a_real_worker_ran_it(client: FlaskClient, store: Store,
                                                         worker_factory: Any) -> None:
    g = group([(SQUARE, {"n": n}) for n in range(5)], then=(TOTAL, {}))
    members = g.member_ids()
    callback = g.callback
    assert callback is not None
    before = client.get(f"/api/groups/{g.id}").json
    assert before["progress"] == {"total": 5, "ended": 0, "by_status": {"queued": 5}}
    assert before["callback"]["status"] == "waiting" and before["cancellable"] is True
    worker_factory()
    g.wait(timeout=30)

    data = client.get(f"/api/groups/{g.id}").json
    assert data["id"] == str(g.id) and data["size"] == 5 and data["datecreated"].endswith("Z")
    assert data["progress"] == {"total": 5, "ended": 5, "by_status": {"success": 5}}
    assert data["callback"] == {"id": str(callback.id), "stored": True, "status": "success", "path": TOTAL,
                                "queue": "default", "summary": '{"count": 5, "sum": 30, "missing": 0}',
                                "error": None}
    assert data["cancellable"] is False
    assert [job["id"] for job in data["members"]["jobs"]] == [str(i) for i in members]  # the group's order
    assert data["members"]["next"] is None and data["members"]["filter"] == {"group": str(g.id)}

    # Members a page at a time, both ways (keyset cursors, as the jobs list).
    seen: list[str] = []
    cursor = ""
    while True:
        part = client.get(f"/api/groups/{g.id}?limit=2{cursor}").json["members"]
        seen += [job["id"] for job in part["jobs"]]
        if part["next"] is None:
            break
        cursor = f"&after={part['next']}"
    assert seen == [str(i) for i in members]
    back = client.get(f"/api/groups/{g.id}?limit=2&before={members[4]}").json["members"]
    assert [job["id"] for job in back["jobs"]] == [str(members[2]), str(members[3])]
    newest = client.get(f"/api/groups/{g.id}?limit=2&sort=newest").json["members"]
    assert [job["id"] for job in newest["jobs"]] == [str(members[4]), str(members[3])]
    assert client.get(f"/api/groups/{g.id}?status=queued").json["members"]["jobs"] == []
    assert len(client.get(f"/api/groups/{g.id}?status=success").json["members"]["jobs"]) == 5

    page = client.get(f"/groups/{g.id}").data.decode()
    assert "5 of 5</strong> members ended" in page and '<progress max="5" value="5"' in page
    assert f'href="/jobs/{callback.id}"' in page and "&#34;sum&#34;: 30" in page
    assert page.count("<tr data-job=") == 5 and "Cancel group" not in page  # nothing left to cancel
    assert f'href="/jobs?group={g.id}&amp;status=success"' in page
    two = client.get(f"/groups/{g.id}?limit=2").data.decode()
    assert two.count("<tr data-job=") == 2 and f"after={members[1]}" in two and "next members" in two

    # The jobs list filtered by group, and the links between a job and its group.
    listed = client.get(f"/api/jobs?group={g.id}").json
    assert sorted(job["id"] for job in listed["jobs"]) == sorted(str(i) for i in members)
    assert listed["count"] == {"value": 5, "capped": False} and listed["filter"] == {"group": str(g.id)}
    assert len(client.get(f"/api/jobs?group={g.id}&status=success&path={SQUARE}").json["jobs"]) == 5
    jobs_page = client.get(f"/jobs?group={g.id}").data.decode()
    assert "5 jobs match" in jobs_page and jobs_page.count(f'class="pill group-link" href="/groups/{g.id}"') == 5
    assert f'value="{g.id}"' in jobs_page  # the filter form keeps it
    assert f'href="/groups/{g.id}">member of group' in client.get(f"/jobs/{members[0]}").data.decode()
    assert f'href="/groups/{g.id}">callback of group' in client.get(f"/jobs/{callback.id}").data.decode()
    preview = client.post("/api/bulk/requeue", json={"filter": {"group": str(g.id)}, "dry_run": True}).json
    assert preview["count"]["value"] == 5 and preview["filter"] == {"group": str(g.id)}


def test_unknown_and_malformed_group_ids(client: FlaskClient, store: Store) -> None:
    unknown = ObjectId()
    assert error_of(client.get(f"/api/groups/{unknown}"), 404) == f"no group with id '{unknown}'"
    assert error_of(client.post(f"/api/groups/{unknown}/cancel"), 404) == f"no group with id '{unknown}'"
    for bad in ("zz", "0" * 23, "g" * 24):
        assert f"group id: '{bad}' is not an id" in error_of(client.get(f"/api/groups/{bad}"), 400)
        assert f"group id: '{bad}' is not an id" in error_of(client.post(f"/api/groups/{bad}/cancel"), 400)
    page = client.get(f"/groups/{unknown}")
    assert page.status_code == 404 and page.mimetype == "text/html" and b"no group with id" in page.data
    assert client.get("/groups/zz").status_code == 400
    assert "group: 'zz' is not an id" in error_of(client.get("/api/jobs?group=zz"), 400)
    assert client.get("/jobs?group=zz").status_code == 400
    assert "group: 'zz' is not an id" in error_of(client.post("/api/bulk/cancel", json={"filter": {"group": "zz"}}),
                                                  400)
    g = group([(SQUARE, {"n": 1}, "held")])
    assert client.get(f"/api/groups/{g.id}").json["callback"] is None  # a group without `then`
    assert "none: the group was queued without" in client.get(f"/groups/{g.id}").data.decode()
    for query, reason in (("limit=0", "limit: expected a number"), ("status=nope", "unknown status 'nope'"),
                          ("after=xx", "after: 'xx' is not an id"), ("sort=up", "sort: expected newest or oldest")):
        assert reason in error_of(client.get(f"/api/groups/{g.id}?{query}"), 400)
    assert audit(store) == []


def test_cancel_a_group_through_the_action_machinery(mrq_settings: Settings, store: Store) -> None:
    g = group([(SQUARE, {"n": n}, "held") for n in range(4)], then=(TOTAL, {}, "held"))
    members = g.member_ids()
    callback = g.callback
    assert callback is not None
    everything = [*members, callback.id]
    url = f"/api/groups/{g.id}/cancel"

    readonly = make_client(mrq_settings, store, dashboard_readonly=True)
    assert "read-only" in error_of(readonly.post(url), 403)
    assert "Cancel group" not in readonly.get(f"/groups/{g.id}").data.decode()
    app = create_app(mrq_settings, store=store, cache_seconds=0)
    browser = app.test_client()  # keeps cookies, like a browser
    page = browser.get(f"/groups/{g.id}").data.decode()
    assert f'data-action="{url}"' in page and "Cancel group" in page
    token = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)[1]  # type: ignore[index]
    assert "CSRF token" in error_of(browser.post(url), 403)
    assert "CSRF token" in error_of(browser.post(url, headers={"X-CSRF-Token": "x" * 43}), 403)
    assert "another origin" in error_of(browser.post(url, headers={"X-CSRF-Token": token,
                                                                   "Origin": "http://evil.example"}), 403)
    assert "X-MRQ-Client" in error_of(app.test_client(use_cookies=False).post(url), 403)
    secured = make_client(mrq_settings, store, dashboard_auth="admin:s3cret", dashboard_token="t0ken-t0ken")
    assert "authentication required" in error_of(secured.post(url), 401)
    assert statuses(store, everything) == ["queued"] * 4 + ["waiting"] and audit(store) == []

    response = browser.post(url, headers={"X-CSRF-Token": token})  # what the page's button sends
    assert response.status_code == 200 and response.json == {"id": str(g.id), "cancelled": 5}
    assert statuses(store, everything) == ["cancel"] * 5
    assert Queue("held", store).size() == 0
    again = secured.post(url, headers={"Authorization": "Bearer t0ken-t0ken"})
    assert again.status_code == 200 and again.json["cancelled"] == 0
    entries = audit(store)
    assert [(e["action"], e["target"], e["count"], e["who"]) for e in entries] == [
        ("cancel group", str(g.id), 5, "anonymous"), ("cancel group", str(g.id), 0, "token")]
    assert f'href="/groups/{g.id}"' in browser.get("/actions").data.decode()
    after = browser.get(f"/groups/{g.id}").data.decode()
    assert "4 of 4</strong> members ended" in after and "Cancel group" not in after
    assert client_json(browser, f"/api/groups/{g.id}")["callback"]["status"] == "cancel"


def client_json(client: FlaskClient, url: str) -> Any:
    response = client.get(url)
    assert response.status_code == 200, response.data[:300]
    return response.json


# --- waiting jobs ------------------------------------------------------------------------------------------


def test_waiting_jobs_in_the_lists_the_overview_and_the_bulk_actions(client: FlaskClient, store: Store) -> None:
    a = queue_job(SQUARE, {"n": 1}, queue="hold")
    waiting = queue_jobs(SQUARE, [{"n": 2}, {"n": 3}], "hold", depends_on=[a])
    failed = insert_job(store, status="failed", queue="hold", path=SQUARE)

    assert client.get("/api/overview").json["statuses"]["waiting"] == {"value": 2, "capped": False}
    overview = client.get("/").data.decode()
    assert 'href="/jobs?status=waiting"' in overview and "status-waiting" in overview
    jobs_page = client.get("/jobs").data.decode()
    assert '<option value="waiting">waiting</option>' in jobs_page
    assert '<option value="waiting,queued,started,retry,delayed">not finished</option>' in jobs_page
    listed = client.get("/jobs?status=waiting").data.decode()
    assert listed.count('<tr data-job=') == 2 and listed.count('data-status="waiting"') == 2
    assert listed.count('<span class="status status-waiting">waiting</span>') == 2
    assert listed.count("btn-cancel") == 2 and "btn-requeue" not in listed
    assert "cancel (queued or waiting jobs)" in listed
    with client.get("/static/app.css") as css:
        assert b".status-waiting {" in css.data
    assert client.get("/api/jobs?status=delayed,queued,retry,started,waiting").json["count"]["value"] == 3

    def bulk(action: str, body: dict[str, Any]) -> Any:
        response = client.post(f"/api/bulk/{action}", json=body)
        assert response.status_code == 200, response.data
        return response.json

    # Requeue never touches a waiting job: it would run without its dependencies.
    assert bulk("requeue", {"filter": {"queue": "hold"}, "dry_run": True})["count"]["value"] == 1
    assert bulk("requeue", {"filter": {"queue": "hold"}})["changed"] == 1  # the failed job only
    assert bulk("requeue", {"filter": {"status": "waiting"}, "dry_run": True})["count"]["value"] == 0
    assert bulk("requeue", {"filter": {"status": "waiting,failed"}})["changed"] == 0
    assert bulk("requeue", {"filter": {}, "confirm_all": True})["changed"] == 0
    assert statuses(store, [a, *waiting, failed]) == ["queued", "waiting", "waiting", "queued"]
    ids = store.redis.lrange(store.keys.queue_ids("hold"), 0, -1)
    assert sorted(ids) == sorted([str(a).encode(), str(failed).encode()])  # no waiting job pushed
    assert "waiting for its dependencies" in error_of(client.post(f"/api/jobs/{waiting[0]}/requeue"), 409)

    # Cancel does: on a status filter, and on any filter that matches waiting jobs.
    assert bulk("cancel", {"filter": {"status": "waiting"}, "dry_run": True})["count"]["value"] == 2
    assert bulk("cancel", {"filter": {"status": "waiting"}})["changed"] == 2
    assert statuses(store, [a, *waiting, failed]) == ["queued", "cancel", "cancel", "queued"]
    later = queue_job(SQUARE, {"n": 4}, queue="hold", depends_on=[a])
    assert bulk("cancel", {"filter": {"queue": "hold"}, "dry_run": True})["count"]["value"] == 3
    assert bulk("cancel", {"filter": {"queue": "hold"}})["changed"] == 3
    assert statuses(store, [a, later, failed]) == ["cancel"] * 3
    assert [e["action"] for e in audit(store)] == ["bulk requeue"] * 3 + ["bulk cancel"] * 2  # not the previews


# --- cost ---------------------------------------------------------------------------------------------------


def test_a_group_page_costs_a_bounded_number_of_commands(store: Store, request: pytest.FixtureRequest) -> None:
    g = group([(SQUARE, {"n": n}, "held") for n in range(300)], then=(TOTAL, {}, "held"))
    callback = g.callback
    assert callback is not None
    store.jobs.update_many({"_id": {"$in": g.member_ids()[:7]}}, {"$set": {"status": "failed"}})
    monitored = Monitored(store.settings, request)
    for url in (f"/groups/{g.id}", f"/api/groups/{g.id}", f"/groups/{g.id}?status=failed",
                f"/api/groups/{g.id}?after={g.member_ids()[150]}&limit=200"):
        commands, _response = monitored.cost(url)
        # the record, the progress (one aggregate), the callback, a page of members (and workers' names)
        assert len(commands) <= 5, (url, [c["name"] for c in commands])
        check_commands(commands)
        names = [c["name"] for c in commands]
        assert names.count("aggregate") == 1 and "count" not in names, (url, names)
        callback_read = [c for c in commands if c["name"] == "find" and c.get("filter") == {"_id": callback.id}]
        assert len(callback_read) == 1 and "depends_on" not in callback_read[0]["projection"]
        pages = [c for c in commands if c["name"] == "find" and "group" in c.get("filter", {})]
        assert len(pages) == 1 and pages[0]["limit"] in (51, 201), (url, pages)
    page = monitored.cost(f"/groups/{g.id}")[1].data.decode()
    assert "7 of 300</strong> members ended" in page and page.count("<tr data-job=") == 50
    assert Group(g.id, store).progress()["by_status"] == {"failed": 7, "queued": 293}
