"""The Node.js producer (clients/node, `mrq-client`) against the real stack: its `node --test`
suite runs with a real Python worker taking the jobs it queues, on this test's Redis prefix and
MongoDB database (strict mode included: the Node driver authenticates as the per-test user).

Before the Node suite starts, Python's `queue_jobs` queues the reference jobs of
clients/node/test/fixtures/reference-jobs.json on a Redis prefix of their own, listening to the
wake-up messages it publishes; the Node suite queues the same jobs on another prefix and compares
documents (field for field, BSON type for type), Redis keys and messages with Python's. The same
for the jobs that wait for others of fixtures/waiting-jobs.json, on dependencies the worker ran.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from bson import ObjectId

from mrq.config import Settings
from mrq.exceptions import InvalidJob, InvalidQueueName
from mrq.queue.base import queue_kind
from mrq.queue.producer import queue_jobs
from mrq.storage.keys import validate_job_queue
from mrq.store import Store
from mrq.task.paths import validate_task_path
from mrq.testing.workers import WorkerProcess, command_env, wait_until

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "node"
REFERENCE = CLIENT / "test" / "fixtures" / "reference-jobs.json"
WAITING = CLIENT / "test" / "fixtures" / "waiting-jobs.json"
VALIDATION = CLIENT / "test" / "fixtures" / "validation-cases.json"
NODE_TIMEOUT = 100  # seconds; the suite takes 5 to 10


def node_binary() -> str:
    """The `node` to run the suite with: skipped without one, failed when it is older than 20."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (the Node.js client's tests need Node.js 20+)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    major = re.match(r"v(\d+)\.", version)
    assert major and int(major[1]) >= 20, f"{node} is Node.js {version!r}: mrq-client needs Node.js 20 or later"
    return node


