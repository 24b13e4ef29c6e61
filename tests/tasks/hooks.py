"""A METRIC_HOOK for tests: every metric goes to a Redis list `<prefix>:test_metrics`."""

from __future__ import annotations

from mrq.context import connections, get_current_config


def record_metric(name, incr=1, **kwargs):
    connections.redis.rpush(f"{get_current_config()['redis_prefix']}:test_metrics", f"{name}={incr}")
