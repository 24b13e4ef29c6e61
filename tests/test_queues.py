"""Queue kinds, pause/resume, introspection."""

from __future__ import annotations

import time
from typing import Any

from mrq.job import Job, queue_job, queue_jobs
from mrq.queue import Queue, queue_infos, status_counts
from mrq.store import Store
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
