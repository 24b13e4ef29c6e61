"""A task module written exactly as for MRQ 0.9 (imports, Task classes, context helpers)."""

from mrq.context import abort_current_job, connections, get_current_job, log, retry_current_job, subpool_map
from mrq.job import queue_job
from mrq.task import Task


class Crawl(Task):
    def run(self, params):
        job = get_current_job()
        log.info("crawling %s pages for job %s", len(params["pages"]), job.id)

        def fetch(page):
            # subpool greenlets belong to the job: same current job, same logs
            assert get_current_job().id == job.id
            log.info("fetched %s", page)
            return page.upper()

        pages = subpool_map(5, fetch, params["pages"])
        child = queue_job("tests.tasks.mrq_style.Child", {"parent": str(job.id)})
        connections.redis.incr(f"{connections_prefix()}:crawls")
        return {"pages": pages, "child": str(child)}


class Child(Task):
    def run(self, params):
        return {"parent": params["parent"]}


class Flaky(Task):
    """Retries on the first run, aborts when asked to."""

    def run(self, params):
        if params.get("abort"):
            abort_current_job()
        if get_current_job().data.get("retry_count", 0) == 0:
            retry_current_job(delay=0)
        return "second time lucky"


def connections_prefix():
    from mrq.context import get_current_config

    return get_current_config()["redis_prefix"]
