"""mrq.helpers: ratelimit (atomic across processes) and metric (METRIC_HOOK with MRQ's names)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from mrq.config import Settings
from mrq.helpers import metric, ratelimit
from mrq.job import queue_jobs
from mrq.store import Store
from mrq.testing.workers import command_env, wait_until


def test_ratelimit_counts_down_then_refuses(store: Store) -> None:
    left = [ratelimit("api", 3, per=60) for _ in range(5)]
    assert left == [3, 2, 1, 0, 0]
    assert ratelimit("other-key", 3, per=60) == 3  # keys are independent
    with pytest.raises(ValueError):
        ratelimit("api", 0)


def test_ratelimit_is_atomic_across_processes(store: Store, mrq_settings: Settings) -> None:
    script = (
        "from mrq.context import setup_context\n"
        "from mrq.helpers import ratelimit\n"
        "setup_context()\n"
        "print(sum(1 for _ in range(200) if ratelimit('shared', 150, per=3600)))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], env=command_env(mrq_settings), stdout=subprocess.PIPE,
                              text=True) for _ in range(3)]
    allowed = sum(int(p.communicate(timeout=60)[0]) for p in procs)
    assert allowed == 150  # 600 attempts, exactly the limit went through


def test_metric_hook_receives_mrq_names(store: Store, worker_factory: Any) -> None:
    hook_env = {"MRQ_METRIC_HOOK": "tests.tasks.hooks.record_metric"}
    worker_factory(env=hook_env)
    queue_jobs("tests.tasks.general.Add", [{"a": 1, "b": 1}] * 3)
    queue_jobs("tests.tasks.general.Fail", [{}])
    key = f"{store.keys.prefix}:test_metrics"

    def names() -> list[str]:
        return [m.decode() for m in store.redis.lrange(key, 0, -1)]

    wait_until(lambda: names().count("jobs.status.success=1") == 3 and "jobs.status.failed=1" in names(), 15,
               message="final status metrics")
    seen = names()
    assert any(n.startswith("queues.default.dequeued=") for n in seen)
    assert any(n.startswith("queues.all.dequeued=") for n in seen)
    assert any(n.startswith("jobs.status.started=") for n in seen)


def test_metric_without_hook_is_a_no_op_and_hook_errors_are_contained(store: Store, mrq_settings: Settings) -> None:
    from mrq import current

    metric("anything")  # no hook configured: nothing happens
    calls = []

    def broken(name: str, incr: int = 1, **kw: Any) -> None:
        calls.append(name)
        raise RuntimeError("hook down")

    current.set_current_config(mrq_settings.replace(metric_hook=broken))
    metric("jobs.status.success")  # logged, not raised
    assert calls == ["jobs.status.success"]
