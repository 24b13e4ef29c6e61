"""Process-wide counts of round trips to Redis and commands sent to MongoDB, kept by the clients
that mrq.connections builds with `count_io` (a counting Redis connection class, a pymongo command
listener): the worker's, which exports them as Prometheus metrics; they are the
machine-independent measure of overhead. Other processes (producers, the dashboard) export
nothing and do not count: the listener costs a MongoDB command a sixth of its client CPU."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import redis
from pymongo import monitoring

_lock = threading.Lock()
redis_round_trips = 0
mongo_commands: Counter[str] = Counter()


def _count_redis() -> None:
    global redis_round_trips
    redis_round_trips += 1  # a lost increment under a thread race only blurs a statistic


class CountingConnection(redis.Connection):
    """A redis-py connection that counts each request sent (one command, or one pipeline)."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        _count_redis()
        super().send_packed_command(command, check_health)


class CountingSSLConnection(redis.SSLConnection):
    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        _count_redis()
        super().send_packed_command(command, check_health)


class MongoCommandCounter(monitoring.CommandListener):
    def started(self, event: monitoring.CommandStartedEvent) -> None:
        mongo_commands[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


MONGO_LISTENER = MongoCommandCounter()


def snapshot() -> tuple[int, dict[str, int]]:
    with _lock:
        return redis_round_trips, dict(mongo_commands)
