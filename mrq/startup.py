"""Checks a worker makes when it starts, each a loud warning rather than a refusal: the things
that silently lose jobs or confuse timings in production. Also, with `mongodb_logs_size`, making
`mrq_logs` a capped collection (as MRQ did), with a warning when MongoDB refuses."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pymongo.errors
import redis

from .backoff import STORE_ERRORS
from .storage.mongo import INDEXES, LOGS, ensure_capped_logs, ensure_indexes, missing_indexes

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("mrq.worker")

MAX_CLOCK_SKEW = 1.0
#: A check failing with one of these is skipped (the store did not answer it).
CHECK_ERRORS: tuple[type[BaseException], ...] = (*STORE_ERRORS, redis.exceptions.RedisError,
                                                 pymongo.errors.PyMongoError)


def eviction_warning(client: redis.Redis) -> str | None:
    """Redis may evict keys under memory pressure unless maxmemory-policy is noeviction: then
    queued jobs can vanish."""
    try:
        policies = _policies(client)
    except redis.exceptions.ResponseError:
        return None  # CONFIG is disabled (a managed Redis): nothing to check
    bad = sorted({p for p in policies if p and p != "noeviction"})
    if bad:
        return (f"Redis maxmemory-policy is {bad[0]!r}: under memory pressure Redis may delete queued jobs. "
                "Set `maxmemory-policy noeviction` (and enable AOF persistence).")
    return None


def _policies(client: redis.Redis) -> list[str]:
    """maxmemory-policy of the server, or of every master of a Redis Cluster."""
    from redis.cluster import RedisCluster

    if isinstance(client, RedisCluster):
        replies = client.config_get("maxmemory-policy", target_nodes=RedisCluster.PRIMARIES)
        values = replies.values() if isinstance(replies, dict) and all(isinstance(v, dict) for v in
                                                                         replies.values()) else [replies]
    else:
        values = [client.config_get("maxmemory-policy")]
    policies = []
    for value in values:
        policy = value.get("maxmemory-policy") if isinstance(value, dict) else None
        policies.append(policy.decode() if isinstance(policy, bytes) else str(policy or ""))
    return policies


def clock_skew(client: redis.Redis, clock: Callable[[], float] = time.time) -> float:
    """Seconds between this machine's clock and the Redis server's (leases and delayed jobs are
    computed on the server's clock; job dates on the worker's)."""
    before = clock()
    seconds, micros = client.time()
    after = clock()
    return (seconds + micros / 1e6) - (before + after) / 2


def run_startup_checks(store: Store, ensure: bool) -> None:
    """Advisory checks: each logs a warning when something is off; a store that does not answer
    one (a timeout, a managed Redis without CONFIG) skips it, never stops the worker."""
    for check in (_cap_logs, _check_eviction, _check_clock, (lambda s: None) if ensure else _check_indexes):
        try:
            check(store)
        except CHECK_ERRORS as exc:
            log.warning("start-up check skipped (%s: %s)", type(exc).__name__, str(exc).splitlines()[0][:200]
                        if str(exc) else "")


def _cap_logs(store: Store) -> None:
    logs, size = store.connections.mongodb_logs, store.settings.mongodb_logs_size
    if logs is not None and size:
        log.info("mrq_logs: a capped collection of %d bytes (%s)", size, ensure_capped_logs(logs, size))


def _check_eviction(store: Store) -> None:
    warning = eviction_warning(store.redis)
    if warning:
        log.warning("%s", warning)


def _check_clock(store: Store) -> None:
    skew = clock_skew(store.redis)
    if abs(skew) > MAX_CLOCK_SKEW:
        log.warning("this machine's clock and the Redis server's differ by %.1fs: job dates and lease "
                    "deadlines will disagree (use NTP)", skew)


def _check_indexes(store: Store) -> None:
    """A database with none of mrq's indexes is a new one: they are created at once (instant on
    empty collections; `readWrite` includes createIndex). A database with some of them (an older
    mrq, an MRQ 0.9 database, an index dropped by hand) may hold millions of jobs, where building
    an index is an operator's decision: a warning says which are missing and how to create them."""
    jobs, logs = store.connections.mongodb_jobs, store.connections.mongodb_logs
    missing = missing_indexes(jobs, logs)
    if not missing:
        return
    ours = sum(len(indexes) for name, indexes in INDEXES.items() if logs is not None or name != LOGS)
    if len(missing) == ours:
        created = ensure_indexes(jobs, logs)
        log.info("a new database: created mrq's %d indexes", len(created))
        return
    log.warning("MongoDB lacks %d of mrq's indexes (%s%s): the dashboard's lists and the maintenance tasks will "
                "scan collections. Start a worker with --ensure_indexes (or run mrq.basetasks.indexes.EnsureIndexes) "
                "to create them", len(missing), ", ".join(missing[:4]), "..." if len(missing) > 4 else "")
