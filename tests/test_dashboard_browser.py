"""The dashboard in a real headless Chromium (Playwright, Debian's /usr/bin/chromium), served by
the real `mrq-dashboard` process, with live data from a real worker: every page renders without a
console error (screenshots in test-artifacts/), the jobs list filters, cancel and requeue work by
clicking without a reload, a running job's log lines appear live, and hostile strings stored
anywhere are shown as text and never run."""

from __future__ import annotations

import datetime
import json
import os
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo
import pytest
import redis
from bson import ObjectId
from playwright.sync_api import Browser, Page, sync_playwright

from mrq.config import Settings, load_settings
from mrq.job import FINAL_STATUSES, Job, queue_job
from mrq.queue import pause_queue, resume_queue
from mrq.storage import mongo
from mrq.store import Store
from mrq.testing.pytest_plugin import PROJECT_ROOT, drop_jobs_database, jobs_database_uri
from mrq.testing.stack import free_port
from mrq.testing.workers import CommandProcess, WorkerProcess, wait_until
from mrq.workflow import group

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TASKS = "tests.tasks.general"

SCRIPT = "<script>window.__xss=1</script>"
IMG = '"><img src=x onerror="window.__xss=1;alert(1)">'
SVG = "'><svg onload=window.__xss=1>"
WORKER_NAME = 'w"><img src=x onerror=alert(1)>'

if not os.path.exists(CHROMIUM):
    pytest.fail(f"{CHROMIUM} is missing: run scripts/bootstrap (it installs Debian's chromium)", pytrace=False)


class DashboardProcess(CommandProcess):
    module = "mrq_dashboard.cli"


@dataclass
class Live:
    settings: Settings
    store: Store
    url: str
    browser: Browser


