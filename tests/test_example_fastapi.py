"""examples/fastapi_app.py, served by uvicorn on 127.0.0.1 with a real worker: a POST queues a
job (mrq.aio, the typed task's aqueue), GET serves its status and result; a bad body or id gets
a 4xx, Redis down a 503 with nothing left queued."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from bson import ObjectId

from mrq.config import Settings
from mrq.store import Store
from mrq.testing.stack import RedisServer, free_port
from mrq.testing.workers import CommandProcess

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


class AppProcess(CommandProcess):
    module = "uvicorn"


def call(base: str, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def serve(settings: Settings, env: dict[str, str] | None = None) -> tuple[AppProcess, str]:
    port = free_port()
    app = AppProcess(settings, ["examples.fastapi_app:app", "--host", "127.0.0.1", "--port", str(port)], env=env)
    app.start(ready_text="Uvicorn running on", timeout=30)
    return app, f"http://127.0.0.1:{port}"


def test_a_request_queues_a_job_a_worker_runs_it_and_the_app_serves_its_status(
        store: Store, mrq_settings: Settings, worker_factory: Any) -> None:
    app, base = serve(mrq_settings)
    try:
        status, body = call(base, "POST", "/summaries", {"text": "one two three four five six seven", "max_words": 3})
        assert status == 202, body
        job_id = body["id"]
        doc = store.jobs.find_one({"_id": ObjectId(job_id)})
        assert doc["path"] == "examples.tasks.summarize" and doc["params"] == {
            "text": "one two three four five six seven", "max_words": 3}
        status, body = call(base, "GET", f"/jobs/{job_id}")
        assert status == 200 and body["status"] == "queued" and body["result"] is None
        worker_factory("--greenlets", "2")
        status, body = call(base, "GET", f"/jobs/{job_id}?wait=20")
        assert status == 200, body
        assert body == {"id": job_id, "status": "success", "result": {"words": 7, "summary": "one two three"}}
        assert call(base, "POST", "/summaries", {"max_words": 3})[0] == 422  # no text: FastAPI refuses it
        assert call(base, "GET", "/jobs/not-an-id")[0] == 404
        assert call(base, "GET", "/jobs/0123456789abcdef01234567")[0] == 404
        assert store.jobs.count_documents({}) == 1
    finally:
        app.close()


def test_redis_down_answers_503_and_leaves_nothing_queued(store: Store, mrq_settings: Settings,
                                                          own_redis: RedisServer) -> None:
    settings = mrq_settings.replace(redis=own_redis.url)
    app, base = serve(settings, env={"MRQ_REDIS_TIMEOUT": "1"})
    try:
        assert call(base, "POST", "/summaries", {"text": "up"})[0] == 202
        own_redis.stop()
        status, body = call(base, "POST", "/summaries", {"text": "while redis is down"})
        assert status == 503 and "cannot reach Redis" in body["detail"], body
        texts = [doc["params"]["text"] for doc in store.jobs.find({"status": "queued"})]
        assert texts == ["up"]  # the second job's document was removed: "not queued"
    finally:
        app.close()
