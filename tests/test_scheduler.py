"""The scheduler: SCHEDULER_TASKS validation, occurrence arithmetic for every schedule form, and
exactly one job per occurrence however many schedulers (instances, threads, processes) check at
once, through config changes, expired jobs, downtime and store failures."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
from datetime import datetime, time, timedelta, timezone
from typing import Any

import pytest
from bson import ObjectId

from mrq.config import Settings
from mrq.exceptions import ConfigError
from mrq.job import Job, queue_job, queue_jobs
from mrq.scheduler import ScheduleEntry, Scheduler, occurrence_job_id, validate_schedule
from mrq.storage import mongo
from mrq.store import Store
from mrq.testing.pytest_plugin import PROJECT_ROOT, with_database
from mrq.testing.stack import MongoTestServer, free_port
from mrq.testing.workers import command_env, wait_until

TASK = "tests.tasks.general.Add"
PARAMS = {"a": 1, "b": 2}
T0 = datetime(2030, 1, 7, 12, 0, 0)  # a Monday, on a whole-minute boundary


def entry(**fields: Any) -> ScheduleEntry:
    return validate_schedule([{"path": TASK, **fields}])[0]


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def state_of(store: Store, one: ScheduleEntry) -> dict[str, Any]:
    doc = store.connections.mongodb_jobs[mongo.SCHEDULED_JOBS].find_one({"hash": one.hash})
    assert doc is not None
    return doc


def queued_ids(store: Store, queue: str = "default") -> list[str]:
    return [raw.decode() for raw in store.redis.lrange(store.keys.queue_ids(queue), 0, -1)]


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "where", "reason"), [
    ({"path": TASK, "interval": 60}, "SCHEDULER_TASKS", "expected a list of dicts, got dict"),
    ([TASK], "SCHEDULER_TASKS[0]", "expected a dict"),
    ([{"interval": 60}], "SCHEDULER_TASKS[0]", "'path' is missing"),
    ([{"path": "not a path", "interval": 60}], "SCHEDULER_TASKS[0] (not a path)", "dotted Python path"),
    ([{"path": 42, "interval": 60}], "SCHEDULER_TASKS[0]", "dotted Python path"),
    ([{"path": TASK, "params": [1], "interval": 60}], f"SCHEDULER_TASKS[0] ({TASK})", "params must be a dict"),
    ([{"path": TASK, "params": {"x": object()}, "interval": 60}], f"[0] ({TASK})", "cannot be stored in MongoDB"),
    ([{"path": TASK}], f"[0] ({TASK})", "no schedule: give interval"),
    ([{"path": TASK, "interval": 60, "dailytime": "09:00"}], f"[0] ({TASK})", "interval and dailytime cannot be"),
    ([{"path": TASK, "cron": "* * * * *", "dailytime": "09:00"}], f"[0] ({TASK})", "dailytime and cron cannot be"),
    ([{"path": TASK, "weekday": 1}], f"[0] ({TASK})", "weekday needs a dailytime"),
    ([{"path": TASK, "monthday": 1, "interval": 60}], f"[0] ({TASK})", "monthday needs a dailytime"),
    ([{"path": TASK, "weekday": 1, "monthday": 1, "dailytime": "09:00"}], f"[0] ({TASK})", "cannot be combined"),
    ([{"path": TASK, "weekday": 7, "dailytime": "09:00"}], f"[0] ({TASK})", "weekday must be 0 (Monday) to 6"),
    ([{"path": TASK, "weekday": True, "dailytime": "09:00"}], f"[0] ({TASK})", "weekday must be 0 (Monday) to 6"),
    ([{"path": TASK, "monthday": 32, "dailytime": "09:00"}], f"[0] ({TASK})", "monthday must be 1 to 31"),
    ([{"path": TASK, "monthday": 0, "dailytime": "09:00"}], f"[0] ({TASK})", "monthday must be 1 to 31"),
    ([{"path": TASK, "dailytime": "24:00"}], f"[0] ({TASK})", "dailytime must be \"HH:MM\""),
    ([{"path": TASK, "dailytime": "9h30"}], f"[0] ({TASK})", "dailytime must be \"HH:MM\""),
    ([{"path": TASK, "dailytime": "09:60"}], f"[0] ({TASK})", "dailytime must be \"HH:MM\""),
    ([{"path": TASK, "dailytime": 930}], f"[0] ({TASK})", "dailytime must be \"HH:MM\""),
    ([{"path": TASK, "dailytime": time(9, 0, tzinfo=timezone(timedelta(hours=2)))}], f"[0] ({TASK})",
     "dailytime must be in UTC"),
    ([{"path": TASK, "interval": 0}], f"[0] ({TASK})", "interval must be > 0"),
    ([{"path": TASK, "interval": -60}], f"[0] ({TASK})", "interval must be > 0"),
    ([{"path": TASK, "interval": "60"}], f"[0] ({TASK})", "interval must be a number of seconds"),
    ([{"path": TASK, "interval": float("nan")}], f"[0] ({TASK})", "interval must be a number of seconds"),
    ([{"path": TASK, "intervall": 60}], f"[0] ({TASK})", "unknown key 'intervall'"),
    ([{"path": TASK, "cron": "* * * *"}], f"[0] ({TASK})", "expected 5 fields"),
    ([{"path": TASK, "cron": "60 * * * *"}], f"[0] ({TASK})", "minute field '60'"),
    ([{"path": TASK, "cron": "0 10-5 * * *"}], f"[0] ({TASK})", "hour field '10-5'"),
    ([{"path": TASK, "cron": "*/0 * * * *"}], f"[0] ({TASK})", "the step must be >= 1"),
    ([{"path": TASK, "cron": "5/10 * * * *"}], f"[0] ({TASK})", "a step needs * or a range"),
    ([{"path": TASK, "cron": "0 0 * JAN *"}], f"[0] ({TASK})", "month field 'JAN'"),
    ([{"path": TASK, "cron": "0 0 31 2,4 *"}], f"[0] ({TASK})", "it never runs"),
    ([{"path": TASK, "cron": 5}], f"[0] ({TASK})", "cron must be a string"),
    ([{"path": TASK, "queue": "bad queue", "interval": 60}], f"[0] ({TASK})", "queue name"),
    ([{"path": TASK, "queue": "crawl_raw", "interval": 60}], f"[0] ({TASK})", "raw queue"),
    ([{"path": TASK, "interval": 60}, {"path": TASK, "interval": 60.0}], f"SCHEDULER_TASKS[1] ({TASK})",
     "duplicate of SCHEDULER_TASKS[0]"),
    ([{"path": TASK, "dailytime": "09:00"}, {"path": TASK, "dailytime": time(9, 0), "params": None}],
     f"SCHEDULER_TASKS[1] ({TASK})", "duplicate of SCHEDULER_TASKS[0]"),
    ([{"path": TASK, "interval": 60}, {"path": TASK, "interval": 60, "queue": "other"}, {"path": "x"}],
     "SCHEDULER_TASKS[2] (x)", "dotted Python path"),
])
def test_invalid_schedules_name_the_entry(config: Any, where: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_schedule(config)
    message = str(info.value)
    assert where in message and reason in message, message
    assert "\n" not in message


def test_valid_forms_and_mrq_spellings() -> None:
    entries = validate_schedule([
        {"path": TASK, "params": PARAMS, "interval": 60},
        {"path": TASK, "dailytime": time(3, 30)},  # MRQ wrote datetime.time objects
        {"path": TASK, "dailytime": "03:30:15", "queue": "reports"},
        {"path": TASK, "weekday": 0, "dailytime": "9:05"},
        {"path": TASK, "monthday": 31, "dailytime": "00:00", "params": None, "queue": None},
        {"path": TASK, "cron": "  */15  9-17 * *   1-5 "},
        {"path": TASK, "interval": 0.5},
    ])
    assert [e.schedule for e in entries] == [
        {"interval": 60}, {"dailytime": "03:30:00"}, {"dailytime": "03:30:15"},
        {"dailytime": "09:05:00", "weekday": 0}, {"dailytime": "00:00:00", "monthday": 31},
        {"cron": "*/15 9-17 * * 1-5"}, {"interval": 0.5},
    ]
    assert entries[2].queue == "reports" and entries[4].params == {} and entries[0].params == PARAMS
    assert [e.index for e in entries] == list(range(7))


def test_hash_is_stable_and_changes_with_every_field() -> None:
    base = entry(params={"b": 2, "a": 1}, interval=60)
    assert base.hash == entry(params={"a": 1, "b": 2}, interval=60.0).hash  # canonical JSON
    assert len(base.hash) == 40
    changed = [entry(params={"a": 1, "b": 3}, interval=60), entry(params={"a": 1, "b": 2}, interval=61),
               entry(params={"a": 1, "b": 2}, interval=60, queue="other"),
               validate_schedule([{"path": "tests.tasks.general.Echo", "params": {"a": 1, "b": 2},
                                   "interval": 60}])[0],
               entry(params={"a": 1, "b": 2}, cron="* * * * *")]
    assert len({base.hash, *(c.hash for c in changed)}) == 6


# --- occurrences ----------------------------------------------------------------------------------


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(("form", "now", "latest", "following"), [
    # interval: multiples of the interval since the Unix epoch
    ({"interval": 60}, "2030-01-07 12:00:05.123", "2030-01-07 12:00:00", "2030-01-07 12:01:00"),
    ({"interval": 60}, "2030-01-07 12:01:00", "2030-01-07 12:01:00", "2030-01-07 12:02:00"),
    ({"interval": 3600}, "2030-01-01 00:59:59.999", "2030-01-01 00:00:00", "2030-01-01 01:00:00"),
    ({"interval": 7}, "1970-01-01 00:00:20", "1970-01-01 00:00:14", "1970-01-01 00:00:21"),
    ({"interval": 0.5}, "2030-01-07 12:00:00.7", "2030-01-07 12:00:00.5", "2030-01-07 12:00:01"),
    # dailytime: today once passed, else yesterday; across month and year ends
    ({"dailytime": "09:30"}, "2030-01-07 10:00:00", "2030-01-07 09:30:00", "2030-01-08 09:30:00"),
    ({"dailytime": "09:30"}, "2030-01-07 09:30:00", "2030-01-07 09:30:00", "2030-01-08 09:30:00"),
    ({"dailytime": "09:30"}, "2030-01-07 09:29:59.999", "2030-01-06 09:30:00", "2030-01-07 09:30:00"),
    ({"dailytime": "23:00:30"}, "2030-01-01 00:00:00", "2029-12-31 23:00:30", "2030-01-01 23:00:30"),
    ({"dailytime": "00:00"}, "2028-03-01 00:00:00", "2028-03-01 00:00:00", "2028-03-02 00:00:00"),
    # weekday (0 = Monday; 2030-01-07 is a Monday)
    ({"weekday": 0, "dailytime": "09:00"}, "2030-01-07 10:00:00", "2030-01-07 09:00:00", "2030-01-14 09:00:00"),
    ({"weekday": 0, "dailytime": "09:00"}, "2030-01-07 08:00:00", "2029-12-31 09:00:00", "2030-01-07 09:00:00"),
    ({"weekday": 6, "dailytime": "23:59"}, "2030-01-01 00:00:00", "2029-12-30 23:59:00", "2030-01-06 23:59:00"),
    # monthday: a month without that day has no occurrence
    ({"monthday": 31, "dailytime": "00:00"}, "2030-04-30 23:00:00", "2030-03-31 00:00:00", "2030-05-31 00:00:00"),
    ({"monthday": 1, "dailytime": "06:00"}, "2030-01-01 05:00:00", "2029-12-01 06:00:00", "2030-01-01 06:00:00"),
    ({"monthday": 29, "dailytime": "12:00"}, "2030-03-01 00:00:00", "2030-01-29 12:00:00", "2030-03-29 12:00:00"),
    ({"monthday": 29, "dailytime": "12:00"}, "2028-03-01 00:00:00", "2028-02-29 12:00:00", "2028-03-29 12:00:00"),
    # cron (UTC, day of week 0/7 = Sunday)
    ({"cron": "*/15 * * * *"}, "2030-01-07 12:14:59", "2030-01-07 12:00:00", "2030-01-07 12:15:00"),
    ({"cron": "* * * * *"}, "2030-01-07 12:00:30", "2030-01-07 12:00:00", "2030-01-07 12:01:00"),
    ({"cron": "5,35 * * * *"}, "2030-01-07 12:34:00", "2030-01-07 12:05:00", "2030-01-07 12:35:00"),
    ({"cron": "0-30/10 8 * * *"}, "2030-01-07 12:00:00", "2030-01-07 08:30:00", "2030-01-08 08:00:00"),
    ({"cron": "*/15 9-17 * * 1-5"}, "2030-01-07 08:00:00", "2030-01-04 17:45:00", "2030-01-07 09:00:00"),
    ({"cron": "30 2 * * 7"}, "2030-01-07 00:00:00", "2030-01-06 02:30:00", "2030-01-13 02:30:00"),
    ({"cron": "30 2 * * 0"}, "2030-01-07 00:00:00", "2030-01-06 02:30:00", "2030-01-13 02:30:00"),
    ({"cron": "0 0 1 1 *"}, "2030-01-01 00:00:00", "2030-01-01 00:00:00", "2031-01-01 00:00:00"),
    ({"cron": "0 0 29 2 *"}, "2030-06-01 00:00:00", "2028-02-29 00:00:00", "2032-02-29 00:00:00"),
    ({"cron": "0 0 31 * *"}, "2030-05-01 00:00:00", "2030-03-31 00:00:00", "2030-05-31 00:00:00"),
    # day of month AND day of week restricted: either matches (Vixie cron)
    ({"cron": "0 12 1 * 0"}, "2030-01-07 00:00:00", "2030-01-06 12:00:00", "2030-01-13 12:00:00"),
    ({"cron": "0 12 1 * 0"}, "2030-02-01 13:00:00", "2030-02-01 12:00:00", "2030-02-03 12:00:00"),
    # one of them with a step from *: both must match
    ({"cron": "0 12 */2 * 1"}, "2030-01-14 00:00:00", "2030-01-07 12:00:00", "2030-01-21 12:00:00"),
])
def test_occurrences(form: dict[str, Any], now: str, latest: str, following: str) -> None:
    one = entry(**form)
    assert one.latest_occurrence(at(now)) == at(latest)
    assert one.next_occurrence(at(now)) == at(following)
    # the occurrence itself is the latest one at that instant
    assert one.latest_occurrence(at(latest)) == at(latest)


def test_occurrence_job_ids_are_deterministic_and_sort_by_time() -> None:
    one, other = entry(interval=1), entry(interval=2)
    ids = [occurrence_job_id(one.hash, T0 + seconds(k)) for k in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert ids[0] == occurrence_job_id(one.hash, T0)
    assert ids[0].generation_time.replace(tzinfo=None) == T0
    assert occurrence_job_id(other.hash, T0) != ids[0]


# --- queueing: one job per occurrence -------------------------------------------------------------


def test_interval_entry_runs_at_once_then_at_each_boundary(store: Store) -> None:
    one = entry(params=PARAMS, interval=60)
    scheduler = Scheduler(store, [one], clock=lambda: T0 + seconds(10))
    scheduler.sync()
    assert state_of(store, one)["datelastqueued"] is None
    assert state_of(store, one)["datenextqueued"] == T0

    first = scheduler.check()  # the clock: 12:00:10 -> the 12:00:00 occurrence, right away
    assert first == [occurrence_job_id(one.hash, T0)]
    data = Job(first[0]).fetch().data
    assert data is not None
    assert (data["path"], data["params"], data["queue"], data["status"]) == (TASK, PARAMS, "default", "queued")
    assert set(data) == set(Job(queue_job(TASK, PARAMS)).fetch().data or {})  # queue_job's document shape
    assert scheduler.check(T0 + seconds(59.9)) == []
    assert scheduler.check(T0 + seconds(60)) == [occurrence_job_id(one.hash, T0 + seconds(60))]
    state = state_of(store, one)
    assert state["datelastqueued"] == T0 + seconds(60) and state["datenextqueued"] == T0 + seconds(120)
    assert state["lastjob"] == occurrence_job_id(one.hash, T0 + seconds(60))
    assert (state["path"], state["params"], state["queue"], state["interval"]) == (TASK, PARAMS, None, 60)


def test_calendar_entry_waits_for_its_next_occurrence(store: Store) -> None:
    daily = entry(dailytime="09:00")
    weekly = entry(weekday=0, dailytime="11:00")  # T0 is a Monday, 12:00
    cron = entry(cron="30 12 * * *")
    scheduler = Scheduler(store, [daily, weekly, cron])
    scheduler.sync(T0)
    # today's 09:00 and 11:00 passed before the entries existed: nothing queued for them
    assert scheduler.check(T0) == []
    assert state_of(store, daily)["datenextqueued"] == at("2030-01-08 09:00:00")
    assert scheduler.check(at("2030-01-07 12:30:00")) == [occurrence_job_id(cron.hash, at("2030-01-07 12:30"))]
    assert scheduler.check(at("2030-01-08 09:00:01")) == [occurrence_job_id(daily.hash, at("2030-01-08 09:00"))]
    assert scheduler.check(at("2030-01-14 11:00:00")) == [
        occurrence_job_id(daily.hash, at("2030-01-14 09:00")),
        occurrence_job_id(weekly.hash, at("2030-01-14 11:00")),
        occurrence_job_id(cron.hash, at("2030-01-13 12:30")),
    ]
    assert store.jobs.count_documents({}) == 5


def test_queue_defaults_to_the_tasks_route(mrq_settings: Settings) -> None:
    store = Store(mrq_settings.replace(tasks={TASK: {"queue": "routed"}}))
    try:
        routed, explicit = validate_schedule([{"path": TASK, "interval": 1},
                                              {"path": TASK, "interval": 1, "queue": "explicit"}])
        ids = Scheduler(store, [routed, explicit]).check(T0)
        assert [Job(i, store).fetch().queue for i in ids] == ["routed", "explicit"]
        assert queued_ids(store, "routed") == [str(ids[0])] and queued_ids(store, "explicit") == [str(ids[1])]
    finally:
        store.close()


def test_two_schedulers_alternating_over_ten_seconds(store: Store) -> None:
    one = entry(params=PARAMS, interval=1)
    schedulers = [Scheduler(store, [one]), Scheduler(Store(store.settings), [one])]
    try:
        reported: list[ObjectId] = []
        for step in range(20):  # now = T0, T0+0.5 ... T0+9.5, alternately on each scheduler
            reported += schedulers[step % 2].check(T0 + seconds(step / 2))
        expected = [occurrence_job_id(one.hash, T0 + seconds(k)) for k in range(10)]
        assert reported == expected  # each occurrence reported once, by whichever queued it
        assert sorted(doc["_id"] for doc in store.jobs.find({})) == expected
        assert queued_ids(store) == [str(i) for i in expected]  # and pushed once
        assert state_of(store, one)["datelastqueued"] == T0 + seconds(9)
    finally:
        schedulers[1].store.close()


def test_concurrent_checks_from_threads_queue_once(mrq_settings: Settings) -> None:
    entries = validate_schedule([{"path": TASK, "params": {"n": n}, "interval": 1} for n in range(3)])
    stores = [Store(mrq_settings) for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    reported: list[list[ObjectId]] = [[] for _ in stores]

    def run(index: int) -> None:
        scheduler = Scheduler(stores[index], entries)
        for step in range(10):
            barrier.wait(timeout=30)  # every thread checks the same `now` at the same moment
            reported[index] += scheduler.check(T0 + seconds(step))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(stores))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        expected = sorted(occurrence_job_id(e.hash, T0 + seconds(k)) for e in entries for k in range(10))
        assert sorted(i for ids in reported for i in ids) == expected
        assert sorted(doc["_id"] for doc in stores[0].jobs.find({})) == expected
        assert sorted(queued_ids(stores[0])) == sorted(str(i) for i in expected)
    finally:
        for one in stores:
            one.close()


PROCESS_SCRIPT = """
import sys
from datetime import datetime, timedelta
from mrq.config import load_settings
from mrq.scheduler import Scheduler
from mrq.store import Store

