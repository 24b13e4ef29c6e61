"""pytest fixtures for mrq and for projects testing their own tasks with it.

Per test session: a private `redis-server` on a free loopback port (own temp dir, no
persistence) and the Mongo test server on another free port, or a real MongoDB when
`MRQ_TEST_MONGODB_URI` is set. Per test: a fresh Redis key prefix and a fresh MongoDB database,
both removed afterwards, so tests never see each other's data and never touch anything else.

Strict mode (`MRQ_TEST_MONGO_STRICT=1`): the session's test server runs with `--auth
--notablescan`, and its first user, `root`, is created through the localhost exception;
`mongodb_uri` and `mongo_client` carry root's credentials (the operator). For each test,
`mrq_settings` creates a user with `readWrite` on the test's database only and puts it in
`mongodb_jobs` (`authSource` that database), so that mrq code and the workers it starts run with
the least privilege a deployment would give them, and creates mrq's indexes as root beforehand
(`ensure_indexes`, what an operator runs once): a query no index serves fails (code 291) as on
`mongod --setParameter notablescan=1`, an action readWrite does not grant fails (code 13). With a
real MongoDB (`MRQ_TEST_MONGODB_URI`, started with `--auth` by you), strict mode needs a URI whose
user may create users. `MRQ_TEST_MONGO_STRICT_ROLES` (comma-separated, default `readWrite`) gives
the per-test user other built-in roles of its database, e.g. `readWrite,dbAdmin` to look past a
known refusal at what comes after it. Without MRQ_TEST_MONGO_STRICT nothing changes.

Enable with `-p mrq.testing.pytest_plugin` (this project does it in pyproject.toml).
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import pymongo
import pytest

from mrq import current
from mrq.config import Settings, load_settings
from mrq.connections import Connections
from mrq.storage.mongo import ensure_indexes
from mrq.store import Store
from mrq.testing.stack import MongoTestServer, RedisServer
from mrq.testing.workers import WorkerProcess

#: Workers under test run from here, so that `tests.tasks.*` is importable (projects using this
#: plugin can set MRQ_TEST_PROJECT_ROOT).
PROJECT_ROOT = os.environ.get("MRQ_TEST_PROJECT_ROOT") or os.getcwd()

REAL_MONGODB_ENV = "MRQ_TEST_MONGODB_URI"
STRICT_ENV = "MRQ_TEST_MONGO_STRICT"
STRICT_ROLES_ENV = "MRQ_TEST_MONGO_STRICT_ROLES"
#: The operator of the strict test server (created through the localhost exception), per session.
ROOT_USER, ROOT_PASSWORD = "root", secrets.token_hex(16)


def strict_mode() -> bool:
    """Whether MRQ_TEST_MONGO_STRICT asks for the strict MongoDB (access control, notablescan)."""
    return os.environ.get(STRICT_ENV, "").strip().lower() not in ("", "0", "false", "no")


def strict_roles() -> list[str]:
    """The roles of the per-test user in strict mode (MRQ_TEST_MONGO_STRICT_ROLES, default readWrite)."""
    return [role.strip() for role in os.environ.get(STRICT_ROLES_ENV, "readWrite").split(",") if role.strip()]


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


def with_user(uri: str, user: str, password: str, auth_source: str, db_name: str = "") -> str:
    """The URI with these credentials (replacing any), ``authSource`` and database."""
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    query = [(k, v) for k, v in parse_qsl(parts.query) if k.lower() != "authsource"] + [("authSource", auth_source)]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, "/" + db_name, urlencode(query), ""))


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
    strict = strict_mode()
    server = MongoTestServer(args=["--auth", "--notablescan"] if strict else [])
    server.start()
    if strict:  # the first user, through the localhost exception, as an operator would create it
        client: pymongo.MongoClient = pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=10_000)
        try:
            client.admin.command("createUser", ROOT_USER, pwd=ROOT_PASSWORD, roles=["root"])
        finally:
            client.close()
    yield server
    server.close()


@pytest.fixture(scope="module")
def plain_mongodb_uri(mongo_server: MongoTestServer | None) -> Iterator[str]:
    """For the test server's own contract tests (its query engine, its wire protocol): the
    session's MongoDB, or in strict mode a plain test server of the module's own, since strict
    mode's access control and notablescan have contract tests of their own."""
    if mongo_server is None:
        yield with_database(os.environ[REAL_MONGODB_ENV], "")
    elif not strict_mode():
        yield mongo_server.uri
    else:
        plain = MongoTestServer()
        plain.start()
        yield plain.uri
        plain.close()


