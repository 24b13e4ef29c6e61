"""Tasks that misbehave: they never yield to the gevent hub, hold the GIL in C code, or make a job
document grow past what MongoDB accepts."""

from __future__ import annotations

import time

from mrq.context import get_current_job, retry_current_job
from mrq.task import Task


class Spin(Task):
    """A pure-Python loop that never yields, for `seconds` (forever when not given)."""

    def run(self, params):
        seconds = params.get("seconds")
        end = None if seconds is None else time.monotonic() + seconds
        n = 0
        while end is None or time.monotonic() < end:
            n += 1
        return n


class SpinSwallowingEverything(Task):
    """Never yields, and catches every exception, interrupts included."""

    def run(self, params):
        while True:
            try:
                while True:
                    pass
            except BaseException:  # the point of this task
                pass


class HoldGil(Task):
    """C code that never releases the GIL (no Python thread can run meanwhile)."""

    def run(self, params):
        return sum(range(10**13))


class RetryWithHugeTraceback(Task):
    """With params near MongoDB's 16 MiB limit: the retry's traceback makes the document too large."""

    def run(self, params):
        try:
            raise ValueError("x" * 200_000)
        except ValueError:
            retry_current_job(delay=0, max_retries=5)


class ReturnLarge(Task):
    """Returns a result that, beside params near the 16 MiB limit, makes the document too large."""

    def run(self, params):
        return "r" * 1_000_000


class ReturnDeep(Task):
    """Returns a value nested `levels` deep: MongoDB refuses to store it (too deep) at the final write."""

    def run(self, params):
        value = {"leaf": True}
        for _ in range(params["levels"]):
            value = {"n": value}
        return value


class RunsOfJob(Task):
    """Counts its runs in the `runs` collection (keyed by job id) and sleeps."""

    def run(self, params):
        from mrq.context import connections

        connections.mongodb_jobs.runs.update_one({"_id": get_current_job().id}, {"$inc": {"n": 1}}, upsert=True)
        time.sleep(params.get("seconds", 0))
        return "ran"


def _spin_item(seconds):
    end = None if seconds is None else time.monotonic() + seconds
    while end is None or time.monotonic() < end:
        pass
    return seconds


class SpinInSubpool(Task):
    """One greenlet of a subpool spins forever without yielding."""

    def run(self, params):
        from mrq.context import subpool_map

        return subpool_map(2, _spin_item, [0.01, None])
