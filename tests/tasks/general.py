"""General-purpose test tasks, MRQ style (Task classes) and plain functions."""

from __future__ import annotations

import os
import time

from mrq.context import (
    abort_current_job,
    connections,
    get_current_job,
    log,
    retry_current_job,
    set_current_job_progress,
)
from mrq.task import Task


class Add(Task):
    def run(self, params):
        log.info("adding %s and %s", params["a"], params["b"])
        return params["a"] + params["b"]


class Echo(Task):
    def run(self, params):
        return params


class Fail(Task):
    def run(self, params):
        raise ValueError(params.get("message", "this task always fails"))


class Sleep(Task):
    def run(self, params):
        time.sleep(params.get("seconds", 1))
        return params.get("result", "slept")


class CatchAllSleep(Task):
    """Sleeps, swallowing every Exception (a timeout must still end it)."""

    def run(self, params):
        deadline = time.time() + params.get("seconds", 10)
        while time.time() < deadline:
            try:
                time.sleep(0.05)
            except Exception:
                pass
        return "survived"


class Retry(Task):
    """Retries until it has been retried `succeed_after` times (then returns the retry count)."""

    def run(self, params):
        job = get_current_job()
        if job.retry_count < params.get("succeed_after", 1):
            retry_current_job(delay=params.get("delay", 0), max_retries=params.get("max_retries"))
        return job.retry_count


class RetryOnError(Task):
    def run(self, params):
        try:
            raise ConnectionError("remote down")
        except ConnectionError:
            retry_current_job(delay=params.get("delay", 0), max_retries=params.get("max_retries", 1))


class Abort(Task):
    def run(self, params):
        abort_current_job()


class Progress(Task):
    def run(self, params):
        steps = params.get("steps", 5)
        for step in range(steps):
            set_current_job_progress((step + 1) / steps)
            time.sleep(params.get("step_seconds", 0.2))
        return steps


class Logs(Task):
    def run(self, params):
        for line in params.get("lines", []):
            log.info(line)
        log.warning(b"bytes message \xc3\xa9")
        log.info("unicode \u2603 \U0001f600")
        return len(params.get("lines", []))


class ReturnObject(Task):
    def run(self, params):
        return object()


class RecordExecution(Task):
    """Counts each execution in a collection (fault tests compare executions with jobs)."""

    def run(self, params):
        job = get_current_job()
        connections.mongodb_jobs.executions.update_one(
            {"_id": job.id}, {"$inc": {"count": 1}, "$push": {"pids": os.getpid()}}, upsert=True
        )
        time.sleep(params.get("seconds", 0))
        return "ok"


def add(a, b):
    """A plain function task."""
    return a + b


class Exit(Task):
    """Kills its worker process (a poison job)."""

    def run(self, params):
        os._exit(params.get("code", 1))


class RecordRaw(Task):
    """Records its `value` (and when it ran) in the `raw_runs` collection; returns it."""

    def run(self, params):
        connections.mongodb_jobs.raw_runs.insert_one(
            {"value": params.get("value"), "time": time.time(), "pid": os.getpid()}
        )
        time.sleep(params.get("seconds", 0))
        return params.get("value")


class RetryOnce(Task):
    def run(self, params):
        if get_current_job().retry_count == 0:
            retry_current_job(delay=0)
        return params.get("value")


class Concurrent(Task):
    """Records how many instances run at once (max_concurrency tests)."""

    def run(self, params):
        db = connections.mongodb_jobs
        running = db.concurrency.find_one_and_update(
            {"_id": "counter"}, {"$inc": {"now": 1}}, upsert=True, return_document=True
        )["now"]
        db.concurrency.update_one({"_id": "counter"}, {"$max": {"peak": running}})
        time.sleep(params.get("seconds", 0.5))
        db.concurrency.update_one({"_id": "counter"}, {"$inc": {"now": -1}})
        return running


class Leaky:
    """Objects that a leaking job keeps alive (memory tracing tests)."""


_LEAKED: list = []


class Leak(Task):
    def run(self, params):
        _LEAKED.extend(Leaky() for _ in range(params.get("count", 5000)))
        return len(_LEAKED)


class NoLeak(Task):
    def run(self, params):
        garbage = [Leaky() for _ in range(params.get("count", 5000))]
        return len(garbage)


class DoIo(Task):
    """A few Redis, MongoDB and (optionally) HTTP calls."""

    def run(self, params):
        import urllib.request

        for i in range(params.get("redis", 5)):
            connections.redis.set(f"{get_current_job().id}:{i}", i)
        for _ in range(params.get("mongodb", 3)):
            connections.mongodb_jobs.io_probe.find_one({})
        if params.get("url"):
            with urllib.request.urlopen(params["url"], timeout=5) as response:
                response.read()
        return "done"


class ConcurrentOne(Concurrent):
    """MRQ style: the limit as a class attribute."""

    max_concurrency = 1


class FlakyConnection(Task):
    """Raises a connection error on its first run (an outage as seen by task code)."""

    def run(self, params):
        import pymongo.errors

        if get_current_job().retry_count == 0:
            raise pymongo.errors.AutoReconnect("connection reset by the database")
        return "reconnected"


class StartTime(Task):
    """Records when it started (pickup latency measurements)."""

    def run(self, params):
        connections.redis.set(f"start:{get_current_job().id}", repr(time.time()))
