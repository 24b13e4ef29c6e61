"""Huey (RedisHuey: blocking pops, results stored) for the benchmark.

Worker: `huey_consumer huey_app.huey -k greenlet -w 50` or `-k thread -w 8`, `-q`. Huey has no
bulk enqueue call: its bulk figure is the single-call loop.
"""

from __future__ import annotations

import os
from typing import Any

import _timing
from huey import RedisHuey

huey = RedisHuey("bench", url=os.environ["BENCH_REDIS_URL"])


@huey.task()
def noop(enq: float = 0.0) -> int:
    return _timing.noop(enq)


@huey.task()
def sleep(seconds: float, enq: float = 0.0) -> int:
    return _timing.sleep(seconds, enq)


TASKS = {"noop": noop, "sleep": sleep}


def setup(mode: str) -> None:
    huey.storage.conn.ping()


def enqueue_one(task: str, kwargs: dict[str, Any]) -> None:
    TASKS[task](**kwargs)


enqueue_many = None
