"""arq (asyncio) for the benchmark: `arq arq_app.WorkerSettings`, 50 concurrent jobs
(`BENCH_CONCURRENCY`), a 10 ms poll (`poll_delay`; arq's default is 0.5 s), results kept
(arq's default, 1 h), logging at WARNING. arq has no bulk call: its bulk figure enqueues each
chunk of 1,000 jobs concurrently (`asyncio.gather` of `enqueue_job`)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import _timing
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

ASYNC = True
REDIS = RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"])
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"level": "WARNING", "class": "logging.StreamHandler"}},
    "loggers": {"arq": {"handlers": ["stderr"], "level": "WARNING"}},
}


async def noop(ctx: dict[str, Any], enq: float = 0.0) -> int:
    return _timing.noop(enq)


async def sleep(ctx: dict[str, Any], seconds: float, enq: float = 0.0) -> int:
    start = time.time()
    await asyncio.sleep(seconds)
    _timing.record(start, time.time(), enq)
    return 42


class WorkerSettings:
    functions = [noop, sleep]
    redis_settings = REDIS
    max_jobs = int(os.environ.get("BENCH_CONCURRENCY", "50"))
    poll_delay = 0.01


_pool: ArqRedis | None = None


async def setup(mode: str) -> None:
    global _pool
    _pool = await create_pool(REDIS)


async def enqueue_one(task: str, kwargs: dict[str, Any]) -> None:
    assert _pool is not None
    await _pool.enqueue_job(task, **kwargs)


async def enqueue_many(task: str, kwargs_list: list[dict[str, Any]]) -> None:
    assert _pool is not None
    await asyncio.gather(*(_pool.enqueue_job(task, **kwargs) for kwargs in kwargs_list))

