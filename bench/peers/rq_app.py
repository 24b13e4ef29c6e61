"""RQ for the benchmark: `rq worker` (forks a work horse per job) or `-w rq.worker.SimpleWorker`
(runs jobs in the worker process), `-q`. Results are stored (RQ's default result_ttl, 500 s).
Bulk: `Queue.enqueue_many` (one pipeline per call)."""

from __future__ import annotations

import os
from typing import Any

import _timing
from redis import Redis
from rq import Queue

QUEUE = "bench"


def noop(enq: float = 0.0) -> int:
    return _timing.noop(enq)


def sleep(seconds: float, enq: float = 0.0) -> int:
    return _timing.sleep(seconds, enq)


TASKS = {"noop": noop, "sleep": sleep}
_queue: Queue | None = None


def setup(mode: str) -> None:
    global _queue
    connection = Redis.from_url(os.environ["BENCH_REDIS_URL"])
    connection.ping()
    _queue = Queue(QUEUE, connection=connection)


def enqueue_one(task: str, kwargs: dict[str, Any]) -> None:
    assert _queue is not None
    _queue.enqueue(TASKS[task], kwargs=kwargs)


def enqueue_many(task: str, kwargs_list: list[dict[str, Any]]) -> None:
    assert _queue is not None
    _queue.enqueue_many([Queue.prepare_data(TASKS[task], kwargs=kwargs) for kwargs in kwargs_list])
