"""mrq on a Redis Cluster: a 3-master cluster of real redis-server processes on loopback ports,
real workers, the library, mrq-queue and the dashboard, all through `redis+cluster://`.

Every queue's keys share one hash tag, so each Lua script runs on one slot; these tests check
that jobs on queues spread over all three masters (regular, raw, subqueues, delayed retries,
max_concurrency slots) run, that idle workers are woken through the cluster's pub/sub, and that a
killed worker's jobs are recovered.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from mrq import current
from mrq.config import Settings
from mrq.job import Job, queue_job, queue_jobs, queue_raw_jobs
from mrq.queue import Queue, queue_infos
from mrq.store import Store
from mrq.testing.stack import RedisCluster
from mrq.testing.workers import run_command, wait_until

TASKS = "tests.tasks.general"
PREFIX = "cl"  # fixed, so that the queues below land on known masters (the cluster is private to this module)
RAW_QUEUES = {"fast_raw": {"job_factory": "tests.tasks.factories.record", "retry_queue": "retries"}}
TASK_SETTINGS = {f"{TASKS}.Concurrent": {"max_concurrency": 2}}


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster(masters=3) as the_cluster:
        yield the_cluster


@pytest.fixture
def cluster_store(cluster: RedisCluster, mrq_settings: Settings) -> Iterator[Store]:
    """The current Store on the cluster (fresh MongoDB database, cluster emptied afterwards)."""
    settings = mrq_settings.replace(redis=cluster.url, redis_prefix=PREFIX, raw_queues=RAW_QUEUES,
                                    tasks=TASK_SETTINGS)
    store = current.set_current_config(settings)
    yield store
    current.reset()
    for node in cluster.nodes:
        client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=5)
        client.flushall()
        client.close()


def cluster_env(cluster: RedisCluster, **extra: str) -> dict[str, str]:
    """What a worker process needs to use the cluster like cluster_store does."""
    return {"MRQ_REDIS": cluster.url, "MRQ_REDIS_PREFIX": PREFIX, "MRQ_RAW_QUEUES": json.dumps(RAW_QUEUES),
            "MRQ_TASKS": json.dumps(TASK_SETTINGS), **extra}


def master_of(cluster: RedisCluster, queue: str) -> int:
    """Index of the master that holds a queue's keys (the slots are split evenly, in node order)."""
    slot = key_slot(f"{{{PREFIX}:q:{queue}}}:ids".encode())
    return min(slot // (16384 // len(cluster.nodes)), len(cluster.nodes) - 1)


def wait_statuses(ids: list[Any], status: str = "success", timeout: float = 30.0) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        docs = [Job(job_id).fetch().data for job_id in ids]
        return docs if all(d is not None and d["status"] == status for d in docs) else None

    try:
        return wait_until(done, timeout, interval=0.05, message=f"{len(ids)} jobs {status}")
    except TimeoutError:
        seen = [(str(i), Job(i).fetch().status) for i in ids]
        raise AssertionError(f"not all jobs reached {status}: {seen}") from None


def test_cluster_client_is_a_cluster(cluster_store: Store) -> None:
    from redis.cluster import RedisCluster as RedisClusterClient

    assert isinstance(cluster_store.redis, RedisClusterClient)
    assert len(cluster_store.redis.get_primaries()) == 3


def test_jobs_on_queues_spread_over_every_master(cluster: RedisCluster, cluster_store: Store,
                                                 worker_factory: Any) -> None:
    queues = ["alpha", "beta", "crawl/a.example", "crawl/b.example", "fast_raw", "retries"]
    assert {master_of(cluster, q) for q in queues} == {0, 1, 2}, "the test queues must cover the 3 masters"
    ids = queue_jobs(f"{TASKS}.Add", [{"a": i, "b": 1} for i in range(10)], queue="alpha")
    ids += queue_jobs(f"{TASKS}.Echo", [{"n": i} for i in range(5)], queue="beta")
    ids += [queue_job(f"{TASKS}.Echo", {"site": site}, queue=f"crawl/{site}") for site in ("a.example", "b.example")]
    ids += [queue_job(f"{TASKS}.Retry", {"succeed_after": 1, "delay": 0.5}, queue="alpha")]  # a delayed retry
    ids += queue_jobs(f"{TASKS}.Concurrent", [{"seconds": 0.2}] * 4, queue="beta")  # max_concurrency slots
    assert queue_raw_jobs("fast_raw", ["r1", "r2", "r3"]) == 3

    infos = {info.name: info for info in queue_infos(cluster_store)}
    assert {name: infos[name].size for name in ("alpha", "beta", "crawl/a.example", "fast_raw")} == \
        {"alpha": 11, "beta": 9, "crawl/a.example": 1, "fast_raw": 3}
    assert infos["fast_raw"].kind == "raw" and infos["alpha"].oldest_age is not None

    worker_factory("--greenlets", "10", "alpha", "beta", "crawl/", "fast_raw", "retries",
                   env=cluster_env(cluster))
    docs = wait_statuses(ids)
    assert [d["result"] for d in docs[:10]] == [i + 1 for i in range(10)]
    retried = docs[17]
    assert retried["retry_count"] == 1 and retried["result"] == 1
    assert max(d["result"] for d in docs[18:22]) <= 2  # never more than 2 Concurrent jobs at once
    raw_runs = wait_until(lambda: sorted(d["value"] for d in cluster_store.connections.mongodb_jobs.raw_runs.find())
                          == ["r1", "r2", "r3"], 15, message="3 raw jobs run")
    assert raw_runs
    assert all(Queue(name, cluster_store).size() == 0 for name in queues)

    listed = run_command(cluster_store.settings, "mrq.cli.queue", ["list", "--json"],
                         env=cluster_env(cluster))
    assert listed.returncode == 0, listed.stderr
    sizes = {row["name"]: row["size"] for row in json.loads(listed.stdout)}
    assert set(queues) - {"retries"} <= set(sizes) and not any(sizes.values())


def test_idle_worker_is_woken_through_the_cluster(cluster: RedisCluster, cluster_store: Store,
                                                  worker_factory: Any) -> None:
    """Idle workers re-check their queues (and their subqueue groups) only every 5 s: four
    pickups in under a second each are pub/sub working through the cluster (a channel per
    queue, and a pattern subscription for the subqueue group)."""
    worker_factory("--greenlets", "2", "alpha", "crawl/", env=cluster_env(cluster))
    for queue in ("alpha", "crawl/c.example", "alpha", "crawl/d.example"):  # subqueues never seen before
        time.sleep(0.5)  # let the worker go idle
        started = time.monotonic()
        data = wait_statuses([queue_job(f"{TASKS}.Echo", {"q": queue}, queue=queue)], timeout=10)[0]
        elapsed = time.monotonic() - started
        assert data["result"] == {"q": queue}
        assert elapsed < 1.0, f"{queue}: picked up after {elapsed:.1f}s, not woken by its notification"


def test_killed_worker_jobs_are_recovered_on_the_cluster(cluster: RedisCluster, cluster_store: Store,
                                                         worker_factory: Any) -> None:
    ids = queue_jobs(f"{TASKS}.Sleep", [{"seconds": 2}] * 3, queue="alpha")
    ids += queue_jobs(f"{TASKS}.Sleep", [{"seconds": 2}] * 3, queue="beta")
    env = cluster_env(cluster, MRQ_WORKER_LEASE="2")
    victim = worker_factory("--greenlets", "6", "alpha", "beta", env=env)
    wait_until(lambda: cluster_store.jobs.count_documents({"status": "started"}) == 6, 15, message="6 jobs started")
    victim.send(signal.SIGKILL)
    victim.wait(10)
    worker_factory("--greenlets", "6", "alpha", "beta", env=env)
    docs = wait_statuses(ids, timeout=30)
    assert all(d["recoveries"] == 1 for d in docs)
    assert cluster_store.redis.zcard(cluster_store.keys.workers) == 1  # the dead worker is gone


def test_dashboard_reads_the_cluster(cluster_store: Store) -> None:
    from mrq_dashboard.app import create_app

    queue_jobs(f"{TASKS}.Add", [{"a": 1, "b": 2}] * 3, queue="alpha")
    queue_raw_jobs("fast_raw", ["x"])
    client = create_app(cluster_store.settings, store=cluster_store, cache_seconds=0).test_client()
    health = client.get("/api/health")
    assert health.status_code == 200 and health.json["redis"] == "ok", health.json
    response = client.get("/api/queues")
    assert response.status_code == 200, response.data[:500]
    queues = {q["name"]: q for q in response.json["queues"]}
    assert queues["alpha"]["size"] == 3 and queues["fast_raw"]["size"] == 1
    assert client.post("/api/queues/alpha/pause", headers={"X-MRQ-Client": "tests"}).json["paused"] is True
    assert Queue("alpha", cluster_store).is_paused()
    assert client.get("/").status_code == 200
