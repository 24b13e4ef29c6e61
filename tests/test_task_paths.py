"""A task path names a Task class or a function defined in the module of the path: never
something that module imports, assigns or keeps private. The worker, mrq-run and the HTTP API
all hold to it (the HTTP API before anything is queued, from the module's source, without
importing it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mrq.config import Settings
from mrq.exceptions import TaskNotFound
from mrq.job import Job, queue_job
from mrq.store import Store
from mrq.task import defined_in_source, load_task
from mrq.testing.workers import run_command
from tests.test_dashboard_api import error_of, make_client
from tests.test_worker import wait_status

REPORTS = "tests.tasks.reports"


@pytest.mark.parametrize("name", ["run", "helper", "os", "_private", "Task"])
def test_only_what_a_module_defines_is_a_task(name: str) -> None:
    with pytest.raises(TaskNotFound) as caught:
        load_task(f"{REPORTS}.{name}")
    message = str(caught.value)
    assert f"{REPORTS}.{name}" in message
    assert "private name" in message or "does not define" in message or "not a Task class" in message


def test_classes_and_functions_defined_in_the_module_are_tasks() -> None:
    assert load_task(f"{REPORTS}.Daily")({"x": 1}) == {"report": "daily", "x": 1}
    assert load_task(f"{REPORTS}.weekly")({"day": "friday"}) == "weekly on friday"
    assert defined_in_source(f"{REPORTS}.Daily") and defined_in_source(f"{REPORTS}.weekly")
    for bad in ("run", "helper", "_private", "Task", "nope"):
        assert not defined_in_source(f"{REPORTS}.{bad}"), bad
    for path in (f"{REPORTS}..Daily", f".{REPORTS}.Daily", "tests/tasks/reports.Daily", "tests.tasks.nope.Daily",
                 "Daily", "", "tests.tasks.reports.Daily "):
        assert not defined_in_source(path), path


def test_http_enqueue_of_an_imported_callable_is_refused_and_nothing_runs(
        mrq_settings: Settings, store: Store, worker_factory: Any, tmp_path: Path) -> None:
    client = make_client(mrq_settings, store, dashboard_enqueue_paths=[f"{REPORTS}.*"])
    marker = tmp_path / "pwned"
    attack = {"path": f"{REPORTS}.run", "params": {"args": f"touch {marker}", "shell": True}}
    assert "not a Task class or function defined in its module" in error_of(client.post("/api/jobs", json=attack),
                                                                             403)
    for path in (f"{REPORTS}._private", f"{REPORTS}.helper", f"{REPORTS}..Daily", f".{REPORTS}.Daily",
                 f"{REPORTS}.os"):
        assert client.post("/api/jobs", json={"path": path}).status_code in (400, 403), path
    assert store.jobs.count_documents({}) == 0  # nothing was queued
    response = client.post("/api/jobs", json={"path": f"{REPORTS}.Daily", "params": {"day": 1}})
    assert response.status_code == 201
    # Queued by another producer, bypassing the HTTP check: the worker refuses it too.
    sneaky = queue_job(f"{REPORTS}.run", {"args": f"touch {marker}", "shell": True})
    worker_factory()
    wait_status(response.json["id"], "success")
    wait_status(sneaky, "failed")
    job = Job(sneaky).fetch()
    assert job.exceptiontype == "TaskNotFound" and "imports but does not define" in job.traceback
    assert not marker.exists()


def test_allow_list_entries_are_exact_or_explicit_patterns(mrq_settings: Settings, store: Store) -> None:
    client = make_client(mrq_settings, store, dashboard_enqueue_paths=[REPORTS, "tests.tasks.general.Add"])
    # A bare module name is not a prefix any more: only `tests.tasks.reports.*` would allow its tasks.
    assert "may not be enqueued" in error_of(client.post("/api/jobs", json={"path": f"{REPORTS}.Daily"}), 403)
    assert client.post("/api/jobs", json={"path": "tests.tasks.general.Add", "params": {"a": 1, "b": 2}}) \
        .status_code == 201
    assert "may not be enqueued" in error_of(client.post("/api/jobs", json={"path": "tests.tasks.general.AddX"}),
                                            403)


def test_mrq_run_refuses_an_imported_callable(mrq_settings: Settings, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = run_command(mrq_settings, "mrq.cli.run", [f"{REPORTS}.run", "args", f"touch {marker}"])
    assert result.returncode != 0
    assert "imports but does not define" in result.stderr
    assert not marker.exists()
