"""The dashboard's reads stay bounded with 100,000 jobs and 10,000 subqueues: the overview, every
jobs-list filter (with both sorts and a next page), the statistics pages and /metrics each answer
with a bounded number of MongoDB commands (counted by a pymongo CommandListener on the
dashboard's own client) and Redis commands (INFO commandstats deltas on the test's own
redis-server), none a collection scan: the test's MongoDB runs with `--notablescan` (mongod's
error 291 for a query no index serves), and every command is also checked against the planner
rules with mrq's declared indexes. The queue registry forgets empty subqueues unused for a while.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from bson import ObjectId
from flask.testing import FlaskClient

from mrq.lifecycle import documents
from mrq.queue import Queue, count_known, forget_empty_subqueues, known_queue_names, subqueue_names
from mrq.queue.registry import MIN_FORGET_AFTER, adopt_legacy
from mrq.storage import mongo
from mrq.store import Store
from mrq.testing.mongo_collection import CommandError
from mrq.testing.mongo_planner import IndexInfo, check_indexed
from mrq.testing.stack import MongoTestServer, RedisServer
from mrq_dashboard import create_app
from mrq_dashboard.jobfilter import parse_job_filter
from mrq_dashboard.queries import sorted_read
from tests.test_dashboard_api import CommandLog, MonitoredConnections

JOBS = 100_000
SUBQUEUES = 10_000
PATHS = [f"tasks.t{i}.Run" for i in range(7)] + ["reports.daily.Build", "reports.weekly.Build"]
STATUSES = ["success"] * 6 + ["failed", "queued", "started", "cancel"]
EXCEPTIONS = ["ValueError", "KeyError", "TimeoutError"]


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


# CommandLog and MonitoredConnections: the dashboard API tests' command counters.


def redis_calls(client: redis.Redis) -> dict[str, int]:
    info = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()}


JOB_INDEXES: list[IndexInfo] = [([("_id", 1)], False, None)] + [
    (index.keys, bool(index.options.get("sparse")), index.options.get("partialFilterExpression"))
    for index in mongo.INDEXES[mongo.JOBS]
]


def planned(command: dict[str, Any]) -> tuple[Any, Any]:
    """The filter and sort MongoDB's planner sees for a command on the jobs collection."""
    name = command["name"]
    if name == "find":
        return command.get("filter") or {}, command.get("sort")
    if name == "aggregate":
        from mrq.testing.mongo_planner import pushed_down

        return pushed_down(command["pipeline"])
    if name == "count":
        return command.get("query") or {}, None
    if name == "distinct":
        return command.get("query") or {}, None
    raise AssertionError(f"unexpected command on the jobs collection: {name}")


def index_order(spec: dict[str, Any], sort: Any) -> bool:
    """Whether an index gives the `_id` sort after equality conditions (or `$in` point lists) on
    its leading keys: the read stops after the page instead of sorting every matching job."""
    if not sort or list(sort) != ["_id"]:
        return True
    points = {field for field, condition in spec.items() if not field.startswith("$") and field != "_id" and (
        not isinstance(condition, dict) or set(condition) == {"$in"})}
    filtered = any(field != "_id" for field in spec)  # then the index must narrow the read, not only sort it
    for keys, _sparse, _partial in JOB_INDEXES:
        names = [name for name, _ in keys]
        leading = names[:names.index("_id")] if "_id" in names else None
        if leading is not None and set(leading) <= points and (leading or not filtered):
            return True
    return False


def check_commands(commands: list[dict[str, Any]], prefix_range: bool = False) -> None:
    """Every command on mrq_jobs is served by an index (the planner's rules, with mrq's declared
    indexes) and reads in index order, except a prefix filter (an anchored regex on an indexed
    field), which reads one index range."""
    for command in commands:
        if command.get(command["name"]) != mongo.JOBS:
            continue
        spec, sort = planned(command)
        if spec:
            check_indexed(f"db.{mongo.JOBS}", JOB_INDEXES, spec, sort)
        elif not (isinstance(sort, dict) and list(sort) == ["_id"] and (
                command["name"] == "aggregate" or command.get("limit"))):
            raise AssertionError(f"unfiltered read of every job: {command}")  # only a limited read of the _id index
        if not prefix_range and command["name"] == "find":
            assert index_order(spec, sort), f"needs an in-memory sort: {command}"


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[RedisServer, MongoTestServer]]:
    redis_server, mongo_server = RedisServer(), MongoTestServer(args=["--notablescan"])
    redis_server.start()
    mongo_server.start()
    yield redis_server, mongo_server
    redis_server.close()
    mongo_server.close()


