"""The dashboard's Prometheus endpoint (`GET /metrics`): the state of the whole system, as the
overview page sees it (queue sizes and ages, jobs per status, workers, throughput), from the same
cached, bounded queries: per-queue series for the first METRICS_QUEUES queues by name, and
`mrq_queues_known`, the number of known queues. A scrape while a store is down answers with what it has, and
`mrq_up{store=...}` says which store did not answer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mrq.backoff import STORE_ERRORS

metrics = Blueprint("metrics", __name__)

#: Queues with their own series (the first ones by name): a scrape costs a bounded number of Redis
#: commands, and Prometheus a bounded number of series, with any number of subqueues.
METRICS_QUEUES = 500


class _SystemCollector(Collector):
    def __init__(self, reader: Any) -> None:
        self.reader = reader

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("mrq_up", "Whether the store answered this scrape.", labels=["store"])
        size = GaugeMetricFamily("mrq_queue_size", "Jobs waiting in the queue.", labels=["queue", "kind"])
        delayed = GaugeMetricFamily("mrq_queue_delayed", "Delayed retries of the queue.", labels=["queue"])
        age = GaugeMetricFamily("mrq_queue_oldest_job_age_seconds", "Age of the oldest waiting job.",
                                labels=["queue"])
        paused = GaugeMetricFamily("mrq_queue_paused", "1 when the queue is paused.", labels=["queue"])
        known = GaugeMetricFamily("mrq_queues_known", "Known queues, subqueues included (the per-queue metrics "
                                  f"cover the first {METRICS_QUEUES} by name).")
        try:
            page = self.reader.queues(limit=METRICS_QUEUES)
            known.add_metric([], page.total)
            for row in page.rows:
                size.add_metric([row["name"], row["kind"]], row["size"])
                delayed.add_metric([row["name"]], row["delayed"])
                paused.add_metric([row["name"]], 1 if row["paused"] else 0)
                if row["oldest_age"] is not None:
                    age.add_metric([row["name"]], row["oldest_age"])
            up.add_metric(["redis"], 1)
        except STORE_ERRORS:
            up.add_metric(["redis"], 0)
        jobs = GaugeMetricFamily("mrq_jobs", "Jobs in MongoDB by status (bounded counts, cached).",
                                 labels=["status"])
        workers = GaugeMetricFamily("mrq_workers", "Worker processes by state (alive, dead, stopped).",
                                    labels=["state"])
        greenlets = GaugeMetricFamily("mrq_greenlets", "Greenlets of the live workers.", labels=["state"])
        try:
            for status, count in self.reader.status_counts().items():
                jobs.add_metric([status], count.value)
            up.add_metric(["mongodb"], 1)
        except STORE_ERRORS:
            up.add_metric(["mongodb"], 0)
        try:
            states: dict[str, int] = {}
            busy = total = 0
            for worker in self.reader.workers():
                states[worker["state"]] = states.get(worker["state"], 0) + 1
                if worker["state"] == "alive":
                    greenlets_doc = worker.get("greenlets") or {}
                    busy += int(greenlets_doc.get("busy") or 0)
                    total += int(greenlets_doc.get("total") or 0)
            for state, count in sorted(states.items()):
                workers.add_metric([state], count)
            greenlets.add_metric(["busy"], busy)
            greenlets.add_metric(["total"], total)
        except STORE_ERRORS:
            pass  # the store that failed is already marked down above
        yield from (up, known, size, delayed, age, paused, jobs, workers, greenlets)


def make_registry(reader: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SystemCollector(reader))
    return registry


@metrics.get("/metrics")
def scrape() -> Response:
    registry = current_app.extensions["mrq_metrics"]
    return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")