def use_plain_mongodb() -> tuple[Any, Any]:
    """Fixtures overriding `mongodb_uri` and `mongo_client` for one module with `plain_mongodb_uri`:
    `_plain_uri, _plain_client = use_plain_mongodb()` at the module's top level."""

    @pytest.fixture(scope="module", name="mongodb_uri")
    def uri(plain_mongodb_uri: str) -> str:
        return plain_mongodb_uri

    @pytest.fixture(scope="module", name="mongo_client")
    def client(mongodb_uri: str) -> Iterator[pymongo.MongoClient]:
        the_client: pymongo.MongoClient = pymongo.MongoClient(mongodb_uri, serverSelectionTimeoutMS=10_000)
        yield the_client
        the_client.close()

    return uri, client


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def mongodb_uri(mongo_server: MongoTestServer | None) -> str:
    """Base URI (no database) of the MongoDB the tests use."""
    if mongo_server is None:
        uri = os.environ[REAL_MONGODB_ENV]
        return with_database(uri, "")
    if strict_mode():
        return with_user(mongo_server.uri, ROOT_USER, ROOT_PASSWORD, "admin")
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
    """Settings pointing at the test servers, with a unique Redis prefix and jobs database. In
    strict mode, `mongodb_jobs` names a user with readWrite on that database only, and the
    database has mrq's indexes."""
    prefix = _unique("t")
    db_name = _unique("mrqtest_")
    jobs_uri = jobs_database_uri(mongodb_uri, mongo_client, db_name)
    settings, _ = load_settings(
        [],
        env={},
        default_file=False,  # never pick up a developer's mrq-config.py
        overrides={
            "redis": redis_url,
            "redis_prefix": prefix,
            "mongodb_jobs": jobs_uri,
            "mongodb_logs": "1",
            "redis_timeout": 5.0,
            "mongodb_timeout": 5.0,
        },
    )
    yield settings
    drop_jobs_database(mongo_client, db_name)
    _delete_prefix(redis_url, prefix)


def jobs_database_uri(mongodb_uri: str, mongo_client: pymongo.MongoClient, db_name: str) -> str:
    """The URI mrq's components get for a test's jobs database. In strict mode: a user with
    `strict_roles()` on that database only, and mrq's indexes created first (as an operator runs
    `--ensure_indexes`), since notablescan refuses the queries they serve."""
    if not strict_mode():
        return with_database(mongodb_uri, db_name)
    user, password = f"mrq_{db_name}", secrets.token_hex(12)
    mongo_client[db_name].command("createUser", user, pwd=password, roles=strict_roles())
    ensure_indexes(mongo_client[db_name], mongo_client[db_name])  # as root, before anything runs
    return with_user(mongodb_uri, user, password, db_name, db_name)


def drop_jobs_database(mongo_client: pymongo.MongoClient, db_name: str) -> None:
    _drop_database(mongo_client, db_name)
    if strict_mode():
        _drop_user(mongo_client, db_name, f"mrq_{db_name}")


def _drop_user(client: pymongo.MongoClient, db_name: str, user: str) -> None:
    try:
        client[db_name].command("dropUser", user)
    except pymongo.errors.PyMongoError:
        pass  # the server may be down after a fault test


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
