"""Jobs that wait for other jobs (depends_on), chains and groups, on real worker processes: the
order they run in, what a failure does to what waits, a kill -9 between a parent's final status
and the release of its dependents, and the inputs refused at enqueue."""

from __future__ import annotations

import signal
import time
from typing import Any

import psutil
import pytest
from bson import ObjectId

from mrq import maintenance
from mrq.exceptions import InvalidJob, InvalidStatusTransition
from mrq.job import Job, queue_job, queue_jobs
from mrq.store import Store
from mrq.testing.workers import wait_until
from mrq.workflow import Group, chain, group

STEP = "tests.tasks.workflow.Step"
FAST_LEASE = {"MRQ_WORKER_LEASE": "2"}


def status(store: Store, job_id: ObjectId) -> str:
    return store.jobs.find_one({"_id": job_id}, {"status": 1})["status"]


def wait_status(store: Store, ids: list[ObjectId], wanted: str, timeout: float = 30.0) -> None:
    def done() -> bool:
        return store.jobs.count_documents({"_id": {"$in": ids}, "status": wanted}) == len(ids)

    try:
        wait_until(done, timeout, interval=0.05, message=f"{len(ids)} jobs {wanted}")
    except TimeoutError:
        seen = {str(d["_id"]): (d["status"], (d.get("traceback") or "")[-300:])
                for d in store.jobs.find({"_id": {"$in": ids}})}
        raise AssertionError(f"not all {wanted}: {seen}") from None


def steps(store: Store) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in store.connections.mongodb_jobs.steps.find()}


def test_a_diamond_runs_in_order_and_the_last_job_gets_both_results(store: Store, worker_factory: Any) -> None:
    a = queue_job(STEP, {"name": "A", "seconds": 0.3})
    b = queue_job(STEP, {"name": "B", "seconds": 0.2}, depends_on=[a])
    c = queue_job(STEP, {"name": "C", "seconds": 0.4}, depends_on=[str(a)])  # a hex string works too
    d = queue_job(STEP, {"name": "D"}, depends_on=[b, c])
    assert [status(store, i) for i in (a, b, c, d)] == ["queued", "waiting", "waiting", "waiting"]
    # Only A is in Redis: a waiting job's id is in no queue.
    assert store.redis.lrange(store.keys.queue_ids("default"), 0, -1) == [str(a).encode()]
    worker_factory("--greenlets", "5")
    wait_status(store, [a, b, c, d], "success")
    ran = steps(store)
    assert ran["B"]["start"] >= ran["A"]["end"] and ran["C"]["start"] >= ran["A"]["end"]
    assert ran["D"]["start"] >= max(ran["B"]["end"], ran["C"]["end"])
    result_d = Job(d).fetch().result
    assert result_d["got"] == [{"name": "B", "got": [{"name": "A", "got": []}]},
                               {"name": "C", "got": [{"name": "A", "got": []}]}]
    # Released at once by the transition that ended the last dependency (no polling sweep).
    docs = {doc["_id"]: doc for doc in store.jobs.find({"_id": {"$in": [b, c, d]}})}
    released = docs[d]["datequeued"] - max(docs[b]["datefinished"], docs[c]["datefinished"])
    assert released.total_seconds() < 1.0
    assert sorted(docs[d]["dependencies_ended"]) == sorted([b, c])
    assert store.jobs.find_one({"_id": a})["dependents"] == [b, c]


def test_a_failed_dependency_cancels_what_waits_for_it_with_the_reason(store: Store, worker_factory: Any) -> None:
    a = queue_job(STEP, {"name": "A", "fail": True})
    b = queue_job(STEP, {"name": "B"}, depends_on=[a])
    c = queue_job(STEP, {"name": "C"}, depends_on=[b])  # waits for B: cancelled in turn
    anyway = queue_job(STEP, {"name": "anyway"}, depends_on=[a], on_dependency_failure="run")
    worker_factory("--greenlets", "3")
    wait_status(store, [a], "failed")
    wait_status(store, [b, c], "cancel")
    wait_status(store, [anyway], "success")
    b_doc, c_doc = Job(b).fetch().data, Job(c).fetch().data
    assert b_doc["exceptiontype"] == "DependencyFailed" and f"dependency {a} ended failed" in b_doc["traceback"]
    assert f"dependency {b} ended cancel" in c_doc["traceback"]
    assert b_doc["traceback_history"][-1]["dependency"] == a
    assert set(steps(store)) == {"A", "anyway"}  # B and C never ran
    assert Job(anyway).fetch().result == {"name": "anyway", "got": [None]}


