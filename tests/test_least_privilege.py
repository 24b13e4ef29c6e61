"""mrq runs with the least privileges a deployment would grant: a Redis ACL user limited to mrq's
key prefix, its channels and the command categories below (docs/deployment.md has the line)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from mrq import current
from mrq.config import Settings
from mrq.job import queue_job, queue_jobs, queue_raw_jobs
from mrq.queue import Queue, pause_queue, queue_infos, resume_queue
from mrq.testing.stack import RedisServer
from mrq.testing.workers import wait_until

PASSWORD = "mrq-acl-s3cret"


def acl_line(prefix: str) -> list[str]:
    """The ACL of the mrq user, as docs/deployment.md gives it (`<p>` = the redis_prefix)."""
    return [f"~{prefix}:*", f"~{{{prefix}:*", f"&{prefix}:*", "+@read", "+@write", "+@pubsub", "+@scripting",
            "+@connection", "+@transaction", "+info", "+time", "-flushall", "-flushdb", "-keys"]


@pytest.fixture
def acl_redis() -> Any:
    server = RedisServer()
    server.start()
    yield server
    server.close()


def test_workers_and_producers_run_as_an_acl_user_limited_to_the_prefix(
        mrq_settings: Settings, acl_redis: RedisServer, worker_factory: Any) -> None:
    prefix = mrq_settings.redis_prefix
    admin = redis.Redis(port=acl_redis.port)
    admin.acl_setuser("mrq", enabled=True, passwords=[f"+{PASSWORD}"], reset=True)
    admin.execute_command("ACL", "SETUSER", "mrq", *acl_line(prefix))
    admin.set("other-app:secret", "not for mrq")
    url = f"redis://mrq:{PASSWORD}@127.0.0.1:{acl_redis.port}/0"
    settings = mrq_settings.replace(redis=url, raw_queues={"fast_raw": {"job_factory": "tests.tasks.factories.record"}})
    store = current.set_current_config(settings)
    try:
        limited = store.redis
        with pytest.raises(redis.exceptions.NoPermissionError):
            limited.get("other-app:secret")  # outside the prefix
        with pytest.raises(redis.exceptions.NoPermissionError):
            limited.flushall()
        ids = queue_jobs("tests.tasks.general.Add", [{"a": i, "b": 1} for i in range(20)])
        retried = queue_job("tests.tasks.general.Retry", {"succeed_after": 1})
        queue_raw_jobs("fast_raw", ["x", "y"])
        pause_queue(store, "default")
        resume_queue(store, "default")
        env = {"MRQ_RAW_QUEUES": '{"fast_raw": {"job_factory": "tests.tasks.factories.record"}}',
               "MRQ_WORKER_LEASE": "2"}
        worker = worker_factory("--greenlets", "5", "default", "fast_raw", settings=settings, env=env)
        wait_until(lambda: store.jobs.count_documents({"status": "success"}) == 23, 30, message="23 jobs done")
        assert store.jobs.find_one({"_id": retried})["retry_count"] == 1  # type: ignore[index]
        assert {info.name for info in queue_infos(store)} >= {"default", "fast_raw"}
        assert Queue("default", store).size() == 0
        output = worker.output()
        assert "NOPERM" not in output.replace("start-up check skipped", ""), output[-2000:]
        assert len(ids) == 20
        assert admin.get("other-app:secret") == b"not for mrq"
    finally:
        current.reset()


def readonly_acl_line(prefix: str) -> list[str]:
    """A read-only dashboard's ACL: reads, and the one read-only script (lease deadlines)."""
    return [f"~{prefix}:*", f"~{{{prefix}:*", "+@read", "+@connection", "+evalsha", "+eval", "+script|load",
            "+time"]


def test_a_read_only_dashboard_runs_as_a_read_only_acl_user(mrq_settings: Settings, acl_redis: RedisServer,
                                                           worker_factory: Any) -> None:
    from mrq_dashboard import create_app

    prefix = mrq_settings.redis_prefix
    admin = redis.Redis(port=acl_redis.port)
    admin.acl_setuser("mrq", enabled=True, passwords=[f"+{PASSWORD}"], reset=True)
    admin.execute_command("ACL", "SETUSER", "mrq", *acl_line(prefix))
    admin.acl_setuser("viewer", enabled=True, passwords=[f"+{PASSWORD}"], reset=True)
    admin.execute_command("ACL", "SETUSER", "viewer", *readonly_acl_line(prefix))
    writer = mrq_settings.replace(redis=f"redis://mrq:{PASSWORD}@127.0.0.1:{acl_redis.port}/0")
    store = current.set_current_config(writer)
    try:
        queue_jobs("tests.tasks.general.Add", [{"a": 1, "b": 2}] * 3, queue="shown")
        worker_factory("--greenlets", "2", "other", settings=writer)
        viewer = mrq_settings.replace(redis=f"redis://viewer:{PASSWORD}@127.0.0.1:{acl_redis.port}/0",
                                      dashboard_readonly=True)
        app = create_app(viewer, cache_seconds=0)
        client = app.test_client(use_cookies=False)
        for url in ("/", "/workers", "/jobs", "/api/overview", "/api/queues", "/api/workers", "/metrics"):
            response = client.get(url)
            assert response.status_code == 200, (url, response.data[:300])
        queues = {q["name"]: q for q in client.get("/api/queues").json["queues"]}
        assert queues["shown"]["size"] == 3
        assert len(client.get("/api/workers").json["workers"]) == 1
        with pytest.raises(redis.exceptions.NoPermissionError):
            redis.Redis.from_url(viewer.redis).rpush(f"{prefix}:x", "1")  # the viewer cannot write
        assert store.jobs.count_documents({}) == 3
        app.extensions["mrq"].store.close()
    finally:
        current.reset()
