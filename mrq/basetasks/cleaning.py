"""Maintenance tasks (MRQ names), safety nets beside the worker's automatic recovery:

    SCHEDULER_TASKS = [
        {"path": "mrq.basetasks.cleaning.RequeueLostJobs", "params": {}, "interval": 300},
        {"path": "mrq.basetasks.cleaning.RequeueStartedJobs", "params": {"timeout": 300}, "interval": 300},
        {"path": "mrq.basetasks.cleaning.RequeueInterruptedJobs", "params": {}, "interval": 300},
        {"path": "mrq.basetasks.cleaning.RequeueRetryJobs", "params": {}, "interval": 60},
    ]

Each can also be run by hand: `mrq-run mrq.basetasks.cleaning.RequeueLostJobs '{"min_age": 0}'`.
"""

from __future__ import annotations

from typing import Any

from .. import current, maintenance
from ..task import Task


class RequeueLostJobs(Task):
    """Jobs waiting in MongoDB but held by no Redis structure (Redis lost its data): put back;
    and jobs `waiting` for dependencies that have all ended (a producer died between storing one
    and registering it): settled. params: min_age (seconds, default 60): skip jobs queued more
    recently than that."""

    def run(self, params: dict[str, Any]) -> dict[str, int]:
        store, min_age = current.get_current_store(), float(params.get("min_age", 60))
        counts = maintenance.requeue_lost_jobs(store, min_age)
        settled = maintenance.resettle_waiting(store, min_age)
        return {**counts, "waiting_queued": settled["queued"], "waiting_cancelled": settled["cancelled"]}


class RequeueStartedJobs(Task):
    """`started` jobs of workers that are gone, running longer than their timeout + params.timeout."""

    def run(self, params: dict[str, Any]) -> dict[str, int]:
        count = maintenance.requeue_started_jobs(current.get_current_store(), float(params.get("timeout", 300)))
        return {"requeued": count}


class RequeueInterruptedJobs(Task):
    """Jobs left in `interrupt`."""

    def run(self, params: dict[str, Any]) -> dict[str, int]:
        return {"requeued": maintenance.requeue_interrupted_jobs(current.get_current_store())}


class RequeueRetryJobs(Task):
    """`retry` jobs whose retry time has passed."""

    def run(self, params: dict[str, Any]) -> dict[str, int]:
        return {"requeued": maintenance.requeue_retry_jobs(current.get_current_store())}
