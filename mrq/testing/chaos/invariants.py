"""The invariants a fault schedule checks, on the evidence collected once every fault is healed.

What is checked (docs/guarantees.md is the promise, docs/fault-schedules.md the summary):

a. every accepted regular job (its queue call returned its id), and every raw job whose document
   exists, ends in its designed final status within the recovery bound: `lost` (no document),
   `not final`, or `wrong status`. A job failed as `PoisonJob` (its workers died more than
   `max_recoveries` times) is the documented outcome, counted apart, not a violation.
b. of those, none is left `started`, and none is `queued`/`retry`/`delayed` without its id in a
   Redis structure of its queue (`:ids`, `:delayed`, or the running set of a live worker):
   `stuck`. Jobs whose queue call raised are not promised anything; those left waiting without
   their id in Redis are reported as notes (`orphan of a refused enqueue`).
c. every extra execution is counted on the job: executions (ledger) <= 1 + `recoveries` +
   `retry_count` + the `interrupt` entries of `traceback_history` (SIGTERM requeues a running
   job, by design). Anything beyond is an `uncounted duplicate`.
d. no status goes back from a final one, nor changes to another final one, as sampled every
   0.2 s during the run and once at the end. `interrupt` is not final here: the worker queues an
   interrupted job again at once, by design (docs/guarantees.md, SIGTERM); nothing in a schedule
   requeues jobs on purpose.
e. a raw param accepted by `queue_raw_jobs` either ran, has a document, or is still in Redis, or
   its loss is one docs/guarantees.md allows: Redis lost its data (restart empty, FLUSHALL) after
   it was queued, a worker was killed (-9) after it was queued (between a worker's pop and its
   insert), or Redis was partitioned or frozen around then (a pop that ran while its reply was
   lost). Allowed losses are counted apart; others are `raw lost`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ... import job as jobs

#: Final statuses for these checks: mrq's, but `interrupt` (the job is queued again at once).
FINAL = frozenset(jobs.FINAL_STATUSES - {jobs.INTERRUPT})
WAITING = frozenset({jobs.QUEUED, jobs.RETRY, jobs.DELAYED})
SHOWN_PER_KIND = 8  # violations shown in full per kind (all are counted)


@dataclass
class Evidence:
    """What a run saw. Times are seconds since the run started."""

    accepted: dict[str, tuple[str, str, float]] = field(default_factory=dict)  # id -> (kind, expected, when)
    rejected: dict[str, str] = field(default_factory=dict)  # id -> error of the queue call
    raw_accepted: dict[str, float] = field(default_factory=dict)  # raw param -> when
    raw_rejected: dict[str, str] = field(default_factory=dict)
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)  # every job document, by id
    executions: dict[str, int] = field(default_factory=dict)  # job id -> runs (ledger)
    raw_executions: dict[str, int] = field(default_factory=dict)  # raw param -> runs (ledger)
    in_redis: dict[str, list[str]] = field(default_factory=dict)  # job id -> where Redis holds it
    raw_waiting: set[str] = field(default_factory=set)  # raw params still in the raw queue
    live_workers: set[str] = field(default_factory=set)
    timelines: dict[str, list[tuple[float, str]]] = field(default_factory=dict)  # sampled statuses
    regressions: list[tuple[str, str, str, float]] = field(default_factory=list)  # id, final, later, when
    actions: list[tuple[float, str]] = field(default_factory=list)  # what the runner did
    data_losses: list[float] = field(default_factory=list)  # Redis restarted empty / FLUSHALL
    lost_replies: list[float] = field(default_factory=list)  # Redis partitioned / frozen: commands run, replies lost
    kills: list[float] = field(default_factory=list)  # kill -9 of a worker process
    workers: dict[str, tuple[str, int]] = field(default_factory=dict)  # worker id -> (slot, pid)
    reports: dict[str, str] = field(default_factory=dict)  # worker id -> its last report (status, running jobs)
    signals: dict[int, list[str]] = field(default_factory=dict)  # pid -> signals it got, with times
    unexited: list[str] = field(default_factory=list)  # workers still running long after SIGTERM/SIGINT
    samples: int = 0  # status samples taken (invariant d)


@dataclass(frozen=True)
class Violation:
    invariant: str  # a..e
    what: str
    subject: str  # job id or raw param
    detail: str


@dataclass
class Verdict:
    violations: list[Violation] = field(default_factory=list)
    figures: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def by_invariant(self) -> Counter[str]:
        return Counter(f"{v.invariant}: {v.what}" for v in self.violations)

    def describe(self, evidence: Evidence | None = None) -> str:
        lines = []
        shown: Counter[str] = Counter()
        for violation in self.violations:
            key = f"{violation.invariant}: {violation.what}"
            shown[key] += 1
            if shown[key] <= SHOWN_PER_KIND:
                lines.append(f"[{key}] {violation.subject}: {violation.detail}")
        for key, count in sorted(shown.items()):
            if count > SHOWN_PER_KIND:
                lines.append(f"[{key}] ... and {count - SHOWN_PER_KIND} more")
        return "\n".join(lines)


def explain_job(ev: Evidence, job_id: str) -> str:
    """Everything known about one job, on one line: the evidence of a violation."""
    doc = ev.docs.get(job_id)
    kind, expected, when = ev.accepted.get(job_id, ("raw" if doc and doc.get("raw_queue") else "?", "success", -1))
    parts = [f"{kind} job, expected {expected}"]
    if when >= 0:
        parts.append(f"queued at {when:.2f}s")
    if doc is None:
        parts.append("NO DOCUMENT")
    else:
        parts.append(f"status {doc.get('status')}")
        if doc.get("exceptiontype"):
            parts.append(f"exceptiontype {doc['exceptiontype']}")
        parts.append(f"recoveries {doc.get('recoveries', 0)}, retry_count {doc.get('retry_count', 0)}")
        worker = str(doc.get("worker") or "")
        if worker:
            slot, pid = ev.workers.get(worker, ("?", 0))
            alive = "live" if worker in ev.live_workers else "dead/no lease"
            got = "; ".join(ev.signals.get(pid, [])) or "no signal"
            parts.append(f"worker {worker} ({slot} pid {pid}, {alive}, {got}; report: "
                         f"{ev.reports.get(worker, 'none')})")
        history = [f"{h.get('status')}/{h.get('exceptiontype')}" for h in doc.get("traceback_history") or []]
        if history:
            parts.append("history " + " ".join(history))
    parts.append(f"executions {ev.executions.get(job_id, 0)}")
    timeline = ev.timelines.get(job_id)
    if timeline:
        parts.append("seen " + " ".join(f"{status}@{t:.1f}" for t, status in timeline))
    parts.append("in Redis: " + (", ".join(ev.in_redis.get(job_id, [])) or "nowhere"))
    return "; ".join(parts)


def held(ev: Evidence, job_id: str) -> bool:
    """Whether Redis holds the id where a worker will take it: its queue, its delayed set, or the
    running set of a live worker (a dead worker's set is recovered, but only while it has a lease
    entry: after the recovery bound it counts as nowhere)."""
    return any("dead worker" not in where for where in ev.in_redis.get(job_id, []))


def _extra_allowed(doc: dict[str, Any]) -> int:
    interrupts = sum(1 for h in doc.get("traceback_history") or [] if h.get("status") == jobs.INTERRUPT)
    return int(doc.get("recoveries") or 0) + int(doc.get("retry_count") or 0) + interrupts


def check(ev: Evidence) -> Verdict:
    verdict = Verdict()
    figures = verdict.figures
    found: list[Violation] = []

    def violation(invariant: str, what: str, subject: str, detail: str | None = None) -> None:
        found.append(Violation(invariant, what, subject, detail if detail is not None else explain_job(ev, subject)))

    # a + b: accepted regular jobs, and raw jobs that got a document
    expected: dict[str, str] = {job_id: exp for job_id, (_, exp, _) in ev.accepted.items()}
    for job_id, document in ev.docs.items():
        if document.get("raw_queue") and job_id not in expected:
            expected[job_id] = "success"
    for job_id, designed in expected.items():
        doc = ev.docs.get(job_id)
        status = doc.get("status") if doc else None
        figures[f"outcome {status or 'missing'}"] += 1
        if doc is None:
            violation("a", "lost", job_id)
        elif status in FINAL:
            if status == designed:
                continue
            if status == jobs.FAILED and doc.get("exceptiontype") == "PoisonJob":
                figures["poisoned (documented: died > max_recoveries times)"] += 1
                verdict.notes.append(f"poisoned: {job_id}: {explain_job(ev, job_id)}")
            else:
                violation("a", "wrong status", job_id)
        else:
            violation("a", "not final", job_id)
            if status == jobs.STARTED or not held(ev, job_id):
                violation("b", "stuck", job_id)

    # b (notes): jobs whose queue call raised
    for job_id, error in ev.rejected.items():
        doc = ev.docs.get(job_id)
        figures["enqueue refused"] += 1
        if doc is not None:
            figures["enqueue refused, document kept"] += 1
            if doc.get("status") in WAITING and not held(ev, job_id):
                figures["orphan of a refused enqueue"] += 1
                verdict.notes.append(f"orphan of a refused enqueue ({error}): {job_id}: {explain_job(ev, job_id)}")

    # c: executions beyond what the job counts
    for job_id, runs in ev.executions.items():
        doc = ev.docs.get(job_id)
        if doc is None:
            violation("c", "execution without document", job_id)
            continue
        allowed = 1 + _extra_allowed(doc)
        extra = runs - 1
        if extra > 0:
            figures["extra executions"] += extra
            figures["extra executions by retries (designed)"] += min(extra, int(doc.get("retry_count") or 0))
        if runs > allowed:
            figures["uncounted duplicates"] += runs - allowed
            violation("c", "uncounted duplicate", job_id)
        elif extra > int(doc.get("retry_count") or 0):
            figures["duplicates explained (recoveries, interrupts)"] += extra - int(doc.get("retry_count") or 0)
    for job_id, designed in expected.items():
        doc = ev.docs.get(job_id)
        if doc is not None and doc.get("status") == designed and ev.executions.get(job_id, 0) == 0:
            violation("c", "final without execution", job_id)

    # d: final -> non-final (or another final)
    for job_id, final, later, when in ev.regressions:
        violation("d", "final->non-final" if later not in FINAL else "final changed",
                  job_id, f"seen {final} then {later} at {when:.2f}s; " + explain_job(ev, job_id))

    # e: raw params
    raw_docs = {str((doc.get("params") or {}).get("raw")) for doc in ev.docs.values() if doc.get("raw_queue")}
    for param, when in ev.raw_accepted.items():
        figures["raw params"] += 1
        if ev.raw_executions.get(param) or param in raw_docs:
            continue
        if param in ev.raw_waiting:
            violation("e", "raw not taken", param, f"queued at {when:.2f}s, still in the raw queue at the end")
            continue
        # A queue call and a fault recorded in the same instant by two threads: either order.
        losses = [t for t in ev.data_losses if t >= when - 0.5]
        kills = [t for t in ev.kills if t >= when - 0.5]
        replies = [t for t in ev.lost_replies if t >= when - 5.0]  # a pop sent up to a timeout before
        if losses:
            figures["raw lost, allowed (Redis lost its data)"] += 1
        elif kills:
            figures["raw lost, allowed (worker killed between pop and insert)"] += 1
        elif replies:
            figures["raw lost, allowed (a pop's reply lost in a Redis partition or freeze)"] += 1
        else:
            violation("e", "raw lost", param, f"queued at {when:.2f}s; never ran, no document, not in Redis; "
                      "no Redis data loss or kill -9 after it")
    figures["raw enqueue refused"] += len(ev.raw_rejected)

    # counted re-executions, and workers that would not stop (not an invariant: evidence)
    for doc in ev.docs.values():
        figures["recoveries"] += int(doc.get("recoveries") or 0)
        figures["interrupts"] += sum(1 for h in doc.get("traceback_history") or [] if h.get("status") == jobs.INTERRUPT)
    for text in ev.unexited:
        figures["workers not exited after SIGTERM/SIGINT"] += 1
        verdict.notes.append(f"worker did not exit: {text}")
    figures["jobs"] = len(ev.accepted) + len(ev.raw_accepted)
    figures["status samples"] = ev.samples
    verdict.violations = sorted(found, key=lambda v: (v.invariant, v.what, v.subject))
    return verdict
