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
from bson import ObjectId

from . import current
from .clock import utcnow

MAX_BUFFERED_LINES = 100_000
MAX_LINE_CHARS = 16_384
#: Characters of log text per stored document (MongoDB documents are limited to 16 MiB of BSON).
MAX_DOCUMENT_CHARS = 4 * 1024 * 1024
DUPLICATE_KEY = 11000

log = logging.getLogger("mrq.worker")


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
        self._unsent: list[tuple[dict[str, Any], int]] = []  # documents built, not stored yet (and their line counts)
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
        """Lines not stored yet (buffered, or in documents an earlier flush could not store)."""
        return self._buffered + sum(lines for _, lines in self._unsent)

    def flush(self) -> None:
        """Write every buffered line (one insert for all jobs). Each document gets its id here, once:
        when an insert fails half-way (an outage), the same documents are sent again and those
        already stored are recognised (duplicate key) rather than stored twice. A document MongoDB
        refuses (too large, a validator) is dropped with a warning, never retried forever. On an
        outage the error is raised to the caller, which retries later."""
        with self._buffer_lock:
            buffer, self._buffer = self._buffer, defaultdict(list)
            self._buffered = 0
            dropped, self._dropped = self._dropped, 0
        now = utcnow()
        for job_id, lines in buffer.items():
            if dropped and lines:
                lines.insert(0, f"[mrq] {dropped} older log lines were dropped while MongoDB was unreachable")
                dropped = 0
            for chunk in _chunks(lines):
                doc = {"_id": ObjectId(), "job": job_id, "logs": "\n".join(chunk), "date": now,
                       "dateexpires": now + self.ttl}
                self._unsent.append((doc, len(chunk)))
        if not self._unsent:
            return
        sending, self._unsent = self._unsent, []
        try:
            self.collection.insert_many([doc for doc, _ in sending], ordered=False)
        except pymongo.errors.BulkWriteError as exc:
            for error in exc.details.get("writeErrors", []):
                if error.get("code") != DUPLICATE_KEY:  # stored by an earlier attempt: done
                    doc, lines = sending[error["index"]]
                    log.warning("job %s: MongoDB refused %d log lines (%s): dropped", doc["job"], lines,
                                error.get("errmsg"))
        except pymongo.errors.PyMongoError:
            self._unsent[:0] = sending  # before anything flushed meanwhile, in order
            self._trim_unsent()
            raise

    def _trim_unsent(self) -> None:
        """Bounded memory through a long outage: the oldest unsent documents go first."""
        while self._unsent and sum(lines for _, lines in self._unsent) > MAX_BUFFERED_LINES:
            _, lines = self._unsent.pop(0)
            with self._buffer_lock:
                self._dropped += lines


def _chunks(lines: list[str]) -> list[list[str]]:
    """Lines split into documents of at most MAX_DOCUMENT_CHARS characters (MongoDB refuses a
    document over 16 MiB)."""
    chunks: list[list[str]] = []
    size = 0
    for line in lines:
        if not chunks or size + len(line) + 1 > MAX_DOCUMENT_CHARS:
            chunks.append([])
            size = 0
        chunks[-1].append(line)
        size += len(line) + 1
    return chunks


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
