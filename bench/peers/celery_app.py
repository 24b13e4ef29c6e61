"""Celery (Redis broker, no result backend: Celery's default) for the benchmark.

Worker: `celery -A celery_app worker -P gevent -c 50` or `-P threads -c 8`, with
`--without-gossip --without-mingle --without-heartbeat` (nothing to talk to: one worker) and
`-l WARNING`. Bulk: a `group` of signatures, `apply_async()` (one publish per message over one
producer connection)."""

from __future__ import annotations

import os
from typing import Any

import _timing
from celery import Celery, group

QUEUE = "bench"

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"])
app.conf.update(task_default_queue=QUEUE, broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)


@app.task(name="noop")
def noop(enq: float = 0.0) -> int:
    return _timing.noop(enq)


@app.task(name="sleep")
def sleep(seconds: float, enq: float = 0.0) -> int:
    return _timing.sleep(seconds, enq)


TASKS = {"noop": noop, "sleep": sleep}


def setup(mode: str) -> None:
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=3)


def enqueue_one(task: str, kwargs: dict[str, Any]) -> None:
    TASKS[task].apply_async(kwargs=kwargs)


def enqueue_many(task: str, kwargs_list: list[dict[str, Any]]) -> None:
    group(TASKS[task].s(**kwargs) for kwargs in kwargs_list).apply_async()
