"""The worker's admin HTTP server: /report with live stacks, /metrics moving with jobs,
/wait_for_idle, and a clear error when the port is taken."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from typing import Any

from mrq.job import queue_job, queue_jobs
from mrq.store import Store
from mrq.testing.stack import free_port
from mrq.testing.workers import wait_until
from tests.test_worker import wait_status

TASKS = "tests.tasks.general"


def get(port: int, path: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric_value(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + labels + r"\}" if labels else r"(?:\{\})?") + r" (?P<value>[0-9.e+-]+)"
    match = re.search("^" + pattern + "$", text, re.M)
    return float(match.group("value")) if match else 0.0


def test_metrics_move_with_jobs(store: Store, worker_factory: Any) -> None:
    port = free_port()
    worker_factory("--admin_port", str(port), "--greenlets", "3")
    status, before = get(port, "/metrics")
    assert status == 200
    assert metric_value(before, "mrq_jobs_total", 'path="tests.tasks.general.Add",status="success"') == 0
    assert metric_value(before, "mrq_greenlets_total") == 3
    ids = queue_jobs(f"{TASKS}.Add", [{"a": 1, "b": 2}] * 4)
    queue_job(f"{TASKS}.Fail", {})
    for job_id in ids:
        wait_status(job_id, "success")
    wait_until(lambda: metric_value(get(port, "/metrics")[1], "mrq_jobs_total",
                                    'path="tests.tasks.general.Fail",status="failed"') == 1, 10, message="failure")
    after = get(port, "/metrics")[1]
    assert metric_value(after, "mrq_jobs_total", 'path="tests.tasks.general.Add",status="success"') == 4
    assert metric_value(after, "mrq_job_duration_seconds_count", 'path="tests.tasks.general.Add"') == 4
    assert metric_value(after, "mrq_redis_round_trips_total") > metric_value(before, "mrq_redis_round_trips_total")
    assert metric_value(after, "mrq_mongodb_commands_total", 'command="update"') > 0
    assert metric_value(after, "mrq_queue_size", 'queue="default"') == 0
    assert metric_value(after, "mrq_up", 'store="redis"') == 1


def test_report_shows_the_running_jobs_stack(store: Store, worker_factory: Any) -> None:
    port = free_port()
    worker_factory("--admin_port", str(port))
    job_id = queue_job(f"{TASKS}.Sleep", {"seconds": 5})
    wait_status(job_id, "started")
    status, body = get(port, "/report")
    report = json.loads(body)
    assert status == 200 and report["greenlets"]["busy"] == 1
    [job] = report["jobs"]
    assert job["id"] == str(job_id)
    stack = "".join(job["stack"])
    assert "general.py" in stack and "in run" in stack and "time.sleep" in stack


def test_wait_for_idle(store: Store, worker_factory: Any) -> None:
    port = free_port()
    worker_factory("--admin_port", str(port), "--greenlets", "2")
    ids = queue_jobs(f"{TASKS}.Sleep", [{"seconds": 1}] * 2)
    assert get(port, "/wait_for_idle?timeout=0.2")[0] == 504  # busy
    assert get(port, "/wait_for_idle?timeout=20") == (200, "idle")
    assert all(store.jobs.find_one({"_id": i})["status"] == "success" for i in ids)
    assert get(port, "/nope")[0] == 404


def test_admin_port_in_use_stops_the_worker_before_it_takes_jobs(store: Store, worker_factory: Any) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    job_id = queue_job(f"{TASKS}.Add", {"a": 1, "b": 1})
    worker = worker_factory("--admin_port", str(port), wait=False)
    assert worker.wait(20) == 2
    assert f"--admin_port {port}: cannot listen on 127.0.0.1:{port}" in worker.output()
    assert store.jobs.find_one({"_id": job_id})["status"] == "queued"
    taken.close()
