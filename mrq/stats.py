"""Throughput counters per minute, in Redis, for the dashboard's charts (jobs in and out of each
queue, by final status), without touching MongoDB.

`<p>:stats:<minute>` is a HASH (minute = unix time // 60) with fields `in:<queue>` (jobs queued)
and `<status>:<queue>` (jobs that reached a final status, or `retry`). Producers add to it in the
pipeline that pushes the ids; workers count in memory and add their counts every few seconds.
Each key expires after `RETENTION` seconds.
"""

from __future__ import annotations

import time
from collections import Counter

import redis

from .storage.keys import Keys

RETENTION = 2 * 3600 + 120


def minute_of(unix_time: float) -> int:
    return int(unix_time // 60)


class StatsBuffer:
    """In-memory counts of one worker, flushed to Redis in one pipeline."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[int, str]] = Counter()

    def add(self, field: str, count: int = 1, now: float | None = None) -> None:
        self._counts[(minute_of(time.time() if now is None else now), field)] += count

    def flush(self, client: redis.Redis, keys: Keys) -> None:
        if not self._counts:
            return
        counts, self._counts = self._counts, Counter()
        pipe = client.pipeline(transaction=False)
        for minute in {m for m, _ in counts}:
            for (m, field), value in counts.items():
                if m == minute:
                    pipe.hincrby(keys.stats(minute), field, value)
            pipe.expire(keys.stats(minute), RETENTION)
        try:
            pipe.execute()
        except Exception:
            self._counts.update(counts)  # keep them for the next flush
            raise


def read_minutes(client: redis.Redis, keys: Keys, minutes: int = 60, now: float | None = None) -> list[
        tuple[int, dict[str, int]]]:
    """The last `minutes` minutes (oldest first): (minute start unix time, {field: count})."""
    last = minute_of(time.time() if now is None else now)
    wanted = list(range(last - minutes + 1, last + 1))
    pipe = client.pipeline(transaction=False)
    for minute in wanted:
        pipe.hgetall(keys.stats(minute))
    rows = pipe.execute()
    return [
        (minute * 60, {k.decode(): int(v) for k, v in (row or {}).items()})
        for minute, row in zip(wanted, rows, strict=True)
    ]
