"""Tracing options, start-up checks, log formats and metrics during an outage."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from mrq import current
from mrq.config import Settings
from mrq.job import queue_job
from mrq.startup import clock_skew, eviction_warning
from mrq.storage.mongo import INDEXES, missing_indexes
from mrq.store import Store
from mrq.testing.stack import RedisServer, free_port
from tests.test_worker import wait_status

TASKS = "tests.tasks.general"


def growth_of(data: dict[str, Any], type_name: str) -> int:
    return sum(delta for name, _, delta in data.get("memory_growth", []) if name == type_name)


def test_trace_memory_shows_a_leak_and_not_a_clean_job(store: Store, worker_factory: Any) -> None:
    worker_factory("--trace_memory", "--greenlets", "1")
    clean = wait_status(queue_job(f"{TASKS}.NoLeak", {"count": 20000}), "success")
    leaky = wait_status(queue_job(f"{TASKS}.Leak", {"count": 20000}), "success")
    assert growth_of(leaky, "Leaky") >= 20000
    assert growth_of(clean, "Leaky") == 0
    assert "memory_diff" in leaky and isinstance(leaky["memory_diff"], float)


def test_trace_memory_needs_one_greenlet(store: Store, worker_factory: Any) -> None:
    worker = worker_factory("--trace_memory", "--greenlets", "4", wait=False)
    assert worker.wait(20) == 2
    assert "--trace_memory needs --greenlets 1" in worker.output()


def test_trace_memory_type_says_when_graphviz_is_missing(store: Store, worker_factory: Any, tmp_path: Any) -> None:
    import shutil

    worker = worker_factory("--trace_memory", "--trace_memory_type", "Leaky", "--trace_memory_output_dir",
                            str(tmp_path))
    data = wait_status(queue_job(f"{TASKS}.Leak", {"count": 10}), "success")
    if shutil.which("dot") is None:
        assert data["memory_graph"] == "not drawn: graphviz (dot) is not installed"
        worker.wait_for_output("graphviz (the `dot` program) is not installed")
    else:
        assert data["memory_graph"].endswith(".png")


@pytest.fixture
def http_url() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/x"
    server.shutdown()
    server.server_close()


def test_trace_io_records_each_kind_of_call(store: Store, worker_factory: Any, http_url: str) -> None:
    worker_factory("--trace_io", "--trace_greenlets")
    data = wait_status(queue_job(f"{TASKS}.DoIo", {"redis": 5, "mongodb": 3, "url": http_url}), "success")
    totals = data["io"]["totals"]
    assert totals["redis"]["calls"] >= 5 and totals["mongodb"]["calls"] >= 3 and totals["http"]["calls"] == 1
    assert any(call["kind"] == "http" and "127.0.0.1" in call["call"] for call in data["io"]["slowest"])
    assert data["switches"] >= 1 and data["time"] > 0


def test_add_network_latency_slows_every_call(store: Store, worker_factory: Any) -> None:
    worker_factory("--trace_io", "--add_network_latency", "0.05")
    data = wait_status(queue_job(f"{TASKS}.DoIo", {"redis": 20, "mongodb": 0}), "success")
    redis_io = data["io"]["totals"]["redis"]
    # 20 calls each delayed by up to 50 ms (25 ms on average): far above loopback's ~0.1 ms
    assert redis_io["seconds"] > 0.1, redis_io


def test_profile_per_job(store: Store, worker_factory: Any) -> None:
    worker_factory("--profile", "--greenlets", "1")
    data = wait_status(queue_job(f"{TASKS}.NoLeak", {"count": 1000}), "success")
    assert "general.py" in data["profile"] and "run" in data["profile"]


def test_worker_profile_with_several_greenlets(store: Store, worker_factory: Any) -> None:
    import signal

    worker = worker_factory("--profile", "--greenlets", "3", "--name", "profiled")
    wait_status(queue_job(f"{TASKS}.NoLeak", {"count": 1000}), "success")
    worker.send(signal.SIGINT)
    assert worker.wait(20) == 0
    report = store.workers.find_one({"name": "profiled"})
    assert "cumulative" in report["profile"] and "worker/core.py" in report["profile"]


def test_json_log_format(store: Store, worker_factory: Any) -> None:
    worker = worker_factory("--log_format", "json")
    wait_status(queue_job(f"{TASKS}.Add", {"a": 1, "b": 2}), "success")
    worker.wait_for_output('"message": "adding 1 and 2"')
    lines = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    job_line = next(line for line in lines if line["message"] == "adding 1 and 2")
    assert job_line["logger"] == "mrq.current" and job_line["level"] == "INFO" and len(job_line["job"]) == 24


def test_per_logger_levels(store: Store, worker_factory: Any) -> None:
    worker = worker_factory("--log_level", "WARNING", "--log_levels", "mrq.worker=INFO")
    wait_status(queue_job(f"{TASKS}.Add", {"a": 1, "b": 2}), "success")
    output = worker.output()
    assert "started:" in output  # mrq.worker at INFO
    assert "adding 1 and 2" not in output  # the job's INFO line is stored, not echoed at WARNING


def test_bad_log_options_exit_2(store: Store, mrq_settings: Settings) -> None:
    from mrq.testing.workers import run_command

    done = run_command(mrq_settings, "mrq.cli.worker", ["--log_format", "xml"])
    assert done.returncode == 2 and "log_format" in done.stderr and "text, json" in done.stderr
    done = run_command(mrq_settings, "mrq.cli.worker", ["--log_levels", "mrq.worker"])
    assert done.returncode == 2 and "log_levels: expected logger=LEVEL" in done.stderr


# --- start-up checks ---------------------------------------------------------------------------------


@pytest.fixture
def evicting_redis() -> Iterator[RedisServer]:
    server = RedisServer(args=["--maxmemory-policy", "allkeys-lru"])
    server.start()
    yield server
    server.close()


def drop_our_indexes(store: Store) -> None:
    """Leave the jobs database with none of mrq's indexes (strict mode's fixture creates them)."""
    db = store.connections.mongodb_jobs
    for name in set(db.list_collection_names()) & set(INDEXES):
        db[name].drop_indexes()


def test_startup_warns_about_eviction_and_missing_indexes(mrq_settings: Settings, evicting_redis: RedisServer,
                                                         worker_factory: Any) -> None:
    settings = mrq_settings.replace(redis=evicting_redis.url)
    store = current.set_current_config(settings)
    try:
        drop_our_indexes(store)
        worker = worker_factory(settings=settings)  # a new database: the worker creates the indexes
        output = worker.output()
        assert "maxmemory-policy is 'allkeys-lru'" in output
        assert "created mrq's" in output and "lacks" not in output
        assert missing_indexes(store.connections.mongodb_jobs, store.connections.mongodb_logs) == []
        worker.kill()
        store.jobs.drop_index("status_id")  # some of ours missing: an operator's decision, a warning
        worker = worker_factory(settings=settings)
        assert "MongoDB lacks 1 of mrq's indexes (mrq_jobs.status_id)" in worker.output()
        assert "--ensure_indexes" in worker.output()
        worker.kill()
        worker = worker_factory("--ensure_indexes", settings=settings)
        assert "lacks" not in worker.output() and "indexes: status_id" in worker.output()
        assert eviction_warning(store.redis) is not None
    finally:
        current.reset()


def test_no_eviction_warning_on_noeviction(store: Store) -> None:
    assert eviction_warning(store.redis) is None


def test_clock_skew(store: Store) -> None:
    import time

    assert abs(clock_skew(store.redis)) < 1
    assert 4 < clock_skew(store.redis, clock=lambda: time.time() - 5) < 6


def test_metrics_answer_during_a_redis_outage(mrq_settings: Settings, worker_factory: Any) -> None:
    server = RedisServer()
    server.start()
    try:
        port = free_port()
        worker_factory("--admin_port", str(port), settings=mrq_settings.replace(redis=server.url),
                       env={"MRQ_REDIS_TIMEOUT": "1"})
        server.freeze()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=15) as response:
            text = response.read().decode()
        assert 'mrq_up{store="redis"} 0.0' in text
        assert "mrq_greenlets_total 1.0" in text
    finally:
        server.thaw()
        server.close()
