"""Latency of the Mongo test server (mongo_server.py) as mrq's hot path sees it, over loopback.

    python -m mrq.testing.mongo_latency [--tree DIR ...] [--rounds 3] [-n 2000] [--modes plain,strict]

Starts the test server from each source tree given (default: the one this module comes from),
plain and in strict mode (``--auth --notablescan``, the client a ``readWrite`` user of its
database, mrq's indexes created by root, as tests/ run it), on 127.0.0.1 only, and measures with
pymongo, one operation at a time on one connection:

- ``ping``;
- ``insert_one`` of a job-like document (about 10 fields and a params dict);
- ``find_one`` by ``_id``;
- ``find_one_and_update`` by ``_id`` with a status guard (``$set`` several fields, ``$unset``
  two, the document after the update returned), what a worker does to start a job;
- ``update_many`` of 50 ids (``_id: {$in}``) with a status guard;
- ``job``: mrq's sequence for one job, ``insert_one``, the start above, and the final
  ``update_one`` guarded by ``{_id, status, worker}``, timed as one;
- ``find_50`` and ``bulk_final_50``: the regular queue's batch of 50, loaded by ``_id: {$in}``,
  and its final statuses, one ``bulk_write`` of 50 guarded ``update_one``.

For each: p50 and p99 in milliseconds, and the server's CPU per operation (its user + system
time over the run, so it counts its TTL thread too). Trees are measured alternately, round after
round, so that a busy machine weighs on all of them alike; the figures printed are the medians
over the rounds. ``--json FILE`` writes every round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pymongo
from bson import ObjectId

from .stack import free_port, wait_for_port

OPS = ("ping", "insert_one", "find_one", "find_one_and_update", "update_many_50", "job", "find_50", "bulk_final_50")
DB = "latency"
COLL = "mrq_jobs"
STARTABLE = ["queued", "retry", "started"]
#: mrq_jobs' indexes as mrq.storage.mongo creates them (the strict mode's planner sees these).
JOB_INDEXES = [
    pymongo.IndexModel([("dateexpires", 1)], name="ttl_dateexpires", expireAfterSeconds=0, sparse=True),
    pymongo.IndexModel([("status", 1), ("_id", -1)], name="status_id"),
    pymongo.IndexModel([("queue", 1), ("status", 1), ("_id", -1)], name="queue_status_id"),
    pymongo.IndexModel([("path", 1), ("status", 1), ("_id", -1)], name="path_status_id"),
    pymongo.IndexModel([("worker", 1), ("status", 1), ("_id", -1)], name="worker_status_id", sparse=True),
    pymongo.IndexModel([("exceptiontype", 1), ("_id", -1)], name="exceptiontype_id", sparse=True),
    pymongo.IndexModel([("dateretry", 1)], name="dateretry", sparse=True),
]


def job_document(i: int) -> dict[str, Any]:
    now = datetime.now(UTC).replace(tzinfo=None)
    return {"_id": ObjectId(), "path": "tests.tasks.general.Add", "params": {"a": i, "b": 2, "label": f"job-{i}",
            "tags": ["x", "y"], "options": {"retries": 3, "timeout": 30.5}}, "queue": "default", "status": "queued",
            "priority": 0, "datequeued": now, "dateupdated": now, "retry_count": 0, "max_retries": 3,
            "result_ttl": 604800, "raw_queue": None}  # fmt: skip


def _cpu_seconds(pid: int) -> float:
    """CPU time of the process's threads alive now (``schedstat``: nanoseconds, where ``stat``
    counts clock ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended
    return total / 1e9


