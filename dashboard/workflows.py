"""What the dashboard reads of workflows (docs/workflows.md): the jobs a job waits for and the jobs
that wait for it, and a group's page. Bounded like every other read (dashboard/queries.py):

- a job's dependencies and dependents: at most SHOWN of each, in one `find` by `_id $in` with a
  projection, and how many more there are (a group's callback waits for up to 10,000 members);
- a group: its record, its progress (one `aggregate` on the `group_status_id` index), its callback
  (one `find_one` that leaves out the callback's dependency lists) and a keyset page of its members
  (the jobs list filtered by `group`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bson import ObjectId

from mrq.job import ALL_STATUSES
from mrq.lifecycle.dependencies import DEPENDENCY_ENDS
from mrq.lifecycle.statuses import CANCELLABLE_STATUSES
from mrq.store import Store
from mrq.workflow import Group

from .actions import GroupNotFound
from .formatting import last_line, short
from .jobfilter import JobFilter, Page, parse_job_filter, parse_page
from .queries import JobList, Reader

#: Dependencies, and dependents, read and shown per job page.
SHOWN = 100
#: The callback's fields the group page shows (never its `depends_on`: one id per member).
CALLBACK_FIELDS = {"status": 1, "path": 1, "queue": 1, "result": 1, "exceptiontype": 1, "traceback": 1,
                   "datequeued": 1, "datestarted": 1, "datefinished": 1, "totaltime": 1}


@dataclass
class Related:
    """Jobs a job points to (its `depends_on` or its `dependents`): the first SHOWN, read."""

    total: int
    jobs: list[dict[str, Any]]  # {_id, status, path, stored, ended, final}: in the list's order
    ended: int = 0  # dependencies only: how many are in `dependencies_ended`

    @property
    def more(self) -> int:
        return self.total - len(self.jobs)

    def as_json(self, with_ended: bool = False) -> dict[str, Any]:
        keys = ("status", "path", "ended") if with_ended else ("status", "path")
        return {"total": self.total, "more": self.more,
                "jobs": [{"id": row["_id"], **{key: row[key] for key in keys}} for row in self.jobs]}


def id_list(value: Any) -> list[ObjectId]:
    """The ids of a stored list (a document written by hand may hold anything there)."""
    if not isinstance(value, list):
        return []
    return list(dict.fromkeys(i for i in value if isinstance(i, ObjectId)))


def related(store: Store, ids: list[ObjectId], ended: set[ObjectId] | None = None) -> Related:
    """The first SHOWN of `ids` with their status and task: one find, none when there are none. A
    job no longer stored (expired) is listed with status None."""
    shown = ids[:SHOWN]
    found: dict[ObjectId, dict[str, Any]] = {}
    if shown:
        found = {doc["_id"]: doc for doc in store.jobs.find({"_id": {"$in": shown}}, {"status": 1, "path": 1})
                 .limit(len(shown)).batch_size(len(shown))}
    ended = ended or set()
    rows = []
    for job_id in shown:
        doc = found.get(job_id, {})
        rows.append({"_id": job_id, "status": doc.get("status"), "path": doc.get("path"), "stored": job_id in found,
                     "ended": job_id in ended, "final": doc.get("status") in DEPENDENCY_ENDS})
    return Related(len(ids), rows, ended=len(ended & set(ids)))


@dataclass
class Dependencies:
    waits_for: Related | None  # None: the job was queued without depends_on
    waited_for_by: Related | None  # None: nothing waits for it
    policy: str  # on_dependency_failure: "cancel" (the default) or "run"
    group: tuple[str, ObjectId] | None  # ("member" | "callback", the group's id)

    def as_json(self) -> dict[str, Any]:
        """`waits_for`: {total, ended, more, on_dependency_failure, jobs: [{id, status, path, ended}]};
        `waited_for_by`: {total, more, jobs: [{id, status, path}]}; each null when there are none."""
        waits_for = None
        if self.waits_for is not None:
            waits_for = {**self.waits_for.as_json(with_ended=True), "ended": self.waits_for.ended,
                         "on_dependency_failure": self.policy}
        return {"waits_for": waits_for,
                "waited_for_by": None if self.waited_for_by is None else self.waited_for_by.as_json()}


def group_of(doc: dict[str, Any]) -> tuple[str, ObjectId] | None:
    """("member", id) for a group's member, ("callback", id) for its callback, else None."""
    if isinstance(doc.get("group"), ObjectId):
        return "member", doc["group"]
    if isinstance(doc.get("group_callback"), ObjectId):
        return "callback", doc["group_callback"]
    return None


