"""The scheduler: queue each `SCHEDULER_TASKS` entry once per occurrence, however many schedulers
(worker processes started with `--scheduler`, on any number of machines) run at the same time.

An entry is a task path, its params, an optional queue and one schedule form: `interval` (seconds),
`dailytime` (UTC), `weekday` + `dailytime`, `monthday` + `dailytime`, or `cron` (5 fields, UTC).
docs/scheduler.md describes the forms and the guarantees.

Exactly once, without locks: the job of an occurrence has a deterministic id, derived from the
entry's hash and the occurrence time. Every scheduler that finds the occurrence due inserts that
job; MongoDB's unique `_id` lets exactly one insert through (`queue_jobs(ids=...)` skips an id
that exists). The scheduler that inserted it then moves the entry's `datelastqueued` forward
(a guarded update that never moves back), so the occurrence is never queued again, even after its
job document expired. There is no lock to expire mid-run and no leader to elect.

All the occurrence arithmetic takes `now` as an argument (naive UTC); only `Scheduler` reads the
clock, and that clock is injectable.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

import bson
import bson.json_util
import pymongo
import pymongo.collection
import pymongo.errors
from bson import ObjectId

from .clock import utcnow
from .connections import redact_text
from .exceptions import ConfigError, InvalidJob, InvalidQueueName, MrqError, StoreUnavailable
from .job import QUEUED, queue_jobs
from .queue import queue_kind
from .storage import mongo
from .storage.keys import validate_job_queue
from .task import validate_task_path

if TYPE_CHECKING:
    from .store import Store

log = logging.getLogger("mrq.scheduler")

EPOCH = datetime(1970, 1, 1)
ENTRY_KEYS = ("path", "params", "queue", "interval", "dailytime", "weekday", "monthday", "cron")
#: Every valid calendar schedule occurs within 8 years (29 February around a century year).
SEARCH_DAYS = 9 * 366
#: The most days each month can have (February: leap years).
MONTH_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


# --- cron -----------------------------------------------------------------------------------------

_CRON_PART = re.compile(r"(?:(\*)|(\d+)(?:-(\d+))?)(?:/(\d+))?")
_CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
                ("day of week", 0, 7))


def _cron_field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        match = _CRON_PART.fullmatch(part)
        if match is None:
            raise ValueError(f"{name} field {text!r}: use *, N, A-B, lists A,B and steps */N or A-B/N")
        star, first, last, step = match.groups()
        if star:
            start, end = low, high
        elif step and last is None:
            raise ValueError(f"{name} field {text!r}: a step needs * or a range (A-B/N)")
        else:
            start, end = int(first), int(last if last is not None else first)
        if not low <= start <= end <= high:
            raise ValueError(f"{name} field {text!r}: values must be within {low}-{high}, ranges ascending")
        if step is not None and int(step) < 1:
            raise ValueError(f"{name} field {text!r}: the step must be >= 1")
        values.update(range(start, end + 1, int(step or 1)))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """A parsed 5-field cron expression (minute hour day-of-month month day-of-week), in UTC.

    Day of week: 0 or 7 = Sunday. As in Vixie cron, when both the day of month and the day of week
    are restricted (neither starts with `*`), a day matches if EITHER matches."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool  # day of month starts with *
    any_weekday: bool  # day of week starts with *

    @classmethod
    def parse(cls, text: str) -> Cron:
        fields = text.split()
        if len(fields) != 5:
            raise ValueError(f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}")
        minutes, hours, days, months, weekdays = (
            _cron_field(part, *spec) for part, spec in zip(fields, _CRON_FIELDS, strict=True))
        cron = cls(" ".join(fields), minutes, hours, days, months, frozenset(d % 7 for d in weekdays),
                   any_day=fields[2].startswith("*"), any_weekday=fields[4].startswith("*"))
        if (cron.any_weekday or cron.any_day) and not any(d <= MONTH_DAYS[m] for m in months for d in days):
            raise ValueError("no month of the expression has any of its days of month: it never runs")
        return cron

    def matches_day(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        in_days = day.day in self.days
        in_weekdays = (day.weekday() + 1) % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return in_days and in_weekdays
        return in_days or in_weekdays

    @cached_property
    def times(self) -> list[int]:
        """Seconds since midnight of every matching minute, ascending."""
        return sorted(hour * 3600 + minute * 60 for hour in self.hours for minute in self.minutes)


# --- entries --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleEntry:
    """One validated SCHEDULER_TASKS entry. Build it with `validate_schedule()`."""

    index: int
    path: str
    params: dict[str, Any]
    queue: str | None = None
    interval: float | None = None
    dailytime: time | None = None
    weekday: int | None = None
    monthday: int | None = None
    cron: Cron | None = None

    @property
    def name(self) -> str:
        return f"SCHEDULER_TASKS[{self.index}] ({self.path})"

    @property
    def schedule(self) -> dict[str, Any]:
        """The schedule fields as stored (JSON and BSON friendly)."""
        fields: dict[str, Any] = {}
        if self.interval is not None:
            fields["interval"] = int(self.interval) if float(self.interval).is_integer() else self.interval
        if self.dailytime is not None:
            fields["dailytime"] = self.dailytime.strftime("%H:%M:%S")
        if self.weekday is not None:
            fields["weekday"] = self.weekday
        if self.monthday is not None:
            fields["monthday"] = self.monthday
        if self.cron is not None:
            fields["cron"] = self.cron.text
        return fields

    @cached_property
    def hash(self) -> str:
        """sha1 of the canonical JSON of path, params, queue and schedule: any change makes a new
        entry (and the old one's state is removed by `Scheduler.sync()`)."""
        canonical = bson.json_util.dumps({"path": self.path, "params": self.params, "queue": self.queue,
                                          **self.schedule}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(canonical.encode()).hexdigest()

    def document(self) -> dict[str, Any]:
        """The configuration part of the entry's `mrq_scheduled_jobs` document."""
        return {"hash": self.hash, "path": self.path, "params": self.params, "queue": self.queue, **self.schedule}

    # --- occurrences: pure functions of `now` (naive UTC)

    def latest_occurrence(self, now: datetime) -> datetime:
        """The most recent scheduled time <= now."""
        if self.interval is not None:
            step = self._interval_ms
            elapsed = (now - EPOCH) // timedelta(milliseconds=1)
            return EPOCH + timedelta(milliseconds=elapsed // step * step)
        return self._search(now, backward=True)

    def next_occurrence(self, now: datetime) -> datetime:
        """The first scheduled time > now."""
        if self.interval is not None:
            return self.latest_occurrence(now) + timedelta(milliseconds=self._interval_ms)
        return self._search(now, backward=False)

    @property
    def _interval_ms(self) -> int:
        assert self.interval is not None
        return round(self.interval * 1000)

    def _matches_day(self, day: date) -> bool:
        if self.cron is not None:
            return self.cron.matches_day(day)
        if self.weekday is not None:
            return day.weekday() == self.weekday
        if self.monthday is not None:
            return day.day == self.monthday
        return True

    @cached_property
    def _times(self) -> list[int]:
        if self.cron is not None:
            return self.cron.times
        assert self.dailytime is not None
        return [self.dailytime.hour * 3600 + self.dailytime.minute * 60 + self.dailytime.second]

    def _search(self, now: datetime, backward: bool) -> datetime:
        """Walk the days from today (back or forward) to the first matching day with a matching
        time on the right side of now."""
        today = now.date()
        seconds = (now - datetime.combine(today, time())) / timedelta(seconds=1)
        times = self._times
        for offset in range(SEARCH_DAYS):
            day = today + timedelta(days=-offset if backward else offset)
            if not self._matches_day(day):
                continue
            if offset == 0:  # today: only the times before (after) now
                cut = bisect.bisect_right(times, seconds)
                candidates = times[:cut] if backward else times[cut:]
            else:
                candidates = times
            if candidates:
                moment = candidates[-1] if backward else candidates[0]
                return datetime.combine(day, time()) + timedelta(seconds=moment)
        raise ConfigError(f"{self.name}: no occurrence within {SEARCH_DAYS} days of {now:%Y-%m-%d}")

    def first_state(self, now: datetime) -> dict[str, Any]:
        """State of an entry seen for the first time at `now`: an interval entry is due at once
        (its current boundary, as MRQ ran interval tasks at start); a calendar entry (dailytime,
        weekday, monthday, cron) waits for its next occurrence, the latest one having passed
        before the entry existed."""
        if self.interval is not None:
            return {"datelastqueued": None, "datenextqueued": self.latest_occurrence(now), "lastjob": None}
        return {"datelastqueued": self.latest_occurrence(now), "datenextqueued": self.next_occurrence(now),
                "lastjob": None}


def occurrence_job_id(entry_hash: str, occurrence: datetime) -> ObjectId:
    """The id of the job of one occurrence: 4 bytes of its unix time (ids still sort by time), then
    8 bytes of sha1(hash + occurrence). Every scheduler computes the same id."""
    seconds = (occurrence - EPOCH) // timedelta(seconds=1)
    digest = hashlib.sha1(f"{entry_hash} {occurrence.isoformat()}".encode()).digest()
    return ObjectId(seconds.to_bytes(4, "big") + digest[:8])


# --- validation -----------------------------------------------------------------------------------

_DAILYTIME = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")


def validate_schedule(entries: object) -> list[ScheduleEntry]:
    """Check SCHEDULER_TASKS and return its entries; raises ConfigError with one line naming the
    first wrong entry (`SCHEDULER_TASKS[index] (path)`) and what is wrong with it."""
    if not isinstance(entries, list | tuple):
        raise ConfigError(f"SCHEDULER_TASKS: expected a list of dicts, got {type(entries).__name__}")
    result: list[ScheduleEntry] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(entries):
        entry = _validate_entry(index, raw)
        if entry.hash in seen:
            raise ConfigError(f"{entry.name}: duplicate of SCHEDULER_TASKS[{seen[entry.hash]}] "
                              "(same path, params, queue and schedule)")
        seen[entry.hash] = index
        result.append(entry)
    return result


def _validate_entry(index: int, raw: object) -> ScheduleEntry:
    where = f"SCHEDULER_TASKS[{index}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a dict with a path and a schedule, got {type(raw).__name__}")
    if isinstance(raw.get("path"), str):
        where += f" ({raw['path']})"

    def fail(message: str) -> ConfigError:
        return ConfigError(f"{where}: {message}")

    unknown = [key for key in raw if key not in ENTRY_KEYS]
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} (known keys: {', '.join(ENTRY_KEYS)})")
    if "path" not in raw:
        raise fail("'path' is missing (the dotted path of the task to queue)")
    try:
        path = validate_task_path(raw["path"])
    except InvalidJob as exc:
        raise fail(str(exc)) from None
    params = raw.get("params")
    params = {} if params is None else params
    if not isinstance(params, Mapping):
        raise fail(f"params must be a dict, got {type(params).__name__}")
    try:
        bson.encode(dict(params))
    except (bson.errors.InvalidDocument, OverflowError, TypeError, ValueError) as exc:
        raise fail(f"params cannot be stored in MongoDB: {exc}") from None
    queue = raw.get("queue")
    if queue is not None:
        try:
            validate_job_queue(queue)
        except InvalidQueueName as exc:
            raise fail(str(exc)) from None
        if queue_kind(queue) != "regular":
            raise fail(f"queue {queue!r} is a raw queue; scheduled jobs go to regular queues")

    form = {key: raw[key] for key in ("interval", "dailytime", "weekday", "monthday", "cron")
            if raw.get(key) is not None}
    if "weekday" in form and "monthday" in form:
        raise fail("weekday and monthday cannot be combined: give one of them, with a dailytime")
    for day_key in ("weekday", "monthday"):
        if day_key in form and "dailytime" not in form:
            raise fail(f"{day_key} needs a dailytime (\"HH:MM\", UTC)")
    main = [key for key in ("interval", "dailytime", "cron") if key in form]
    if not main:
        raise fail("no schedule: give interval (seconds), dailytime (\"HH:MM\" UTC, optionally with weekday "
                   "or monthday) or cron")
    if len(main) > 1:
        raise fail(f"{' and '.join(main)} cannot be combined: give one schedule form")

    values: dict[str, Any] = {}
    if "interval" in form:
        interval = form["interval"]
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not math.isfinite(interval):
            raise fail(f"interval must be a number of seconds, got {interval!r}")
        if round(interval * 1000) < 1:
            raise fail(f"interval must be > 0 seconds (at least 0.001), got {interval!r}")
        values["interval"] = interval
    if "dailytime" in form:
        values["dailytime"] = _parse_dailytime(form["dailytime"], fail)
    if "weekday" in form:
        weekday = form["weekday"]
        if isinstance(weekday, bool) or not isinstance(weekday, int) or not 0 <= weekday <= 6:
            raise fail(f"weekday must be 0 (Monday) to 6 (Sunday), got {weekday!r}")
        values["weekday"] = weekday
    if "monthday" in form:
        monthday = form["monthday"]
        if isinstance(monthday, bool) or not isinstance(monthday, int) or not 1 <= monthday <= 31:
            raise fail(f"monthday must be 1 to 31, got {monthday!r}")
        values["monthday"] = monthday
    if "cron" in form:
        if not isinstance(form["cron"], str):
            raise fail(f"cron must be a string like \"*/5 * * * *\", got {form['cron']!r}")
        try:
            values["cron"] = Cron.parse(form["cron"])
        except ValueError as exc:
            raise fail(f"cron {form['cron']!r}: {exc}") from None
    return ScheduleEntry(index=index, path=path, params=dict(params), queue=queue, **values)


def _parse_dailytime(value: object, fail: Callable[[str], ConfigError]) -> time:
    if isinstance(value, time):
        if value.utcoffset() not in (None, timedelta(0)):
            raise fail(f"dailytime must be in UTC, got {value!r}")
        # Truncated to the second, as MRQ (whose `now.time() < dailytime` made a fraction of a
        # second irrelevant): `datetime.time(3, 0, 0, 500000)` fires at 03:00:00.
        return value.replace(tzinfo=None, microsecond=0)
    match = _DAILYTIME.fullmatch(value) if isinstance(value, str) else None
    if match is not None:
        hour, minute, second = (int(part or 0) for part in match.groups())
        if hour <= 23 and minute <= 59 and second <= 59:
            return time(hour, minute, second)
    raise fail(f"dailytime must be \"HH:MM\" or \"HH:MM:SS\" (UTC) or a datetime.time, got {value!r}")


# --- the scheduler --------------------------------------------------------------------------------


class Scheduler:
    """Queues the due occurrences of its entries. Run `check()` every few seconds in any number of
    processes; `sync()` (once, at start; `check()` does it if it was not done) makes
    `mrq_scheduled_jobs` match the entries."""

    def __init__(self, store: Store, entries: Sequence[ScheduleEntry],
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self.entries = list(entries)
        self.clock = clock
        self.synced = False

    @classmethod
    def from_settings(cls, store: Store, clock: Callable[[], datetime] = utcnow) -> Scheduler:
        """A scheduler for the store's SCHEDULER_TASKS (raises ConfigError when they are invalid)."""
        return cls(store, validate_schedule(store.settings.scheduler_tasks), clock)

    @property
    def collection(self) -> pymongo.collection.Collection:
        return self.store.connections.mongodb_jobs[mongo.SCHEDULED_JOBS]

    def sync(self, now: datetime | None = None) -> None:
        """Delete the state of entries no longer configured, create the state of new ones (see
        `ScheduleEntry.first_state`), update the rest. Idempotent. Raises StoreUnavailable."""
        now = now or self.clock()
        try:
            removed = self.collection.delete_many({"hash": {"$nin": [e.hash for e in self.entries]}})
            for entry in self.entries:
                self._upsert(entry, now)
        except pymongo.errors.PyMongoError as exc:
            raise self._unavailable(exc) from None
        if removed.deleted_count:
            log.info("scheduler: removed %d scheduled task(s) no longer in SCHEDULER_TASKS", removed.deleted_count)
        self.synced = True

    def check(self, now: datetime | None = None) -> list[ObjectId]:
        """Queue the job of every entry whose latest occurrence (<= now) was not queued yet; returns
        the ids this call queued. Never raises for a store error: it is logged and the entry is
        retried at the next check."""
        now = now or self.clock()
        try:
            if not self.synced:
                self.sync(now)
            hashes = [entry.hash for entry in self.entries]
            states = {doc["hash"]: doc for doc in self.collection.find({"hash": {"$in": hashes}})}
        except (MrqError, pymongo.errors.PyMongoError) as exc:
            log.error("scheduler: cannot read the schedule, retrying at the next check: %s", self._describe(exc))
            return []
        queued: list[ObjectId] = []
        for entry in self.entries:
            try:
                job_id = self._check_entry(entry, states.get(entry.hash), now)
            except (MrqError, pymongo.errors.PyMongoError) as exc:
                log.error("scheduler: %s not queued, retrying at the next check: %s", entry.name, self._describe(exc))
            except Exception:
                log.exception("scheduler: %s failed, retrying at the next check", entry.name)
            else:
                if job_id is not None:
                    queued.append(job_id)
        return queued

    def _check_entry(self, entry: ScheduleEntry, state: dict[str, Any] | None, now: datetime) -> ObjectId | None:
        if state is None:  # removed by a scheduler running another configuration: create it again
            state = self._upsert(entry, now)
        occurrence = entry.latest_occurrence(now)
        last = state.get("datelastqueued")
        if last is not None and last >= occurrence:
            return None
        job_id = occurrence_job_id(entry.hash, occurrence)
        if queue_jobs(entry.path, [entry.params], entry.queue, ids=[job_id], store=self.store):
            self._advance(entry, occurrence, job_id)
            log.info("scheduler: queued %s for %s (job %s)", entry.name, f"{occurrence:%Y-%m-%d %H:%M:%S}", job_id)
            return job_id
        # Another scheduler inserted this job and is pushing it (or crashed on the way). Its push
        # may still fail and delete the job, so only a job that left `queued` (a worker took it:
        # it was pushed) lets this scheduler mark the occurrence done in its place.
        job = self.store.jobs.find_one({"_id": job_id}, {"status": 1})
        if job is not None and job.get("status") != QUEUED:
            self._advance(entry, occurrence, job_id)
        return None

    def _advance(self, entry: ScheduleEntry, occurrence: datetime, job_id: ObjectId) -> None:
        """Mark the occurrence queued; never moves back (a slower scheduler cannot undo a newer one)."""
        self.collection.update_one(
            {"hash": entry.hash, "datelastqueued": {"$not": {"$gte": occurrence}}},
            {"$set": {"datelastqueued": occurrence, "datenextqueued": entry.next_occurrence(occurrence),
                      "lastjob": job_id}},
        )

    def _upsert(self, entry: ScheduleEntry, now: datetime) -> dict[str, Any]:
        def upsert() -> dict[str, Any]:
            doc = self.collection.find_one_and_update(
                {"hash": entry.hash}, {"$set": entry.document(), "$setOnInsert": entry.first_state(now)},
                upsert=True, return_document=pymongo.ReturnDocument.AFTER)
            assert doc is not None  # an upsert returning the document after it always has one
            return dict(doc)

        try:
            return upsert()
        except pymongo.errors.DuplicateKeyError:  # another scheduler created it at the same moment
            return upsert()

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"MongoDB (scheduler state): {self._describe(exc)}")

    def _describe(self, exc: BaseException) -> str:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        return redact_text(first, self.store.settings.mongodb_jobs)
