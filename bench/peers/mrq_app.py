"""mrq for the benchmark, run from the project's virtualenv.

Worker: `python -m mrq.cli.worker --greenlets 50 --config mrq_config.py bench` (regular queue:
job documents and results in MongoDB) or `... bench_raw` (a raw queue whose `started` and
`success` statuses are not stored, see mrq_config.py). Bulk: `queue_jobs` (one `insert_many`
and one Redis pipeline per 1,000 jobs) and `queue_raw_jobs`. Connections come from the MRQ_*
variables the harness sets.
"""

from __future__ import annotations

from typing import Any

import _timing

REGULAR_QUEUE = "bench"
RAW_QUEUE = "bench_raw"


def noop(enq: float = 0.0) -> int:
    return _timing.noop(enq)


def sleep(seconds: float, enq: float = 0.0) -> int:
    return _timing.sleep(seconds, enq)


def raw_param(task: str, kwargs: dict[str, Any]) -> str:
    """A raw queue holds strings: "noop", "noop:<enq>" or "sleep:<seconds>"."""
    if task == "sleep":
        return f"sleep:{kwargs['seconds']}"
    return f"noop:{kwargs['enq']!r}" if "enq" in kwargs else "noop"


def raw_job(raw: Any) -> dict[str, Any]:
    """RAW_QUEUES job_factory: the job (path and params) for one raw parameter."""
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    task, _, value = text.partition(":")
    if task == "sleep":
        return {"path": "mrq_app.sleep", "params": {"seconds": float(value)}}
    return {"path": "mrq_app.noop", "params": {"enq": float(value)} if value else {}}


_mode = "regular"


def setup(mode: str) -> None:
    global _mode
    from mrq.context import setup_context
    from mrq.current import get_current_store

    _mode = mode or "regular"
    setup_context()
    get_current_store().connections.check()


def enqueue_one(task: str, kwargs: dict[str, Any]) -> None:
    from mrq import job

    if _mode == "raw":
        job.queue_raw_jobs(RAW_QUEUE, [raw_param(task, kwargs)])
    else:
        job.queue_job(f"mrq_app.{task}", kwargs, queue=REGULAR_QUEUE)


def enqueue_many(task: str, kwargs_list: list[dict[str, Any]]) -> None:
    from mrq import job

    if _mode == "raw":
        job.queue_raw_jobs(RAW_QUEUE, [raw_param(task, kwargs) for kwargs in kwargs_list])
    else:
        job.queue_jobs(f"mrq_app.{task}", kwargs_list, queue=REGULAR_QUEUE)
