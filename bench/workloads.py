"""The workloads and how each one is measured. Every run starts from empty stores.

- A (with E and F): N no-op jobs are enqueued (bulk), then one worker process drains them.
  Throughput = N / (last job end - first job start), from the jobs' own timestamps. E: Redis
  commands (INFO commandstats) and MongoDB commands (serverStatus metrics.commands) per job,
  read before and after the enqueue and after the worker stopped (execution). F: RSS of the
  worker's process tree once the last job ended, Redis used_memory added by the enqueue / N,
  MongoDB collStats size / count of mrq_jobs after the run.
- B: an idle worker (one warm-up job done, then 0.5 s idle); N jobs enqueued one by one,
  `interval` apart, each carrying the producer's time.time() just before its enqueue call;
  latency = job start - that time.
- C: like A with jobs sleeping `seconds` and 50 greenlets/threads/tasks.
- D: enqueue only (no worker): N single calls, then N' jobs through the bulk call.
- G (mrq only: its targets compare mrq with itself): A with 10x more jobs queued (100,000) on one
  process, and the same on `mrq-worker --processes 2` (enough jobs that the two processes' start-up
  skew does not matter).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .procs import Processes, cpu_seconds, tree, tree_rss_mb
from .servers import Stores
from .systems import Mode, System

WORKLOADS = ("A", "B", "C", "D", "E", "F", "G")
WORKLOAD_TITLES = {
    "A": "Throughput: no-op jobs, enqueued first, one worker process drains them",
    "B": "Pickup latency on an idle worker",
    "C": "IO-bound: jobs sleeping 50 ms, 50 concurrent",
    "D": "Enqueue rate: single calls and bulk",
    "E": "Overhead: Redis and MongoDB commands per job",
    "F": "Memory",
    "G": "Scale (mrq only): 100,000 jobs on 1 and on 2 worker processes (--processes 2)",
}
STALL_SECONDS = 60.0  # a run fails when no job ends for this long


@dataclass(frozen=True)
class Sizes:
    a_jobs: int
    b_jobs: int
    b_interval: float
    c_jobs: int
    c_seconds: float
    d_single: int
    d_bulk: int
    g_jobs: int


FULL = Sizes(a_jobs=10_000, b_jobs=200, b_interval=0.02, c_jobs=2_000, c_seconds=0.05, d_single=2_000,
             d_bulk=10_000, g_jobs=100_000)
QUICK = Sizes(a_jobs=1_000, b_jobs=20, b_interval=0.02, c_jobs=200, c_seconds=0.05, d_single=200, d_bulk=1_000,
              g_jobs=10_000)


class Observer(Protocol):
    def started(self, pid: int) -> None: ...

    def finished(self) -> None: ...


class RunError(Exception):
    """A run that could not produce its figures (the reason goes in the report)."""


@dataclass
class Context:
    stores: Stores
    procs: Processes
    workdir: Path
    say: Callable[[str], None]


class TimingFile:
    """The jobs' `start end enq` lines (peers/_timing.py), counted as they are appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self._offset = 0
        self._lines = 0

    def count(self) -> int:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return 0
        self._offset += len(chunk)
        self._lines += chunk.count(b"\n")
        return self._lines

    def read(self) -> list[tuple[float, float, float]]:
        rows = []
        for line in self.path.read_text().splitlines():
            start, end, enq = line.split()
            rows.append((float(start), float(end), float(enq)))
        return rows

    def wait_for(self, n: int, worker: Any, log: Path, stall: float = STALL_SECONDS) -> None:
        """Wait until n jobs ended; RunError if the worker exits first or nothing ends for `stall` s."""
        last, last_change = -1, time.monotonic()
        while True:
            done = self.count()
            if done >= n:
                return
            if done != last:
                last, last_change = done, time.monotonic()
            if worker is not None and worker.poll() is not None:
                time.sleep(0.2)
                if self.count() >= n:
                    return
                raise RunError(f"worker exited with code {worker.returncode} after {self.count()}/{n} jobs: "
                               f"{tail(log)}")
            if time.monotonic() - last_change > stall:
                raise RunError(f"no job ended for {stall:.0f}s ({done}/{n} done): {tail(log)}")
            time.sleep(0.05)


def tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no output)"
    return " | ".join(line.strip()[:200] for line in text[-lines:]) or "(no output)"