@pytest.fixture(scope="module")
def loaded(servers: tuple[RedisServer, MongoTestServer]) -> Iterator[dict[str, Any]]:
    """100,000 jobs (documents as mrq writes them) and 10,000 subqueues (registered as producers do)."""
    from mrq.config import load_settings

    redis_server, mongo_server = servers
    settings, _ = load_settings([], env={}, default_file=False, overrides={
        "redis": redis_server.url, "redis_prefix": "scale", "mongodb_jobs": mongo_server.uri + "/mrqscale",
        "mongodb_logs": "1", "redis_timeout": 5.0, "mongodb_timeout": 5.0})
    store = Store(settings)
    mongo.ensure_indexes(store.connections.mongodb_jobs, store.connections.mongodb_jobs)
    workers = [ObjectId() for _ in range(20)]
    store.workers.insert_many([{"_id": oid, "name": f"host-{i % 10}", "status": "stop", "datereported": utcnow(),
                                "datestarted": utcnow()} for i, oid in enumerate(workers)])
    base = utcnow() - datetime.timedelta(days=2)
    for start in range(0, JOBS, 20_000):
        batch = []
        for i in range(start, start + 20_000):
            when = base + datetime.timedelta(seconds=i)
            status = STATUSES[i % 10]
            queue = f"crawl/site{i % SUBQUEUES}" if i % 4 == 0 else f"q{i % 3}"
            doc = documents.new_job(ObjectId.from_datetime(when), PATHS[i % len(PATHS)], {"i": i}, queue, when)
            if status != "queued":
                doc.update(worker=workers[i % len(workers)], datestarted=when, status="started")
            if status in ("success", "failed", "cancel"):
                doc.update(documents.final_fields(status, 7 * 86400, when + datetime.timedelta(seconds=i % 5),
                                                  when))
            if status == "failed":
                kind = EXCEPTIONS[i % 3]
                doc.update(exceptiontype=kind, traceback=f"Traceback ...\n{kind}: bad input {i % 11}")
            batch.append(doc)
        store.jobs.insert_many(batch, ordered=False)
    pipe = store.redis.pipeline(transaction=False)
    for i in range(SUBQUEUES):
        queue = Queue(f"crawl/site{i}", store)
        queue._note_known(pipe)
        if i % 10 == 0:
            pipe.rpush(store.keys.queue_ids(queue.name), str(ObjectId()))
    for name in ("q0", "q1", "q2"):
        Queue(name, store)._note_known(pipe)
        pipe.rpush(store.keys.queue_ids(name), str(ObjectId()))
    pipe.execute()
    assert store.jobs.estimated_document_count() == JOBS
    assert count_known(store) == SUBQUEUES + 3
    yield {"settings": settings, "store": store, "workers": workers, "redis": redis_server}
    store.close()


@pytest.fixture
def dashboard(loaded: dict[str, Any], request: pytest.FixtureRequest) -> tuple[FlaskClient, Any]:
    listener = CommandLog()
    settings = loaded["settings"]
    monitored = Store(settings, MonitoredConnections(settings, listener))
    request.addfinalizer(monitored.close)
    # Counts are cached (as by default) for longer than the test: each filter's count is computed
    # by its first request; the next ones (other sorts, page sizes, pages) read the cache.
    client = create_app(settings, store=monitored, cache_seconds=120).test_client(use_cookies=False)
    client.environ_base["HTTP_X_MRQ_CLIENT"] = "tests"
    counter = redis.Redis.from_url(loaded["redis"].url)
    request.addfinalizer(counter.close)

    def cost(url: str) -> tuple[list[dict[str, Any]], int, bytes]:
        listener.commands.clear()
        before = redis_calls(counter)
        response = client.get(url)
        after = redis_calls(counter)
        assert response.status_code == 200, (url, response.data[:300])
        redis_commands = sum(after[name] - before.get(name, 0) for name in after if name != "info")
        return list(listener.commands), redis_commands, response.data

    return client, cost


FILTERS = [
    "", "status=failed", "status=failed,queued,started", "queue=q1", "queue=crawl/site42", "queue=crawl/",
    "queue=q1&status=success", "queue=crawl/&status=failed", "path=tasks.t3.Run", "path=tasks.*",
    "path=reports.", "path=tasks.t3.Run&status=failed", "path=reports.*&status=success", "worker={worker}",
    "worker=host-3", "worker={worker}&status=success", "exceptiontype=KeyError",
    "exceptiontype=ValueError&status=failed", "from={day}", "from={day}&to={day}", "to={day}&status=cancel",
    "queue=q2&path=tasks.t1.Run", "queue=q0&exceptiontype=TimeoutError", "path=tasks.t2.Run&from={day}",
    "id={id}", "worker=nobody", "queue=nothing/", "group={id}", "group={id}&status=failed,queued",
    "group={id}&path=tasks.t1.Run",
]
SCALE_FILTERS = [
    "", "queue=crawl/", "worker=host-3", "status=failed,queued,started", "queue=crawl/site42",
    "queue=q1&status=success", "path=tasks.t3.Run", "path=reports.", "exceptiontype=KeyError",
    "queue=q2&path=tasks.t1.Run", "id={id}", "to={day}&status=cancel", "worker={worker}&status=failed",
    "group={id}",
]
PREFIX = re.compile(r"(queue=[^&]*/|path=[^&]*[.*])(&|$)")


