"""Seeing why a job is slow or leaks: the worker's tracing options, each a small separate policy.

- `--trace_greenlets`: CPU time and switches of each job's greenlets (greenlet.settrace).
- `--trace_io`: every Redis, MongoDB and HTTP call a job makes, timed and summed per kind, with
  the slowest ones kept (job field `io`).
- `--trace_memory`: RSS growth and objgraph type growth per job (`memory_diff`,
  `memory_growth`); `--trace_memory_type T` draws the references of an object of type T.
- `--profile`: cProfile per job (one greenlet) or for the whole worker.
- `--add_network_latency S`: a random delay of up to S seconds before every network call.

The I/O hooks are installed process-wide when the worker starts with one of these options;
attribution to a job goes through the greenlet's current job (mrq.current).
"""

from __future__ import annotations

import cProfile
import gc
import http.client
import io
import logging
import os
import pstats
import random
import shutil
import time
from typing import Any

import greenlet
import psutil
import redis
from pymongo import monitoring

from . import current, iocount

log = logging.getLogger("mrq.worker")

SLOWEST_KEPT = 10


# --- I/O: latency injection and per-job accounting --------------------------------------------------

class IoTrace:
    """The calls one job made (attached to the job as `io_trace`)."""

    def __init__(self) -> None:
        self.totals: dict[str, list[float]] = {}  # kind -> [calls, seconds]
        self.slowest: list[tuple[float, str, str]] = []  # (seconds, kind, what)

    def add(self, kind: str, what: str, seconds: float) -> None:
        total = self.totals.setdefault(kind, [0, 0.0])
        total[0] += 1
        total[1] += seconds
        if len(self.slowest) < SLOWEST_KEPT or seconds > self.slowest[-1][0]:
            self.slowest.append((seconds, kind, what[:200]))
            self.slowest.sort(reverse=True)
            del self.slowest[SLOWEST_KEPT:]

    def as_document(self) -> dict[str, Any]:
        return {
            "totals": {kind: {"calls": int(calls), "seconds": round(seconds, 6)}
                       for kind, (calls, seconds) in self.totals.items()},
            "slowest": [{"kind": kind, "call": what, "seconds": round(seconds, 6)}
                        for seconds, kind, what in self.slowest],
        }


_latency = 0.0
_trace_io = False


def _delay() -> None:
    if _latency:
        time.sleep(random.uniform(0, _latency))


def _record(kind: str, what: str, seconds: float) -> None:
    job = current.get_current_job()
    trace = getattr(job, "io_trace", None) if job is not None else None
    if trace is not None:
        trace.add(kind, what, seconds)


class _MongoTimer(monitoring.CommandListener):
    def __init__(self) -> None:
        self._started: dict[int, tuple[float, str]] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        began = time.perf_counter()
        _delay()
        if _trace_io:
            collection = event.command.get(event.command_name)
            what = f"{event.command_name} {event.database_name}.{collection}" if isinstance(collection, str) \
                else event.command_name
            self._started[event.request_id] = (began, what)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._finish(event.request_id)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._finish(event.request_id)

    def _finish(self, request_id: int) -> None:
        found = self._started.pop(request_id, None)
        if found is not None:
            _record("mongodb", found[1], time.perf_counter() - found[0])


_installed = False