def test_a_dependency_that_ended_before_the_enqueue_settles_it_at_once(store: Store, worker_factory: Any) -> None:
    ok = queue_job(STEP, {"name": "ok"})
    bad = queue_job(STEP, {"name": "bad", "fail": True})
    worker = worker_factory("--greenlets", "2")
    wait_status(store, [ok], "success")
    wait_status(store, [bad], "failed")
    worker.stop()
    after_ok = queue_job(STEP, {"name": "after_ok"}, depends_on=[ok])
    after_bad = queue_job(STEP, {"name": "after_bad"}, depends_on=[ok, bad])
    assert status(store, after_ok) == "queued"  # by the producer, before it returned
    assert status(store, after_bad) == "cancel"
    assert store.redis.lrange(store.keys.queue_ids("default"), 0, -1) == [str(after_ok).encode()]


def test_a_dependent_queued_while_its_dependency_runs_is_released_by_it(store: Store, worker_factory: Any) -> None:
    a = queue_job(STEP, {"name": "A", "seconds": 1.0})
    worker_factory("--greenlets", "2")
    wait_status(store, [a], "started")
    # The worker read A's document (no dependents) when it started it: its final write must miss
    # and end A with a write that returns the dependents.
    b = queue_job(STEP, {"name": "B"}, depends_on=[a])
    assert status(store, b) == "waiting"
    wait_status(store, [a, b], "success")
    ran = steps(store)
    assert ran["B"]["start"] >= ran["A"]["end"]


def test_dependents_survive_a_kill_9_between_the_final_write_and_their_release(
        store: Store, worker_factory: Any) -> None:
    record = "tests.tasks.general.RecordExecution"
    a = queue_job(record, {})
    dependents = queue_jobs(record, [{}] * 5, depends_on=[a])
    victim = worker_factory("--greenlets", "4", env={**FAST_LEASE, "MRQ_TEST_STOP_AT": "before_settle"})
    # The worker stops itself where A's status is stored and its dependents are not released yet.
    wait_until(lambda: psutil.Process(victim.pid).status() == psutil.STATUS_STOPPED, 30, message="worker stopped")
    assert status(store, a) == "success"
    assert {status(store, i) for i in dependents} == {"waiting"}
    assert store.redis.smembers(store.keys.queue_running("default", victim_worker_id(store))) == {str(a).encode()}
    victim.send(signal.SIGKILL)
    victim.wait(10)
    worker_factory("--greenlets", "10", env=FAST_LEASE)
    wait_status(store, dependents, "success")
    runs = {d["_id"]: d["count"] for d in store.connections.mongodb_jobs.executions.find()}
    assert runs == {job_id: 1 for job_id in [a, *dependents]}  # A not run again, each dependent once
    assert store.redis.llen(store.keys.queue_ids("default")) == 0


def test_dependents_survive_a_kill_9_there_and_redis_losing_its_data(mrq_settings: Any, own_redis: Any,
                                                                      worker_factory: Any) -> None:
    """Two faults at once: the worker dies where the dependency's status is stored and its
    dependents are not released, and Redis loses everything (the dead worker's running set, the
    only trace of what it was doing, with it). Reconciliation releases them."""
    record = "tests.tasks.general.RecordExecution"
    settings = mrq_settings.replace(redis=own_redis.url)
    store = Store(settings)
    try:
        a = queue_job(record, {}, store=store)
        dependents = queue_jobs(record, [{}] * 3, depends_on=[a], store=store)
        victim = worker_factory("--greenlets", "4", settings=settings,
                                env={**FAST_LEASE, "MRQ_TEST_STOP_AT": "before_settle"})
        wait_until(lambda: psutil.Process(victim.pid).status() == psutil.STATUS_STOPPED, 30, message="worker stopped")
        assert status(store, a) == "success" and {status(store, i) for i in dependents} == {"waiting"}
        store.redis.flushall()
        victim.send(signal.SIGKILL)
        victim.wait(10)
        worker_factory("--greenlets", "10", settings=settings, env=FAST_LEASE)
        wait_status(store, dependents, "success", timeout=45)
        runs = {d["_id"]: d["count"] for d in store.connections.mongodb_jobs.executions.find()}
        assert runs == {job_id: 1 for job_id in [a, *dependents]}
    finally:
        store.close()