def delete_prefixes(url: str, prefix: str) -> None:
    """Remove the keys of every prefix of this test's own (`<prefix>-...`)."""
    client = redis.Redis.from_url(url)
    try:
        for pattern in (f"{prefix}-*", f"{{{prefix}-*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start:start + 500])
    finally:
        client.close()


@pytest.fixture
def own_prefixes(mrq_settings: Settings) -> Iterator[str]:
    yield mrq_settings.redis_prefix
    delete_prefixes(mrq_settings.redis, mrq_settings.redis_prefix)


def queue_reference_jobs(settings: Settings, prefix: str) -> dict[str, Any]:
    """Queue the reference cases with Python's queue_jobs on `prefix`; return their ids and the
    wake-up messages published (channel without the prefix, payload)."""
    py_store = Store(settings.replace(redis_prefix=prefix))
    pubsub = py_store.redis.pubsub()
    try:
        pubsub.psubscribe(f"{prefix}:notify:*")
        assert pubsub.get_message(timeout=5)["type"] == "psubscribe"
        cases = json.loads(REFERENCE.read_text())["cases"]
        ids = [[str(i) for i in queue_jobs(case["path"], case["paramsList"], queue=case["queue"], store=py_store)]
               for case in cases]
        messages: list[list[str]] = []
        deadline = time.monotonic() + 10
        while len(messages) < len(cases) and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
            if message and message["type"] == "pmessage":
                messages.append([message["channel"].decode()[len(prefix) + 1:], message["data"].decode()])
        assert len(messages) == len(cases), messages
        return {"prefix": prefix, "ids": ids, "messages": messages}
    finally:
        pubsub.close()
        py_store.close()


def ended_dependencies(settings: Settings) -> dict[str, str]:
    """The dependencies of the waiting reference jobs, by name: `pending` (on a queue no worker
    takes), `ok` and `bad` (run by the worker: ended success and failed)."""
    py_store = Store(settings)
    try:
        deps = {"pending": queue_jobs("tests.tasks.general.Echo", [{}], queue="node_ref_dep", store=py_store)[0],
                "ok": queue_jobs("tests.tasks.general.Add", [{"a": 1, "b": 2}], store=py_store)[0],
                "bad": queue_jobs("tests.tasks.general.Fail", [{"message": "a dependency fails"}], store=py_store)[0]}
        wanted = {"pending": "queued", "ok": "success", "bad": "failed"}

        def ended() -> bool:
            found = {doc["_id"]: doc["status"] for doc in py_store.jobs.find({"_id": {"$in": list(deps.values())}})}
            return all(found.get(deps[name]) == status for name, status in wanted.items())

        wait_until(ended, 30, message="the reference dependencies ended")
        return {name: str(job_id) for name, job_id in deps.items()}
    finally:
        py_store.close()


def queue_waiting_reference(settings: Settings, prefix: str, deps: dict[str, str]) -> dict[str, Any]:
    """Queue the cases of waiting-jobs.json with Python's queue_jobs on `prefix`: their ids, the
    wake-up messages published (by the jobs settled at once), the dependencies' ids."""
    py_store = Store(settings.replace(redis_prefix=prefix))
    pubsub = py_store.redis.pubsub()
    try:
        pubsub.psubscribe(f"{prefix}:notify:*")
        assert pubsub.get_message(timeout=5)["type"] == "psubscribe"
        ids = []
        for case in json.loads(WAITING.read_text())["cases"]:
            queued = queue_jobs(case["path"], case["paramsList"], queue=case["queue"], store=py_store,
                                depends_on=[deps[name] for name in case["dependsOn"]],
                                on_dependency_failure=case.get("onDependencyFailure", "cancel"))
            ids.append([str(i) for i in queued])
        # One message per job queued at once (its dependencies had ended): one push each.
        settled = py_store.jobs.count_documents({"_id": {"$in": [ObjectId(i) for batch in ids for i in batch]},
                                                 "status": "queued"})
        assert settled >= 3, f"{settled} reference jobs settled at enqueue"
        messages: list[list[str]] = []
        deadline = time.monotonic() + 10
        while len(messages) < settled and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
            if message and message["type"] == "pmessage":
                messages.append([message["channel"].decode()[len(prefix) + 1:], message["data"].decode()])
        return {"prefix": prefix, "ids": ids, "messages": messages, "dependencies": deps}
    finally:
        pubsub.close()
        py_store.close()


def python_verdicts() -> dict[str, list[Any]]:
    """What Python says of the task paths and queue names of validation-cases.json: a path is
    valid or not; a queue is "ok", "invalid" (InvalidQueueName) or "raw" (a raw queue)."""
    cases = json.loads(VALIDATION.read_text())
    paths = []
    for path in cases["taskPaths"]:
        try:
            validate_task_path(path)
            paths.append(True)
        except InvalidJob:
            paths.append(False)
    queues = []
    for name in cases["queues"]:
        try:
            queues.append("ok" if queue_kind(validate_job_queue(name)) == "regular" else "raw")
        except InvalidQueueName:
            queues.append("invalid")
    return {"taskPaths": paths, "queues": queues}


def test_node_client_suite(mrq_settings: Settings, worker_factory: Any, own_prefixes: str,
                           tmp_path: Path) -> None:
    node = node_binary()
    assert (CLIENT / "node_modules" / "mongodb").is_dir() and (CLIENT / "node_modules" / "redis").is_dir(), (
        "clients/node/node_modules is missing: run scripts/bootstrap (it runs npm ci)")
    reference = queue_reference_jobs(mrq_settings, f"{own_prefixes}-py")
    reference["nodePrefix"] = f"{own_prefixes}-node"
    reference["verdicts"] = python_verdicts()
    # Python's documents are read by the Node suite: the worker below must not take them. (Its
    # reconciliation pushes the ids of the database's queued jobs it finds in no Redis structure of
    # its prefix, these included, onto its own prefix's queues: queues it does not take either.)
    assert all(not case["queue"].startswith(("default", "node_sub")) for case in
               json.loads(REFERENCE.read_text())["cases"])
    worker: WorkerProcess = worker_factory("--greenlets", "20", "default", "node_sub/")
    reference["waiting"] = queue_waiting_reference(mrq_settings, f"{own_prefixes}-pyw",
                                                   ended_dependencies(mrq_settings))
    reference["waiting"]["nodePrefix"] = f"{own_prefixes}-nodew"
    env = command_env(mrq_settings, {
        "MRQ_TEST_REFERENCE": json.dumps(reference),
        "MRQ_TEST_REDIS_SERVER": shutil.which("redis-server") or "redis-server",
        "MRQ_TEST_PROJECT_ROOT": str(ROOT),
        "NODE_OPTIONS": "",
    })
    tap = tmp_path / "node-test.tap"
    test_files = sorted(str(path.relative_to(CLIENT)) for path in (CLIENT / "test").glob("*.test.js"))
    assert len(test_files) >= 5, test_files
    started = time.monotonic()
    # The files in parallel (node's default is one per CPU but one): they mostly wait on the stores.
    command = [node, "--test", "--test-concurrency=8", "--test-timeout=60000", "--test-reporter=spec",
               "--test-reporter-destination=stdout", "--test-reporter=tap", f"--test-reporter-destination={tap}",
               *test_files]
    # Its own process group: a run past the timeout is killed with its test-file processes.
    with subprocess.Popen(command, cwd=CLIENT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as node_run:
        try:
            stdout, stderr = node_run.communicate(timeout=NODE_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(node_run.pid, signal.SIGKILL)
            stdout, stderr = node_run.communicate()
            pytest.fail(f"node --test still running after {NODE_TIMEOUT}s:\n{stdout}\n{stderr}\n"
                        f"worker:\n{worker.output()[-3000:]}")
    proc = subprocess.CompletedProcess(command, node_run.returncode, stdout, stderr)
    output = f"{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, f"node --test exited with {proc.returncode}:\n{output}\n" \
                                 f"worker:\n{worker.output()[-3000:]}"
    # Nothing skipped, nothing left as a todo: every Node test ran and passed.
    summary = {match[1]: int(match[2]) for match in re.finditer(r"^# (\w+) (\d+)$", tap.read_text(), re.MULTILINE)}
    assert summary.get("tests", 0) >= 20 and summary["pass"] == summary["tests"], (summary, output)
    assert summary["fail"] == summary["cancelled"] == summary["skipped"] == summary["todo"] == 0, (summary, output)
    print(f"node --test: {summary['pass']} tests passed in {time.monotonic() - started:.1f}s")