def install_io_hooks(latency: float, trace_io: bool) -> None:
    """Install the process-wide hooks (once): Redis commands, MongoDB commands, http.client."""
    global _latency, _trace_io, _installed
    _latency, _trace_io = latency, trace_io
    if _installed or not (latency or trace_io):
        return
    _installed = True
    monitoring.register(_MongoTimer())  # clients created from now on (the worker's come later)

    original_execute = redis.Redis.execute_command

    def execute_command(self: Any, *args: Any, **options: Any) -> Any:
        started = time.perf_counter()
        _delay()
        try:
            return original_execute(self, *args, **options)
        finally:
            if _trace_io:
                _record("redis", " ".join(str(a) for a in args[:2]), time.perf_counter() - started)

    redis.Redis.execute_command = execute_command  # type: ignore[method-assign]

    original_pipeline_execute = redis.client.Pipeline.execute

    def pipeline_execute(self: Any, raise_on_error: bool = True) -> Any:
        started = time.perf_counter()
        _delay()
        size = len(self.command_stack)
        try:
            return original_pipeline_execute(self, raise_on_error)
        finally:
            if _trace_io:
                _record("redis", f"pipeline of {size}", time.perf_counter() - started)

    redis.client.Pipeline.execute = pipeline_execute  # type: ignore[method-assign]

    original_request = http.client.HTTPConnection.request
    original_getresponse = http.client.HTTPConnection.getresponse

    def request(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        self._mrq_call = (time.perf_counter(), f"{method} {self.host}{url}")
        _delay()
        return original_request(self, method, url, *args, **kwargs)

    def getresponse(self: Any) -> Any:
        try:
            return original_getresponse(self)
        finally:
            call = getattr(self, "_mrq_call", None)
            if call is not None and _trace_io:
                _record("http", call[1], time.perf_counter() - call[0])

    http.client.HTTPConnection.request = request  # type: ignore[method-assign]
    http.client.HTTPConnection.getresponse = getresponse  # type: ignore[method-assign]
    _ = iocount  # the round-trip counters keep working underneath


# --- greenlets ----------------------------------------------------------------------------------------

class GreenletTracer:
    """Per greenlet: seconds it ran and times it was switched to (greenlet.settrace)."""

    def __init__(self) -> None:
        self.time: dict[Any, float] = {}
        self.switches: dict[Any, int] = {}
        self._since = time.perf_counter()
        self._previous = None

    def install(self) -> None:
        self._previous = greenlet.settrace(self._trace)

    def _trace(self, event: str, args: Any) -> None:
        if event in ("switch", "throw"):
            origin, target = args
            now = time.perf_counter()
            self.time[origin] = self.time.get(origin, 0.0) + now - self._since
            self.switches[target] = self.switches.get(target, 0) + 1
            self._since = now
        if self._previous is not None:
            self._previous(event, args)

    def collect(self, greenlets: Any) -> tuple[float, int]:
        """Sum and forget the figures of these greenlets."""
        seconds, switches = 0.0, 0
        for g in greenlets:
            seconds += self.time.pop(g, 0.0)
            switches += self.switches.pop(g, 0)
        return seconds, switches


# --- memory -----------------------------------------------------------------------------------------

class MemoryTracer:
    def __init__(self, type_name: str, output_dir: str) -> None:
        import objgraph  # an optional dependency, needed only with --trace_memory

        self.objgraph = objgraph
        self.type_name = type_name
        self.output_dir = output_dir
        self.process = psutil.Process()
        self._graphviz = shutil.which("dot") is not None
        self._warned = False
        objgraph.growth(limit=None)  # baseline

    def before(self) -> float:
        gc.collect()
        self.objgraph.growth(limit=None)  # forget what grew between jobs
        return float(self.process.memory_info().rss)

    def after(self, job_id: str, rss_before: float) -> dict[str, Any]:
        gc.collect()
        growth = self.objgraph.growth(limit=20)
        fields: dict[str, Any] = {
            "memory_diff": round((self.process.memory_info().rss - rss_before) / 1048576, 3),
            "memory_growth": [[name, count, delta] for name, count, delta in growth],
        }
        if self.type_name:
            fields["memory_graph"] = self._graph(job_id)
        return fields

    def _graph(self, job_id: str) -> str:
        objects = self.objgraph.by_type(self.type_name)
        if not objects:
            return f"no object of type {self.type_name}"
        if not self._graphviz:
            if not self._warned:
                log.warning("--trace_memory_type: graphviz (the `dot` program) is not installed, so no reference "
                            "graph can be drawn (Debian: apt-get install graphviz)")
                self._warned = True
            return "not drawn: graphviz (dot) is not installed"
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, f"{job_id}-{self.type_name}.png")
        self.objgraph.show_backrefs([random.choice(objects)], max_depth=6, filename=path)
        return path


# --- profiling ------------------------------------------------------------------------------------

def profile_text(profiler: cProfile.Profile, limit: int = 60) -> str:
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(limit)
    return out.getvalue()[-60_000:]
