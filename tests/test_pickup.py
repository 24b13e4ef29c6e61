"""An idle worker of one queue waits for its next job inside Redis (mrq/worker/pickup.py): a
blocking move into its landing list, claimed into its running set in the same write. Real
worker processes; the faults are injected (a worker frozen with an id in its landing list, then
killed), never simulated."""

from __future__ import annotations

import signal
import time
from typing import Any

import psutil
import redis

from mrq import current, maintenance
from mrq.config import Settings
from mrq.job import queue_job, queue_raw_jobs
from mrq.queue import RegularQueue, pause_queue, resume_queue
from mrq.store import Store
from mrq.testing.stack import RedisServer
from mrq.testing.workers import wait_until

RECORD = "tests.tasks.general.RecordExecution"
FAST_LEASE = {"MRQ_WORKER_LEASE": "2"}
RAW_ENV = {"MRQ_RAW_QUEUES": '{"fast_raw": {"job_factory": "tests.tasks.factories.record"}}'}


def calls(client: redis.Redis, command: str) -> int:
    stats: Any = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def status(store: Store, job_id: Any) -> str | None:
    doc = store.jobs.find_one({"_id": job_id}, {"status": 1})
    return doc["status"] if doc else None


def executions(store: Store) -> dict[Any, int]:
    return {d["_id"]: d["count"] for d in store.connections.mongodb_jobs.executions.find()}


def worker_id(store: Store) -> str:
    workers = list(store.workers.find({}, {"_id": 1}))
    assert len(workers) == 1
    return str(workers[0]["_id"])


def blocked(client: redis.Redis) -> bool:
    return any("b" in c.get("flags", "") and c.get("cmd") in ("blmove", "blpop") for c in client.client_list())


def idle(store: Store, worker: Any) -> None:
    """Wait until the worker blocks in Redis (a look at the queue found nothing)."""
    wait_until(lambda: blocked(store.redis), 20, message="worker blocked on its queue")


def test_an_idle_worker_of_one_queue_takes_each_job_with_a_blocking_move(store: Store, worker_factory: Any) -> None:
    worker = worker_factory("--greenlets", "5", "default")
    idle(store, worker)
    before_moves, before_dequeues = calls(store.redis, "blmove"), calls(store.redis, "evalsha")
    ids = []
    for _ in range(5):
        ids.append(queue_job(RECORD, {}))
        wait_until(lambda: status(store, ids[-1]) == "success", 20, message="job done")
        idle(store, worker)
    assert calls(store.redis, "blmove") - before_moves >= 5
    assert executions(store) == {job_id: 1 for job_id in ids}
    me = worker_id(store)
    assert store.redis.llen(store.keys.queue_landing("default", me)) == 0
    assert store.redis.scard(store.keys.queue_running("default", me)) == 0
    # Each pickup took one id: the evalsha calls are the claims (and the final acks' scripts, if any).
    assert calls(store.redis, "evalsha") - before_dequeues >= 5


def test_an_idle_worker_of_one_raw_queue_blocks_on_it(store: Store, mrq_settings: Settings,
                                                      worker_factory: Any) -> None:
    settings = mrq_settings.replace(raw_queues={"fast_raw": {"job_factory": "tests.tasks.factories.record"}})
    worker = worker_factory("--greenlets", "5", "fast_raw", env=RAW_ENV)
    idle(store, worker)
    before = calls(store.redis, "blpop")
    current.set_current_config(settings, store)
    for n in range(3):
        queue_raw_jobs("fast_raw", [f"p{n}"])
        wait_until(lambda n=n: store.jobs.count_documents({"status": "success"}) == n + 1, 20, message="raw job done")
        idle(store, worker)
    assert calls(store.redis, "blpop") - before >= 3


def test_a_worker_killed_with_an_id_in_its_landing_list_loses_nothing(store: Store, worker_factory: Any) -> None:
    victim = worker_factory("--greenlets", "5", "default", env={**FAST_LEASE, "MRQ_TEST_STOP_AT": "pickup_landed"})
    idle(store, victim)
    job = queue_job(RECORD, {})
    # The worker froze itself: the id left the queue for its landing list, its claim not sent.
    wait_until(lambda: psutil.Process(victim.pid).status() == psutil.STATUS_STOPPED, 20, message="worker stopped")
    dead = worker_id(store)
    assert store.redis.lrange(store.keys.queue_landing("default", dead), 0, -1) == [str(job).encode()]
    assert store.redis.llen(store.keys.queue_ids("default")) == 0
    assert store.redis.scard(store.keys.queue_running("default", dead)) == 0
    assert status(store, job) == "queued"
    # Reconciliation sees the id as held (a push would make a duplicate).
    assert maintenance.requeue_lost_jobs(store, min_age=0)["queued"] == 0
    victim.send(signal.SIGKILL)
    victim.wait(10)
    worker_factory("--greenlets", "5", "default", env=FAST_LEASE)
    wait_until(lambda: status(store, job) == "success", 30, message="job recovered and run")
    assert executions(store) == {job: 1}
    assert store.redis.llen(store.keys.queue_landing("default", dead)) == 0


def test_a_blocked_worker_stops_at_once(store: Store, worker_factory: Any) -> None:
    worker = worker_factory("--greenlets", "5", "default")
    idle(store, worker)
    time.sleep(0.3)
    started = time.monotonic()
    assert worker.stop(signal.SIGTERM, timeout=10) == 0
    # A block lasts up to 5 s; CLIENT UNBLOCK ends it: the exit does not wait for it.
    assert time.monotonic() - started < 3.0


