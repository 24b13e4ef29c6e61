"""The worker side of the tracing options (see mrq/tracing.py): what to do around each job."""

from __future__ import annotations

import cProfile
from typing import Any

from ..config import Settings
from ..exceptions import ConfigError
from ..tracing import GreenletTracer, IoTrace, MemoryTracer, install_io_hooks, profile_text
from .execution import RunningJob


class JobTracing:
    def __init__(self, settings: Settings) -> None:
        if settings.trace_memory and settings.greenlets > 1:
            raise ConfigError("--trace_memory needs --greenlets 1: with several jobs at once, memory growth "
                              "cannot be attributed to one of them")
        if settings.trace_memory_type and not settings.trace_memory:
            raise ConfigError("--trace_memory_type needs --trace_memory")
        self.trace_io = settings.trace_io
        install_io_hooks(settings.add_network_latency, settings.trace_io)
        self.greenlets: GreenletTracer | None = None
        if settings.trace_greenlets:
            self.greenlets = GreenletTracer()
            self.greenlets.install()
        self.memory: MemoryTracer | None = None
        if settings.trace_memory:
            try:
                self.memory = MemoryTracer(settings.trace_memory_type, settings.trace_memory_output_dir)
            except ImportError:
                raise ConfigError("--trace_memory needs the objgraph package (pip install objgraph)") from None
        self.profile_jobs = settings.profile and settings.greenlets == 1
        self.worker_profiler: cProfile.Profile | None = None
        if settings.profile and not self.profile_jobs:
            self.worker_profiler = cProfile.Profile()
            self.worker_profiler.enable()
        self.active = bool(self.trace_io or self.greenlets or self.memory or self.profile_jobs)

    def before(self, job: RunningJob) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.trace_io:
            job.io_trace = IoTrace()
        if self.memory is not None:
            state["rss"] = self.memory.before()
        if self.profile_jobs:
            profiler = cProfile.Profile()
            profiler.enable()
            state["profiler"] = profiler
        return state

    def after(self, job: RunningJob, state: dict[str, Any], greenlets: list[Any]) -> dict[str, Any]:
        """The fields to store with the job's final status."""
        fields: dict[str, Any] = {}
        profiler = state.get("profiler")
        if profiler is not None:
            profiler.disable()
            fields["profile"] = profile_text(profiler)
        if self.trace_io:
            fields["io"] = job.io_trace.as_document()
            job.io_trace = None
        if self.greenlets is not None:
            seconds, switches = self.greenlets.collect(greenlets)
            fields["time"] = round(seconds, 6)
            fields["switches"] = switches
        if self.memory is not None:
            fields.update(self.memory.after(str(job.id), state["rss"]))
        return fields

    def worker_profile(self) -> str:
        if self.worker_profiler is None:
            return ""
        self.worker_profiler.disable()
        return profile_text(self.worker_profiler)
