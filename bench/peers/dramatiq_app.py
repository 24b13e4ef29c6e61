"""Dramatiq (RedisBroker, default middleware, no results middleware: Dramatiq's default) for the
benchmark. Worker: `dramatiq dramatiq_app --processes 1 --threads 8`. Bulk: a `group` of
messages, `run()` (one enqueue per message)."""

from __future__ import annotations

import os
from typing import Any

import _timing
import dramatiq
from dramatiq.brokers.redis import RedisBroker

QUEUE = "bench"

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, actor_name="noop", max_retries=0)
def noop(enq: float = 0.0) -> int:
    return _timing.noop(enq)


@dramatiq.actor(queue_name=QUEUE, actor_name="sleep", max_retries=0)
def sleep(seconds: float, enq: float = 0.0) -> int:
    return _timing.sleep(seconds, enq)


TASKS = {"noop": noop, "sleep": sleep}


def setup(mode: str) -> None:
    broker.client.ping()


def enqueue_one(task: str, kwargs: dict[str, Any]) -> None:
    TASKS[task].send_with_options(kwargs=kwargs)


def enqueue_many(task: str, kwargs_list: list[dict[str, Any]]) -> None:
    actor = TASKS[task]
    dramatiq.group(actor.message_with_options(kwargs=kwargs) for kwargs in kwargs_list).run()