def produce(ctx: Context, system: System, mode: Mode, n: int, log: Path, times: Path, *, task: str = "noop",
            seconds: float = 0.0, bulk: bool = False, interval: float = 0.0, stamp: bool = False) -> dict[str, Any]:
    argv = [*system.producer_argv(mode), "--n", str(n), "--task", task]
    if task == "sleep":
        argv += ["--seconds", repr(seconds)]
    if bulk:
        argv.append("--bulk")
    if interval:
        argv += ["--interval", repr(interval)]
    if stamp:
        argv.append("--stamp")
    env = system.env(ctx.stores.redis_url, ctx.stores.mongodb_jobs_uri, times, mode.concurrency)
    code, out = ctx.procs.run(argv, env=env, cwd=ctx.workdir, log=log, timeout=max(300.0, n / 50))
    result = None
    for line in reversed(out.strip().splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            break
    if code != 0 or result is None:
        raise RunError(f"producer failed (exit {code}): {tail(log)}")
    return result


def start_worker(ctx: Context, system: System, mode: Mode, concurrency: int, times: Path, log: Path,
                 processes: int = 0, wrap: list[str] | None = None, strip_python: bool = False) -> Any:
    """Start the worker; `wrap` goes before its command line (a profiler), which then starts
    without its interpreter with `strip_python` (`python -m cProfile -o F -m mrq.cli.worker ...`)."""
    argv = system.worker_argv(mode, concurrency, ctx.stores.redis_url, processes)
    if strip_python:
        argv = argv[1:]
    env = system.env(ctx.stores.redis_url, ctx.stores.mongodb_jobs_uri, times, concurrency)
    return ctx.procs.spawn([*(wrap or []), *argv], env=env, cwd=ctx.workdir, log=log)


def stop_worker(ctx: Context, system: System, worker: Any, group: bool = False) -> int | None:
    return ctx.procs.stop(worker, system.stop_signal, timeout=60.0, group=group)


def per_job(value: float, n: int) -> float:
    return value / n if n else math.nan


def drain(ctx: Context, system: System, mode: Mode, tag: str, n: int, *, task: str = "noop", seconds: float = 0.0,
          concurrency: int | None = None, processes: int = 0, wrap: list[str] | None = None,
          strip_python: bool = False, observer: Observer | None = None) -> dict[str, Any]:
    """Enqueue n jobs, then run one worker (process tree) until all ran; everything A, C, E, F, G need.
    An `observer` (a profiler) is told when the first job ended and when the last one did."""
    stores = ctx.stores
    stores.reset()
    times = TimingFile(ctx.workdir / f"{tag}.times")
    log = ctx.workdir / f"{tag}.log"
    concurrency = concurrency or mode.concurrency
    redis0, mongo0 = stores.redis_reading(), stores.mongo_reading()
    enqueued = produce(ctx, system, mode, n, log, times.path, task=task, seconds=seconds, bulk=True)
    redis1, mongo1 = stores.redis_reading(), stores.mongo_reading()
    queued_bytes = stores.redis_key_bytes()
    redis_start = stores.redis_reading()  # the execution phase starts here (MEMORY USAGE calls excluded)
    servers = stores.server_processes()
    servers_cpu0 = {name: cpu_seconds([proc]) for name, proc in servers.items()}
    started = time.time()
    worker = start_worker(ctx, system, mode, concurrency, times.path, log, processes, wrap, strip_python)
    try:
        if observer is not None:
            times.wait_for(1, worker, log)
            observer.started(worker.pid)
        times.wait_for(n, worker, log)
        finished = time.time()
        if observer is not None:
            observer.finished()
        rss = tree_rss_mb(worker.pid)
        worker_cpu = cpu_seconds(tree(worker.pid))
        servers_cpu = {name: cpu_seconds([proc]) - servers_cpu0[name] for name, proc in servers.items()}
    finally:  # a failed run must not leave its worker taking the next run's jobs
        if observer is not None:
            observer.finished()
        code = stop_worker(ctx, system, worker, group=wrap is not None)  # a profiler and its worker both stop
    redis2, mongo2 = stores.redis_reading(), stores.mongo_reading()

    rows = times.read()
    first_start = min(row[0] for row in rows)
    last_end = max(row[1] for row in rows)
    enqueue_redis, execute_redis = redis1.minus(redis0), redis2.minus(redis_start)
    enqueue_mongo, execute_mongo = mongo1.minus(mongo0), mongo2.minus(mongo1)
    figures: dict[str, Any] = {
        "jobs_per_s": n / (last_end - first_start) if last_end > first_start else math.nan,
        "enqueue_redis_cmds_per_job": per_job(enqueue_redis["commands"], n),
        "enqueue_redis_roundtrips_per_job": per_job(enqueue_redis["roundtrips"], n),
        "execute_redis_cmds_per_job": per_job(execute_redis["commands"], n),
        "execute_redis_roundtrips_per_job": per_job(execute_redis["roundtrips"], n),
        "rss_mb": rss,
        "redis_bytes_per_job": per_job(queued_bytes, n),
        "worker_cpu_s_per_1000": per_job(worker_cpu, n) * 1000,
    }
    details: dict[str, Any] = {
        "jobs": len(rows), "seconds": last_end - first_start, "worker_start_to_last_end_s": last_end - started,
        "harness_saw_last_end_s": finished - started, "enqueue": enqueued, "worker_exit_code": code,
        "redis_used_memory_per_job": per_job(enqueue_redis["memory"], n),
        "redis_enqueue": enqueue_redis, "redis_execute": execute_redis,
        "servers_cpu_s": servers_cpu, "worker_cpu_s": worker_cpu,
        "worker_argv": system.worker_argv(mode, concurrency, stores.redis_url, processes),
    }
    if system.uses_mongo:
        figures["enqueue_mongo_cmds_per_job"] = per_job(enqueue_mongo["commands"], n)
        figures["execute_mongo_cmds_per_job"] = per_job(execute_mongo["commands"], n)
        details["mongo_enqueue"], details["mongo_execute"] = enqueue_mongo, execute_mongo
        if mode.name == "regular":
            figures["mongo_bytes_per_job"] = stores.mongo_bytes_per_document("mrq_jobs")
            stored = stores.count_jobs("success")
            details["jobs_stored_success"] = stored
            if stored != n:
                raise RunError(f"{stored}/{n} jobs are `success` in MongoDB after the worker stopped")
    for name, cpu in servers_cpu.items():
        figures[f"{name}_cpu_s_per_1000"] = per_job(cpu, n) * 1000
    if len(rows) != n:
        raise RunError(f"{len(rows)} jobs ran for {n} queued (a job ran twice or was lost)")
    return {"figures": figures, "details": details}


def latency(ctx: Context, system: System, mode: Mode, tag: str, n: int, interval: float) -> dict[str, Any]:
    """Pickup latency of an idle worker: p50/p99 of job start - enqueue time."""
    ctx.stores.reset()
    times = TimingFile(ctx.workdir / f"{tag}.times")
    log = ctx.workdir / f"{tag}.log"
    worker = start_worker(ctx, system, mode, mode.concurrency, times.path, log)
    try:
        produce(ctx, system, mode, 1, log, times.path)  # warm-up: the worker is up and has run a job
        times.wait_for(1, worker, log)
        time.sleep(0.5)  # now idle
        produce(ctx, system, mode, n, log, times.path, interval=interval, stamp=True)
        times.wait_for(n + 1, worker, log)
    finally:
        stop_worker(ctx, system, worker)
    waits = sorted((start - enq) * 1000 for start, _, enq in times.read() if enq > 0)
    if len(waits) != n:
        raise RunError(f"{len(waits)} timed jobs ran for {n} queued")
    return {"figures": {"p50_ms": percentile(waits, 50), "p99_ms": percentile(waits, 99), "max_ms": waits[-1]},
            "details": {"jobs": n, "interval_s": interval}}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def enqueue(ctx: Context, system: System, mode: Mode, tag: str, n_single: int, n_bulk: int) -> dict[str, Any]:
    """Enqueue rates with no worker: single calls, then the bulk call."""
    log = ctx.workdir / f"{tag}.log"
    times = ctx.workdir / f"{tag}.times"
    ctx.stores.reset()
    single = produce(ctx, system, mode, n_single, log, times)
    ctx.stores.reset()
    bulk = produce(ctx, system, mode, n_bulk, log, times, bulk=True)
    ctx.stores.reset()
    figures = {"single_jobs_per_s": n_single / single["seconds"], "bulk_jobs_per_s": n_bulk / bulk["seconds"]}
    if "cpu_seconds" in single:
        figures["single_cpu_us"] = single["cpu_seconds"] / n_single * 1e6
    return {"figures": figures,
            "details": {"single": single, "bulk": bulk}}