def dependencies(store: Store, doc: dict[str, Any]) -> Dependencies:
    """A job's dependencies and dependents (at most two finds, none for a job without either)."""
    depends_on = id_list(doc.get("depends_on"))
    waits_for = None
    if "depends_on" in doc:
        waits_for = related(store, depends_on, set(id_list(doc.get("dependencies_ended"))))
    dependents = id_list(doc.get("dependents"))
    waited_for_by = related(store, dependents) if dependents else None
    policy = "run" if doc.get("on_dependency_failure") == "run" else "cancel"
    return Dependencies(waits_for, waited_for_by, policy, group_of(doc))


# --- a group's page ----------------------------------------------------------------------------------


@dataclass
class GroupView:
    record: dict[str, Any]
    progress: dict[str, Any]  # Group.progress(): total, ended, by_status
    callback: dict[str, Any] | None  # its document (CALLBACK_FIELDS); None without `then`
    callback_id: ObjectId | None  # set even when the callback's document is gone
    members: JobList = field(default_factory=JobList)
    filter: JobFilter = field(default_factory=lambda: JobFilter({}))

    @property
    def id(self) -> ObjectId:
        group_id: ObjectId = self.record["_id"]
        return group_id

    @property
    def statuses(self) -> list[tuple[str, int]]:
        """(status, members) in the usual order of statuses, those with members only."""
        by_status = self.progress["by_status"]
        known = [(s, int(by_status[s])) for s in ALL_STATUSES if by_status.get(s)]
        odd = [(str(s), int(n)) for s, n in by_status.items() if s not in ALL_STATUSES and n]
        return known + odd

    @property
    def cancellable(self) -> bool:
        """Whether Cancel would change anything: a member or the callback has not started."""
        if any(s in CANCELLABLE_STATUSES for s, _ in self.statuses):
            return True
        return self.callback is not None and self.callback.get("status") in CANCELLABLE_STATUSES

    @property
    def ratio(self) -> float:
        total = self.progress["total"]
        return self.progress["ended"] / total if total else 0.0

    def callback_json(self) -> dict[str, Any] | None:
        if self.callback_id is None:
            return None
        doc = self.callback or {}
        return {"id": self.callback_id, "stored": self.callback is not None, "status": doc.get("status"),
                "path": doc.get("path"), "queue": doc.get("queue"), "summary": callback_summary(doc),
                "error": error_of(doc)}


def callback_summary(doc: dict[str, Any]) -> str | None:
    """The callback's result on one line (cut at 300 characters), None when it has none."""
    return short(doc["result"], 300) if "result" in doc else None


def error_of(doc: dict[str, Any]) -> dict[str, Any] | None:
    if not doc.get("exceptiontype") and not doc.get("traceback"):
        return None
    return {"type": doc.get("exceptiontype"), "message": last_line(doc.get("traceback"), 300) or None}


def member_args(args: Any, group_id: ObjectId) -> tuple[JobFilter, Page]:
    """The filter and page of a group's members from request fields: `status`, and the jobs list's
    `sort` (default oldest first: the group's order), `after`, `before`, `limit`."""
    flt = parse_job_filter({"group": str(group_id), "status": args.get("status") or ""})
    page = parse_page({"sort": "oldest", **{k: args[k] for k in ("sort", "after", "before", "limit") if args.get(k)}})
    return flt, page


def group_view(reader: Reader, group_id: ObjectId, flt: JobFilter, page: Page) -> GroupView:
    """The group's record, progress and callback, and a page of its members matching `flt`
    (a filter with this group): about five commands whatever the group's size."""
    store = reader.store
    record = store.groups.find_one({"_id": group_id})
    if record is None:
        raise GroupNotFound(group_id)
    group = Group(group_id, store)
    size = record.get("size")
    group.data = record if isinstance(size, int) and not isinstance(size, bool) else {**record, "size": 0}
    progress = group.progress()
    if group.data is not record:  # a record written by hand: count the members found
        progress["total"] = sum(n for n in progress["by_status"].values() if isinstance(n, int))
    callback_id = record.get("then") if isinstance(record.get("then"), ObjectId) else None
    callback = store.jobs.find_one({"_id": callback_id}, CALLBACK_FIELDS) if callback_id is not None else None
    return GroupView(record, progress, callback, callback_id, reader.list_jobs(flt, page), flt)
