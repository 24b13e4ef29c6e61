"""Scale-out on existing engines, besides Redis Cluster (tests/test_cluster.py).

- Redis Sentinel (`redis+sentinel://`): a master, a replica and a sentinel, real redis-server
  processes on loopback ports. A worker runs jobs through the sentinel, the master is killed, the
  sentinel promotes the replica, and the same worker (and the library) go on with the new master
  without a restart and without losing a queued job.
- MongoDB replica-set URIs: no mongod can run here (docs/testing.md), so only what mrq does with
  such a URI is checked: the database name, the replica-set topology and the write concern reach
  pymongo, and an unreachable set is a one-line StoreUnavailable.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from mrq import current
from mrq.config import Settings
from mrq.connections import Connections, make_mongo, make_redis, mongo_database_name
from mrq.exceptions import StoreUnavailable
from mrq.job import Job, queue_jobs
from mrq.store import Store
from mrq.testing.stack import RedisSentinel, RedisServer
from mrq.testing.workers import wait_until

TASKS = "tests.tasks.general"


class Group:
    """A master, its replica and a sentinel watching them."""

    def __init__(self) -> None:
        self.master = RedisServer()
        self.replica = RedisServer(args=["--replicaof", "127.0.0.1", str(self.master.port)])
        self.sentinel = RedisSentinel(self.master.port)
        try:
            for server in (self.master, self.replica, self.sentinel):
                server.start()
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        for server in (self.sentinel, self.replica, self.master):
            server.close()


@pytest.fixture
def group() -> Iterator[Group]:
    the_group = Group()
    yield the_group
    the_group.close()


@pytest.fixture
def sentinel_store(group: Group, mrq_settings: Settings) -> Iterator[Store]:
    store = current.set_current_config(mrq_settings.replace(redis=group.sentinel.url))
    yield store
    current.reset()


def wait_success(ids: list[Any], timeout: float = 30.0) -> None:
    def done() -> bool:
        return all(Job(job_id).fetch().status == "success" for job_id in ids)

    try:
        wait_until(done, timeout, interval=0.05, message="jobs done")
    except TimeoutError:
        raise AssertionError(f"not all done: {[Job(i).fetch().status for i in ids]}") from None


def test_worker_follows_a_sentinel_failover(group: Group, sentinel_store: Store, worker_factory: Any) -> None:
    from redis.sentinel import SentinelConnectionPool

    assert isinstance(sentinel_store.redis.connection_pool, SentinelConnectionPool)
    worker = worker_factory("--greenlets", "4", env={"MRQ_REDIS": group.sentinel.url, "MRQ_WORKER_LEASE": "30"})
    first = queue_jobs(f"{TASKS}.Add", [{"a": i, "b": 1} for i in range(10)])
    wait_success(first)

    master = redis.Redis(host="127.0.0.1", port=group.master.port, socket_timeout=5)
    assert master.execute_command("WAIT", 1, 5000) == 1  # the replica has everything so far
    master.close()
    group.master.kill()
    killed = time.monotonic()
    wait_until(lambda: group.sentinel.master_address() == ("127.0.0.1", group.replica.port), 30,
               message="the sentinel promoted the replica")
    promoted = time.monotonic() - killed

    second = queue_jobs(f"{TASKS}.Add", [{"a": i, "b": 2} for i in range(10)])  # on the new master
    wait_success(second)
    print(f"\nsentinel failover: replica promoted {promoted:.1f}s after the master died; "
          f"jobs done {time.monotonic() - killed:.1f}s after")
    assert [Job(i).fetch().result for i in second] == [i + 2 for i in range(10)]
    assert worker.running, worker.output()[-2000:]  # the same worker, never restarted
    replica = redis.Redis(host="127.0.0.1", port=group.replica.port, socket_timeout=5)
    assert replica.llen(sentinel_store.keys.queue_ids("default")) == 0
    replica.close()


def test_sentinel_uri_names_every_sentinel_the_service_the_db_and_the_password() -> None:
    from redis.sentinel import SentinelConnectionPool

    client = make_redis("redis+sentinel://:p%40ss@127.0.0.1:26379,127.0.0.1:26380/mymaster/2")
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "p@ss"
    sentinels = [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
                 for s in pool.sentinel_manager.sentinels]
    assert sentinels == [("127.0.0.1", 26379), ("127.0.0.1", 26380)]


def test_mongodb_replica_set_uri(mrq_settings: Settings) -> None:
    uri = "mongodb://mrq:secret@127.0.0.1:1,127.0.0.1:2/jobs?replicaSet=rs0&w=majority&readPreference=primary"
    client = make_mongo(uri, timeout=0.3)
    assert mongo_database_name(uri) == "jobs"
    assert client.topology_description.topology_type_name == "ReplicaSetNoPrimary"
    assert client.options.replica_set_name == "rs0" and client.write_concern.document == {"w": "majority"}
    client.close()
    connections = Connections(mrq_settings.replace(mongodb_jobs=uri, mongodb_timeout=0.3))
    with pytest.raises(StoreUnavailable) as raised:
        connections.check_mongodb()
    message = str(raised.value)
    assert "\n" not in message and "secret" not in message and "127.0.0.1:1,127.0.0.1:2" in message
    connections.close()
