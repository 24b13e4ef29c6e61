"""Per-job logs: records of the `mrq.current` logger emitted inside a job are stored in
`mrq_logs`, tagged with the job id, in batches (at least every second and when the job ends).

Each stored document is `{job: ObjectId, logs: "line\\nline...", date, dateexpires}`; a job has
as many documents as flushes that carried its lines. When MongoDB is unreachable the lines wait
in memory (bounded: the oldest are dropped past `MAX_BUFFERED_LINES`, and a line says so).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from datetime import timedelta
from typing import Any

import pymongo.collection
import pymongo.errors

from . import current
from .clock import utcnow

MAX_BUFFERED_LINES = 100_000
MAX_LINE_CHARS = 16_384


def message_text(record: logging.LogRecord) -> str:
    """The record's message as text, whatever it was given (bytes are decoded, not repr'd)."""
    msg = record.msg
    if isinstance(msg, bytes | bytearray):
        msg = bytes(msg).decode("utf-8", "replace")
    args = record.args
    if args:
        if isinstance(args, tuple):
            args = tuple(a.decode("utf-8", "replace") if isinstance(a, bytes | bytearray) else a for a in args)
        try:
            return str(msg) % args
        except (TypeError, ValueError):
            return f"{msg} {args!r}"
    return str(msg)


class JobLogHandler(logging.Handler):
    """Buffers the lines of each job and writes them to MongoDB on flush()."""

    def __init__(self, collection: pymongo.collection.Collection, ttl_seconds: float) -> None:
        super().__init__()
        self.collection = collection
        self.ttl = timedelta(seconds=ttl_seconds)
        self._buffer: dict[Any, list[str]] = defaultdict(list)
        self._buffered = 0
        self._dropped = 0
        self._buffer_lock = threading.Lock()
        self.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s"))

    def format(self, record: logging.LogRecord) -> str:
        clean = logging.makeLogRecord(record.__dict__)
        clean.msg, clean.args = message_text(record), None
        return super().format(clean)[:MAX_LINE_CHARS]

    def emit(self, record: logging.LogRecord) -> None:
        job = current.get_current_job()
        if job is None or not getattr(job, "stored", True):
            return
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        with self._buffer_lock:
            self._buffer[job.id].append(line)
            self._buffered += 1
            if self._buffered > MAX_BUFFERED_LINES:
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        for lines in self._buffer.values():
            if lines:
                lines.pop(0)
                self._buffered -= 1
                self._dropped += 1
                return

    @property
    def pending(self) -> int:
        return self._buffered

    def flush(self) -> None:
        """Write every buffered line (one insert for all jobs). On failure the lines stay buffered
        and the error is raised to the caller, which retries later."""
        with self._buffer_lock:
            if not self._buffered:
                return
            buffer, self._buffer = self._buffer, defaultdict(list)
            count, self._buffered = self._buffered, 0
            dropped, self._dropped = self._dropped, 0
        now = utcnow()
        docs = []
        for job_id, lines in buffer.items():
            if not lines:
                continue
            if dropped:
                lines.insert(0, f"[mrq] {dropped} older log lines were dropped while MongoDB was unreachable")
                dropped = 0
            docs.append({"job": job_id, "logs": "\n".join(lines), "date": now, "dateexpires": now + self.ttl})
        if not docs:
            return
        try:
            self.collection.insert_many(docs, ordered=False)
        except pymongo.errors.PyMongoError:
            with self._buffer_lock:  # put them back in front of anything logged meanwhile
                for job_id, lines in buffer.items():
                    self._buffer[job_id][:0] = lines
                self._buffered += count
            raise


def read_job_logs(collection: pymongo.collection.Collection, job_id: Any, after: Any = None) -> tuple[str, Any]:
    """The stored log text of a job (optionally only what came after the document id `after`),
    and the id of the last document read (to pass as `after` next time)."""
    query: dict[str, Any] = {"job": job_id}
    if after is not None:
        query["_id"] = {"$gt": after}
    texts, last = [], after
    for doc in collection.find(query, {"logs": 1}).sort("_id", 1):
        texts.append(doc["logs"])
        last = doc["_id"]
    return "\n".join(texts), last
