"""Running one fault schedule against real workers, then checking the invariants.

Guarantees:
- The schedule's faults strike at their times (seconds after every worker is ready), in order;
  a fault that lasts is ended at its end time. Jobs are queued by two producer threads (regular
  jobs, raw params) at their batches' times, straight to the servers; a producer blocked by a
  frozen server only delays its later batches.
- At the end of the window every fault is healed and every worker slot has a live process. The
  run then waits, polling the stores every 0.2 s, until every accepted job is final and the raw
  queue is empty, or for at most RECOVERY_BOUND seconds. The bound comes from
  docs/guarantees.md with this suite's settings: the lease (2 s) + its check interval (lease/3)
  + the longest outage backoff step (5 s) + the wait of reconciliation's second phase after a
  Redis data loss (lease + 1 = 3 s) + the longest job (4 s) + a 5 s margin for the queue to drain
  on two cores: 20 s.
- Statuses are sampled every 0.2 s during the whole run (invariant d). The evidence (documents,
  ledger counts, what Redis holds) is read from the servers directly once the run settled.
- Every process and server is stopped on the way out, whatever happens. The run directory
  (worker logs, servers' logs) is removed unless the run failed or `keep` is set.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pymongo
import pymongo.errors
import redis
from bson import ObjectId

from ...backoff import Backoff
from ...job import queue_jobs, queue_raw_jobs
from ...store import Store, strings
from ..workers import WorkerProcess
from .cluster import DATABASE, LEASE, ChaosCluster
from .invariants import FINAL, Evidence, Verdict, check
from .schedule import JOB_KINDS, QUEUE, RAW_QUEUE, Batch, Fault, Schedule

RECOVER_INTERVAL = max(0.5, min(LEASE / 3.0, 5.0))  # how often a worker looks for expired leases (housekeeping)
BACKOFF_CAP = Backoff().maximum  # the longest wait between two attempts through an outage
RECONCILE_GRACE = LEASE + 1  # Redis emptied: its second phase (started jobs of leaseless workers) waits this long
LONGEST_JOB = 4.0  # schedule.py: Long jobs sleep 2 to 4 s
MARGIN = 5.0
RECOVERY_BOUND = float(math.ceil(LEASE + RECOVER_INTERVAL + BACKOFF_CAP + RECONCILE_GRACE + LONGEST_JOB + MARGIN))
SAMPLE_INTERVAL = 0.2
#: Seconds a worker has to exit after SIGTERM or SIGINT (the longest job, plus its final writes).
EXIT_GRACE = LONGEST_JOB + 6.0


@dataclass
class RunResult:
    schedule: Schedule
    verdict: Verdict
    evidence: Evidence
    rundir: Path
    kept: bool
    timings: dict[str, float] = field(default_factory=dict)
    settled: bool = False
    bound: float = RECOVERY_BOUND

    @property
    def ok(self) -> bool:
        return self.verdict.ok


class StatusSampler:
    """Reads every job's status every SAMPLE_INTERVAL seconds (straight from the server; a frozen
    server just skips samples) and records, per job, each status change and each change away from
    a final status."""

    def __init__(self, uri: str, database: str, clock: Callable[[], float]) -> None:
        self.client: pymongo.MongoClient = pymongo.MongoClient(uri, serverSelectionTimeoutMS=1000,
                                                                socketTimeoutMS=1000, connectTimeoutMS=1000)
        self.collection = self.client[database].mrq_jobs
        self.clock = clock
        self.last: dict[str, str] = {}
        self.timelines: dict[str, list[tuple[float, str]]] = defaultdict(list)
        self.regressions: list[tuple[str, str, str, float]] = []
        self.samples = 0
        self._stopped = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-sampler", daemon=True)

    def start(self) -> StatusSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self.sample()

    def sample(self) -> None:
        try:
            docs = list(self.collection.find({}, {"status": 1}))
        except pymongo.errors.PyMongoError:
            return
        now = self.clock()
        self.samples += 1
        for doc in docs:
            job_id, status = str(doc["_id"]), str(doc.get("status"))
            previous = self.last.get(job_id)
            if previous == status:
                continue
            self.timelines[job_id].append((now, status))
            if previous in FINAL:
                self.regressions.append((job_id, previous, status, now))
            self.last[job_id] = status

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self._thread.join(10)
        self.sample()
        self.client.close()


class Producer:
    """Queues batches at their times; records what each queue call accepted or refused."""

    def __init__(self, batches: Sequence[Batch], store: Store, clock: Callable[[], float], evidence: Evidence,
                 lock: threading.Lock) -> None:
        self.batches = list(batches)
        self.store = store
        self.clock = clock
        self.evidence = evidence
        self.lock = lock
        self._thread = threading.Thread(target=self._run, name="chaos-producer", daemon=True)

    def start(self) -> Producer:
        self._thread.start()
        return self

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        for batch in self.batches:
            while (wait := batch.at - self.clock()) > 0:
                time.sleep(min(wait, 0.05))
            self._queue(batch)

    def _queue(self, batch: Batch) -> None:
        when = self.clock()
        ev = self.evidence
        if batch.is_raw:
            try:
                queue_raw_jobs(RAW_QUEUE, list(batch.raw), store=self.store)
            except Exception as exc:
                with self.lock:
                    ev.raw_rejected.update({param: _error(exc) for param in batch.raw})
                return
            with self.lock:
                ev.raw_accepted.update({param: when for param in batch.raw})
            return
        kind = JOB_KINDS[batch.kind]
        ids = [ObjectId() for _ in batch.params]
        try:
            queued = queue_jobs(kind.path, list(batch.params), queue=QUEUE, store=self.store, ids=ids)
        except Exception as exc:
            with self.lock:
                ev.rejected.update({str(i): _error(exc) for i in ids})
            return
        with self.lock:
            ev.accepted.update({str(i): (batch.kind, kind.expected, when) for i in queued})


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"


def _events(faults: Sequence[Fault]) -> list[tuple[float, int, str, Fault]]:
    events = [(f.at, 1, "strike", f) for f in faults]
    events += [(f.end, 0, "end", f) for f in faults if f.duration]
    return sorted(events, key=lambda e: (e[0], e[1]))


class Run:
    """One schedule, start to verdict."""

    def __init__(self, schedule: Schedule, project_root: Path, keep: bool = False,
                 bound: float = RECOVERY_BOUND) -> None:
        self.schedule = schedule
        self.keep = keep
        self.bound = bound
        self.rundir = Path(tempfile.mkdtemp(prefix=f"mrq-chaos-seed{schedule.seed}-"))
        self.cluster = ChaosCluster(self.rundir, project_root)
        self.evidence = Evidence()
        self.lock = threading.Lock()

    def clock(self) -> float:
        return self.cluster.clock()

    def note(self, text: str) -> None:
        with self.lock:
            self.evidence.actions.append((self.clock(), text))

    def execute(self) -> RunResult:
        began = time.monotonic()
        timings: dict[str, float] = {}
        store: Store | None = None
        sampler: StatusSampler | None = None
        settled_at: float | None = None
        try:
            self.cluster.start()
            timings["setup"] = time.monotonic() - began
            for text in self.cluster.start_notes:
                self.note(f"setup: {text}")
            store = Store(self.cluster.direct_settings)
            sampler = StatusSampler(self.cluster.mongo.uri, DATABASE, self.clock).start()
            batches = self.schedule.batches
            producers = [Producer([b for b in batches if not b.is_raw], store, self.clock, self.evidence,
                                  self.lock).start(),
                         Producer([b for b in batches if b.is_raw], store, self.clock, self.evidence,
                                  self.lock).start()]
            self._timeline()
            self.cluster.heal_all()
            self.note("every fault healed")
            for producer in producers:
                if not producer.join(60):
                    self.note("a producer is still blocked 60 s after the heal")
            for text in self.cluster.keep_workers():
                self.note(text)
            healed_at = self.clock()
            timings["run"] = healed_at
            settled_at = self._wait_settled(store, healed_at + self.bound)
            if settled_at is None:
                self.note(f"NOT settled within the recovery bound ({self.bound:g}s after the heal)")
                self._dump_stacks()
            else:
                self.note(f"every accepted job final, raw queue empty: recovery {settled_at - healed_at:.2f}s")
                timings["recovery"] = settled_at - healed_at
            self._wait_signalled_exit()
            sampler.stop()
            self._collect(store, sampler)
            verdict = check(self.evidence)
        finally:
            if sampler is not None:
                sampler.stop()
            self.cluster.close()
            if store is not None:
                store.close()
        timings["total"] = time.monotonic() - began
        kept = self.keep or not verdict.ok
        if not kept:
            shutil.rmtree(self.rundir, ignore_errors=True)
        return RunResult(self.schedule, verdict, self.evidence, self.rundir, kept, timings,
                         settled_at is not None, self.bound)

    def _sleep_until(self, at: float) -> None:
        while (wait := at - self.clock()) > 0:
            for text in self.cluster.keep_workers():
                self.note(text)
            time.sleep(min(wait, 0.05))

    def _timeline(self) -> None:
        for at, _, action, fault in _events(self.schedule.faults):
            self._sleep_until(at)
            now = self.clock()
            if action == "strike":
                done = self.cluster.strike(fault)
                if fault.kind == "kill9":
                    self.evidence.kills.append(now)
                if fault.kind in ("redis_restart", "redis_flushall"):
                    self.evidence.data_losses.append(now)
                if fault.kind in ("redis_partition", "redis_freeze"):
                    self.evidence.lost_replies.append(now)
            else:
                done = self.cluster.end(fault)
            self.note(done)
        self._sleep_until(self.schedule.window)

    def _stopping(self) -> list[tuple[float, WorkerProcess]]:
        """Worker processes that got SIGTERM or SIGINT and still run: (signal time, process)."""
        found = []
        for slot in self.cluster.slots:
            for record in slot.records:
                times = [t for t, name in record.signals if name in ("SIGTERM", "SIGINT")]
                if times and record.process.running:
                    found.append((times[0], record.process))
        return found

    def _wait_signalled_exit(self) -> None:
        """Give workers that were told to stop EXIT_GRACE seconds from the signal to exit (a first
        SIGINT lets running jobs finish: up to the longest job)."""
        while any(self.clock() < t + EXIT_GRACE for t, _ in self._stopping()):
            time.sleep(SAMPLE_INTERVAL)

    def _dump_stacks(self) -> None:
        """When py-spy is installed (a developer's diagnostic, not a dependency): every live worker
        process's Python stacks, into the run directory's logs, to see why a job is stuck."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(spy).exists():
            return
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info.get("cmdline") or [])
            if "mrq.cli.worker" not in cmdline or str(self.cluster.rundir) not in cmdline:
                continue
            try:
                dump = subprocess.run([spy, "dump", "--pid", str(proc.info["pid"])], capture_output=True, text=True,
                                      timeout=20)
                (self.cluster.rundir / "logs" / f"stacks-{proc.info['pid']}.txt").write_text(dump.stdout + dump.stderr)
            except (OSError, subprocess.SubprocessError):
                pass

    def _wait_settled(self, store: Store, deadline: float) -> float | None:
        ids = [ObjectId(i) for i in self.evidence.accepted]
        final = sorted(FINAL)
        raw_key = store.keys.raw_queue(RAW_QUEUE)
        while True:
            for text in self.cluster.keep_workers():
                self.note(text)
            try:
                if store.jobs.count_documents({"_id": {"$in": ids}, "status": {"$in": final}}) == len(ids) \
                        and not store.jobs.count_documents({"raw_queue": {"$exists": True},
                                                            "status": {"$nin": final}}) \
                        and not store.redis.llen(raw_key):
                    return self.clock()
            except (pymongo.errors.PyMongoError, redis.exceptions.RedisError):
                pass
            if self.clock() > deadline:
                return None
            time.sleep(SAMPLE_INTERVAL)

    def _collect(self, store: Store, sampler: StatusSampler) -> None:
        ev = self.evidence
        ev.timelines = dict(sampler.timelines)
        ev.regressions = list(sampler.regressions)
        ev.samples = sampler.samples
        fields = {"status": 1, "queue": 1, "raw_queue": 1, "params": 1, "recoveries": 1, "retry_count": 1,
                  "worker": 1, "exceptiontype": 1, "traceback_history.status": 1,
                  "traceback_history.exceptiontype": 1, "path": 1}
        ev.docs = {str(doc["_id"]): doc for doc in store.jobs.find({}, fields)}
        for report in store.workers.find({}, {"status": 1, "jobs": 1, "datereported": 1}):
            jobs = {str(job.get("id")): job.get("elapsed") for job in report.get("jobs") or [] if isinstance(job, dict)}
            ev.reports[str(report["_id"])] = f"status {report.get('status')}, running {jobs or 'nothing'}"
        ledger = redis.Redis.from_url(self.cluster.ledger_url, socket_timeout=10)
        try:
            for pattern, target in (("x:*", ev.executions), ("r:*", ev.raw_executions)):
                keys = list(ledger.scan_iter(match=pattern, count=1000))
                for key, value in zip(keys, ledger.mget(keys) if keys else [], strict=True):
                    target[key.decode()[2:]] = int(value or 0)
        finally:
            ledger.close()
        self._collect_redis(store)
        ev.workers = self.cluster.worker_ids()
        for slot in self.cluster.slots:
            for record in slot.records:
                proc = record.process.proc
                code = proc.poll() if proc is not None else None
                signals = [f"{name}@{t:.2f}s" for t, name in record.signals]
                ev.signals[record.process.pid] = signals
                self.note(f"worker {slot.name} pid {record.process.pid} (started {record.started_at:.2f}s): "
                          f"{', '.join(signals) or 'no signal'}; {'running' if code is None else f'exit {code}'}")
                stopping = [(t, name) for t, name in record.signals if name in ("SIGTERM", "SIGINT")]
                if code is None and stopping:
                    t, name = stopping[0]
                    ev.unexited.append(f"{slot.name} pid {record.process.pid}: {name} at {t:.2f}s, still running "
                                       f"{self.clock() - t:.1f}s later")
        for child_pid, signals in self.cluster.child_signals.items():
            ev.signals.setdefault(child_pid, []).extend(signals)

    def _collect_redis(self, store: Store) -> None:
        ev = self.evidence
        keys = store.keys
        client = store.redis
        now = float(client.time()[0])
        ev.live_workers = set(strings(client.zrangebyscore(keys.workers, now, "+inf")))
        queues = {str(doc.get("queue") or QUEUE) for doc in ev.docs.values()} | {QUEUE}
        where: dict[str, list[str]] = defaultdict(list)
        for queue in sorted(queues):
            for job_id in strings(client.lrange(keys.queue_ids(queue), 0, -1)):
                where[job_id].append(f"{queue}:ids")
            for job_id in strings(client.zrange(keys.queue_delayed(queue), 0, -1)):
                where[job_id].append(f"{queue}:delayed")
            prefix = keys.queue_running(queue, "")
            for key in strings(client.scan_iter(match=prefix + "*")):  # braces are literal in a Redis pattern
                worker_id = key[len(prefix):]
                state = "live" if worker_id in ev.live_workers else "dead"
                for job_id in strings(client.smembers(key)):
                    where[job_id].append(f"running set of {state} worker {worker_id}")
            prefix = keys.queue_landing(queue, "")
            for key in strings(client.scan_iter(match=prefix + "*")):
                worker_id = key[len(prefix):]
                state = "live" if worker_id in ev.live_workers else "dead"
                for job_id in strings(client.lrange(key, 0, -1)):
                    where[job_id].append(f"landing list of {state} worker {worker_id}")
        ev.in_redis = dict(where)
        ev.raw_waiting = set(strings(client.lrange(keys.raw_queue(RAW_QUEUE), 0, -1)))


def run_schedule(schedule: Schedule, project_root: Path | str = ".", keep: bool = False,
                 bound: float = RECOVERY_BOUND) -> RunResult:
    """Run one schedule on fresh servers and workers (started from `project_root`, where
    `tests.tasks.chaos` is importable) and check it."""
    return Run(schedule, Path(project_root).resolve(), keep, bound).execute()
