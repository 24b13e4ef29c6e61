"""Helpers for task code (MRQ-compatible): a rate limiter shared by every worker, and metrics."""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from . import current
from .connections import is_cluster

log = logging.getLogger("mrq.helpers")


def ratelimit(key: str, limit: int, per: float = 1, redis: redis.Redis | None = None) -> int:
    """Count one use of `key` in the current window of `per` seconds (fixed windows, atomic across
    every worker). Returns how many uses are left in this window including this one (MRQ's
    contract): > 0 means go ahead, 0 means the limit is reached (the use is still counted).

        if ratelimit("api.example.com", 10, per=1):
            fetch(...)
        else:
            retry_current_job(delay=1)
    """
    if limit < 1 or per <= 0:
        raise ValueError("ratelimit needs limit >= 1 and per > 0")
    store = current.get_current_store()
    client = redis or store.redis
    window = int(time.time() // per)
    name = store.keys.ratelimit(key, window)
    # MULTI on a single Redis; a Redis Cluster client (redis-py 5) refuses transactions, and INCR
    # is atomic by itself: the EXPIRE in the same round trip only bounds the key's life.
    pipe = client.pipeline(transaction=not is_cluster(client))
    pipe.incr(name)
    pipe.expire(name, int(per) + 10)
    count = int(pipe.execute()[0])
    return max(0, limit - (count - 1))


_hook_cache: dict[str, Callable[..., Any]] = {}


def _resolve_hook(hook: Any) -> Callable[..., Any] | None:
    if hook is None or callable(hook):
        return hook
    found = _hook_cache.get(hook)
    if found is None:
        module_name, _, attr = str(hook).rpartition(".")
        found = _hook_cache[hook] = getattr(importlib.import_module(module_name), attr)
    return found


def metric(name: str, incr: int = 1, **kwargs: Any) -> None:
    """Send a metric to the METRIC_HOOK of the config (`fn(name, incr=1, **kwargs)`), if any. A hook
    that raises is logged, never propagated: metrics must not fail jobs.

    mrq itself emits MRQ's names: `jobs.status.<status>` (queued with incr = jobs queued, started,
    and every final status), `queues.<queue>.dequeued` and `queues.all.dequeued`,
    `queues.<queue>.enqueued` and `queues.all.enqueued` (raw queues)."""
    emit_metric(current.get_current_config().metric_hook, name, incr, **kwargs)


def emit_metric(hook: Any, name: str, incr: int = 1, **kwargs: Any) -> None:
    """metric() with the hook given (library code passes its settings' metric_hook)."""
    if hook is None:
        return
    hook = _resolve_hook(hook)
    if hook is None:
        return
    try:
        hook(name, incr=incr, **kwargs)
    except Exception:
        log.exception("METRIC_HOOK raised for %s", name)