def test_every_page_costs_a_bounded_number_of_commands(loaded: dict[str, Any], dashboard: Any) -> None:
    _client, cost = dashboard
    worker = str(loaded["workers"][3])
    day = (utcnow() - datetime.timedelta(days=1)).date().isoformat()
    some_id = str(loaded["store"].jobs.find_one({"path": "tasks.t1.Run"}, {"_id": 1})["_id"])

    mongo_cmds, redis_cmds, body = cost("/")
    assert len(mongo_cmds) <= 13, [c["name"] for c in mongo_cmds]  # 12 bounded status counts, worker reports
    assert redis_cmds <= 480, redis_cmds  # 100 queues x 4, page, registry size, paused, leases, 5 + 60 minutes
    check_commands(mongo_cmds)
    assert b"10,003 known" in body and b"next queues" in body and b"crawl/site1000" in body

    next_page = re.search(rb'href="(/\?after=[^"]+)"', body)
    assert next_page is not None
    _m, redis_cmds, body = cost(next_page.group(1).decode().replace("&amp;", "&"))
    assert redis_cmds <= 480 and b"crawl/site1090" in body
    _m, redis_cmds, body = cost("/?prefix=q")
    assert redis_cmds <= 100 and b"q2" in body and b"crawl/" not in body.split(b"<h2>Queues")[1]

    for api in ("/api/queues", "/api/queues?limit=1000&after=crawl/site5", "/api/overview"):
        mongo_cmds, redis_cmds, _body = cost(api)
        assert redis_cmds <= 4 * 1000 + 80, (api, redis_cmds)
        check_commands(mongo_cmds)

    mongo_cmds, redis_cmds, body = cost("/metrics")
    assert len(mongo_cmds) <= 13 and redis_cmds <= 4 * 500 + 20, (len(mongo_cmds), redis_cmds)
    check_commands(mongo_cmds)
    assert b"mrq_queues_known 10003.0" in body
    assert len(re.findall(rb"^mrq_queue_size\{", body, re.M)) == 500

    # One of each kind of filter and combination at 100,000 jobs (the test server reads every
    # matching document in Python: each costs a second or two here); every filter of FILTERS is
    # checked against the planner below, without a server.
    for number, template in enumerate(SCALE_FILTERS):
        query = template.format(worker=worker, day=day, id=some_id)
        prefix = bool(PREFIX.search(query))
        for extra in ("", "&sort=oldest&limit=200") if number == 1 else ("",):
            mongo_cmds, redis_cmds, body = cost(f"/jobs?{query}{extra}")
            # the list, its bounded count, worker names (and a worker name's ids); without a filter the
            # count is the sum of the per-status counts, cached since the overview
            assert len(mongo_cmds) <= 4, (query, [c["name"] for c in mongo_cmds])
            assert redis_cmds <= 2, (query, redis_cmds)  # the queue names of the filter's datalist
            check_commands(mongo_cmds, prefix_range=prefix)
            older = re.search(rb'href="(/jobs\?[^"]*after=[0-9a-f]{24}[^"]*)"', body)
            if number == 1 and extra == "":
                assert older is not None
                mongo_cmds, _r, _b = cost(older.group(1).decode().replace("&amp;", "&"))
                assert [c["name"] for c in mongo_cmds] == ["find", "find"]  # the page, its workers' names
                check_commands(mongo_cmds, prefix_range=prefix)
        if number in (1, 4):
            mongo_cmds, redis_cmds, _body = cost(f"/api/jobs?{query}&limit=20")
            assert len(mongo_cmds) <= 1 and redis_cmds == 0, (query, [c["name"] for c in mongo_cmds])  # count cached
            check_commands(mongo_cmds, prefix_range=prefix)

    # Statistics: one bounded command each, computed once per period and shared by every request.
    for page, computed in (("/taskpaths", 1), ("/api/taskpaths", 0), ("/exceptions", 1), ("/api/exceptions", 0)):
        mongo_cmds, redis_cmds, body = cost(page)
        assert len(mongo_cmds) == computed and redis_cmds == 0, (page, [c["name"] for c in mongo_cmds])
        check_commands(mongo_cmds)
    rows = json.loads(cost("/api/taskpaths")[2])["taskpaths"]
    assert [r["path"] for r in rows] == sorted(PATHS)
    assert sum(r["count"] for r in rows) == 20_000  # the sample: the 20,000 most recent jobs
    weekly = next(r for r in rows if r["path"] == "reports.weekly.Build")
    assert weekly["finished"] > 0 and 0 < weekly["failure_rate"] < 1 and weekly["p95"] >= weekly["avg"] >= 0
    assert b"KeyError" in cost("/exceptions")[2]


