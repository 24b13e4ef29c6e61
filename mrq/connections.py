"""Redis and MongoDB clients built from the settings: lazy, fork-safe, with bounded timeouts.

`Connections(settings)` creates each client on first use. A child process (after `fork`) gets
fresh clients the first time it touches them, never the parent's sockets. Every failure to reach
a server becomes `StoreUnavailable` with a one-line message naming the URI without its password.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import unquote, urlsplit

import pymongo
import pymongo.database
import pymongo.errors
import redis
import redis.exceptions

from .config import Settings
from .exceptions import ConfigError, StoreUnavailable
from .iocount import MONGO_LISTENER, CountingConnection, CountingSSLConnection

T = TypeVar("T")

_PASSWORD_IN_URI = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<user>[^:@/]*):(?P<password>[^@/]*)@", re.I)


def redact_uri(uri: str) -> str:
    """The URI with its password replaced by ***, safe to print and log."""
    return _PASSWORD_IN_URI.sub(lambda m: f"{m['scheme']}{m['user']}:***@", uri)


def redact_text(text: str, *uris: str) -> str:
    """Remove any password of the given URIs from a free text (driver messages)."""
    text = redact_uri(text)
    for uri in uris:
        match = _PASSWORD_IN_URI.match(uri)
        if match and match["password"]:
            for secret in {match["password"], unquote(match["password"])}:
                if len(secret) >= 1:
                    text = text.replace(secret, "***")
    return text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


#: Where each store's address comes from, said with every "cannot reach" error.
WHERE_SET = {"Redis": "MRQ_REDIS or --redis", "MongoDB": "MRQ_MONGODB_JOBS or --mongodb-jobs"}


def store_error(what: str, uri: str, exc: BaseException, timeout: float | None = None) -> str:
    """One line for a store that failed: which, where, why (without pymongo's topology dump or a
    password), and where its address is set."""
    reason = _first_line(exc)
    if isinstance(exc, pymongo.errors.ServerSelectionTimeoutError):
        within = f" within {timeout:g}s" if timeout else ""
        reason = f"no server answered{within} (" + reason.split(" (configured timeouts")[0].split(", Timeout:")[0] + ")"
    elif isinstance(exc, pymongo.errors.OperationFailure):
        return f"{what} at {redact_uri(uri)} refused the command: {redact_text(reason, uri)}"
    return (f"cannot reach {what} at {redact_uri(uri)}: {redact_text(reason.rstrip('.'), uri)}. Is it running, at that "
            f"address? ({WHERE_SET.get(what, what)} sets it)")


# --- Redis ----------------------------------------------------------------------------------------


def make_redis(uri: str, *, max_connections: int = 100, timeout: float = 10.0, count_io: bool = False) -> redis.Redis:
    """A redis-py client for one of: redis://, rediss://, unix://, redis+sentinel://, redis+cluster://.
    `count_io`: its round trips over TCP are counted in mrq.iocount."""
    common: dict[str, Any] = {
        "socket_connect_timeout": min(timeout, 5.0),
        "socket_timeout": timeout,
        "health_check_interval": 30,
        "retry_on_timeout": False,
        "decode_responses": False,
    }
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    try:
        if scheme in ("redis", "rediss", "unix"):
            if scheme != "unix" and count_io:
                common["connection_class"] = CountingSSLConnection if scheme == "rediss" else CountingConnection
            pool = redis.BlockingConnectionPool.from_url(uri, max_connections=max_connections, timeout=timeout,
                                                         **common)
            return redis.Redis(connection_pool=pool)
        if scheme == "redis+sentinel":
            return _make_sentinel(uri, common)
        if scheme == "redis+cluster":
            from redis.cluster import RedisCluster

            cluster_uri = "redis://" + uri.split("://", 1)[1]
            if count_io:
                common["connection_class"] = CountingConnection
            client: Any = RedisCluster.from_url(cluster_uri, max_connections=max_connections, **common)
            return client  # type: ignore[no-any-return,unused-ignore]
    except (ValueError, redis.exceptions.RedisError) as exc:
        raise ConfigError(f"invalid Redis URI {redact_uri(uri)}: {_first_line(exc)}") from None
    raise ConfigError(
        f"invalid Redis URI {redact_uri(uri)}: expected redis://, rediss://, unix://, redis+sentinel:// "
        "or redis+cluster://"
    )


def is_cluster(client: Any) -> bool:
    """True for a Redis Cluster client or one of its pipelines (`redis+cluster://`). Answered once
    per class: RedisCluster's isinstance check goes through typing's Protocol machinery."""
    cls = type(client)
    found = _CLUSTER_CLASSES.get(cls)
    if found is None:
        found = _CLUSTER_CLASSES[cls] = issubclass(cls, redis.RedisCluster)
    return found


_CLUSTER_CLASSES: dict[type, bool] = {}


class Commands:
    """Redis commands gathered to be sent together by `send_commands`. Writers add commands with
    `execute_command(*args)`, the one method they use of a redis-py pipeline, so that the same
    writer fills either (mrq.aio's asyncio pipeline, or this)."""

    def __init__(self) -> None:
        self.stack: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> None:
        self.stack.append(args)


def send_commands(client: Any, commands: Commands, messages: Iterable[tuple[str, str]] = ()) -> list[Any]:
    """Send `commands`, then PUBLISH the `(channel, message)` pairs, as one non-transactional
    pipeline; returns the commands' replies (not the PUBLISH ones).

    On a single Redis (or Sentinel's master) they go without a redis-py Pipeline object, whose
    command stack, reply callbacks and per-command bookkeeping cost as much client CPU as the
    round trip itself: packed in one write on a pooled connection, every reply read in order. As
    in a pipeline, an error reply raises once every reply was read (the connection stays in the
    pool), any other failure (connection lost, timeout, interruption) closes the connection, and
    the connection's retry policy applies.

    On a Redis Cluster, a redis-py pipeline, whose PUBLISH commands cannot ride in it (the command
    has no key to route it by): one PUBLISH each right after it, a failure there ignored (a
    wake-up is best effort: idle workers look at their queues every few seconds), so that a
    caller never retries writes that were applied."""
    messages = list(messages)
    if is_cluster(client):
        pipe = client.pipeline(transaction=False)
        for args in commands.stack:
            pipe.execute_command(*args)
        replies = pipe.execute()
        for channel, message in messages:
            try:
                client.publish(channel, message)
            except (redis.exceptions.RedisError, OSError):
                pass
        return list(replies)
    stack = [*commands.stack, *(("PUBLISH", channel, message) for channel, message in messages)]
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        replies = conn.retry.call_with_retry(lambda: _round_trip(conn, stack), lambda _error: conn.disconnect())
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
    for reply in replies:
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply
    return list(replies[:len(commands.stack)])


@dataclass
class Overlapped(Generic[T]):
    """What `send_commands_during` saw: the Redis commands' replies or their failure, and the
    other work's result or its exception."""

    replies: list[Any] | None = None
    redis_error: BaseException | None = None
    result: T | None = None
    error: Exception | None = None


def send_commands_during(client: Any, commands: Commands, messages: Iterable[tuple[str, str]],
                         work: Callable[[], T]) -> Overlapped[T]:
    """`send_commands` with `work` (a round trip to another server) run while Redis answers: the
    commands are written, `work()` runs, then the replies are read, so that the caller waits for
    both servers at once. Nothing raises from Redis or from `work` (an Exception): the outcome
    says what failed, once both are over, and the caller decides (one attempt: no retry policy
    here). A BaseException from `work` (an interruption) closes the connection and propagates.
    Not on a Redis Cluster (ValueError: use send_commands)."""
    if is_cluster(client):
        raise ValueError("send_commands_during needs a single Redis")
    stack = [*commands.stack, *(("PUBLISH", channel, message) for channel, message in messages)]
    outcome: Overlapped[T] = Overlapped()
    pool = client.connection_pool
    conn = None
    try:
        try:
            conn = pool.get_connection()  # connects a new connection: may fail too
            conn.send_packed_command(conn.pack_commands(stack))
        except (redis.exceptions.RedisError, OSError) as exc:
            if conn is not None:
                conn.disconnect()
            outcome.redis_error = exc
        try:
            outcome.result = work()
        except Exception as exc:
            outcome.error = exc
        except BaseException:
            if conn is not None:
                conn.disconnect()
            raise
        if outcome.redis_error is None and conn is not None:
            try:
                replies = _read_replies(conn, len(stack))
            except (redis.exceptions.RedisError, OSError) as exc:
                conn.disconnect()
                outcome.redis_error = exc
            else:
                failed = next((r for r in replies if isinstance(r, redis.exceptions.ResponseError)), None)
                if failed is not None:
                    outcome.redis_error = failed
                else:
                    outcome.replies = replies[:len(commands.stack)]
    finally:
        if conn is not None:
            pool.release(conn)
    return outcome


def _round_trip(conn: Any, stack: list[tuple[Any, ...]]) -> list[Any]:
    conn.send_packed_command(conn.pack_commands(stack))
    return _read_replies(conn, len(stack))


def _read_replies(conn: Any, count: int) -> list[Any]:
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(conn.read_response())
        except redis.exceptions.ResponseError as exc:
            replies.append(exc)
    return replies


def _make_sentinel(uri: str, common: dict[str, Any]) -> redis.Redis:
    """redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]"""
    from redis.sentinel import Sentinel

    parts = urlsplit("redis://" + uri.split("://", 1)[1])
    netloc = parts.netloc.rsplit("@", 1)
    password = None
    if len(netloc) == 2:
        password = unquote(netloc[0].split(":", 1)[-1]) or None
    hosts = []
    for host in netloc[-1].split(","):
        name, _, port = host.partition(":")
        hosts.append((name, int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ConfigError(f"invalid Redis URI {redact_uri(uri)}: the Sentinel service name is missing")
    service, db = path[0], int(path[1]) if len(path) > 1 else 0
    sentinel = Sentinel(hosts, socket_timeout=common["socket_timeout"],
                        sentinel_kwargs={"socket_timeout": common["socket_timeout"]})
    return sentinel.master_for(service, db=db, password=password, **common)


# --- MongoDB --------------------------------------------------------------------------------------


def make_mongo(uri: str, *, timeout: float = 5.0, patience: float | None = None,
               count_io: bool = False) -> pymongo.MongoClient:
    """`timeout` bounds connecting; `patience` (default: timeout) is how long an operation waits for
    a server to be selected, e.g. through a failover or a hung server. `count_io`: its commands are
    counted in mrq.iocount (a pymongo command listener, which costs about a sixth of a command's
    client CPU)."""
    ms = int(timeout * 1000)
    try:
        return pymongo.MongoClient(
            uri,
            serverSelectionTimeoutMS=int((patience or timeout) * 1000),
            connectTimeoutMS=ms,
            socketTimeoutMS=max(ms * 6, 30_000),
            appname="mrq",
            event_listeners=[MONGO_LISTENER] if count_io else [],
            tz_aware=False,
            connect=False,
        )
    except (pymongo.errors.ConfigurationError, pymongo.errors.InvalidURI, ValueError, TypeError) as exc:
        raise ConfigError(f"invalid MongoDB URI {redact_uri(uri)}: {redact_text(_first_line(exc), uri)}") from None


def mongo_database_name(uri: str, default: str = "mrq") -> str:
    path = urlsplit(uri).path.lstrip("/")
    return unquote(path.split("?")[0]) or default


class Connections:
    """The Redis and MongoDB clients of one process, created lazily from the settings."""

    def __init__(self, settings: Settings, *, patience: float | None = None, count_io: bool = False) -> None:
        """`patience`: seconds MongoDB operations wait for a usable server (default: the
        mongodb_timeout setting). Workers are patient, so that a task's own MongoDB calls ride out
        a short outage instead of failing the job; producers and the dashboard fail fast.
        `count_io`: every client counts its Redis round trips and MongoDB commands in mrq.iocount,
        which the worker exports as metrics; other processes, which export nothing, skip the
        cost."""
        self.settings = settings
        self.patience = patience
        self.count_io = count_io
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._redis: redis.Redis | None = None
        self._mongo_clients: dict[str, pymongo.MongoClient] = {}
        self._named_redis: dict[str, redis.Redis] = {}
        self._jobs_collections: dict[str, pymongo.collection.Collection] = {}

    # A forked child must not reuse the parent's sockets.
    def _check_fork(self) -> None:
        if os.getpid() != self._pid:
            self._redis = None
            self._named_redis = {}
            self._mongo_clients = {}  # the parent's clients are abandoned, not closed (sockets are shared)
            self._jobs_collections = {}
            self._pid = os.getpid()

    @property
    def redis(self) -> redis.Redis:
        self._check_fork()
        if self._redis is None:
            with self._lock:
                if self._redis is None:
                    s = self.settings
                    self._redis = make_redis(s.redis, max_connections=s.redis_max_connections,
                                             timeout=s.redis_timeout, count_io=self.count_io)
        return self._redis

    def _mongo_client(self, uri: str) -> pymongo.MongoClient:
        self._check_fork()
        client = self._mongo_clients.get(uri)
        if client is None:
            with self._lock:
                client = self._mongo_clients.get(uri)
                if client is None:
                    client = make_mongo(uri, timeout=self.settings.mongodb_timeout, patience=self.patience,
                                        count_io=self.count_io)
                    self._mongo_clients[uri] = client
        return client

    @property
    def mongodb_jobs(self) -> pymongo.database.Database:
        uri = self.settings.mongodb_jobs
        return self._mongo_client(uri)[mongo_database_name(uri)]

    def jobs_collection(self, name: str) -> pymongo.collection.Collection:
        """A collection of the jobs database, built once per process (building one costs about as
        much as encoding a small job: it is on every enqueue's path)."""
        self._check_fork()
        found = self._jobs_collections.get(name)
        if found is None:
            found = self._jobs_collections[name] = self.mongodb_jobs[name]
        return found

    @property
    def mongodb_logs(self) -> pymongo.database.Database | None:
        """The logs database: None when `mongodb_logs` is 0 (per-job logs not stored)."""
        setting = self.settings.mongodb_logs
        if setting == "0":
            return None
        if setting == "1":
            return self.mongodb_jobs
        return self._mongo_client(setting)[mongo_database_name(setting)]

    def named(self, name: str) -> Any:
        """An extra connection from a config-file key, as MRQ's `connections.redis_<name>`: the
        `REDIS_<NAME>` URI gives a Redis client with the main client's options (pool size,
        timeouts), `MONGODB_<NAME>` a MongoDB database; created on first use, then reused. A
        value that is not a string (a client built in the config file) is returned as it is.
        Raises AttributeError when the key is not in the config, ConfigError naming the key when
        its URI is invalid."""
        key = name.upper()
        if name in self.settings.values or name not in self.settings.extra:
            raise AttributeError(f"no connection named {name!r}: the config has no {key} URI")
        value = self.settings.extra[name]
        if not isinstance(value, str):
            return value
        self._check_fork()
        try:
            if name.startswith("mongodb_"):
                if not value.startswith(("mongodb://", "mongodb+srv://")):
                    raise ConfigError(f"invalid MongoDB URI {redact_uri(value)}: expected mongodb://")
                return self._mongo_client(value)[mongo_database_name(value)]
            client = self._named_redis.get(name)
            if client is None:
                with self._lock:
                    client = self._named_redis.get(name)
                    if client is None:
                        s = self.settings
                        client = make_redis(value, max_connections=s.redis_max_connections, timeout=s.redis_timeout,
                                            count_io=self.count_io)
                        self._named_redis[name] = client
            return client
        except ConfigError as exc:
            raise ConfigError(f"config key {key}: {exc}") from None

    def check_redis(self) -> None:
        """Ping Redis; raise StoreUnavailable with a one-line reason if it cannot be reached."""
        uri = self.settings.redis
        try:
            self.redis.ping()
        except redis.exceptions.AuthenticationError as exc:
            raise StoreUnavailable(f"Redis at {redact_uri(uri)} refused the credentials: "
                                   f"{redact_text(_first_line(exc), uri)}") from None
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StoreUnavailable(store_error("Redis", uri, exc)) from None

    def check_mongodb(self) -> None:
        """Ping every configured MongoDB; raise StoreUnavailable with a one-line reason on failure."""
        uris = [self.settings.mongodb_jobs]
        if self.settings.mongodb_logs not in ("0", "1"):
            uris.append(self.settings.mongodb_logs)
        for uri in uris:
            try:
                with pymongo.timeout(self.settings.mongodb_timeout):  # a clear error within a few seconds
                    self._mongo_client(uri).admin.command("ping")
            except pymongo.errors.PyMongoError as exc:
                raise StoreUnavailable(store_error("MongoDB", uri, exc, self.settings.mongodb_timeout)) from None

    def check(self) -> None:
        self.check_redis()
        self.check_mongodb()

    def close(self) -> None:
        """Close every client of this process (used at worker exit and by tests)."""
        if os.getpid() != self._pid:
            self._check_fork()
            return
        if self._redis is not None:
            try:
                self._redis.close()
                pool = getattr(self._redis, "connection_pool", None)
                if pool is not None:
                    pool.disconnect()
                # A cluster client's close() leaves the connections its pipelines took from each
                # node's pool, and those to its startup nodes (CLUSTER SLOTS), open.
                manager = getattr(self._redis, "nodes_manager", None)
                for nodes in (getattr(manager, "startup_nodes", {}), getattr(manager, "nodes_cache", {})):
                    for node in list(nodes.values()):
                        if node.redis_connection is not None:
                            node.redis_connection.close()
                            node.redis_connection.connection_pool.disconnect()
            except Exception:
                pass
            self._redis = None
        for named in self._named_redis.values():
            try:
                named.close()
                named.connection_pool.disconnect()
            except Exception:
                pass
        self._named_redis = {}
        for client in self._mongo_clients.values():
            client.close()
        self._mongo_clients = {}
        self._jobs_collections = {}
