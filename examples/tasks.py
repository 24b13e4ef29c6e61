"""Example tasks queued by the demo (./scripts/demo) and by the FastAPI example
(examples/fastapi_app.py: `summarize`, a typed task)."""

from __future__ import annotations

import random
import time

from mrq.context import get_current_job, log, retry_current_job, set_current_job_progress, subpool_map
from mrq.task import Task, task


class Fast(Task):
    """Adds two numbers."""

    def run(self, params):
        log.info("adding %s + %s", params["a"], params["b"])
        return params["a"] + params["b"]


class Slow(Task):
    """Works for a few seconds, reporting progress."""

    def run(self, params):
        steps = int(params.get("seconds", 5) * 2)
        for step in range(steps):
            time.sleep(0.5)
            set_current_job_progress((step + 1) / steps)
            log.info("step %d/%d", step + 1, steps)
        return {"steps": steps}


class Fails(Task):
    """Always raises: look at its traceback."""

    def run(self, params):
        log.warning("about to fail on purpose")
        raise RuntimeError(f"could not process {params.get('item', 'the item')}")


class Flaky(Task):
    """Fails the first times, then succeeds: shows retries."""

    def run(self, params):
        job = get_current_job()
        if job.retry_count < params.get("failures", 2):
            log.info("flaky failure #%d, retrying in 1s", job.retry_count + 1)
            retry_current_job(delay=1, max_retries=5)
        return f"succeeded after {job.retry_count} retries"


class Crawl(Task):
    """Fetches several 'pages' concurrently inside one job (subpool_map)."""

    def run(self, params):
        def fetch(url):
            time.sleep(random.uniform(0.1, 0.5))
            log.info("fetched %s", url)
            return len(url)

        return dict(zip(params["urls"], subpool_map(4, fetch, params["urls"]), strict=True))


@task(timeout=30)
def summarize(text: str, max_words: int = 5) -> dict:
    """The first words of a text and its length: queued by examples/fastapi_app.py."""
    words = text.split()
    log.info("summarizing %d words", len(words))
    return {"words": len(words), "summary": " ".join(words[:max_words])}
