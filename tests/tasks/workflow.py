"""Tasks of the dependency and workflow tests."""

from __future__ import annotations

import time

from mrq.context import connections, get_current_job, get_dependency_results
from mrq.task import Task


class Step(Task):
    """Records its name, start and end in `steps`; returns {name, got: the dependencies' results}."""

    def run(self, params):
        job = get_current_job()
        got = get_dependency_results()
        started = time.time()
        time.sleep(params.get("seconds", 0))
        connections.mongodb_jobs.steps.insert_one({"job": job.id, "name": params.get("name"), "start": started,
                                                   "end": time.time()})
        if params.get("fail"):
            raise ValueError(f"step {params.get('name')} fails")
        return {"name": params.get("name"), "got": got}


class Square(Task):
    def run(self, params):
        return params["n"] * params["n"]


class Total(Task):
    """A group's callback: the sum of its members' results."""

    def run(self, params):
        results = get_dependency_results()
        return {"count": len(results), "sum": sum(r for r in results if r is not None),
                "missing": sum(1 for r in results if r is None)}
