"""The stores of a run: a private redis-server (loopback, no persistence) and the Mongo test server
(or a real MongoDB from MRQ_BENCH_MONGODB_URI), with the counters the harness reads from outside
the systems under test: Redis `INFO` (commandstats, reads, memory) and MongoDB `serverStatus`
(`metrics.commands`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil
import pymongo
import redis

from mrq.testing.stack import MongoTestServer, RedisServer

MONGODB_ENV = "MRQ_BENCH_MONGODB_URI"
DATABASE = "mrq_bench"
#: Commands that are not the work of a system under test: the harness's own readings and the
#: drivers' connection heartbeats.
MONGO_IGNORED = frozenset({"serverStatus", "hello", "isMaster", "ismaster"})
REDIS_IGNORED = frozenset({"info", "config|resetstat", "flushall", "scan", "memory|usage"})


@dataclass
class RedisReading:
    commands: dict[str, int] = field(default_factory=dict)  # commandstats calls by command
    reads: int = 0  # total_reads_processed: about one per client round trip
    used_memory: int = 0

    def minus(self, before: RedisReading) -> dict[str, Any]:
        commands = {name: calls - before.commands.get(name, 0) for name, calls in self.commands.items()
                    if name not in REDIS_IGNORED and calls - before.commands.get(name, 0) > 0}
        return {"commands": sum(commands.values()), "by_command": dict(sorted(commands.items())),
                "roundtrips": max(0, self.reads - before.reads - 1),  # minus the harness's INFO
                "memory": self.used_memory - before.used_memory}


@dataclass
class MongoReading:
    commands: dict[str, int] = field(default_factory=dict)

    def minus(self, before: MongoReading) -> dict[str, Any]:
        commands = {name: total - before.commands.get(name, 0) for name, total in self.commands.items()
                    if name not in MONGO_IGNORED and total - before.commands.get(name, 0) > 0}
        return {"commands": sum(commands.values()), "by_command": dict(sorted(commands.items()))}


class Stores:
    """Start (or connect to) the stores; `reset()` empties them between two runs."""

    def __init__(self) -> None:
        self.redis_server: RedisServer | None = None
        self.mongo_server: MongoTestServer | None = None
        self.real_mongodb = os.environ.get(MONGODB_ENV) or ""
        self._redis: redis.Redis | None = None
        self._mongo: pymongo.MongoClient | None = None

    def start(self) -> None:
        self.redis_server = RedisServer()
        self.redis_server.start()
        if not self.real_mongodb:
            self.mongo_server = MongoTestServer()
            self.mongo_server.start()
        self._redis = redis.Redis.from_url(self.redis_url, socket_timeout=30)
        self._mongo = pymongo.MongoClient(self.mongodb_uri, serverSelectionTimeoutMS=10_000)
        self._mongo.admin.command("ping")

    def close(self) -> None:
        for client in (self._redis, self._mongo):
            try:
                if client is not None:
                    client.close()
            except Exception:
                pass
        for server in (self.redis_server, self.mongo_server):
            if server is not None:
                server.close()

    @property
    def redis_url(self) -> str:
        assert self.redis_server is not None
        return self.redis_server.url

    @property
    def mongodb_uri(self) -> str:
        """The server's URI, without a database."""
        if self.real_mongodb:
            return self.real_mongodb
        assert self.mongo_server is not None
        return self.mongo_server.uri

    @property
    def mongodb_jobs_uri(self) -> str:
        """The URI of the benchmark's database (mrq's `mongodb_jobs`)."""
        parts = urlsplit(self.mongodb_uri)
        return urlunsplit((parts.scheme, parts.netloc, "/" + DATABASE, parts.query, ""))

    @property
    def redis(self) -> redis.Redis:
        assert self._redis is not None
        return self._redis

    @property
    def mongo(self) -> pymongo.MongoClient:
        assert self._mongo is not None
        return self._mongo

    def reset(self) -> None:
        self.redis.flushall()
        self.mongo.drop_database(DATABASE)

    def redis_reading(self) -> RedisReading:
        info: dict[str, Any] = self.redis.info("all")
        commands = {key[len("cmdstat_"):]: int(value["calls"]) for key, value in info.items()
                    if key.startswith("cmdstat_")}
        return RedisReading(commands, int(info.get("total_reads_processed", 0)), int(info["used_memory"]))

    def redis_key_bytes(self) -> int:
        """Bytes of every key in Redis (MEMORY USAGE, all elements sampled): what queued jobs take,
        without the allocator's and the clients' noise that used_memory carries."""
        total = 0
        keys = list(self.redis.scan_iter(count=1000))
        for start in range(0, len(keys), 1000):
            pipe = self.redis.pipeline(transaction=False)
            for key in keys[start:start + 1000]:
                pipe.memory_usage(key, samples=0)
            total += sum(int(size or 0) for size in pipe.execute())
        return total

    def mongo_reading(self) -> MongoReading:
        status = self.mongo.admin.command("serverStatus")
        commands = status.get("metrics", {}).get("commands", {})
        return MongoReading({name: int(value.get("total", 0)) for name, value in commands.items()
                             if isinstance(value, dict) and "total" in value})

    def mongo_bytes_per_document(self, collection: str) -> float | None:
        """collStats size / count of a collection of the benchmark's database."""
        try:
            stats = self.mongo[DATABASE].command("collStats", collection)
        except pymongo.errors.PyMongoError:
            return None
        count = int(stats.get("count") or 0)
        return float(stats.get("size") or 0) / count if count else None

    def count_jobs(self, status: str) -> int:
        return int(self.mongo[DATABASE]["mrq_jobs"].count_documents({"status": status}))

    def server_processes(self) -> dict[str, psutil.Process]:
        """The store processes on this machine, for CPU accounting."""
        procs = {}
        for name, server in (("redis", self.redis_server), ("mongo", self.mongo_server)):
            if server is not None and server.proc is not None:
                try:
                    procs[name] = psutil.Process(server.proc.pid)
                except psutil.Error:
                    pass
        return procs

    def versions(self) -> dict[str, str]:
        redis_version = str(self.redis.info("server").get("redis_version", "?"))
        build = self.mongo.admin.command("buildInfo")
        mongo = f"MongoDB {build.get('version', '?')}"
        if not self.real_mongodb:
            mongo = f"mrq Mongo test server (Python, mongomock-ng engine; reports {build.get('version', '?')})"
        return {"redis": redis_version, "mongodb": mongo}
