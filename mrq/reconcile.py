"""Reconciliation: putting Redis back in line with MongoDB after Redis lost data.

MongoDB is the record of every regular job; Redis holds where each waiting job's id is. When
Redis loses data (restarted empty, FLUSHALL, or a failover to a replica that missed the last
writes), jobs MongoDB says are waiting may be in no Redis structure, and paused queues would
silently resume. Every worker checks every few seconds whether the Redis server it talks to is
the one MongoDB was last reconciled with: the `<p>:epoch` key holds that server's identity (its
`run_id`s; a restart or a failover changes them). When the key is missing or names another
server, one worker (holding `<p>:reconciling`) runs a complete pass (the steps are in
Reconciler's docstring): paused flags restored from MongoDB, waiting jobs put back
(maintenance.requeue_lost_jobs), `started` jobs of workers that died meanwhile taken back, jobs
waiting for dependencies that ended released (maintenance.resettle_waiting). The
epoch is written only after the pass completes; a step that fails (MongoDB unreachable...) is
simply tried again at the next check, by whichever worker gets there first.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pymongo
import redis.exceptions

from .connections import is_cluster
from .maintenance import requeue_lost_jobs, requeue_started_jobs, resettle_waiting
from .queue import restore_paused
from .storage.leases import Leases
from .store import Store, strings

log = logging.getLogger("mrq.reconcile")

#: Seconds the reconciliation lock lasts without being extended (a pass extends it per batch): how
#: long others wait when its holder died.
LOCK_SECONDS = 15


def server_identity(client: Any) -> str:
    """The run ids of the Redis server(s) behind a client: they change when a server restarts or
    another one takes over. Empty when the client may not run INFO (an ACL without it): then only
    a missing epoch key triggers reconciliation."""
    try:
        if is_cluster(client):
            from redis.cluster import RedisCluster

            infos = client.info("server", target_nodes=RedisCluster.PRIMARIES)
            found = [infos] if "run_id" in infos else list(infos.values())
        else:
            found = [client.info("server")]
    except redis.exceptions.NoPermissionError:
        return ""
    return ",".join(sorted(str(info.get("run_id", "")) for info in found))


class Reconciler:
    """One worker at a time (the lock), the epoch written only once every step is done:

    1. at once: the paused flags, then the waiting jobs no Redis structure holds that were queued
       more than `redis_timeout` + 1 s ago (younger ones may be on their way: their producer
       pushes their ids, or deletes them, within `redis_timeout`);
    2. that long later: the same for the jobs that were too young then;
    3. `worker_lease` + 1 s after step 1 (every live worker has re-registered its lease by then,
       and put its running ids back): the `started` jobs whose worker has no lease. Their worker
       died in the window where Redis lost the lease that recovery would have found.

    The lock is the canary of a new data loss during the waits: when it is gone, start over.
    """

    def __init__(self, store: Store, worker_id: str) -> None:
        self.store = store
        self.worker_id = worker_id
        self.passes = 0
        self._due: dict[str, float] = {}  # the steps left, and when they are due (monotonic)
        self._identity = ""

    @property
    def _young(self) -> float:
        """Seconds a producer may still be pushing a job it queued (then: pushed or deleted)."""
        return self.store.settings.redis_timeout + 1.0

    @property
    def _op_timeout(self) -> float:
        """Each MongoDB query of a step gives up after this rather than waiting out an outage (the
        workers' patience): the step is tried again at the next check."""
        return 2 * self.store.settings.mongodb_timeout

    def check(self) -> bool:
        """Reconcile if Redis is not the server MongoDB was last reconciled with. True when this
        call completed a reconciliation. Raises what a step raised (the next check tries again)."""
        keys, client = self.store.keys, self.store.redis
        if self._due:
            return self._later_steps()
        identity = server_identity(client)
        recorded = client.get(keys.epoch)
        if recorded is not None and strings([recorded])[0] == identity:
            return False
        if not self._acquire():
            return False  # another worker is on it
        why = "this Redis is new to mrq (first start, or its data was lost)" if recorded is None else \
            "Redis runs another server than at the last reconciliation (a restart or a failover)"
        # Quiet on a first start (nothing to put back); what was put back is said below, loudly.
        log.debug("%s: putting back the waiting jobs and paused queues MongoDB knows about", why)
        try:
            with pymongo.timeout(self._op_timeout):  # paused first: no job of a paused queue starts meanwhile
                paused = restore_paused(self.store)
            counts = requeue_lost_jobs(self.store, min_age=self._young, op_timeout=self._op_timeout,
                                       extend=self._extend)
        except BaseException:
            self._release()
            raise
        if counts["queued"] or counts["delayed"] or paused:
            log.warning("reconciled Redis with MongoDB: %d queued and %d delayed jobs put back, %d paused queues "
                        "(%s)", counts["queued"], counts["delayed"], len(paused), why)
        self._identity = identity
        now = time.monotonic()
        self._due = {"young": now + self._young, "started": now + self.store.settings.worker_lease + 1.0}
        client.expire(keys.reconcile_lock, int(max(self._due.values()) - now) + LOCK_SECONDS)
        return False

    def _later_steps(self) -> bool:
        if not self._still_held():
            # Our lock is gone: Redis lost data again (or restarted) during the wait. Leases may be
            # missing again: start over, from the first step.
            log.info("Redis lost data again while reconciling: starting over")
            self._due = {}
            return False
        now = time.monotonic()
        if "young" in self._due and now >= self._due["young"]:
            counts = requeue_lost_jobs(self.store, min_age=self._young, op_timeout=self._op_timeout,
                                       extend=self._extend)
            if counts["queued"] or counts["delayed"]:
                log.warning("reconciled Redis with MongoDB: %d queued and %d delayed jobs put back (queued while "
                            "Redis lost its data)", counts["queued"], counts["delayed"])
            del self._due["young"]
        if "started" in self._due and now >= self._due["started"]:
            orphans = requeue_started_jobs(self.store, timeout=None, op_timeout=self._op_timeout)
            if orphans:
                log.warning("reconciled Redis with MongoDB: %d started jobs of workers that died while Redis lost "
                            "their leases were queued again (they may have run partly)", orphans)
            # A worker that died after storing a job's final status, before releasing the jobs that
            # wait for it, left that job's id in a running set Redis has now lost: release them here.
            resettle_waiting(self.store, min_age=0, op_timeout=self._op_timeout)
            del self._due["started"]
        if self._due:
            return False
        self.store.redis.set(self.store.keys.epoch, self._identity)
        self._release()
        self.passes += 1
        return True

    def _acquire(self) -> bool:
        """Take the lock: free, already ours (a pass that failed after its release failed too), or
        held by a worker whose lease is gone (it died holding it: others need not wait for the
        lock to expire)."""
        scripts, key = self.store.scripts, self.store.keys.reconcile_lock
        if scripts.lock(keys=[key], args=["acquire", self.worker_id, LOCK_SECONDS, ""]):
            return True
        holder = self.store.redis.get(key)
        if holder is None:
            return False
        holder_id = strings([holder])[0]
        if holder_id in Leases(self.store.redis, self.store.keys).alive():
            return False
        log.info("the worker reconciling Redis (%s) is gone: taking over", holder_id)
        return bool(scripts.lock(keys=[key], args=["acquire", self.worker_id, LOCK_SECONDS, holder_id]))

    def _still_held(self) -> bool:
        """The lock is still ours, on the same server (and extended): the canary of a data loss."""
        client = self.store.redis
        if server_identity(client) != self._identity or client.get(self.store.keys.reconcile_lock) != \
                self.worker_id.encode():
            return False
        self._extend()
        return True

    def _extend(self) -> None:
        self.store.redis.expire(self.store.keys.reconcile_lock, LOCK_SECONDS)

    def _release(self) -> None:
        """Best effort: a lock left behind expires, or is taken over once its holder's lease is gone."""
        try:
            self.store.scripts.lock(keys=[self.store.keys.reconcile_lock], args=["release", self.worker_id])
        except Exception as exc:
            log.debug("releasing the reconciliation lock failed: %s", exc)