def victim_worker_id(store: Store) -> str:
    workers = list(store.workers.find({}, {"_id": 1}))
    assert len(workers) == 1
    return str(workers[0]["_id"])


def test_a_waiting_job_left_by_a_producer_that_died_is_settled_by_the_sweep(store: Store, worker_factory: Any) -> None:
    a = queue_job(STEP, {"name": "A"})
    worker_factory("--greenlets", "2")
    wait_status(store, [a], "success")
    # A producer died after inserting its waiting job, before registering it on A.
    orphan = ObjectId()
    store.jobs.insert_one({"_id": orphan, "path": STEP, "params": {"name": "orphan"}, "queue": "default",
                           "status": "waiting", "depends_on": [a], "dependencies_ended": [],
                           "datequeued": store.jobs.find_one({"_id": a})["datequeued"], "retry_count": 0})
    assert maintenance.resettle_waiting(store, min_age=0) == {"queued": 1, "cancelled": 0}
    wait_status(store, [orphan], "success")
    assert maintenance.resettle_waiting(store, min_age=0) == {"queued": 0, "cancelled": 0}


def test_a_chain_runs_its_steps_one_after_the_other(store: Store, worker_factory: Any) -> None:
    ids = chain([(STEP, {"name": "one"}), (STEP, {"name": "two"}), {"path": STEP, "params": {"name": "three"}}])
    worker_factory("--greenlets", "5")
    wait_status(store, ids, "success")
    ran = steps(store)
    assert ran["one"]["end"] <= ran["two"]["start"] and ran["two"]["end"] <= ran["three"]["start"]
    assert Job(ids[2]).fetch().result["got"][0]["name"] == "two"


def test_a_group_of_1000_jobs_then_a_callback_that_gets_every_result(store: Store, worker_factory: Any) -> None:
    g = group([("tests.tasks.workflow.Square", {"n": n}) for n in range(1000)],
              then=("tests.tasks.workflow.Total", {}))
    assert g.progress() == {"total": 1000, "ended": 0, "by_status": {"queued": 1000}}
    assert g.callback is not None and g.callback.fetch().status == "waiting"
    worker_factory("--greenlets", "50")
    g.wait(timeout=120)
    assert g.callback.fetch().result == {"count": 1000, "sum": sum(n * n for n in range(1000)), "missing": 0}
    assert g.progress()["ended"] == 1000 and g.results()[:3] == [0, 1, 4]
    assert Group(g.id).fetch().size == 1000
    callback_doc = store.jobs.find_one({"_id": g.callback.id})
    assert callback_doc["datestarted"] >= max(d["datefinished"] for d in store.jobs.find({"group": g.id}))


def test_cancelling_a_group_cancels_its_waiting_members_and_its_callback(store: Store, worker_factory: Any) -> None:
    g = group([(STEP, {"name": f"m{n}", "seconds": 0.5}) for n in range(20)], then=(STEP, {"name": "callback"}))
    worker_factory("--greenlets", "2")
    wait_until(lambda: store.jobs.count_documents({"group": g.id, "status": "started"}) == 2, 20,
               message="two members running")
    cancelled = g.cancel()
    assert 17 <= cancelled <= 19  # the callback and the members that had not started
    wait_until(lambda: store.jobs.count_documents({"group": g.id, "status": "started"}) == 0, 20)
    progress = g.progress()
    assert progress["ended"] == 20 and progress["by_status"]["cancel"] + progress["by_status"]["success"] == 20
    assert g.callback.fetch().status == "cancel"
    time.sleep(0.5)
    assert "callback" not in steps(store)
    with pytest.raises(InvalidJob, match="at least one job"):
        group([], then=(STEP, {}))


