"""pytest fixtures for mrq and for projects testing their own tasks with it.

Per test session: a private `redis-server` on a free loopback port (own temp dir, no
persistence) and the Mongo test server on another free port, or a real MongoDB when
`MRQ_TEST_MONGODB_URI` is set. Per test: a fresh Redis key prefix and a fresh MongoDB database,
both removed afterwards, so tests never see each other's data and never touch anything else.

Enable with `-p mrq.testing.pytest_plugin` (this project does it in pyproject.toml).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pymongo
import pytest

from mrq import current
from mrq.config import Settings, load_settings
from mrq.connections import Connections
from mrq.store import Store
from mrq.testing.stack import MongoTestServer, RedisServer
from mrq.testing.workers import WorkerProcess

#: Workers under test run from here, so that `tests.tasks.*` is importable (projects using this
#: plugin can set MRQ_TEST_PROJECT_ROOT).
PROJECT_ROOT = os.environ.get("MRQ_TEST_PROJECT_ROOT") or os.getcwd()

REAL_MONGODB_ENV = "MRQ_TEST_MONGODB_URI"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "testserver_only: needs the Mongo test server (skipped on a real MongoDB)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not os.environ.get(REAL_MONGODB_ENV):
        return
    skip = pytest.mark.skip(reason=f"{REAL_MONGODB_ENV} is set: this test needs the Mongo test server")
    for item in items:
        if "testserver_only" in item.keywords:
            item.add_marker(skip)


def with_database(uri: str, db_name: str) -> str:
    """The URI with its path replaced by a database name (keeps the query options)."""
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, "/" + db_name, parts.query, ""))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[MongoTestServer | None]:
    if os.environ.get(REAL_MONGODB_ENV):
        yield None
        return
    server = MongoTestServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def mongodb_uri(mongo_server: MongoTestServer | None) -> str:
    """Base URI (no database) of the MongoDB the tests use."""
    if mongo_server is None:
        uri = os.environ[REAL_MONGODB_ENV]
        return with_database(uri, "")
    return mongo_server.uri


@pytest.fixture(scope="session")
def mongo_client(mongodb_uri: str) -> Iterator[pymongo.MongoClient]:
    client: pymongo.MongoClient = pymongo.MongoClient(mongodb_uri, serverSelectionTimeoutMS=10_000)
    yield client
    client.close()


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@pytest.fixture
def mongo_db(mongo_client: pymongo.MongoClient) -> Iterator[pymongo.database.Database]:
    """A fresh database with a unique name, dropped after the test."""
    name = _unique("mrqtest_")
    yield mongo_client[name]
    _drop_database(mongo_client, name)


def _drop_database(client: pymongo.MongoClient, name: str) -> None:
    try:
        client.drop_database(name)
    except pymongo.errors.PyMongoError:
        pass  # a fault test may have left the server down; the server's data dies with it


@pytest.fixture
def mrq_settings(redis_url: str, mongodb_uri: str, mongo_client: pymongo.MongoClient) -> Iterator[Settings]:
    """Settings pointing at the test servers, with a unique Redis prefix and jobs database."""
    prefix = _unique("t")
    db_name = _unique("mrqtest_")
    settings, _ = load_settings(
        [],
        env={},
        default_file=False,  # never pick up a developer's mrq-config.py
        overrides={
            "redis": redis_url,
            "redis_prefix": prefix,
            "mongodb_jobs": with_database(mongodb_uri, db_name),
            "mongodb_logs": "1",
            "redis_timeout": 5.0,
            "mongodb_timeout": 5.0,
        },
    )
    yield settings
    _drop_database(mongo_client, db_name)
    _delete_prefix(redis_url, prefix)


def _delete_prefix(redis_url: str, prefix: str) -> None:
    import redis

    try:
        client = redis.Redis.from_url(redis_url, socket_timeout=5)
        for pattern in (f"{prefix}:*", f"{{{prefix}:*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start:start + 500])
        client.close()
    except redis.exceptions.RedisError:
        pass  # a fault test may have stopped this server


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, for fault tests that kill, restart, empty or freeze it."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def own_mongo() -> Iterator[MongoTestServer]:
    """A Mongo test server of this test's own, for fault tests that freeze or restart it."""
    server = MongoTestServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def connections(mrq_settings: Settings) -> Iterator[Connections]:
    conns = Connections(mrq_settings)
    yield conns
    conns.close()


@pytest.fixture
def store(mrq_settings: Settings) -> Iterator[Store]:
    """A Store on the test servers; also the current one, for MRQ-style calls (queue_job...)."""
    the_store = current.set_current_config(mrq_settings)
    yield the_store
    current.reset()


@pytest.fixture
def worker_factory(mrq_settings: Settings) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real `mrq-worker` processes on the test stores: `worker_factory("--greenlets", "5",
    "default", env={...})`. Every worker still running at the end of the test is killed."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, wait: bool = True,
              settings: Settings | None = None) -> WorkerProcess:
        worker = WorkerProcess(settings or mrq_settings, args, env=env, cwd=PROJECT_ROOT)
        started.append(worker)
        worker.start() if wait else worker.start(ready_text=None)
        return worker

    yield start
    for worker in started:
        worker.close()
