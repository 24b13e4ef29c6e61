"""The world of one fault schedule: fresh servers, proxies, worker processes, and the faults.

Guarantees:
- Everything is new for each schedule and listens on loopback only: mrq's redis-server, the Mongo
  test server, and a third redis-server, the ledger, where tasks count their executions. The
  ledger is never faulted; nothing of mrq uses it.
- Workers reach Redis and MongoDB only through a FaultProxy each, so partitions, refusals and
  latency hit the workers and not the test's own producers and observers (which connect
  directly, and so see server faults (freeze, restart, FLUSHALL) but not proxy faults).
- Worker slots keep the capacity: `plain0` and `plain1` run `mrq-worker`, `supervisor` runs
  `mrq-worker --processes 2`. A signalled slot process is retired (left to finish or die) and
  replaced at once; a slot process that exits by itself is restarted (at most once a second),
  as a process manager would; supervisord restarts the `--processes` children itself.
- `close()` kills every process this cluster started (and their children) and stops the servers.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pymongo
import pymongo.errors
import redis

from ...config import Settings, load_settings
from ...worker.core import EXIT_STORE_UNAVAILABLE
from ..proxy import FaultProxy
from ..stack import MongoTestServer, RedisServer
from ..workers import WorkerProcess, descendants
from .schedule import CPU_TIMEOUT, QUEUE, RAW_QUEUE, TASKS_MODULE, Fault

LEASE = 2.0  # MRQ_WORKER_LEASE of the workers: fast recovery
REDIS_TIMEOUT = 2.0  # MRQ_REDIS_TIMEOUT: reconciliation after a Redis data loss looks again after this + 1 s
GREENLETS = 8
PREFIX = "chaos"
DATABASE = "chaos"
LEDGER_ENV = "CHAOS_LEDGER_URL"  # read by tests/tasks/chaos.py
RAW_QUEUES = {RAW_QUEUE: {"job_factory": f"{TASKS_MODULE}.raw_factory", "retry_queue": QUEUE}}
TASKS = {f"{TASKS_MODULE}.CpuOverTimeout": {"timeout": CPU_TIMEOUT}}
RESTART_EVERY = 1.0  # a slot whose process exited by itself is restarted at most this often

_STARTED = re.compile(r"worker (\S+) \(([0-9a-f]{24})\) started")


@dataclass
class ProcessRecord:
    """One worker process a slot ran: when, why it ended."""

    slot: str
    process: WorkerProcess
    started_at: float
    signals: list[tuple[float, str]] = field(default_factory=list)  # (run time, signal name)


class WorkerSlot:
    """One place a worker runs; its current process, and those it retired."""

    def __init__(self, name: str, settings: Settings, args: list[str], env: dict[str, str], cwd: Path,
                 logdir: Path, clock: Callable[[], float]) -> None:
        self.name = name
        self.settings = settings
        self.args = args
        self.env = env
        self.cwd = cwd
        self.logdir = logdir
        self.clock = clock
        self.records: list[ProcessRecord] = []
        self.current: ProcessRecord | None = None
        self.child_signals: dict[int, list[str]] = {}  # pid of a supervised child -> signals it got
        self._last_start = 0.0

    @property
    def supervised(self) -> bool:
        return "--processes" in self.args

    def start(self) -> ProcessRecord:
        log_path = self.logdir / f"{self.name}-{len(self.records)}.log"
        process = WorkerProcess(self.settings, self.args, env=self.env, cwd=self.cwd, log_path=log_path)
        process.start(ready_text=None)
        record = ProcessRecord(self.name, process, self.clock())
        self.records.append(record)
        self.current = record
        self._last_start = time.monotonic()
        return record

    def ready(self) -> bool:
        """The current process (all its children, under supervisord) took the lease and listens."""
        if self.current is None or not self.current.process.running:
            return False
        found = len(_STARTED.findall(self.current.process.output()))
        return found >= (2 if self.supervised else 1)

    def send_signal(self, sig: signal.Signals) -> str:
        """Signal the current process, retire it and start a replacement."""
        record = self.current
        if record is None or not record.process.running:
            return f"{self.name}: no live process"
        record.signals.append((self.clock(), sig.name))
        try:
            os.kill(record.process.pid, sig)
        except ProcessLookupError:
            return f"{self.name}: pid {record.process.pid} already gone"
        if sig == signal.SIGKILL:
            record.process.wait(10)
        self.start()
        return f"{sig.name} {self.name} pid {record.process.pid}"

    def children(self) -> list[psutil.Process]:
        """The worker processes under supervisord, oldest first (supervised slot only)."""
        if self.current is None or not self.current.process.running:
            return []
        found = []
        for proc in descendants(self.current.process.pid):
            try:
                if "mrq.cli.worker" in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except psutil.Error:
                pass
        return sorted(found, key=lambda p: (p.create_time(), p.pid))

    def signal_child(self, index: int, sig: signal.Signals) -> str:
        children = self.children()
        if index >= len(children):
            return f"{self.name}: no child #{index} alive (of {len(children)})"
        child = children[index]
        try:
            child.send_signal(sig)
        except psutil.Error:
            return f"{self.name}: child #{index} pid {child.pid} already gone"
        assert self.current is not None
        now = self.clock()
        self.current.signals.append((now, f"{sig.name} to child {child.pid}"))
        self.child_signals.setdefault(child.pid, []).append(f"{sig.name}@{now:.2f}s")
        return f"{sig.name} {self.name} child #{index} pid {child.pid} (supervisord restarts it)"

    def keep_alive(self) -> str | None:
        """Restart the slot if its process exited by itself (not more than once a second)."""
        if self.current is not None and self.current.process.running:
            return None
        if time.monotonic() - self._last_start < RESTART_EVERY:
            return None
        code = self.current.process.proc.returncode if self.current and self.current.process.proc else None
        self.start()
        return f"{self.name} exited (code {code}): restarted"

    def kill_all(self) -> None:
        for record in self.records:
            if record.process.proc is None:
                continue
            victims = [*descendants(record.process.pid)]
            record.process.kill()
            for proc in victims:
                try:
                    proc.kill()
                except psutil.Error:
                    pass


class ChaosCluster:
    def __init__(self, rundir: Path, project_root: Path, greenlets: int = GREENLETS) -> None:
        self.rundir = rundir
        self.project_root = project_root
        self.greenlets = greenlets
        for name in ("redis", "ledger", "mongo", "logs"):
            (rundir / name).mkdir(parents=True, exist_ok=True)
        self.redis = RedisServer(workdir=str(rundir / "redis"))
        self.ledger = RedisServer(workdir=str(rundir / "ledger"))
        self.mongo = MongoTestServer(workdir=str(rundir / "mongo"))
        self.redis_proxy = FaultProxy(self.redis.port)
        self.mongo_proxy = FaultProxy(self.mongo.port)
        self.slots: list[WorkerSlot] = []
        self.t0 = time.monotonic()
        self._frozen: set[str] = set()
        self._redis_down = False
        self.start_notes: list[str] = []  # what the start had to retry

    def clock(self) -> float:
        """Seconds since the run started (negative during setup)."""
        return time.monotonic() - self.t0

    # --- settings ----------------------------------------------------------------------------------

    def _settings(self, redis_url: str, mongodb_uri: str) -> Settings:
        settings, _ = load_settings([], env={}, default_file=False, overrides={
            "redis": redis_url, "redis_prefix": PREFIX, "mongodb_jobs": f"{mongodb_uri}/{DATABASE}",
            "mongodb_logs": "0", "redis_timeout": REDIS_TIMEOUT, "mongodb_timeout": 2.0,
            "raw_queues": RAW_QUEUES, "tasks": TASKS,
        })
        return settings

    @property
    def direct_settings(self) -> Settings:
        """Producers and observers: straight to the servers."""
        return self._settings(self.redis.url, self.mongo.uri)

    @property
    def worker_settings(self) -> Settings:
        """Workers: through the proxies."""
        return self._settings(f"redis://127.0.0.1:{self.redis_proxy.port}/0",
                              f"mongodb://127.0.0.1:{self.mongo_proxy.port}")

    @property
    def ledger_url(self) -> str:
        return self.ledger.url

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        for server in (self.redis, self.ledger, self.mongo):
            server.start()
        self.redis_proxy.start()
        self.mongo_proxy.start()
        self._check_paths()
        config = self.rundir / "mrq-chaos-config.py"
        config.write_text(f"RAW_QUEUES = {RAW_QUEUES!r}\nTASKS = {TASKS!r}\n")
        env = {"MRQ_WORKER_LEASE": f"{LEASE:g}", "MRQ_REDIS_TIMEOUT": f"{REDIS_TIMEOUT:g}",
               LEDGER_ENV: self.ledger_url, "PYTHONPATH": os.pathsep.join(
                   p for p in (str(self.project_root), os.environ.get("PYTHONPATH", "")) if p)}
        common = ["--config", str(config), "--greenlets", str(self.greenlets), "--dequeue_strategy", "parallel"]
        queues = ["--", QUEUE, RAW_QUEUE]
        settings = self.worker_settings
        for name, extra in (("plain0", []), ("plain1", []), ("supervisor", ["--processes", "2"])):
            slot = WorkerSlot(name, settings, [*common, *extra, *queues], env, self.project_root,
                              self.rundir / "logs", self.clock)
            self.slots.append(slot)
            slot.start()
        deadline = time.monotonic() + timeout
        while not all(slot.ready() for slot in self.slots):
            for slot in self.slots:
                if slot.current is not None and not slot.current.process.running:
                    output = slot.current.process.output()[-3000:]
                    if slot.current.process.proc is not None and \
                            slot.current.process.proc.returncode == EXIT_STORE_UNAVAILABLE and len(slot.records) < 3:
                        # A store slow to answer on a loaded machine: restarted, as a process
                        # manager would. The paths were checked just before, so this is not a
                        # wrong address; a third failure is reported.
                        self.start_notes.append(f"{slot.name} exited at start (store unavailable), restarted: "
                                                f"{output.strip().splitlines()[-1] if output.strip() else ''}")
                        slot.start()
                        continue
                    raise RuntimeError(f"worker {slot.name} exited at start:\n{output}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not ready after {timeout:g}s")
            time.sleep(0.05)
        ready = time.monotonic()
        for slot in self.slots:  # started during the setup: negative run times
            for record in slot.records:
                record.started_at -= ready - self.t0
        self.t0 = ready

    def _check_paths(self, timeout: float = 30.0) -> None:
        """Both proxies reach their own server before any worker starts (a clear error otherwise,
        rather than a worker's "cannot reach" a minute later)."""
        deadline = time.monotonic() + timeout
        redis_client = redis.Redis(host="127.0.0.1", port=self.redis_proxy.port, socket_timeout=5,
                                   socket_connect_timeout=5)
        mongo_client: pymongo.MongoClient = pymongo.MongoClient(
            f"mongodb://127.0.0.1:{self.mongo_proxy.port}", serverSelectionTimeoutMS=5000, directConnection=True)
        try:
            for what, ping in (("Redis", redis_client.ping), ("MongoDB", lambda: mongo_client.admin.command("ping"))):
                while True:
                    try:
                        ping()
                        break
                    except (redis.RedisError, pymongo.errors.PyMongoError, OSError) as exc:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{what} does not answer through its proxy: {exc}") from None
                        self.start_notes.append(f"{what} through its proxy: {type(exc).__name__}, retried")
                        time.sleep(0.2)
        finally:
            redis_client.close()
            mongo_client.close()

    def slot(self, name: str) -> WorkerSlot:
        return next(s for s in self.slots if s.name == name)

    @property
    def child_signals(self) -> dict[int, list[str]]:
        return {pid: signals for slot in self.slots for pid, signals in slot.child_signals.items()}

    def keep_workers(self) -> list[str]:
        return [note for slot in self.slots if (note := slot.keep_alive())]

    def close(self) -> None:
        for slot in self.slots:
            slot.kill_all()
        for proxy in (self.redis_proxy, self.mongo_proxy):
            proxy.close()
        for server in (self.redis, self.ledger, self.mongo):
            try:
                server.kill()
            except Exception:
                pass

    # --- faults ------------------------------------------------------------------------------------

    def strike(self, fault: Fault) -> str:
        """Start a fault; returns what was done."""
        kind = fault.kind
        if kind in ("kill9", "sigterm", "sigint"):
            sig = {"kill9": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}[kind]
            if fault.target.startswith("child"):
                return self.slot("supervisor").signal_child(int(fault.target[-1]), sig)
            return self.slot(fault.target).send_signal(sig)
        if kind == "redis_freeze":
            self.redis.freeze()
            self._frozen.add("redis")
        elif kind == "redis_restart":
            self.redis.kill()
            self._redis_down = True
        elif kind == "redis_flushall":
            client = redis.Redis.from_url(self.redis.url, socket_timeout=5)
            try:
                client.flushall()
            finally:
                client.close()
        elif kind == "mongo_freeze":
            self.mongo.freeze()
            self._frozen.add("mongo")
        elif kind in ("mongo_partition", "redis_partition"):
            self._proxy(kind).blackhole()
        elif kind in ("mongo_refuse", "redis_refuse"):
            self._proxy(kind).refuse()
        elif kind == "latency":
            self._proxy(fault.target).latency(fault.amount)
        else:
            raise ValueError(f"unknown fault {kind!r}")
        return fault.describe()

    def end(self, fault: Fault) -> str:
        """End a fault that lasts (thaw, restart, heal the proxy)."""
        kind = fault.kind
        if kind == "redis_freeze":
            self._thaw("redis")
        elif kind == "redis_restart":
            self._restart_redis()
        elif kind == "mongo_freeze":
            self._thaw("mongo")
        elif kind in ("mongo_partition", "redis_partition", "mongo_refuse", "redis_refuse"):
            self._proxy(kind).heal()
        elif kind == "latency":
            self._proxy(fault.target).heal()
        return f"end of {fault.kind}{' ' + fault.target if fault.target else ''}"

    def heal_all(self) -> None:
        for name in list(self._frozen):
            self._thaw(name)
        if self._redis_down:
            self._restart_redis()
        self.redis_proxy.heal()
        self.mongo_proxy.heal()

    def _proxy(self, name: str) -> FaultProxy:
        return self.redis_proxy if name.startswith("redis") else self.mongo_proxy

    def _thaw(self, name: str) -> None:
        (self.redis if name == "redis" else self.mongo).thaw()
        self._frozen.discard(name)

    def _restart_redis(self) -> None:
        self.redis.start()
        self._redis_down = False

    # --- who is who --------------------------------------------------------------------------------

    def worker_ids(self) -> dict[str, tuple[str, int]]:
        """Worker id -> (slot, pid), from the workers' "started" lines."""
        found: dict[str, tuple[str, int]] = {}
        for slot in self.slots:
            for record in slot.records:
                for name, worker_id in _STARTED.findall(record.process.output()):
                    pid = name.rsplit(".", 1)[-1]
                    found[worker_id] = (slot.name, int(pid) if pid.isdigit() else 0)
        return found
