"""Worker reports: one document per worker in `mrq_workers`, rewritten every `report_interval`
seconds, so that people (and the dashboard) see what each worker is doing right now."""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

import psutil

from ..clock import utcnow

if TYPE_CHECKING:
    from .view import WorkerView

_process = psutil.Process()


def memory_mb() -> float:
    return round(_process.memory_info().rss / 1048576, 1)


def build_report(worker: WorkerView) -> dict[str, Any]:
    now = utcnow()
    jobs = [
        {
            "id": job.id,
            "path": job.data.get("path") if job.data else None,
            "queue": job.source_queue,
            "datestarted": job.datestarted,
            "elapsed": round(time.monotonic() - job.started_monotonic, 3),
            "progress": job.data.get("progress") if job.data else None,
        }
        for job in list(worker.running.values())
    ]
    cpu = _process.cpu_times()
    settings = worker.settings
    return {
        "name": worker.name,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "queues": worker.selector.names,
        "status": worker.status,
        "greenlets": {"busy": len(worker.running), "total": settings.greenlets},
        "jobs": jobs,
        "done_jobs": worker.done_jobs,
        "recovered_jobs": worker.recovered_jobs,
        "lease": {"seconds": settings.worker_lease, "renewals": worker.lease.renewals if worker.lease else 0,
                  "lost": worker.lease.lost if worker.lease else 0},
        "hub_blocked": {"seconds": round(worker.watchdog.blocked_seconds, 3), "count": worker.watchdog.blocked_count,
                        "longest": round(worker.watchdog.longest_block, 3)} if worker.watchdog else None,
        "process": {"rss_mb": memory_mb(), "cpu_user": round(cpu.user, 2), "cpu_system": round(cpu.system, 2)},
        "config": {
            "greenlets": settings.greenlets,
            "max_jobs": settings.max_jobs,
            "max_time": settings.max_time,
            "max_memory": settings.max_memory,
            "dequeue_strategy": settings.dequeue_strategy,
            "scheduler": settings.scheduler,
            "report_interval": settings.report_interval,
        },
        "datestarted": worker.datestarted,
        "datereported": now,
    }