class Server:
    """The test server of one source tree, on a free loopback port."""

    def __init__(self, tree: str, strict: bool) -> None:
        self.tree, self.strict, self.port = tree, strict, free_port()
        self.log = tempfile.TemporaryFile()  # noqa: SIM115
        args = ["--auth", "--notablescan"] if strict else []
        env = {**os.environ, "PYTHONPATH": tree}
        self.proc = subprocess.Popen([sys.executable, "-m", "mrq.testing.mongo_server", "--host", "127.0.0.1",
                                      "--port", str(self.port), *args], cwd=tree, env=env, stdout=self.log,
                                     stderr=self.log)  # fmt: skip
        wait_for_port(self.port, proc=self.proc)

    def client(self) -> pymongo.MongoClient:
        """The benchmark's client (in strict mode a readWrite user of the database, indexes created)."""
        uri = f"mongodb://127.0.0.1:{self.port}/"
        if not self.strict:
            client: pymongo.MongoClient = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000)
            client[DB][COLL].create_indexes(JOB_INDEXES)
            return client
        bootstrap: pymongo.MongoClient = pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000)
        with bootstrap:
            bootstrap.admin.command("createUser", "root", pwd="rootpw", roles=["root"])
        root: pymongo.MongoClient = pymongo.MongoClient(uri, username="root", password="rootpw", authSource="admin")
        with root:
            root[DB].command("createUser", "app", pwd="apppw", roles=["readWrite"])
            root[DB][COLL].create_indexes(JOB_INDEXES)
        return pymongo.MongoClient(uri, username="app", password="apppw", authSource=DB,
                                   serverSelectionTimeoutMS=10_000)  # fmt: skip

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _operations(client: pymongo.MongoClient, prefill: int) -> dict[str, Callable[[int], Any]]:
    coll = client[DB][COLL]
    docs = [job_document(i) for i in range(prefill)]
    for start in range(0, len(docs), 1000):
        coll.insert_many(docs[start : start + 1000])
    ids = [doc["_id"] for doc in docs]
    worker = ObjectId()
    admin = client.admin

    def ping(i: int) -> Any:
        return admin.command("ping")

    def insert_one(i: int) -> Any:
        return coll.insert_one(job_document(i))

    def find_one(i: int) -> Any:
        return coll.find_one({"_id": ids[i % len(ids)]})

    def start_job(job_id: ObjectId) -> Any:
        now = datetime.now(UTC)
        changes = {"status": "started", "datestarted": now, "dateupdated": now, "worker": worker}
        return coll.find_one_and_update({"_id": job_id, "status": {"$in": STARTABLE}},
                                        {"$set": changes, "$unset": {"dateexpires": "", "dateretry": ""}},
                                        return_document=pymongo.ReturnDocument.AFTER)  # fmt: skip

    def find_one_and_update(i: int) -> Any:
        return start_job(ids[i % len(ids)])

    def update_many_50(i: int) -> Any:
        first = (i * 50) % max(len(ids) - 50, 1)
        now = datetime.now(UTC)
        return coll.update_many({"_id": {"$in": ids[first : first + 50]}, "status": {"$in": STARTABLE}},
                                {"$set": {"status": "queued", "dateupdated": now, "queue": "default"},
                                 "$unset": {"worker": ""}})  # fmt: skip

    def job(i: int) -> Any:
        doc = job_document(i)
        coll.insert_one(doc)
        start_job(doc["_id"])
        now = datetime.now(UTC)
        return coll.update_one({"_id": doc["_id"], "status": "started", "worker": worker},
                               {"$set": {"status": "success", "result": {"value": i}, "dateupdated": now,
                                         "datedone": now, "totaltime": 0.001,
                                         "dateexpires": now + timedelta(days=7)}})  # fmt: skip

    def find_50(i: int) -> Any:
        first = (i * 50) % max(len(ids) - 50, 1)
        return list(coll.find({"_id": {"$in": ids[first : first + 50]}}))

    def bulk_final_50(i: int) -> Any:
        first = (i * 50) % max(len(ids) - 50, 1)
        now = datetime.now(UTC)
        return coll.bulk_write([pymongo.UpdateOne({"_id": job_id, "status": {"$in": STARTABLE}},
                                                  {"$set": {"status": "started", "dateupdated": now, "worker": worker}})
                                for job_id in ids[first : first + 50]], ordered=False)  # fmt: skip

    return {"ping": ping, "insert_one": insert_one, "find_one": find_one, "find_one_and_update": find_one_and_update,
            "update_many_50": update_many_50, "job": job, "find_50": find_50,
            "bulk_final_50": bulk_final_50}  # fmt: skip


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(tree: str, strict: bool, n: int, prefill: int, ops: list[str]) -> dict[str, dict[str, float]]:
    """One round on one tree and mode: ``{op: {p50_ms, p99_ms, server_cpu_ms, client_cpu_ms}}``."""
    server = Server(tree, strict)
    try:
        client = server.client()
        try:
            operations = _operations(client, prefill)
            results = {}
            for name in ops:
                operation = operations[name]
                for i in range(min(200, n)):  # warm up
                    operation(i)
                samples = []
                cpu, client_cpu = _cpu_seconds(server.proc.pid), time.process_time()
                for i in range(n):
                    started = time.perf_counter()
                    operation(i)
                    samples.append(time.perf_counter() - started)
                cpu, client_cpu = _cpu_seconds(server.proc.pid) - cpu, time.process_time() - client_cpu
                results[name] = {"p50_ms": _percentile(samples, 0.5) * 1e3, "p99_ms": _percentile(samples, 0.99) * 1e3,
                                 "server_cpu_ms": cpu / n * 1e3, "client_cpu_ms": client_cpu / n * 1e3}  # fmt: skip
            return results
        finally:
            client.close()
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mrq.testing.mongo_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", help="source tree to run the server from (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-n", type=int, default=2000, help="operations per measurement")
    parser.add_argument("--prefill", type=int, default=5000, help="job documents in the collection beforehand")
    parser.add_argument("--modes", default="plain,strict")
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--json", help="write every round's figures here")
    args = parser.parse_args(argv)
    trees = args.tree or [str(Path(__file__).resolve().parents[2])]
    modes, ops = args.modes.split(","), args.ops.split(",")
    rounds: list[dict[str, Any]] = []
    for number in range(args.rounds):
        for mode in modes:
            for tree in trees:
                figures = measure(tree, mode == "strict", args.n, args.prefill, ops)
                rounds.append({"round": number, "tree": tree, "mode": mode, "figures": figures})
                print(f"round {number + 1} {mode:6} {tree}: " + ", ".join(
                    f"{op} {f['p50_ms']:.3f}" for op, f in figures.items()), file=sys.stderr, flush=True)
    print(f"median of {args.rounds} rounds, {args.n} operations each; ms (server CPU: ms per operation)")
    print("| tree | mode | operation | p50 ms | p99 ms | server CPU ms/op | client CPU ms/op |")
    print("|---|---|---|---:|---:|---:|---:|")
    for mode in modes:
        for op in ops:
            for tree in trees:
                mine = [r["figures"][op] for r in rounds if r["tree"] == tree and r["mode"] == mode]
                row = {k: statistics.median(f[k] for f in mine) for k in mine[0]}
                print(f"| {tree} | {mode} | {op} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} | "
                      f"{row['server_cpu_ms']:.3f} | {row['client_cpu_ms']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rounds, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
