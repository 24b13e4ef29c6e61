"""An asyncio web app that queues a job per request and serves its status (FastAPI + mrq.aio).

    pip install fastapi uvicorn
    uvicorn examples.fastapi_app:app --host 127.0.0.1 --port 8000   # from the repository root
    mrq-worker default                                                # runs the jobs

    curl -X POST localhost:8000/summaries -H 'content-type: application/json' -d '{"text": "a b c"}'
    curl 'localhost:8000/jobs/<id>?wait=5'

Both read the stores from MRQ_REDIS / MRQ_MONGODB_JOBS (or mrq-config.py). Queueing never blocks
the event loop: `summarize.aqueue(...)` checks the arguments against the task's signature, then
inserts the job and pushes its id with the asyncio clients of mrq.aio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel

from examples.tasks import summarize
from mrq import aio
from mrq.exceptions import InvalidJob, JobNotFound, StoreUnavailable
from mrq.job import JobWaitTimeout


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    aio.setup()  # the settings of the environment and mrq-config.py
    yield
    await aio.close()


app = FastAPI(title="mrq FastAPI example", lifespan=lifespan)


class SummaryRequest(BaseModel):
    text: str
    max_words: int = 5


@app.post("/summaries", status_code=202)
async def create_summary(request: SummaryRequest) -> dict[str, str]:
    try:
        job_id = await summarize.aqueue(text=request.text, max_words=request.max_words)
    except InvalidJob as exc:  # params MongoDB cannot store (a text over 16 MiB...)
        raise HTTPException(400, str(exc)) from None
    except StoreUnavailable as exc:  # nothing was queued
        raise HTTPException(503, str(exc)) from None
    return {"id": str(job_id), "status": f"/jobs/{job_id}"}


@app.get("/jobs/{job_id}")
async def job_status(job_id: str, wait: float = Query(0, ge=0, le=30)) -> dict[str, Any]:
    """The job's status and, once it succeeded, its result; `wait` seconds for it to finish."""
    try:
        job = aio.Job(job_id)
        if wait:
            try:
                await job.wait(timeout=wait)
            except JobWaitTimeout:
                pass
        await job.fetch({"status": 1, "result": 1})
    except JobNotFound:
        raise HTTPException(404, f"no job {job_id}") from None
    except StoreUnavailable as exc:
        raise HTTPException(503, str(exc)) from None
    return {"id": job_id, "status": job.status, "result": job.result}