@dataclass
class Watched:
    """A page and everything it reported: console errors, uncaught exceptions, dialogs."""

    page: Page
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def live(redis_url: str, mongodb_uri: str, mongo_client: pymongo.MongoClient) -> Iterator[Live]:
    prefix, db_name = "b" + uuid.uuid4().hex[:10], "mrqtest_" + uuid.uuid4().hex[:12]
    settings, _ = load_settings([], env={}, default_file=False, overrides={
        "redis": redis_url, "redis_prefix": prefix,
        "mongodb_jobs": jobs_database_uri(mongodb_uri, mongo_client, db_name),
        "mongodb_logs": "1"})
    store = Store(settings)
    worker = WorkerProcess(settings, ["--greenlets", "4", "--report_interval", "1", "--name", WORKER_NAME,
                                      "default", "browser", "requeue-q"], cwd=PROJECT_ROOT)
    port = free_port()
    server = DashboardProcess(settings, ["--port", str(port)], cwd=PROJECT_ROOT)
    playwright = sync_playwright().start()
    browser = None
    try:
        worker.start()
        server.start(ready_text="mrq-dashboard: listening on", timeout=30)
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        ARTIFACTS.mkdir(exist_ok=True)
        yield Live(settings, store, f"http://127.0.0.1:{port}", browser)
    finally:
        if browser is not None:
            browser.close()
        playwright.stop()
        server.close()
        worker.close()
        store.close()
        drop_jobs_database(mongo_client, db_name)
        client = redis.Redis.from_url(redis_url)
        for pattern in (f"{prefix}:*", f"{{{prefix}:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
        client.close()


@pytest.fixture
def watched(live: Live) -> Iterator[Watched]:
    context = live.browser.new_context(viewport={"width": 1440, "height": 900}, base_url=live.url)
    page = context.new_page()
    page.set_default_timeout(15_000)
    found = Watched(page)
    page.on("console", lambda msg: found.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: found.errors.append(str(exc)))

    def on_dialog(dialog: Any) -> None:
        found.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    yield found
    context.close()
    assert found.errors == [], found.errors
    assert found.dialogs == [], found.dialogs


def wait_final(store: Store, job_id: ObjectId, timeout: float = 20.0) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        data = Job(job_id, store).fetch().data
        return data if data is not None and data["status"] in FINAL_STATUSES else None

    return wait_until(final, timeout, interval=0.05, message=f"job {job_id} finished")  # type: ignore[no-any-return]


def wait_started(store: Store, job_id: ObjectId) -> None:
    wait_until(lambda: Job(job_id, store).fetch().status == "started", 20, message="job started")


def api_post(live: Live, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """A POST from a service: no CSRF token, the API client header instead."""
    request = urllib.request.Request(live.url + path, data=json.dumps(body or {}).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "X-MRQ-Client": "tests"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def open_page(watched: Watched, path: str) -> Page:
    page = watched.page
    page.goto(path)
    page.wait_for_load_state("load")
    return page


def mark_document(page: Page) -> None:
    """Set a marker that a page reload would wipe."""
    page.evaluate("window.__marker = 'still the same document'")


def same_document(page: Page) -> bool:
    return page.evaluate("window.__marker") == "still the same document"  # type: ignore[no-any-return]


# --- tests --------------------------------------------------------------------------------------------


def test_every_page_renders_without_console_errors(live: Live, watched: Watched) -> None:
    store = live.store
    done = queue_job(f"{TASKS}.Add", {"a": 40, "b": 2}, store=store)
    failed = queue_job(f"{TASKS}.Fail", {"message": "the disk is full"}, queue="browser", store=store)
    running = queue_job("tests.tasks.dashboard.SlowLogs", {"lines": [f"step {i}" for i in range(60)],
                                                          "interval": 1}, store=store)
    pause_queue(store, "held")
    queue_job(f"{TASKS}.Add", {"a": 1, "b": 1}, queue="held", store=store)
    api_post(live, "/api/queues/held/pause")
    store.connections.mongodb_jobs[mongo.SCHEDULED_JOBS].insert_one(
        {"hash": "every-minute", "path": "tasks.reports.Hourly", "params": {"kind": "summary"}, "queue": None,
         "interval": 3600, "datelastqueued": datetime.datetime(2030, 1, 1, 10),
         "datenextqueued": datetime.datetime(2030, 1, 1, 11), "lastjob": done})
    wait_final(store, done)
    wait_final(store, failed)
    wait_started(store, running)
    pages = {
        "overview": ("/", ["Workers alive", "held", "paused", "Throughput"]),
        "jobs": ("/jobs", ["jobs match", "tests.tasks.general.Fail"]),
        "job": (f"/jobs/{failed}", ["ValueError: the disk is full", "Errors over retries"]),
        "job-running": (f"/jobs/{running}", ["step 0", "started"]),
        "workers": ("/workers", ["alive", "tests.tasks.dashboard.SlowLogs"]),
        "scheduled": ("/scheduled", ["tasks.reports.Hourly", "every 1h 00m"]),
        "taskpaths": ("/taskpaths", ["tests.tasks.general.Add", "100.0 %"]),
        "exceptions": ("/exceptions", ["ValueError: the disk is full"]),
        "actions": ("/actions", ["pause", "held", "anonymous"]),
    }
    for name, (path, texts) in pages.items():
        page = open_page(watched, path)
        body = page.locator("body")
        for text in texts:
            body.get_by_text(text, exact=False).first.wait_for(state="attached")
        assert page.locator("h1").inner_text()
        if name in ("taskpaths", "exceptions"):  # their own refresh interval is one of the menu's choices
            assert page.locator("#refresh").input_value() == "15"
        page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)
        assert watched.errors == [], (path, watched.errors)
    page = open_page(watched, "/")
    assert page.locator("svg.chart polyline").count() == 3
    assert page.locator("tr[data-queue='held'] .pill.paused").count() == 1


def test_filter_the_jobs_list(live: Live, watched: Watched) -> None:
    store = live.store
    ids = [queue_job(f"{TASKS}.Add", {"a": i, "b": 1}, queue="browser", store=store) for i in range(3)]
    ids += [queue_job(f"{TASKS}.Fail", {"message": f"filter me {i}"}, queue="browser", store=store)
            for i in range(2)]
    for job_id in ids:
        wait_final(store, job_id)
    page = open_page(watched, "/jobs")
    page.fill("input[name=queue]", "browser")
    page.select_option("select[name=status]", "failed")
    page.click("form#job-filter button[type=submit]")
    page.wait_for_url("**/jobs?*status=failed*")
    rows = page.locator("table.jobs tbody tr")
    rows.first.wait_for()
    statuses = rows.evaluate_all("rows => rows.map(r => r.dataset.status)")
    assert statuses and set(statuses) == {"failed"}
    assert str(ids[-1]) in page.locator("table.jobs").inner_text()
    page.fill("input[name=path]", "tests.tasks.general.Add")
    page.select_option("select[name=status]", "")
    page.click("form#job-filter button[type=submit]")
    page.wait_for_url("**path=tests.tasks.general.Add**")
    paths = page.locator("table.jobs tbody tr td:nth-child(3)").all_inner_texts()
    assert paths and set(paths) == {f"{TASKS}.Add"}
    page.fill("input[name=from]", "not a date")
    page.click("form#job-filter button[type=submit]")
    page.get_by_text("from: 'not a date' is not a date").wait_for()
    # the browser logs the 400 answer itself: expected here, and the only error
    assert watched.errors == ["Failed to load resource: the server responded with a status of 400 (BAD REQUEST)"]
    watched.errors.clear()


def test_cancel_and_requeue_by_clicking_without_reload(live: Live, watched: Watched) -> None:
    store = live.store
    pause_queue(store, "held-cancel")
    queued = queue_job(f"{TASKS}.Add", {"a": 1, "b": 2}, queue="held-cancel", store=store)
    page = open_page(watched, f"/jobs/{queued}")
    mark_document(page)
    page.locator(".job-status .status").get_by_text("queued").wait_for()
    page.click("button.btn-cancel")
    page.locator(".job-status .status").get_by_text("cancel").wait_for()
    page.locator("#flash").get_by_text(f"job {queued}: cancel").wait_for()
    assert same_document(page) and Job(queued, store).fetch().status == "cancel"
    page.locator("#logs-state").get_by_text("The job was cancelled.").wait_for()

    failed = queue_job(f"{TASKS}.Fail", {"message": "requeue me"}, queue="requeue-q", store=store)
    wait_final(store, failed)
    pause_queue(store, "requeue-q")  # so that the requeued job stays queued for the test to see
    try:
        page = open_page(watched, "/jobs?queue=requeue-q")
        mark_document(page)
        row = page.locator(f"tr[data-job='{failed}']")
        assert row.get_attribute("data-status") == "failed"
        row.locator("button.btn-requeue").click()
        page.locator(f"tr[data-job='{failed}'][data-status='queued']").wait_for()
        assert same_document(page) and Job(failed, store).fetch().status == "queued"
        assert page.locator(f"tr[data-job='{failed}'] button.btn-cancel").count() == 1
    finally:
        resume_queue(store, "requeue-q")
    wait_final(store, failed)


def test_abort_a_running_job_with_two_clicks(live: Live, watched: Watched) -> None:
    store = live.store
    job_id = queue_job(f"{TASKS}.Sleep", {"seconds": 60}, store=store)
    wait_started(store, job_id)
    page = open_page(watched, f"/jobs/{job_id}")
    mark_document(page)
    button = page.locator("button.btn-abort")
    button.click()
    page.get_by_text("Abort? Click again").wait_for()
    assert Job(job_id, store).fetch().status == "started"  # one click does nothing
    button.click()
    page.locator(".job-status .status").get_by_text("abort").wait_for()
    assert same_document(page) and Job(job_id, store).fetch().status == "abort"


def test_bulk_cancel_with_a_preview(live: Live, watched: Watched) -> None:
    store = live.store
    pause_queue(store, "bulk-b")
    ids = [queue_job(f"{TASKS}.Add", {"a": i, "b": 0}, queue="bulk-b", store=store) for i in range(3)]
    page = open_page(watched, "/jobs?queue=bulk-b")
    mark_document(page)
    apply = page.locator('#bulk [data-bulk="run"]')
    assert apply.is_disabled()
    assert page.locator("#bulk select[name=action]").input_value() == "cancel"
    page.click('#bulk [data-bulk="preview"]')
    page.locator("#bulk output").get_by_text("cancel 3 jobs?").wait_for()
    assert all(Job(i, store).fetch().status == "queued" for i in ids)  # a preview changes nothing
    apply.click()
    page.locator("#bulk output").get_by_text("cancel: 3 of 3 jobs changed").wait_for()
    page.locator("table.jobs tbody tr[data-status='cancel']").nth(2).wait_for()
    assert same_document(page) and all(Job(i, store).fetch().status == "cancel" for i in ids)


def test_bulk_action_on_finished_jobs_defaults_to_requeue(live: Live, watched: Watched) -> None:
    page = open_page(watched, "/jobs?status=failed")
    assert page.locator("#bulk select[name=action]").input_value() == "requeue"


def test_running_job_logs_appear_live(live: Live, watched: Watched) -> None:
    store = live.store
    lines = ["alpha-line", "beta-line", "gamma-line", "delta-line", "epsilon-line"]
    job_id = queue_job("tests.tasks.dashboard.SlowLogs", {"lines": lines, "interval": 0.8}, store=store)
    page = open_page(watched, f"/jobs/{job_id}")
    mark_document(page)
    logs = page.locator("#logs")
    logs.get_by_text("beta-line").wait_for()
    assert Job(job_id, store).fetch().status == "started"  # the lines came while the job ran
    assert "epsilon-line" not in logs.inner_text()
    logs.get_by_text("epsilon-line").wait_for()
    page.locator(".job-status .status").get_by_text("success").wait_for()
    text = logs.inner_text()
    assert [text.index(line) for line in lines] == sorted(text.index(line) for line in lines)
    assert text.count("alpha-line") == 1
    assert same_document(page)


def test_hostile_strings_are_shown_as_text_and_never_run(live: Live, watched: Watched) -> None:
    store = live.store
    echo = queue_job(f"{TASKS}.Echo", {"a": SCRIPT, "b": IMG, "<img src=x onerror=alert(1)>": SVG}, store=store)
    fail = queue_job(f"{TASKS}.Fail", {"message": IMG + SCRIPT}, store=store)
    logs = queue_job(f"{TASKS}.Logs", {"lines": [SCRIPT, IMG, SVG]}, store=store)
    for job_id in (echo, fail, logs):
        wait_final(store, job_id)
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    forged = ObjectId()
    store.jobs.insert_one({"_id": forged, "path": SCRIPT, "queue": IMG, "status": "failed", "params": {SVG: IMG},
                           "exceptiontype": SVG, "traceback": f"Traceback\n{SVG}: {SCRIPT}", "datequeued": now,
                           "traceback_history": [{"date": now, "status": SCRIPT, "exceptiontype": IMG,
                                                  "traceback": SVG}], "result": IMG, "worker": ObjectId()})
    store.redis.zadd(store.keys.known_queues, {SCRIPT: 0, IMG: 0})
    store.workers.insert_one({"_id": ObjectId(), "name": SCRIPT, "host": IMG, "pid": SVG, "queues": [SCRIPT, IMG],
                              "status": IMG, "greenlets": {"busy": 1, "total": 2}, "datereported": now,
                              "config": {"report_interval": 60},
                              "jobs": [{"id": str(forged), "path": IMG, "elapsed": 1.0, "progress": 0.5}]})
    store.connections.mongodb_jobs[mongo.SCHEDULED_JOBS].insert_one(
        {"hash": "xss", "path": IMG, "params": {"x": SCRIPT}, "queue": SVG, "cron": SCRIPT, "dailytime": IMG,
         "datelastqueued": now, "lastjob": forged})
    store.connections.mongodb_jobs[mongo.ACTIONS].insert_one(
        {"date": now, "who": SCRIPT, "addr": IMG, "action": SVG, "target": SCRIPT, "filter": {"path": IMG},
         "count": 1, "detail": SCRIPT})
    paths = ["/", "/jobs", f"/jobs/{echo}", f"/jobs/{fail}", f"/jobs/{logs}", f"/jobs/{forged}", "/workers",
             "/scheduled", "/taskpaths", "/exceptions", "/actions", "/jobs?status=failed"]
    for path in paths:
        page = open_page(watched, path)
        page.evaluate("document.addEventListener('mrq:refreshed', () => { window.__refreshed = true; })")
        check_nothing_ran(page, path)
    # the live refresh swaps in server-rendered HTML: it must not run anything either
    page = open_page(watched, f"/jobs/{forged}")
    page.evaluate("document.addEventListener('mrq:refreshed', () => { window.__refreshed = true; })")
    wait_until(lambda: page.evaluate("window.__refreshed === true"), 10, message="a live refresh")
    check_nothing_ran(page, "refreshed job page")
    assert SVG in page.locator("#params").inner_text()  # as JSON text (IMG's quotes show escaped there)
    assert page.locator("#result").inner_text() == json.dumps(IMG)
    assert SCRIPT in page.locator("#traceback").inner_text()
    page.screenshot(path=str(ARTIFACTS / "dashboard-hostile-job.png"), full_page=True)
    page = open_page(watched, f"/jobs/{logs}")
    page.locator("#logs").get_by_text(IMG).wait_for()
    assert SCRIPT in page.locator("#logs").inner_text()
    check_nothing_ran(page, "logs")
    page = open_page(watched, "/workers")
    for name in (WORKER_NAME, SCRIPT):
        page.get_by_text(name).first.wait_for()
    page = open_page(watched, "/")
    page.get_by_text(SCRIPT).first.wait_for()
    check_nothing_ran(page, "overview")


def test_a_group_page_shows_progress_and_the_callback_and_cancels_by_clicking(live: Live, watched: Watched) -> None:
    store = live.store
    square, total = "tests.tasks.workflow.Square", "tests.tasks.workflow.Total"
    done = group([(square, {"n": n}, "browser") for n in range(4)], then=(total, {}, "browser"), store=store)
    done.wait(timeout=30)
    page = open_page(watched, f"/groups/{done.id}")
    page.locator(".progress-text").get_by_text("4 of 4").wait_for()
    assert page.locator(".group-head progress").get_attribute("value") == "4"
    assert page.locator("#callback").get_attribute("data-status") == "success"
    page.locator("#callback .result").get_by_text('"sum": 14').wait_for()  # 0 + 1 + 4 + 9, from the worker
    assert page.locator("table.jobs tbody tr[data-status='success']").count() == 4
    assert page.locator("button.btn-cancel-group").count() == 0  # nothing left to cancel
    page.screenshot(path=str(ARTIFACTS / "dashboard-group.png"), full_page=True)

    # A group whose worker ran some members while the others wait on a queue no worker serves.
    mixed = group([(square, {"n": n}, "browser") for n in range(3)] + [(square, {"n": n}, "held-group")
                                                                       for n in range(3)],
                  then=(total, {}, "browser"), store=store)
    members = mixed.member_ids()
    callback = mixed.callback
    assert callback is not None
    for job_id in members[:3]:
        wait_final(store, job_id)
    page = open_page(watched, f"/jobs?id={callback.id}")
    waiting = page.locator(f"tr[data-job='{callback.id}'][data-status='waiting'] .status-waiting")
    assert waiting.evaluate("el => getComputedStyle(el).borderTopStyle") == "dashed"  # a style of its own
    page = open_page(watched, f"/jobs/{callback.id}")  # what the callback waits for, with their statuses
    page.locator("#waits-for h2").get_by_text("3 of 6 ended").wait_for()
    assert page.locator("#waits-for tr[data-status='success']").count() == 3
    assert page.locator("#waits-for tr[data-status='queued']").count() == 3
    page.screenshot(path=str(ARTIFACTS / "dashboard-group-callback.png"), full_page=True)
    page = open_page(watched, f"/groups/{mixed.id}")
    mark_document(page)
    page.locator(".progress-text").get_by_text("3 of 6").wait_for()
    assert page.locator("#callback").get_attribute("data-status") == "waiting"
    assert page.locator("table.jobs tbody tr[data-status='queued']").count() == 3
    button = page.locator("button.btn-cancel-group")
    button.click()
    page.get_by_text("Cancel group? Click again").wait_for()
    page.wait_for_timeout(2500)  # a live refresh (every 2 s) keeps the armed button
    assert Job(members[3], store).fetch().status == "queued"  # one click does nothing
    button.click()
    page.locator("#flash").get_by_text(f"group {mixed.id}: 4 jobs cancelled").wait_for()
    page.locator(".progress-text").get_by_text("6 of 6").wait_for()
    page.locator("#callback[data-status='cancel']").wait_for()
    page.locator("table.jobs tbody tr[data-status='cancel']").nth(2).wait_for()
    assert page.locator("table.jobs tbody tr[data-status='success']").count() == 3
    assert page.locator("button.btn-cancel-group").count() == 0 and same_document(page)
    assert [Job(i, store).fetch().status for i in [*members, callback.id]] == ["success"] * 3 + ["cancel"] * 4
    page.screenshot(path=str(ARTIFACTS / "dashboard-group-cancelled.png"), full_page=True)


def check_nothing_ran(page: Page, where: str) -> None:
    assert page.evaluate("typeof window.__xss") == "undefined", where
    assert page.locator("img[src='x']").count() == 0, where
    assert page.locator("svg[onload]").count() == 0, where
    assert page.locator("script").count() == 1, where  # only /static/app.js
