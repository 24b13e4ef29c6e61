"""The jobs filter: query-string (or JSON) fields -> a MongoDB query on `mrq_jobs` that an index
serves, with a one-line reason for anything malformed (`BadInput`, answered with 400).

Fields: `id`, `queue` (`name/` = every subqueue of name), `status` (comma separated), `path`
(`prefix*` or `prefix.` = every task under a dotted prefix), `worker` (id or name), `group` (the
members of a `mrq.workflow` group, by its id), `exceptiontype`, `from` / `to` (queued between
these UTC dates: a range of `_id`, since a job id starts with its creation time). The same filter
drives the jobs list, its count and the bulk actions.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bson import ObjectId

from mrq.exceptions import InvalidQueueName
from mrq.job import ALL_STATUSES
from mrq.storage.keys import validate_queue_name

if TYPE_CHECKING:
    from mrq.store import Store

FIELDS = ("id", "queue", "status", "path", "worker", "group", "exceptiontype", "from", "to")
SORTS = ("newest", "oldest")
MAX_LIMIT = 200
DEFAULT_LIMIT = 50
#: Worker ids a worker name stands for in a filter (its most recent processes): with one range per
#: (id, status) pair, MongoDB still merges them in `_id` order instead of sorting.
MAX_WORKER_IDS = 20

_PATH_FILTER = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\*?")
_EXCEPTION_TYPE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")


class BadInput(ValueError):
    """A malformed request: the message says what and why (HTTP 400)."""


@dataclass(frozen=True)
class JobFilter:
    values: dict[str, str]  # the non-empty fields as given (normalised), for links and the audit log
    query: dict[str, Any] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.values

    def cache_key(self) -> str:
        return "&".join(f"{k}={self.values[k]}" for k in sorted(self.values))


def _text(args: Mapping[str, Any], name: str) -> str:
    value = args.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadInput(f"{name}: expected a string, got {type(value).__name__}")
    return value.strip()


def object_id(value: str, what: str) -> ObjectId:
    if not ObjectId.is_valid(value):
        raise BadInput(f"{what}: {value[:60]!r} is not an id (24 hexadecimal characters)")
    return ObjectId(value)


def parse_date(value: str, what: str, end_of_day: bool = False) -> datetime.datetime:
    """A UTC date or datetime in ISO form (2024-05-01, 2024-05-01T12:30, ...Z or +02:00)."""
    text = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = datetime.datetime.fromisoformat(text)
            return day + datetime.timedelta(days=1) if end_of_day else day
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise BadInput(f"{what}: {value[:60]!r} is not a date (use 2024-05-01 or 2024-05-01T12:30, UTC)") from None
    if when.tzinfo is not None:
        when = when.astimezone(datetime.UTC).replace(tzinfo=None)
    if not datetime.datetime(1970, 1, 2) <= when < datetime.datetime(2106, 1, 1):
        raise BadInput(f"{what}: {value[:60]!r} is out of range")
    return when


def parse_job_filter(args: Mapping[str, Any], store: Store | None = None) -> JobFilter:
    """Build the filter from request fields; empty fields are ignored. `store` is needed only to
    resolve a worker given by name."""
    values: dict[str, str] = {}
    query: dict[str, Any] = {}
    id_range: dict[str, ObjectId] = {}

    job_id = _text(args, "id")
    if job_id:
        query["_id"] = object_id(job_id, "id")
        values["id"] = job_id

    queue = _text(args, "queue")
    if queue:
        try:
            validate_queue_name(queue, allow_subqueue_wildcard=True)
        except InvalidQueueName as exc:
            raise BadInput(f"queue: {exc}") from None
        query["queue"] = {"$regex": "^" + re.escape(queue)} if queue.endswith("/") else queue
        values["queue"] = queue

    status = _text(args, "status")
    if status:
        statuses = sorted({s.strip() for s in status.split(",") if s.strip()})
        unknown = [s for s in statuses if s not in ALL_STATUSES]
        if unknown:
            raise BadInput(f"status: unknown status {unknown[0][:40]!r} (known: {', '.join(ALL_STATUSES)})")
        if statuses:
            query["status"] = statuses[0] if len(statuses) == 1 else {"$in": statuses}
            values["status"] = ",".join(statuses)

    path = _text(args, "path")
    if path:
        if not _PATH_FILTER.fullmatch(path):
            raise BadInput(f"path: {path[:80]!r} is not a task path (dotted name; end with * or . for a prefix)")
        if path.endswith(("*", ".")):
            query["path"] = {"$regex": "^" + re.escape(path.rstrip("*"))}
        else:
            query["path"] = path
        values["path"] = path

    worker = _text(args, "worker")
    if worker:
        if ObjectId.is_valid(worker):
            query["worker"] = ObjectId(worker)
        else:
            if store is None or len(worker) > 200:
                raise BadInput(f"worker: {worker[:60]!r} is not a worker id")
            ids = [doc["_id"] for doc in store.workers.find({"name": worker}, {"_id": 1})
                   .sort("_id", -1).limit(MAX_WORKER_IDS)]
            query["worker"] = {"$in": ids}
        values["worker"] = worker

    group = _text(args, "group")
    if group:
        query["group"] = object_id(group, "group")  # the `group_status_id` index
        values["group"] = group

    exceptiontype = _text(args, "exceptiontype")
    if exceptiontype:
        if not _EXCEPTION_TYPE.fullmatch(exceptiontype) or len(exceptiontype) > 200:
            raise BadInput(f"exceptiontype: {exceptiontype[:80]!r} is not an exception class name")
        query["exceptiontype"] = exceptiontype
        values["exceptiontype"] = exceptiontype

    start, end = _text(args, "from"), _text(args, "to")
    if start:
        id_range["$gte"] = ObjectId.from_datetime(parse_date(start, "from"))
        values["from"] = start
    if end:
        id_range["$lt"] = ObjectId.from_datetime(parse_date(end, "to", end_of_day=True))
        values["to"] = end
    if "$gte" in id_range and "$lt" in id_range and id_range["$gte"] >= id_range["$lt"]:
        raise BadInput("from: the start of the date range is after its end")
    if id_range:
        if "_id" in query:
            query["$and"] = [{"_id": id_range}]
        else:
            query["_id"] = id_range
    return JobFilter(values, query)


@dataclass(frozen=True)
class Page:
    sort: str = "newest"
    after: ObjectId | None = None  # the next page starts after this id (in the sort order)
    before: ObjectId | None = None  # the previous page ends before this id
    limit: int = DEFAULT_LIMIT


def parse_page(args: Mapping[str, Any]) -> Page:
    sort = _text(args, "sort") or "newest"
    if sort not in SORTS:
        raise BadInput(f"sort: expected newest or oldest, got {sort[:40]!r}")
    after, before = _text(args, "after"), _text(args, "before")
    if after and before:
        raise BadInput("after and before cannot be combined")
    limit_text = _text(args, "limit")
    limit = DEFAULT_LIMIT
    if limit_text:
        if not limit_text.isdigit() or not 1 <= int(limit_text[:6]) <= MAX_LIMIT:
            raise BadInput(f"limit: expected a number from 1 to {MAX_LIMIT}, got {limit_text[:40]!r}")
        limit = int(limit_text)
    return Page(sort, object_id(after, "after") if after else None, object_id(before, "before") if before else None,
                limit)


def keyset_query(query: dict[str, Any], page: Page) -> tuple[dict[str, Any], int]:
    """The filter plus the keyset condition, and the `_id` sort direction to read in."""
    newest = page.sort == "newest"
    if page.after is not None:
        op, direction, cursor = ("$lt" if newest else "$gt"), (-1 if newest else 1), page.after
    elif page.before is not None:
        op, direction, cursor = ("$gt" if newest else "$lt"), (1 if newest else -1), page.before
    else:
        return query, (-1 if newest else 1)
    return with_id_condition(query, op, cursor), direction


def with_id_condition(query: dict[str, Any], op: str, value: ObjectId) -> dict[str, Any]:
    """`query` and `_id <op> value`, kept flat (one `_id` range) so that it reads as one index range."""
    current = query.get("_id")
    if current is None:
        return {**query, "_id": {op: value}}
    if isinstance(current, dict) and all(k in ("$gte", "$gt", "$lt", "$lte") for k in current):
        merged = dict(current)
        bound = merged.get(op)
        tighter = (bound is None or (value < bound if op == "$lt" else value > bound))
        if tighter:
            merged[op] = value
        return {**query, "_id": merged}
    return {"$and": [query, {"_id": {op: value}}]}