settings, _ = load_settings([], default_file=False)
store = Store(settings)
scheduler = Scheduler.from_settings(store)
scheduler.sync()
print("ready", flush=True)
store.redis.blpop(sys.argv[1], timeout=60)  # the start barrier: every process checks at once
t0 = datetime.fromisoformat(sys.argv[2])
print(sum(len(scheduler.check(t0 + timedelta(seconds=step / 4))) for step in range(40)), flush=True)
"""


def test_concurrent_checks_from_processes_queue_once(store: Store, mrq_settings: Settings) -> None:
    tasks = [{"path": TASK, "params": PARAMS, "interval": 1}, {"path": TASK, "cron": "* * * * *"}]
    env = command_env(mrq_settings, {"MRQ_SCHEDULER_TASKS": json.dumps(tasks)})
    barrier = f"{mrq_settings.redis_prefix}:test:start"
    procs = [subprocess.Popen([sys.executable, "-c", PROCESS_SCRIPT, barrier, T0.isoformat()], cwd=PROJECT_ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
        store.redis.rpush(barrier, *["go"] * len(procs))
        counts = [int(proc.communicate(timeout=60)[0].strip()) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    interval, cron = validate_schedule(tasks)
    # now = T0 ... T0+9.75: 10 interval occurrences; the cron entry's latest minute is T0 (12:00)
    expected = sorted([occurrence_job_id(interval.hash, T0 + seconds(k)) for k in range(10)]
                      + [occurrence_job_id(cron.hash, T0)])
    assert sum(counts) == len(expected)
    assert sorted(doc["_id"] for doc in store.jobs.find({})) == expected
    assert sorted(queued_ids(store)) == sorted(str(i) for i in expected)


# --- configuration changes ------------------------------------------------------------------------


def test_config_change_replaces_the_schedule_and_sync_is_idempotent(store: Store) -> None:
    collection = store.connections.mongodb_jobs[mongo.SCHEDULED_JOBS]
    old, kept = validate_schedule([{"path": TASK, "params": PARAMS, "interval": 60},
                                   {"path": TASK, "dailytime": "06:00"}])
    first = Scheduler(store, [old, kept])
    first.sync(T0)
    assert len(first.check(T0)) == 1
    snapshot = sorted(collection.find({}), key=lambda doc: doc["hash"])
    first.sync(T0 + seconds(5))
    Scheduler(store, [old, kept]).sync(T0 + seconds(30))  # another worker starting with the same config
    assert sorted(collection.find({}), key=lambda doc: doc["hash"]) == snapshot

    new = entry(params=PARAMS, interval=30)  # the interval changed: a new entry
    assert new.hash != old.hash
    second = Scheduler(store, [new, kept])
    second.sync(T0 + seconds(40))
    assert sorted(doc["hash"] for doc in collection.find({})) == sorted([new.hash, kept.hash])
    assert state_of(store, kept)["datelastqueued"] == snapshot[[d["hash"] for d in snapshot].index(kept.hash)][
        "datelastqueued"]
    assert second.check(T0 + seconds(40)) == [occurrence_job_id(new.hash, T0 + seconds(30))]
    # the old scheduler (a worker not restarted yet) still has its entries; it recreates its state
    # and never queues an occurrence it queued already
    assert first.check(T0 + seconds(50)) == []


def test_check_syncs_first_when_sync_was_not_called(store: Store) -> None:
    stale = entry(interval=5)
    Scheduler(store, [stale]).sync(T0)
    one = entry(interval=1)
    assert Scheduler(store, [one]).check(T0) == [occurrence_job_id(one.hash, T0)]
    assert [doc["hash"] for doc in store.connections.mongodb_jobs[mongo.SCHEDULED_JOBS].find({})] == [one.hash]


# --- expiry, downtime, failures -------------------------------------------------------------------


def test_expired_job_is_not_queued_again(store: Store) -> None:
    one = entry(interval=60)
    [job_id] = Scheduler(store, [one]).check(T0)
    store.jobs.delete_one({"_id": job_id})  # what the TTL index does once the result expires
    store.redis.delete(store.keys.queue_ids("default"))
    assert Scheduler(store, [one]).check(T0 + seconds(30)) == []
    assert store.jobs.count_documents({}) == 0 and queued_ids(store) == []


def test_downtime_queues_only_the_latest_occurrence(store: Store) -> None:
    one = entry(interval=1)
    daily = entry(dailytime="12:00:03")
    scheduler = Scheduler(store, [one, daily])
    scheduler.sync(T0)
    assert scheduler.check(T0) == [occurrence_job_id(one.hash, T0)]
    later = T0 + timedelta(days=3, seconds=5.3)  # 3 days and 5 seconds without a check
    assert scheduler.check(later) == [occurrence_job_id(one.hash, later.replace(microsecond=0)),
                                      occurrence_job_id(daily.hash, at("2030-01-10 12:00:03"))]
    state = state_of(store, one)
    assert state["datelastqueued"] == T0 + timedelta(days=3, seconds=5)
    assert state["datenextqueued"] == T0 + timedelta(days=3, seconds=6)
    assert store.jobs.count_documents({}) == 3


def test_a_failing_entry_does_not_stop_the_others(mrq_settings: Settings, caplog: Any) -> None:
    # routed by TASKS to a raw queue: queueing that entry fails until the configuration is fixed
    store = Store(mrq_settings.replace(tasks={"tests.tasks.general.Echo": {"queue": "crawl_raw"}}))
    try:
        broken, good = validate_schedule([{"path": "tests.tasks.general.Echo", "interval": 1},
                                          {"path": TASK, "interval": 1}])
        scheduler = Scheduler(store, [broken, good])
        with caplog.at_level(logging.ERROR, logger="mrq.scheduler"):
            assert scheduler.check(T0) == [occurrence_job_id(good.hash, T0)]
            assert scheduler.check(T0 + seconds(1)) == [occurrence_job_id(good.hash, T0 + seconds(1))]
        errors = [r.getMessage() for r in caplog.records if r.name == "mrq.scheduler"]
        assert len(errors) == 2  # retried at each check
        assert "SCHEDULER_TASKS[0] (tests.tasks.general.Echo) not queued" in errors[0]
        assert "raw queue" in errors[0]
    finally:
        store.close()


def test_redis_down_leaves_the_occurrence_due(store: Store, caplog: Any) -> None:
    one = entry(interval=60)
    down = Store(store.settings.replace(redis=f"redis://127.0.0.1:{free_port()}/0", redis_timeout=0.2))
    try:
        with caplog.at_level(logging.ERROR, logger="mrq.scheduler"):
            assert Scheduler(down, [one]).check(T0) == []
        assert "not queued, retrying at the next check: cannot reach Redis at redis://127.0.0.1:" in caplog.text
        assert store.jobs.count_documents({}) == 0  # the job document was taken back
        assert state_of(store, one)["datelastqueued"] is None
        # Redis is back (here: another scheduler that can reach it): the same occurrence is queued
        assert Scheduler(store, [one]).check(T0 + seconds(1)) == [occurrence_job_id(one.hash, T0)]
    finally:
        down.close()


def test_mongodb_down_is_logged_and_retried(mrq_settings: Settings, caplog: Any) -> None:
    one = entry(interval=1)
    with MongoTestServer() as server:
        settings = mrq_settings.replace(mongodb_jobs=with_database(server.uri, "sched"), mongodb_timeout=0.3)
        store = Store(settings)
        try:
            scheduler = Scheduler(store, [one])
            assert scheduler.check(T0) == [occurrence_job_id(one.hash, T0)]
            server.stop()
            with caplog.at_level(logging.ERROR, logger="mrq.scheduler"):
                assert scheduler.check(T0 + seconds(1)) == []  # no exception: logged
            assert "cannot read the schedule, retrying at the next check" in caplog.text
            server.start()  # back, empty (the test server keeps nothing): the state is created again
            assert scheduler.check(T0 + seconds(2)) == [occurrence_job_id(one.hash, T0 + seconds(2))]
        finally:
            store.close()


def test_a_scheduler_that_lost_the_race_marks_the_occurrence_once_the_job_started(store: Store) -> None:
    one = entry(interval=60)
    job_id = occurrence_job_id(one.hash, T0)
    # another scheduler inserted and pushed the job, then died before recording the occurrence
    assert queue_jobs(TASK, [{}], ids=[job_id]) == [job_id]
    scheduler = Scheduler(store, [one])
    assert scheduler.check(T0 + seconds(1)) == []
    assert state_of(store, one)["datelastqueued"] is None  # still queued: its push may yet fail
    store.jobs.update_one({"_id": job_id}, {"$set": {"status": "success"}})  # a worker ran it
    assert scheduler.check(T0 + seconds(2)) == []
    assert state_of(store, one)["datelastqueued"] == T0 and state_of(store, one)["lastjob"] == job_id
    assert queued_ids(store) == [str(job_id)]


def test_queue_jobs_with_ids_skips_existing_ones(store: Store) -> None:
    ids = [ObjectId() for _ in range(3)]
    assert queue_jobs(TASK, [{"n": 1}], ids=ids[1:2]) == [ids[1]]
    assert queue_jobs(TASK, [{"n": 0}, {"n": 1}, {"n": 2}], ids=ids) == [ids[0], ids[2]]
    assert queued_ids(store) == [str(ids[1]), str(ids[0]), str(ids[2])]
    assert Job(ids[1]).fetch().params == {"n": 1}


# --- end to end -----------------------------------------------------------------------------------


def test_two_workers_with_scheduler_enqueue_each_occurrence_once(store: Store, worker_factory: Any) -> None:
    tasks = [{"path": TASK, "params": PARAMS, "interval": 1}]
    env = {"MRQ_SCHEDULER_TASKS": json.dumps(tasks)}
    [one] = validate_schedule(tasks)
    workers = [worker_factory("--scheduler", "--scheduler_interval", "0.2", env=env) for _ in range(2)]
    # ~10 s: ten occurrences queued by either worker and run by either
    wait_until(lambda: store.jobs.count_documents({"path": TASK, "status": "success"}) >= 10, timeout=30,
               interval=0.2, message="10 scheduled jobs run")
    for worker in workers:
        assert worker.stop(signal.SIGINT) == 0
    jobs = sorted(store.jobs.find({"path": TASK}), key=lambda doc: doc["_id"])
    occurrences = [job["_id"].generation_time.replace(tzinfo=None) for job in jobs]
    # one job per occurrence, none missing between the first and the last, each with its own id
    assert [job["_id"] for job in jobs] == [occurrence_job_id(one.hash, occ) for occ in occurrences]
    assert occurrences == [occurrences[0] + seconds(k) for k in range(len(jobs))]
    assert 10 <= len(jobs) <= 13
    # the state follows the jobs (a worker stopped between a push and the state update: one behind)
    assert state_of(store, one)["datelastqueued"] in occurrences[-2:]


def test_invalid_entry_stops_the_worker_at_start(store: Store, worker_factory: Any) -> None:
    tasks = [{"path": TASK, "interval": 5}, {"path": TASK, "intervall": 5}]
    worker = worker_factory("--scheduler", env={"MRQ_SCHEDULER_TASKS": json.dumps(tasks)}, wait=False)
    assert worker.wait(20) == 2
    output = worker.output().strip()
    assert output.startswith("mrq-worker: SCHEDULER_TASKS[1] (tests.tasks.general.Add)") and "intervall" in output
    assert "Traceback" not in output and "started:" not in output
