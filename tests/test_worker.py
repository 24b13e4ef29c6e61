"""The worker end to end, as real `mrq-worker` processes: every status, results, tracebacks,
logs, progress, parallelism, no prefetch, limits, and bad jobs that must not stop it."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from mrq.job import Job, queue_job, queue_jobs
from mrq.store import Store
from mrq.testing.workers import wait_until

TASKS = "tests.tasks.general"


def wait_status(job_id: Any, statuses: str | tuple[str, ...], timeout: float = 20.0) -> dict[str, Any]:
    wanted = (statuses,) if isinstance(statuses, str) else statuses

    def reached() -> dict[str, Any] | None:
        data = Job(job_id).fetch().data
        assert data is not None
        return data if data["status"] in wanted else None

    try:
        return wait_until(reached, timeout, interval=0.05, message=f"status {wanted}")
    except TimeoutError:
        raise AssertionError(f"job {job_id} is {Job(job_id).fetch().status}, expected {wanted}") from None


def test_success_stores_result_timings_and_logs(store: Store, worker_factory: Any) -> None:
    worker_factory("--greenlets", "2")
    job_id = queue_job(f"{TASKS}.Add", {"a": 40, "b": 2})
    data = wait_status(job_id, "success")
    assert data["result"] == 42
    assert data["datestarted"] <= data["datefinished"]
    assert data["totaltime"] >= 0 and data["dateexpires"] > data["datefinished"]
    assert data["worker"] is not None
    # the running set is empty once the final status is stored
    wait_until(lambda: not store.redis.keys(f"{{{store.keys.prefix}:q:default}}:running:*") or
               all(store.redis.scard(k) == 0 for k in store.redis.keys(f"{{{store.keys.prefix}:q:default}}:running:*")),
               message="running set emptied")
    logs = wait_until(lambda: list(store.logs.find({"job": job_id})), message="job logs stored")
    assert "adding 40 and 2" in logs[0]["logs"]


def test_plain_function_task(store: Store, worker_factory: Any) -> None:
    worker_factory()
    assert wait_status(queue_job(f"{TASKS}.add", {"a": 1, "b": 2}), "success")["result"] == 3


def test_failed_stores_traceback_and_type(store: Store, worker_factory: Any) -> None:
    worker_factory()
    data = wait_status(queue_job(f"{TASKS}.Fail", {"message": "boom"}), "failed")
    assert data["exceptiontype"] == "ValueError"
    assert "ValueError: boom" in data["traceback"] and "general.py" in data["traceback"]
    assert data["traceback_history"][-1]["status"] == "failed"
    frames = [line for line in data["traceback"].splitlines() if line.lstrip().startswith('File "')]
    assert frames and "tests/tasks/general.py" in frames[0], frames  # the task's own frame first, not mrq's


def test_unknown_task_fails_and_worker_keeps_going(store: Store, worker_factory: Any) -> None:
    worker_factory()
    bad = queue_job(f"{TASKS}.DoesNotExist", {})
    broken = queue_job("tests.tasks.broken_import.Anything", {})
    missing_module = queue_job("tests.tasks.nope.Task", {})
    good = queue_job(f"{TASKS}.Add", {"a": 1, "b": 1})
    data = wait_status(bad, "failed")
    assert data["exceptiontype"] == "TaskNotFound"
    assert f"no task {TASKS}.DoesNotExist" in data["traceback"]
    data = wait_status(broken, "failed")
    assert data["exceptiontype"] == "TaskImportError"
    assert "this module is broken on purpose" in data["traceback"]
    assert "no module named 'tests.tasks.nope'" in wait_status(missing_module, "failed")["traceback"]
    assert wait_status(good, "success")["result"] == 2


def test_unstorable_result_fails_with_reason(store: Store, worker_factory: Any) -> None:
    worker_factory()
    data = wait_status(queue_job(f"{TASKS}.ReturnObject", {}), "failed")
    assert data["exceptiontype"] == "InvalidResult"
    assert "cannot be stored in MongoDB" in data["traceback"]


def test_timeout_kills_a_task_that_catches_exception(store: Store, worker_factory: Any) -> None:
    worker_factory("--greenlets", "2", env={"MRQ_TASKS": json.dumps({f"{TASKS}.CatchAllSleep": {"timeout": 1}})})
    started = time.monotonic()
    job_id = queue_job(f"{TASKS}.CatchAllSleep", {"seconds": 30})
    other = queue_job(f"{TASKS}.Add", {"a": 1, "b": 1})
    data = wait_status(job_id, "timeout", timeout=15)
    assert time.monotonic() - started < 10
    assert data["exceptiontype"] == "TimeoutInterrupt"
    assert "result" not in data
    assert wait_status(other, "success")["result"] == 2


def test_retry_then_success(store: Store, worker_factory: Any) -> None:
    worker_factory("--greenlets", "2")
    job_id = queue_job(f"{TASKS}.Retry", {"succeed_after": 2, "delay": 0})
    data = wait_status(job_id, "success")
    assert data["result"] == 2 and data["retry_count"] == 2
    assert [h["status"] for h in data["traceback_history"]] == ["retry", "retry"]
    assert "exceptiontype" not in data and "traceback" not in data  # the retries' errors: in the history only
    assert data["traceback_history"][0]["exceptiontype"] == "RetryInterrupt"


def test_retry_with_delay_waits_then_runs(store: Store, worker_factory: Any) -> None:
    worker_factory()
    job_id = queue_job(f"{TASKS}.Retry", {"succeed_after": 1, "delay": 2})
    data = wait_status(job_id, "retry")
    due = data["dateretry"]
    assert 1.9 <= (due - data["datestarted"]).total_seconds() <= 3
    assert store.redis.zscore(store.keys.queue_delayed("default"), str(job_id)) is not None
    data = wait_status(job_id, "success", timeout=15)
    # not before it was due, and soon after (the idle worker sleeps until then; no periodic sweep,
    # whose period would be minutes). The bound is loose: CI machines are shared and noisy.
    late = (data["datestarted"] - due).total_seconds()
    assert -0.01 <= late < 4, late
    assert data["result"] == 1


def test_maxretries_keeps_the_original_error(store: Store, worker_factory: Any) -> None:
    worker_factory()
    data = wait_status(queue_job(f"{TASKS}.RetryOnError", {"max_retries": 1, "delay": 0}), "maxretries")
    assert data["retry_count"] == 1
    assert data["exceptiontype"] == "MaxRetriesInterrupt"
    assert "ConnectionError: remote down" in data["traceback"]


def test_abort(store: Store, worker_factory: Any) -> None:
    worker_factory()
    data = wait_status(queue_job(f"{TASKS}.Abort", {}), "abort")
    assert data["exceptiontype"] == "AbortInterrupt"


def test_cancelled_job_never_runs(store: Store, worker_factory: Any) -> None:
    cancelled = queue_job(f"{TASKS}.RecordExecution", {})
    kept = queue_job(f"{TASKS}.RecordExecution", {})
    assert Job(cancelled).cancel()
    # also put the cancelled id back on the queue by hand: the worker must still skip it
    store.redis.lpush(store.keys.queue_ids("default"), str(cancelled))
    worker_factory()
    wait_status(kept, "success")
    assert Job(cancelled).fetch().status == "cancel"
    assert store.connections.mongodb_jobs.executions.count_documents({"_id": cancelled}) == 0


def test_progress_is_saved_while_running(store: Store, worker_factory: Any) -> None:
    worker_factory()
    job_id = queue_job(f"{TASKS}.Progress", {"steps": 10, "step_seconds": 0.3})
    mid = wait_until(lambda: (Job(job_id).fetch().data or {}).get("progress"), timeout=10, message="progress saved")
    assert 0 < mid < 1
    assert wait_status(job_id, "success")["progress"] == 1


def test_logs_survive_unicode_and_bytes(store: Store, worker_factory: Any) -> None:
    worker_factory()
    job_id = queue_job(f"{TASKS}.Logs", {"lines": ["first", "café ☃"]})
    wait_status(job_id, "success")
    text = wait_until(lambda: "\n".join(d["logs"] for d in store.logs.find({"job": job_id})).count("\n") >= 3
                      and "\n".join(d["logs"] for d in store.logs.find({"job": job_id})), message="4 log lines")
    assert "first" in text and "café ☃" in text
    assert "bytes message é" in text and "unicode ☃ 😀" in text


def test_logs_off_with_mongodb_logs_0(store: Store, worker_factory: Any) -> None:
    worker = worker_factory(env={"MRQ_MONGODB_LOGS": "0"})
    job_id = queue_job(f"{TASKS}.Logs", {"lines": ["not stored"]})
    wait_status(job_id, "success")
    worker.stop()
    assert store.logs.count_documents({}) == 0
    assert "not stored" in worker.output()  # still echoed by the worker


def test_hundred_one_second_jobs_run_in_parallel(store: Store, worker_factory: Any) -> None:
    ids = queue_jobs(f"{TASKS}.Sleep", [{"seconds": 1}] * 100)
    started = time.monotonic()
    worker_factory("--greenlets", "50")
    wait_until(lambda: store.jobs.count_documents({"status": "success"}) == 100, timeout=30, message="100 done")
    elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed
    assert len(ids) == 100


def test_no_prefetch_beyond_free_greenlets(store: Store, worker_factory: Any) -> None:
    busy = worker_factory("--greenlets", "2")
    long_jobs = queue_jobs(f"{TASKS}.Sleep", [{"seconds": 10}, {"seconds": 10}])
    for job_id in long_jobs:
        wait_status(job_id, "started")
    waiting = queue_job(f"{TASKS}.Add", {"a": 1, "b": 1})
    time.sleep(1.0)  # give the busy worker every chance to (wrongly) take it
    assert Job(waiting).fetch().status == "queued"
    assert store.redis.lrange(store.keys.queue_ids("default"), 0, -1) == [str(waiting).encode()]
    idle_started = time.monotonic()
    worker_factory("--greenlets", "2")
    data = wait_status(waiting, "success", timeout=10)
    assert time.monotonic() - idle_started < 8
    assert data["worker"] != Job(long_jobs[0]).fetch().data["worker"]
    busy.kill()


def test_queue_priority_order(store: Store, worker_factory: Any) -> None:
    low = queue_jobs(f"{TASKS}.RecordExecution", [{}] * 5, queue="low")
    high = queue_jobs(f"{TASKS}.RecordExecution", [{}] * 5, queue="high")
    worker_factory("--greenlets", "1", "high", "low")
    wait_until(lambda: store.jobs.count_documents({"status": "success"}) == 10, timeout=20, message="all done")
    started = sorted(store.jobs.find({}), key=lambda d: d["datestarted"])
    assert [d["_id"] for d in started[:5]] == high
    assert [d["_id"] for d in started[5:]] == low


def test_max_jobs_exits_cleanly(store: Store, worker_factory: Any) -> None:
    queue_jobs(f"{TASKS}.Add", [{"a": 1, "b": 1}] * 5)
    worker = worker_factory("--max_jobs", "3", "--greenlets", "2")
    assert worker.wait(20) == 0
    assert store.jobs.count_documents({"status": "success"}) == 3
    assert store.jobs.count_documents({"status": "queued"}) == 2


def test_max_time_exits_cleanly(store: Store, worker_factory: Any) -> None:
    worker = worker_factory("--max_time", "1")
    started = time.monotonic()
    assert worker.wait(20) == 0
    assert time.monotonic() - started < 10


def test_burst_exits_when_queues_are_empty(store: Store, worker_factory: Any) -> None:
    queue_jobs(f"{TASKS}.Add", [{"a": 1, "b": 1}] * 20)
    worker = worker_factory("--dequeue_strategy", "burst", "--greenlets", "5", wait=False)
    assert worker.wait(30) == 0
    assert store.jobs.count_documents({"status": "success"}) == 20


def test_worker_rejects_bad_queue_and_unreachable_store(store: Store, worker_factory: Any,
                                                        mrq_settings: Any) -> None:
    worker = worker_factory("bad queue", wait=False)
    assert worker.wait(20) == 2
    assert "contains ' '" in worker.output()
    from mrq.testing.stack import free_port

    worker = worker_factory(wait=False, env={"MRQ_REDIS": f"redis://:pw-secret@127.0.0.1:{free_port()}/0",
                                             "MRQ_REDIS_TIMEOUT": "1"})
    assert worker.wait(20) == 3
    output = worker.output()
    assert "cannot reach Redis at redis://:***@127.0.0.1:" in output and "pw-secret" not in output
    assert "Traceback" not in output
    assert "Is it running, at that address? (MRQ_REDIS or --redis sets it)" in output  # what to do next
    for uri in ("notaurl", "redis://127.0.0.1:notaport/0"):  # malformed: a usage error, at once
        worker = worker_factory(wait=False, env={"MRQ_REDIS": uri})
        assert worker.wait(20) == 2
        assert "redis: " in worker.output() and "Traceback" not in worker.output()
    from mrq.testing.workers import run_command

    done = run_command(mrq_settings.replace(redis="redis://127.0.0.1:notaport/0"), "mrq.cli.run",
                       ["--queue", "default", "tests.tasks.general.Add", "a", "1", "b", "2"])
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Port could not be cast to integer" in done.stderr


def test_worker_help_is_complete(store: Store, mrq_settings: Any) -> None:
    from mrq.testing.workers import run_command

    done = run_command(mrq_settings, "mrq.cli.worker", ["--help"])
    assert done.returncode == 0
    for flag in ("--greenlets", "--gevent", "--max-jobs", "--max-time", "--dequeue-strategy", "--redis",
                 "--mongodb-jobs", "--config", "--redis-prefix", "--name", "--log-level"):
        assert flag in done.stdout


def test_hyphenated_flags_drive_a_real_worker(store: Store, worker_factory: Any) -> None:
    queue_jobs(f"{TASKS}.Add", [{"a": 1, "b": 1}] * 4)
    worker = worker_factory("--max-jobs", "2", "--dequeue-strategy", "sequential", "--report-interval", "0.5",
                            "--no-trace-io")
    assert worker.wait(20) == 0
    assert store.jobs.count_documents({"status": "success"}) == 2
    assert store.jobs.count_documents({"status": "queued"}) == 2


@pytest.mark.parametrize("args", [["--greenlets", "abc"], ["--nope"], ["--dequeue_strategy", "fast"]])
def test_worker_bad_flags_exit_2_with_one_line(store: Store, mrq_settings: Any, args: list[str]) -> None:
    from mrq.testing.workers import run_command

    done = run_command(mrq_settings, "mrq.cli.worker", args)
    assert done.returncode == 2
    assert done.stderr.startswith("mrq-worker: ") and done.stderr.count("\n") == 1


def test_worker_report_shows_running_jobs_and_ends_as_stop(store: Store, worker_factory: Any) -> None:
    worker = worker_factory("--greenlets", "3", "--report_interval", "0.2", "--name", "reporter")
    ids = queue_jobs(f"{TASKS}.Sleep", [{"seconds": 3}] * 2)

    def busy_report() -> dict[str, Any] | None:
        report = store.workers.find_one({"name": "reporter"})
        return report if report and report["greenlets"]["busy"] == 2 else None

    report = wait_until(busy_report, timeout=10, message="report with 2 busy greenlets")
    assert report["status"] in ("wait", "spawn", "full")
    assert report["greenlets"] == {"busy": 2, "total": 3}
    assert report["pid"] == worker.pid and report["queues"] == ["default"]
    assert sorted(j["id"] for j in report["jobs"]) == sorted(ids)
    assert all(j["path"] == f"{TASKS}.Sleep" and j["datestarted"] is not None for j in report["jobs"])
    assert report["process"]["rss_mb"] > 10
    worker.send(__import__("signal").SIGINT)
    assert worker.wait(20) == 0
    final = store.workers.find_one({"name": "reporter"})
    assert final["status"] == "stop" and final["done_jobs"] == 2 and final["jobs"] == []


def test_max_memory_makes_the_worker_exit_cleanly(store: Store, worker_factory: Any) -> None:
    job_id = queue_job(f"{TASKS}.Sleep", {"seconds": 1})
    worker = worker_factory("--max_memory", "1", "--report_interval", "0.2")
    assert worker.wait(20) == 0
    assert "is over --max_memory 1 MB" in worker.output()
    # the job it had taken was finished, not abandoned
    assert Job(job_id).fetch().status in ("success", "queued")


def test_abort_a_running_job_from_outside(store: Store, worker_factory: Any) -> None:
    from mrq.exceptions import InvalidStatusTransition

    worker_factory("--greenlets", "2")
    target = queue_job(f"{TASKS}.CatchAllSleep", {"seconds": 30})  # even a task catching Exception
    other = queue_job(f"{TASKS}.Sleep", {"seconds": 1})
    wait_status(target, "started")
    assert Job(target).abort_running() >= 1
    data = wait_status(target, "abort", timeout=10)
    assert data["exceptiontype"] == "AbortInterrupt"
    assert wait_status(other, "success")["result"] == "slept"
    with pytest.raises(InvalidStatusTransition, match="not running"):
        Job(other).abort_running()


def test_a_connection_error_in_a_task_is_retried_not_failed(store: Store, worker_factory: Any) -> None:
    worker_factory(env={"MRQ_DEFAULT_JOB_RETRY_DELAY": "0.2"})
    data = wait_status(queue_job(f"{TASKS}.FlakyConnection", {}), "success")
    assert data["result"] == "reconnected" and data["retry_count"] == 1
    assert data["traceback_history"][0]["exceptiontype"] == "AutoReconnect"


def test_connection_error_retries_can_be_turned_off(store: Store, worker_factory: Any) -> None:
    worker_factory(env={"MRQ_RETRY_ON_CONNECTION_ERRORS": "0"})
    data = wait_status(queue_job(f"{TASKS}.FlakyConnection", {}), "failed")
    assert data["exceptiontype"] == "AutoReconnect"


def test_an_idle_worker_is_woken_by_its_notification_after_long_silences(store: Store, worker_factory: Any) -> None:
    """The listener reads its channel without a timeout of its own; the Redis client drops the
    connection after `redis_timeout` seconds of silence and the listener subscribes again. A job
    queued after several such silences still wakes the worker at once, not at its 5 s re-check."""
    worker = worker_factory("--greenlets", "2", env={"MRQ_REDIS_TIMEOUT": "0.5"})
    wait_status(queue_job("tests.tasks.general.Add", {"a": 1, "b": 1}), "success")
    for _ in range(2):
        time.sleep(1.6)  # past three socket timeouts: the listener subscribed again
        started = time.monotonic()
        job_id = queue_job("tests.tasks.general.Add", {"a": 1, "b": 2})
        wait_status(job_id, "success", timeout=10)
        elapsed = time.monotonic() - started
        assert elapsed < 1.5, f"picked up after {elapsed:.2f}s: not woken by its notification"
    assert worker.running