def test_jobs_filters_and_their_counts_are_served_by_indexes() -> None:
    """Without a server: every jobs-list filter, as the dashboard sends it (sorted_read, both sorts),
    is served by one of mrq's declared indexes under the planner's rules, and in `_id` order
    unless it is a prefix."""
    day = (utcnow() - datetime.timedelta(days=1)).date().isoformat()
    for template in FILTERS:
        query = template.format(worker=str(ObjectId()), day=day, id=str(ObjectId()))
        args = dict(part.split("=", 1) for part in query.split("&") if part)
        if args.get("worker", "").startswith(("host", "nobody")):
            args["worker"] = str(ObjectId())  # a name resolves to ids ($in), read the same way
        spec = sorted_read(parse_job_filter(args).query)
        for direction in (1, -1):
            command = {"name": "find", "find": mongo.JOBS, "filter": spec, "sort": {"_id": direction}, "limit": 51}
            check_commands([command], prefix_range=bool(PREFIX.search(query)))
    with pytest.raises(CommandError) as refused:  # the check can fail: a filter on a field no index has
        check_indexed(f"db.{mongo.JOBS}", JOB_INDEXES, {"params.i": 3}, {"datequeued": -1})
    assert refused.value.code == 291
    assert not index_order({"queue": {"$regex": "^crawl/"}}, {"_id": -1})


def test_the_registry_forgets_empty_subqueues(store: Store) -> None:
    pipe = store.redis.pipeline(transaction=False)
    for name in ("crawl/a", "crawl/b", "crawl/c", "crawl/d_raw", "default", "crawl_raw/x"):
        Queue(name, store)._note_known(pipe)
    pipe.execute()
    Queue("crawl/b", store).push([str(ObjectId())])  # waiting ids
    store.redis.zadd(store.keys.queue_delayed("crawl/c"), {str(ObjectId()): time.time() + 60})  # a delayed retry
    store.redis.rpush(store.keys.raw_queue("crawl_raw/x"), "param")  # a raw parameter
    assert subqueue_names(store, "crawl") == ["crawl/a", "crawl/b", "crawl/c", "crawl/d_raw"]
    assert forget_empty_subqueues(store, 3600) == []  # all noted just now
    later = time.time() + 3600 + 1
    assert forget_empty_subqueues(store, 3600, now=later) == ["crawl/a", "crawl/d_raw"]
    assert known_queue_names(store) == ["crawl/b", "crawl/c", "crawl_raw/x", "default"]  # plain queues stay
    assert subqueue_names(store, "crawl") == ["crawl/b", "crawl/c"]
    # A queue noted after the sweep's cutoff stays, even if found empty just before.
    store.redis.delete(store.keys.queue_ids("crawl/b"))
    store.redis.zadd(store.keys.queues_seen, {"crawl/b": later})
    assert forget_empty_subqueues(store, 3600, now=later) == []
    assert forget_empty_subqueues(store, 1, now=time.time() + MIN_FORGET_AFTER + 1) == []  # 1 s means 5 min
    # A push to a forgotten subqueue registers it again (the process noted it over a minute ago).
    store._noted.clear()
    Queue("crawl/a", store).push([str(ObjectId())])
    assert "crawl/a" in subqueue_names(store, "crawl") and "crawl/a" in known_queue_names(store)


def test_the_registry_adopts_the_sets_of_earlier_versions(store: Store) -> None:
    keys = store.keys
    store.redis.sadd(keys.legacy_known_queues, "default", "crawl/a", "crawl/b")
    store.redis.sadd(keys.legacy_subqueues("crawl"), "crawl/a", "crawl/b", "crawl/c")
    assert adopt_legacy(store) == 4
    assert known_queue_names(store) == ["crawl/a", "crawl/b", "crawl/c", "default"]
    assert subqueue_names(store, "crawl") == ["crawl/a", "crawl/b", "crawl/c"]
    assert not store.redis.exists(keys.legacy_known_queues, keys.legacy_subqueues("crawl"))
    assert adopt_legacy(store) == 0
