"""Queue kinds, pause/resume, introspection."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from typing import Any

from mrq.job import Job, queue_job, queue_jobs
from mrq.queue import Queue, queue_infos, queue_raw_jobs, status_counts
from mrq.store import Store
from mrq.testing.pytest_plugin import PROJECT_ROOT
from mrq.testing.workers import command_env, wait_until
from tests.test_worker import wait_status

TASKS = "tests.tasks.general"


def test_pause_stops_dequeues_within_a_second_and_resume_restarts(store: Store, worker_factory: Any) -> None:
    worker_factory("--greenlets", "2", "a", "b")
    queue = Queue("a", store)
    queue.pause()
    assert queue.is_paused()
    time.sleep(1.2)  # the worker learns about it by message at once, or by re-reading within 1 s
    held = queue_jobs(f"{TASKS}.Add", [{"a": 1, "b": 1}] * 3, queue="a")
    other = queue_job(f"{TASKS}.Add", {"a": 2, "b": 2}, queue="b")
    assert wait_status(other, "success")["result"] == 4
    time.sleep(1.0)
    assert all(Job(i).fetch().status == "queued" for i in held)
    assert queue.size() == 3
    queue.resume()
    assert not queue.is_paused()
    for job_id in held:
        wait_status(job_id, "success", timeout=5)


def test_pausing_a_root_pauses_its_subqueues(store: Store) -> None:
    Queue("crawl", store).pause()
    assert Queue("crawl/example.com", store).is_paused()
    assert Queue("crawl/", store).is_paused()
    assert not Queue("crawler", store).is_paused()


def test_queue_infos_and_status_counts(store: Store) -> None:
    queue_jobs(f"{TASKS}.Add", [{"a": 1, "b": 1}] * 4, queue="intro")
    queue_job(f"{TASKS}.Add", {"a": 1, "b": 1}, queue="other")
    Queue("other", store).pause()
    infos = {info.name: info for info in queue_infos(store)}
    assert set(infos) == {"intro", "other"}
    assert infos["intro"].size == 4 and infos["intro"].kind == "regular" and not infos["intro"].paused
    assert infos["other"].paused and infos["other"].size == 1
    assert infos["intro"].oldest_age is not None and 0 <= infos["intro"].oldest_age < 60
    assert status_counts(store) == {"queued": 5}
    assert status_counts(store, "intro") == {"queued": 4}


def test_mrq_queue_cli(store: Store, mrq_settings: Any) -> None:
    from mrq.testing.workers import run_command

    queue_jobs(f"{TASKS}.Add", [{"a": 1, "b": 1}] * 2, queue="cliq")
    done = run_command(mrq_settings, "mrq.cli.queue", ["pause", "cliq"])
    assert done.returncode == 0 and "cliq: paused" in done.stdout
    assert Queue("cliq", store).is_paused()
    done = run_command(mrq_settings, "mrq.cli.queue", ["list", "--json"])
    listed = {q["name"]: q for q in __import__("json").loads(done.stdout)}
    assert listed["cliq"]["size"] == 2 and listed["cliq"]["paused"] is True
    done = run_command(mrq_settings, "mrq.cli.queue", ["resume", "cliq"])
    assert done.returncode == 0 and not Queue("cliq", store).is_paused()
    done = run_command(mrq_settings, "mrq.cli.queue", ["pause", "bad name"])
    assert done.returncode == 2 and "contains ' '" in done.stderr
    done = run_command(mrq_settings, "mrq.cli.queue", ["pause"])
    assert done.returncode == 2 and "needs a queue name" in done.stderr


# --- mrq-queue info, empty, requeue, job ------------------------------------------------------------


def queue_cli(settings: Any, *args: str, stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess:
    """`mrq-queue ...` as a real process, with no terminal on stdin unless given one."""
    return subprocess.run([sys.executable, "-m", "mrq.cli.queue", *args], env=command_env(settings), cwd=PROJECT_ROOT,
                          stdin=stdin, capture_output=True, text=True, timeout=60)


def on_a_terminal(settings: Any, answer: str, *args: str) -> tuple[int, str]:
    """`mrq-queue ...` with a pseudo-terminal on stdin that answers the confirmation."""
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen([sys.executable, "-m", "mrq.cli.queue", *args], env=command_env(settings),
                                   cwd=PROJECT_ROOT, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        os.write(master, answer.encode() + b"\n")
        out, _ = process.communicate(timeout=60)
        return process.returncode, out
    finally:
        os.close(master)
        os.close(slave)


def test_mrq_queue_info_shows_queues_workers_and_refreshes(store: Store, mrq_settings: Any,
                                                          worker_factory: Any) -> None:
    queue_jobs(f"{TASKS}.Add", [{"a": 1, "b": 1}] * 3, queue="infoq")
    worker_factory("--greenlets", "2", "--report-interval", "0.2", "--name", "info-worker", "busyq")
    queue_job(f"{TASKS}.Sleep", {"seconds": 30}, queue="busyq")

    def shows_running() -> str | None:
        done = queue_cli(mrq_settings, "info")
        assert done.returncode == 0, done.stderr
        return done.stdout if re.search(r"(?m)^info-worker +1/2 +\w+ +busyq$", done.stdout) else None

    out = wait_until(shows_running, timeout=15, interval=0.2)
    assert re.search(r"(?m)^infoq +3 +0 +no +\d+s$", out), out
    assert "2 queues, 3 jobs waiting" in out and "1 worker alive" in out
    paged = queue_cli(mrq_settings, "info", "--limit", "1")
    assert "busyq" in paged.stdout and "infoq" not in paged.stdout  # name order, one page
    assert "2 queues, 0 jobs waiting in these (the first 1 in name order" in paged.stdout
    live = subprocess.Popen([sys.executable, "-m", "mrq.cli.queue", "info", "--interval", "0.2"],
                            env=command_env(mrq_settings), cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert live.stdout is not None
        frames = 0
        while frames < 2:
            line = live.stdout.readline()
            assert line, "mrq-queue info --interval stopped by itself"
            frames += "(Ctrl-C to stop)" in line
        live.send_signal(signal.SIGINT)
        out, err = live.communicate(timeout=20)
    finally:
        live.kill() if live.poll() is None else None
    assert live.returncode == 0 and "Traceback" not in err, err


def test_mrq_queue_empty_cancels_the_waiting_jobs(store: Store, mrq_settings: Any, worker_factory: Any) -> None:
    ids = queue_jobs(f"{TASKS}.Add", [{"a": 1, "b": 1}] * 3, queue="emptyq")
    kept = queue_job(f"{TASKS}.Add", {"a": 1, "b": 1}, queue="keepq")
    refused = queue_cli(mrq_settings, "empty", "emptyq")  # no terminal, no --yes: nothing happens
    assert refused.returncode == 2 and "cancel the 3 waiting jobs" in refused.stderr and "--yes" in refused.stderr
    assert refused.stderr.count("\n") == 1 and Queue("emptyq", store).size() == 3
    declined, out = on_a_terminal(mrq_settings, "n", "empty", "emptyq")
    assert declined == 1 and "[y/N]" in out and "nothing changed" in out and Queue("emptyq", store).size() == 3
    done = queue_cli(mrq_settings, "empty", "--yes", "emptyq")  # options before the queue work too
    assert done.returncode == 0 and "emptyq: 3 jobs cancelled" in done.stdout, done.stderr
    assert all(Job(i).fetch().status == "cancel" for i in ids) and Job(kept).fetch().status == "queued"
    assert Queue("emptyq", store).size() == 0 and Queue("keepq", store).size() == 1
    assert worker_factory("--dequeue-strategy", "burst", "emptyq", wait=False).wait(30) == 0
    assert all(Job(i).fetch().status == "cancel" for i in ids)  # the ids left in Redis are dropped, not run
    again = queue_cli(mrq_settings, "empty", "emptyq")
    assert again.returncode == 0 and "no job waiting" in again.stdout
    # a raw queue has no documents: its params are deleted
    queue_raw_jobs("emptyq_raw", ["a", "b"])
    assert queue_cli(mrq_settings, "empty", "emptyq_raw").returncode == 2
    confirmed, out = on_a_terminal(mrq_settings, "y", "empty", "emptyq_raw")
    assert confirmed == 0 and "emptyq_raw: 2 params deleted" in out and Queue("emptyq_raw", store).size() == 0
    for bad, message in ((["empty", "bad name"], "contains ' '"), (["empty"], "needs a queue name"),
                         (["empty", "emptyq_reverse"], "_reverse")):
        done = queue_cli(mrq_settings, *bad)
        assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_mrq_queue_requeue_failed_jobs(store: Store, mrq_settings: Any, worker_factory: Any) -> None:
    failing = [*queue_jobs(f"{TASKS}.Fail", [{}] * 3, queue="rq1"), queue_job(f"{TASKS}.Fail", {}, queue="rq2")]
    assert worker_factory("--dequeue-strategy", "burst", "rq1", "rq2", wait=False).wait(30) == 0
    assert all(Job(i).fetch().status == "failed" for i in failing)
    none = queue_cli(mrq_settings, "requeue", "--queue", "rq1", "--path", f"{TASKS}.Add", "--yes")
    assert none.returncode == 0 and "no failed jobs of queue rq1 of task tests.tasks.general.Add" in none.stdout
    refused = queue_cli(mrq_settings, "requeue", "--queue", "rq1")
    assert refused.returncode == 2 and "requeue the 3 failed jobs of queue rq1" in refused.stderr
    done = queue_cli(mrq_settings, "requeue", "--status", "failed", "--queue", "rq1", "--path", f"{TASKS}.Fail",
                     "--yes")
    assert done.returncode == 0 and "3 jobs requeued" in done.stdout, done.stderr
    assert [Job(i).fetch().status for i in failing] == ["queued"] * 3 + ["failed"]
    assert Queue("rq1", store).size() == 3 and Queue("rq2", store).size() == 0
    confirmed, out = on_a_terminal(mrq_settings, "yes", "requeue", "--status", "failed,cancel")
    assert confirmed == 0 and "requeue the 1 failed/cancel jobs? [y/N]" in out and "1 job requeued" in out
    assert Queue("rq2", store).size() == 1
    for status in ("started", "queued", "nope", ""):
        bad = queue_cli(mrq_settings, "requeue", "--status", status, "--yes")
        assert bad.returncode == 2 and "requeue takes jobs in " in bad.stderr and "failed" in bad.stderr, bad.stderr
    bad = queue_cli(mrq_settings, "requeue", "--path", "not a path", "--yes")
    assert bad.returncode == 2 and "task path" in bad.stderr


def test_mrq_queue_job_shows_a_document(store: Store, mrq_settings: Any) -> None:
    job_id = queue_job(f"{TASKS}.Add", {"a": 1, "b": 2}, queue="jobq")
    done = queue_cli(mrq_settings, "job", str(job_id))
    assert done.returncode == 0 and done.stdout.startswith(f"job {job_id}\n"), done.stderr
    assert re.search(r"(?m)^  path +tests\.tasks\.general\.Add$", done.stdout)
    assert re.search(r"(?m)^  status +queued$", done.stdout) and '{"a": 1, "b": 2}' in done.stdout
    as_json = json.loads(queue_cli(mrq_settings, "job", str(job_id), "--json").stdout)
    assert as_json["_id"] == str(job_id) and as_json["params"] == {"a": 1, "b": 2}
    missing = queue_cli(mrq_settings, "job", "0123456789abcdef01234567")
    assert missing.returncode == 4 and "not found" in missing.stderr and missing.stderr.count("\n") == 1
    bad = queue_cli(mrq_settings, "job", "12345")
    assert bad.returncode == 2 and "not a job id" in bad.stderr


def test_mrq_queue_bad_command_lines_and_unreachable_stores(store: Store, mrq_settings: Any) -> None:
    for args, message in ((["purge"], "invalid choice: 'purge'"), ([], "required: ACTION"),
                          (["info", "--interval", "0"], "--interval > 0"), (["list", "--greenlets", "2"],
                                                                             "unrecognized arguments")):
        done = queue_cli(mrq_settings, *args)
        assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    no_redis = mrq_settings.replace(redis="redis://127.0.0.1:1/0", redis_timeout=1)
    for args in (["info"], ["list"], ["empty", "q", "--yes"], ["pause", "q"]):
        done = queue_cli(no_redis, *args)
        assert done.returncode == 3 and "cannot reach Redis at redis://127.0.0.1:1/0" in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1
    no_mongo = mrq_settings.replace(mongodb_jobs="mongodb://127.0.0.1:1/mrq", mongodb_timeout=0.5)
    for args in (["job", "0123456789abcdef01234567"], ["requeue", "--yes"], ["empty", "q", "--yes"]):
        done = queue_cli(no_mongo, *args)
        assert done.returncode == 3 and "MongoDB at mongodb://127.0.0.1:1/mrq" in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1
