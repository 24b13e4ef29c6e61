"""Worker leases, read and written in one place: `<p>:workers` (ZSET worker id -> lease deadline,
on the Redis server's clock) and `<p>:worker:<id>:queues` (where a worker may hold running ids).

A worker is alive while its deadline is in the future. Recovery, the maintenance sweeps, the
dashboard and the worker itself all read leases through this class, so that "alive" means one
thing everywhere: the server's clock, never a machine's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .keys import Keys
from .scripts import scripts_for


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Leases:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    # --- written by a worker -----------------------------------------------------------------------

    def register(self, worker_id: str, seconds: float) -> None:
        scripts_for(self.redis).lease(keys=[self.keys.workers], args=[worker_id, "register", seconds])

    def renew(self, worker_id: str, seconds: float) -> bool:
        """Push the deadline back; False when the entry is gone (declared dead, or Redis lost it)."""
        return bool(scripts_for(self.redis).lease(keys=[self.keys.workers], args=[worker_id, "renew", seconds]))

    def release(self, worker_id: str) -> None:
        scripts_for(self.redis).lease(keys=[self.keys.workers], args=[worker_id, "release"])

    def add_queues(self, worker_id: str, queues: Iterable[str]) -> None:
        names = list(queues)
        if names:
            self.redis.sadd(self.keys.worker_queues(worker_id), *names)

    # --- read by everyone ---------------------------------------------------------------------------

    def deadlines(self) -> dict[str, float]:
        """Every worker with a lease entry -> seconds left on it (negative: expired), server clock."""
        flat, now = scripts_for(self.redis).lease_deadlines(keys=[self.keys.workers])
        clock = float(now)
        return {_text(flat[i]): float(flat[i + 1]) - clock for i in range(0, len(flat), 2)}

    def alive(self) -> set[str]:
        return {worker_id for worker_id, left in self.deadlines().items() if left > 0}

    def expired(self, limit: int = 20) -> list[str]:
        ids, _now = scripts_for(self.redis).expired_workers(keys=[self.keys.workers], args=[0, limit])
        return [_text(i) for i in ids]

    def queues_of(self, worker_id: str) -> list[str]:
        return sorted(_text(name) for name in self.redis.smembers(self.keys.worker_queues(worker_id)))

    def forget(self, worker_id: str) -> None:
        """A dead worker whose running sets are empty: remove its entry and its queue list."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrem(self.keys.workers, worker_id)
        pipe.delete(self.keys.worker_queues(worker_id))
        pipe.execute()
