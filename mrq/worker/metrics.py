"""Prometheus metrics of a worker process (served on its admin port at /metrics).

Counters and histograms are updated as jobs end; queue sizes, greenlets and the I/O counts are
read when Prometheus scrapes. A scrape during a Redis outage still answers, with what it has
(the queue gauges are left out and `mrq_up{store="redis"}` says 0).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .. import iocount
from ..backoff import STORE_ERRORS
from ..queue import queue_infos

if TYPE_CHECKING:
    from .view import WorkerView

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class WorkerMetrics:
    def __init__(self, worker: WorkerView) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.jobs = Counter("mrq_jobs", "Jobs that ended, by task path and status.", ["path", "status"],
                            registry=self.registry)
        self.duration = Histogram("mrq_job_duration_seconds", "Time from start to end of jobs, by task path.",
                                  ["path"], buckets=DURATION_BUCKETS, registry=self.registry)
        self.registry.register(_LiveCollector(worker))
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def job_ended(self, path: str, status: str, seconds: float | None) -> None:
        children = self._children.get((path, status))
        if children is None:  # resolving labels costs more than the increment: once per path and status
            children = self._children[(path, status)] = (self.jobs.labels(path, status), self.duration.labels(path))
        children[0].inc()
        if seconds is not None:
            children[1].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """Values read at scrape time."""

    def __init__(self, worker: WorkerView) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Any]:
        worker = self.worker
        busy = GaugeMetricFamily("mrq_greenlets_busy", "Greenlets running a job.")
        busy.add_metric([], len(worker.running))
        yield busy
        total = GaugeMetricFamily("mrq_greenlets_total", "Greenlets of the worker (--greenlets).")
        total.add_metric([], worker.settings.greenlets)
        yield total
        recovered = CounterMetricFamily("mrq_recovered_jobs", "Jobs this worker took back from dead workers.")
        recovered.add_metric([], worker.recovered_jobs)
        yield recovered
        lease = CounterMetricFamily("mrq_lease_lost", "Times this worker found its lease gone.")
        lease.add_metric([], worker.lease.lost if worker.lease else 0)
        yield lease
        watchdog = worker.watchdog
        blocked = CounterMetricFamily("mrq_hub_blocked_seconds", "Time the event loop was blocked (stretches of 0.1 s "
                                      "or more): code that kept the CPU without yielding, a job's or the worker's.")
        blocked.add_metric([], watchdog.blocked_seconds if watchdog else 0.0)
        yield blocked
        blocks = CounterMetricFamily("mrq_hub_blocks", "Stretches of 0.1 s or more the event loop was blocked.")
        blocks.add_metric([], watchdog.blocked_count if watchdog else 0)
        yield blocks
        longest = GaugeMetricFamily("mrq_hub_longest_block_seconds", "The longest such stretch so far.")
        longest.add_metric([], watchdog.longest_block if watchdog else 0.0)
        yield longest
        runaway = CounterMetricFamily("mrq_runaway_jobs_interrupted", "Jobs the watchdog stopped past their "
                                      "timeout because they never yielded.")
        runaway.add_metric([], watchdog.interrupts if watchdog else 0)
        yield runaway
        redis_trips, mongo = iocount.snapshot()
        trips = CounterMetricFamily("mrq_redis_round_trips", "Requests sent to Redis (a pipeline counts once).")
        trips.add_metric([], redis_trips)
        yield trips
        commands = CounterMetricFamily("mrq_mongodb_commands", "Commands sent to MongoDB, by name.",
                                       labels=["command"])
        for name, count in sorted(mongo.items()):
            commands.add_metric([name], count)
        yield commands
        up = GaugeMetricFamily("mrq_up", "Whether the store answered this scrape.", labels=["store"])
        size = GaugeMetricFamily("mrq_queue_size", "Jobs waiting in the queue.", labels=["queue"])
        age = GaugeMetricFamily("mrq_queue_oldest_job_age_seconds", "Age of the oldest waiting job.",
                                labels=["queue"])
        try:
            names = [q.name for q in worker.selector.all_queues()]
            for info in queue_infos(worker.store, names):
                size.add_metric([info.name], info.size)
                if info.oldest_age is not None:
                    age.add_metric([info.name], info.oldest_age)
            up.add_metric(["redis"], 1)
        except STORE_ERRORS:
            up.add_metric(["redis"], 0)
        yield up
        yield size
        yield age