def test_bad_dependencies_are_refused_and_nothing_is_stored(store: Store) -> None:
    a = queue_job(STEP, {"name": "A"})
    before = store.jobs.count_documents({})
    with pytest.raises(InvalidJob, match=r"no job [0-9a-f]{24} in the store"):
        queue_job(STEP, {}, depends_on=[a, ObjectId()])
    with pytest.raises(InvalidJob, match="raw queue"):
        queue_job(STEP, {}, queue="fast_raw", depends_on=[a])
    with pytest.raises(InvalidJob, match="cannot wait for itself"):
        queue_job(STEP, {}, depends_on=[a], job_id=a)
    with pytest.raises(InvalidJob, match="must list job ids"):
        queue_job(STEP, {}, depends_on=["not an id"])
    with pytest.raises(InvalidJob, match="must list job ids"):
        queue_job(STEP, {}, depends_on=[12])
    with pytest.raises(InvalidJob, match="on_dependency_failure"):
        queue_job(STEP, {}, depends_on=[a], on_dependency_failure="ignore")
    with pytest.raises(InvalidJob, match="at most 10000"):
        queue_job(STEP, {}, depends_on=[ObjectId() for _ in range(10_001)])
    with pytest.raises(InvalidJob, match="may not set status"):
        queue_jobs(STEP, [{}], extra_fields={"status": "success"})
    assert store.jobs.count_documents({}) == before
    assert store.jobs.find_one({"_id": a}).get("dependents") is None


def test_a_waiting_job_can_be_cancelled_not_requeued(store: Store) -> None:
    a = queue_job(STEP, {"name": "A"})
    b = queue_job(STEP, {"name": "B"}, depends_on=[a])
    c = queue_job(STEP, {"name": "C"}, depends_on=[b])
    with pytest.raises(InvalidStatusTransition, match="waiting for its dependencies"):
        Job(b).requeue()
    assert Job(b).cancel() is True
    assert status(store, b) == "cancel" and status(store, c) == "cancel"  # what waited for B, too
    assert "dependency" in Job(c).fetch().traceback


def test_every_producer_interface_takes_depends_on(mrq_settings: Any, store: Store) -> None:
    from mrq.testing.workers import run_command
    from tests.tasks import typed
    from tests.test_dashboard_api import error_of, make_client

    a = queue_job(STEP, {"name": "A"})
    # HTTP
    client = make_client(mrq_settings, store, dashboard_enqueue_paths=["tests.tasks.workflow.*"])
    response = client.post("/api/jobs", json={"path": STEP, "params": {"name": "http"}, "depends_on": [str(a)],
                                              "on_dependency_failure": "run"})
    assert response.status_code == 201, response.data
    http_doc = store.jobs.find_one({"_id": ObjectId(response.json["id"])})
    assert http_doc["status"] == "waiting" and http_doc["depends_on"] == [a]
    assert http_doc["on_dependency_failure"] == "run"
    not_a_list = client.post("/api/jobs", json={"path": STEP, "depends_on": str(a)})
    assert "depends_on: expected a list" in error_of(not_a_list, 400)
    assert "depends_on: no job" in error_of(client.post("/api/jobs", json={"path": STEP, "depends_on": ["0" * 24]}),
                                            400)
    # mrq-run --queue --depends-on
    done = run_command(mrq_settings, "mrq.cli.run", ["--queue", "default", "--depends-on", str(a), STEP, "name", "cli"])
    assert done.returncode == 0, done.stderr
    cli_doc = store.jobs.find_one({"_id": ObjectId(done.stdout.strip())})
    assert cli_doc["status"] == "waiting" and cli_doc["depends_on"] == [a]
    refused = run_command(mrq_settings, "mrq.cli.run", ["--depends-on", str(a), STEP])
    assert refused.returncode == 2 and "--depends-on needs --queue" in refused.stderr
    # the typed decorator
    typed_id = typed.add.using(depends_on=[a]).queue(a=1, b=2)
    assert store.jobs.find_one({"_id": typed_id})["status"] == "waiting"
    assert store.jobs.find_one({"_id": a})["dependents"] == [http_doc["_id"], cli_doc["_id"], typed_id]