def test_a_queue_paused_while_its_worker_blocks_on_it_gives_it_nothing(store: Store, worker_factory: Any) -> None:
    worker = worker_factory("--greenlets", "5", "default")
    idle(store, worker)
    pause_queue(store, "default")
    time.sleep(0.5)  # the pause message reaches the worker, which ends its block (not 5 s later)
    job = queue_job(RECORD, {})
    time.sleep(1.5)
    assert status(store, job) == "queued"
    resume_queue(store, "default")
    wait_until(lambda: status(store, job) == "success", 20, message="job run after resume")


def test_a_redis_user_without_client_commands_still_gets_blocking_pickups(
        mrq_settings: Settings, worker_factory: Any) -> None:
    from tests.test_least_privilege import PASSWORD, acl_line

    server = RedisServer()
    server.start()
    try:
        admin = redis.Redis(port=server.port)
        admin.acl_setuser("mrq", enabled=True, passwords=[f"+{PASSWORD}"], reset=True)
        admin.execute_command("ACL", "SETUSER", "mrq", *acl_line(mrq_settings.redis_prefix),
                              "-client|id", "-client|unblock")
        settings = mrq_settings.replace(redis=f"redis://mrq:{PASSWORD}@127.0.0.1:{server.port}/0")
        store = Store(settings)
        try:
            worker = worker_factory("--greenlets", "5", "default", settings=settings)
            wait_until(lambda: blocked(admin), 20, message="worker blocked")
            job = queue_job(RECORD, {}, store=store)
            wait_until(lambda: status(store, job) == "success", 20, message="job done")
            assert calls(admin, "blmove") >= 2
            started = time.monotonic()
            assert worker.stop(signal.SIGTERM, timeout=10) == 0
            assert time.monotonic() - started < 3.0  # blocks of at most 1 s without CLIENT UNBLOCK
            assert "CLIENT ID refused" in worker.output()
        finally:
            store.close()
    finally:
        server.close()


def test_a_redis_user_refused_blmove_gets_notifications_again(mrq_settings: Settings, worker_factory: Any) -> None:
    """BLMOVE refused after the worker started (an ACL, a proxy): the worker turns the blocking
    pickup off and subscribes to its queue's notifications, so a job still starts at once."""
    from tests.test_least_privilege import PASSWORD, acl_line

    server = RedisServer()
    server.start()
    try:
        admin = redis.Redis(port=server.port)
        admin.acl_setuser("mrq", enabled=True, passwords=[f"+{PASSWORD}"], reset=True)
        admin.execute_command("ACL", "SETUSER", "mrq", *acl_line(mrq_settings.redis_prefix), "-blmove")
        settings = mrq_settings.replace(redis=f"redis://mrq:{PASSWORD}@127.0.0.1:{server.port}/0")
        store = Store(settings)
        try:
            worker = worker_factory("--greenlets", "5", "default", settings=settings)
            worker.wait_for_output("blocking pickup turned off", 20)
            wait_until(lambda: store.keys.notify_channel("default").encode() in admin.pubsub_channels(), 10,
                       message="subscribed to the queue's pushes")
            time.sleep(0.5)
            started = time.monotonic()
            job = queue_job(RECORD, {}, store=store)
            wait_until(lambda: status(store, job) == "success", 20, message="job done")
            # Woken by the notification, not by the 5 s look at the queue of a worker with neither.
            assert time.monotonic() - started < 3.0
        finally:
            store.close()
    finally:
        server.close()


def test_delayed_jobs_are_announced_on_the_due_channel_and_a_blocked_worker_wakes_for_them(
        store: Store, worker_factory: Any) -> None:
    worker = worker_factory("--greenlets", "5", "default")
    idle(store, worker)
    channels = [c.decode() for c in store.redis.pubsub_channels()]
    # The blocked worker does not listen to pushes (the push itself wakes it), only to due times.
    assert store.keys.due_channel("default") in channels
    assert store.keys.notify_channel("default") not in channels
    # Another worker schedules a retry due in 0.3 s while this one blocks (for up to 5 s).
    job = queue_job(RECORD, {}, queue="elsewhere")
    store.jobs.update_one({"_id": job}, {"$set": {"status": "retry", "queue": "default"}})
    store.redis.delete(store.keys.queue_ids("elsewhere"))
    time.sleep(0.5)
    scheduled = time.monotonic()
    RegularQueue("default", store).push_delayed({str(job): time.time() + 0.3})
    wait_until(lambda: status(store, job) == "success", 20, message="delayed job done")
    assert time.monotonic() - scheduled < 1.5  # woken by the due message, not by the block's end


def test_an_id_in_a_landing_list_survives_the_worker_killed_and_redis_losing_its_data(
        mrq_settings: Settings, own_redis: Any, worker_factory: Any) -> None:
    """Two faults at once: the worker dies with the id in its landing list, and Redis loses
    everything (the landing list with it). Reconciliation puts the job back from MongoDB."""
    settings = mrq_settings.replace(redis=own_redis.url)
    store = Store(settings)
    try:
        victim = worker_factory("--greenlets", "5", "default", settings=settings,
                                env={**FAST_LEASE, "MRQ_TEST_STOP_AT": "pickup_landed"})
        idle(store, victim)
        job = queue_job(RECORD, {}, store=store)
        wait_until(lambda: psutil.Process(victim.pid).status() == psutil.STATUS_STOPPED, 20, message="worker stopped")
        assert store.redis.llen(store.keys.queue_landing("default", worker_id(store))) == 1
        store.redis.flushall()
        victim.send(signal.SIGKILL)
        victim.wait(10)
        worker_factory("--greenlets", "5", "default", settings=settings, env=FAST_LEASE)
        wait_until(lambda: status(store, job) == "success", 45, message="job put back and run")
        assert executions(store) == {job: 1}
    finally:
        store.close()
