"""MRQ 0.9 task code runs unchanged, in a worker and through mrq-run."""

from __future__ import annotations

import json
from typing import Any

from bson import ObjectId

from mrq.job import Job, queue_job, queue_raw_jobs
from mrq.store import Store
from mrq.testing.workers import run_command
from tests.test_worker import wait_status

MODULE = "tests.tasks.mrq_style"


def test_mrq_style_module_in_a_worker(store: Store, worker_factory: Any) -> None:
    worker_factory("--greenlets", "3")
    job_id = queue_job(f"{MODULE}.Crawl", {"pages": ["a", "b", "c"]})
    data = wait_status(job_id, "success")
    assert data["result"]["pages"] == ["A", "B", "C"]
    child = wait_status(ObjectId(data["result"]["child"]), "success")
    assert child["result"] == {"parent": str(job_id)}
    assert store.redis.get(f"{store.keys.prefix}:crawls") == b"1"
    logs = "".join(d["logs"] for d in store.logs.find({"job": job_id}))
    assert "crawling 3 pages" in logs and "fetched b" in logs  # subpool lines are the job's lines

    flaky = queue_job(f"{MODULE}.Flaky", {})
    assert wait_status(flaky, "success")["retry_count"] == 1
    assert wait_status(queue_job(f"{MODULE}.Flaky", {"abort": True}), "abort")["exceptiontype"] == "AbortInterrupt"


def test_mrq_run_in_the_foreground(store: Store, mrq_settings: Any) -> None:
    done = run_command(mrq_settings, "mrq.cli.run", [f"{MODULE}.Crawl", json.dumps({"pages": ["x"]})])
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["pages"] == ["X"]
    assert Job(result["child"]).fetch().status == "queued"  # queue_job from inside works


def test_mrq_run_key_value_params_and_plain_function(store: Store, mrq_settings: Any) -> None:
    done = run_command(mrq_settings, "mrq.cli.run", ["tests.tasks.general.Echo", "a", "1", "b", "two"])
    assert done.returncode == 0 and json.loads(done.stdout) == {"a": "1", "b": "two"}


def test_mrq_run_queue_mode_prints_the_id(store: Store, mrq_settings: Any) -> None:
    done = run_command(mrq_settings, "mrq.cli.run", ["--queue", "later", "tests.tasks.general.Add", '{"a": 1, "b": 2}'])
    assert done.returncode == 0, done.stderr
    job = Job(done.stdout.strip()).fetch()
    assert job.status == "queued" and job.queue == "later" and job.params == {"a": 1, "b": 2}


def test_mrq_run_needs_no_store_for_a_pure_task(mrq_settings: Any) -> None:
    from mrq.testing.stack import free_port

    env = {"MRQ_REDIS": f"redis://127.0.0.1:{free_port()}/0",
           "MRQ_MONGODB_JOBS": f"mongodb://127.0.0.1:{free_port()}/x"}
    done = run_command(mrq_settings, "mrq.cli.run", ["tests.tasks.general.add", '{"a": 2, "b": 3}'], env=env)
    assert done.returncode == 0 and done.stdout.strip() == "5"


def one_line_error(done: Any, code: int, *fragments: str) -> None:
    assert done.returncode == code, (done.returncode, done.stderr)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("mrq-run: ")
    for fragment in fragments:
        assert fragment in last


def test_mrq_run_bad_inputs(store: Store, mrq_settings: Any) -> None:
    run = lambda *args: run_command(mrq_settings, "mrq.cli.run", list(args))  # noqa: E731
    one_line_error(run("tests.tasks.general.Add", '{"a": 1,'), 2, "not valid JSON")
    one_line_error(run("tests.tasks.general.Add", "[1, 2]"), 2, "must be a JSON object")
    one_line_error(run("tests.tasks.general.Add", "a", "1", "b"), 2, "key value pairs", "'b' has no value")
    one_line_error(run("not-a-path"), 2, "dotted Python path")
    one_line_error(run("tests.tasks.general.Nope"), 4, "no task tests.tasks.general.Nope")
    one_line_error(run("tests.tasks.broken_import.X"), 4, "raised RuntimeError: this module is broken on purpose")
    one_line_error(run("tests.tasks.general.Fail", '{"message": "bad"}'), 1, "raised ValueError: bad")
    one_line_error(run("tests.tasks.general.ReturnObject"), 1, "not JSON-serialisable")
    one_line_error(run("--queue", "bad queue", "tests.tasks.general.Add"), 2, "contains ' '")
    one_line_error(run("tests.tasks.general.Add", "a:=nope", "b:=2"), 2, "a:= is not valid JSON")
    one_line_error(run("tests.tasks.general.Add", ":=1"), 2, "a key is missing before ':='")
    one_line_error(run(), 2, "the task path is required")
    one_line_error(run("--queue", "default", "tests.tasks.general.Nope", "a", "1"), 4, "nothing queued")
    assert store.jobs.count_documents({}) == 0


def test_mrq_run_typed_values(store: Store, mrq_settings: Any) -> None:
    run = lambda *args: run_command(mrq_settings, "mrq.cli.run", list(args))  # noqa: E731
    assert run("tests.tasks.general.Add", "a", "1", "b", "2").stdout.strip() == '"12"'  # MRQ: strings
    assert run("tests.tasks.general.Add", "a:=1", "b:=2").stdout.strip() == "3"
    assert run("tests.tasks.general.Echo", "n:=1.5", "tags:=[\"x\"]", "name", "ann", "ok:=true").stdout.strip() \
        == '{"n": 1.5, "tags": ["x"], "name": "ann", "ok": true}'


# --- MRQ 0.9 compatibility (issue #16): MRQ-style config files and task modules ---------------------

M09 = "tests.tasks.mrq09"


def mrq_config(tmp_path: Any, text: str) -> str:
    path = tmp_path / "mrq-config.py"
    path.write_text(text)
    return str(path)


def test_config_is_a_dict_and_named_redis_connections(store: Store, worker_factory: Any, tmp_path: Any,
                                                      redis_url: str) -> None:
    second = redis_url.rsplit("/", 1)[0] + "/3"
    config = mrq_config(tmp_path, f'MY_CUSTOM_KEY = "custom value"\nGREENLETS = 2\nREDIS_SECOND = "{second}"\n'
                                  'REDIS_BROKEN = "redis://127.0.0.1:notaport/0"\n')
    worker_factory("--config", config)
    data = wait_status(queue_job(f"{M09}.ConfigAsDict", {"value": 7}), "success")
    result = data["result"]
    assert result["is_dict"] and result["json"] and result["custom"] == "custom value"
    assert result["set_by_task"] == 7 and result["greenlets"] == 2
    assert result["config"]["redis_prefix"] == store.settings.redis_prefix and "greenlets" in result["config"]

    key = f"{store.settings.redis_prefix}:second"
    assert wait_status(queue_job(f"{M09}.SecondRedis", {"key": key, "value": "v2"}), "success")["result"] == "v2"
    import redis

    other = redis.Redis.from_url(second)
    try:
        assert other.get(key) == b"v2" and store.redis.get(key) is None  # really the second database
    finally:
        other.delete(key)
        other.close()
    broken = wait_status(queue_job(f"{M09}.BrokenRedis", {}), "failed")
    assert "REDIS_BROKEN" in broken["traceback"] and "invalid Redis URI" in broken["traceback"]


def test_named_connections_in_process(mrq_settings: Any, redis_url: str) -> None:
    import pytest

    from mrq import context, current
    from mrq.exceptions import ConfigError

    settings = mrq_settings.replace()
    settings.extra.update(redis_third=redis_url.rsplit("/", 1)[0] + "/4", redis_bad="nothing-like-a-url",
                          mongodb_bad="redis://x")
    current.set_current_config(settings)
    try:
        assert context.connections.redis_third.ping() is True
        with pytest.raises(ConfigError, match="config key REDIS_BAD: invalid Redis URI"):
            context.connections.redis_bad  # noqa: B018
        with pytest.raises(ConfigError, match="config key MONGODB_BAD"):
            context.connections.mongodb_bad  # noqa: B018
        with pytest.raises(AttributeError, match="no REDIS_MISSING"):
            context.connections.redis_missing  # noqa: B018
        with pytest.raises(AttributeError):
            context.connections.redis_prefix  # noqa: B018 - a setting, not a connection
        config = context.get_current_config()
        config["x"] = 1
        assert context.get_current_config()["x"] == 1 and config.redis_prefix == settings.redis_prefix
    finally:
        current.reset()


def test_old_producer_names_and_utils(store: Store) -> None:
    import pytest

    from mrq.exceptions import InvalidJob
    from mrq.queue import send_raw_tasks, send_task, send_tasks
    from mrq.utils import MovingAverage, MovingETA

    job_id = send_task("tests.tasks.general.Add", {"a": 1, "b": 2}, queue="old_api")
    assert isinstance(job_id, ObjectId) and Job(job_id).fetch().queue == "old_api"
    ids = send_tasks("tests.tasks.general.Add", [{"a": 1, "b": 1}, {"a": 2, "b": 2}], queue="old_api")
    assert [Job(i).fetch().params for i in ids] == [{"a": 1, "b": 1}, {"a": 2, "b": 2}]
    assert send_tasks("tests.tasks.general.Add", [{"a": 1, "b": 1}, {"a": 2, "b": 3}], sync=True) == [2, 5]
    assert send_raw_tasks("old_raw", ["p1", "p2"]) == 2
    with pytest.raises(InvalidJob, match="dotted"):
        send_task("not a path", {})
    with pytest.raises(InvalidJob, match="raw queue"):
        send_task("tests.tasks.general.Add", {}, queue="old_raw")

    eta = MovingETA(3)
    assert eta.next(100, t=0) is None  # one point: no rate yet
    assert eta.next(90, t=10) == pytest.approx(90.0)  # 1 per second, 90 left
    assert eta.next(90, t=20) == pytest.approx(180.0)  # 10 done in 20 s
    assert eta.next(90, t=30) is None  # the window (3 values) saw no progress
    assert MovingAverage(2).next(4) == 4

    import datetime

    from mrq.utils import MongoJSONEncoder, group_iter, load_class_by_path

    doc = {"_id": job_id, "date": datetime.datetime(2030, 1, 2), "raw": b"caf\xe9"}
    assert json.loads(json.dumps(doc, cls=MongoJSONEncoder)) == {"_id": str(job_id), "date": "2030-01-02T00:00:00",
                                                                 "raw": "caf\ufffd"}
    assert list(group_iter(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert load_class_by_path("mrq.utils.MovingETA") is MovingETA


def test_admin_root_answers_the_worker_report(store: Store, worker_factory: Any) -> None:
    import urllib.request

    from mrq.testing.stack import free_port

    port = free_port()
    worker_factory("--admin_port", str(port), "--admin_token", "s3cret")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/wait_for_idle?timeout=10",
                                     headers={"Authorization": "Bearer s3cret"})
    urllib.request.urlopen(request, timeout=15).close()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Authorization": "Bearer s3cret"})
    with urllib.request.urlopen(request, timeout=10) as response:
        report = json.loads(response.read())
    assert ObjectId.is_valid(report["_id"]) and report["status"] == "wait"  # MRQ's idle status
    assert store.connections.mongodb_jobs["mrq_workers"].find_one({"_id": ObjectId(report["_id"])}) is not None
    import urllib.error

    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
        raise AssertionError("the token was not asked for")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401


def test_raw_jobs_from_a_producer_without_raw_queues(store: Store, worker_factory: Any, tmp_path: Any) -> None:
    assert store.settings.raw_queues == {}
    assert queue_raw_jobs("mrq09_raw", ["a", "b"]) is not None  # MRQ's producer: the queue name only
    config = mrq_config(tmp_path, f'RAW_QUEUES = {{"mrq09_raw": {{"job_factory": "{M09}.raw_factory"}}}}\n')
    worker_factory("mrq09_raw", "--config", config)
    from mrq.testing.workers import wait_until

    done = wait_until(lambda: sorted(d["result"] for d in store.jobs.find({"status": "success"})) == ["A", "B"], 20,
                      message="raw jobs done")
    assert done


def test_job_action_requeue_and_cancel(store: Store, worker_factory: Any) -> None:
    from mrq.job import queue_jobs
    from mrq.queue import Queue

    fail = "tests.tasks.general.Fail"
    worker_factory("fails")
    failed = queue_jobs(fail, [{"n": i} for i in range(3)], queue="fails")
    for job_id in failed:
        wait_status(job_id, "failed")
    waiting = queue_jobs("tests.tasks.general.Add", [{"a": 1, "b": i} for i in range(2)], queue="parking")
    action = queue_job("mrq.basetasks.utils.JobAction",
                       {"action": "requeue", "path": fail, "status": ["failed"], "destination_queue": "parked"},
                       queue="admin")
    cancel = queue_job("mrq.basetasks.utils.JobAction", {"action": "cancel", "queue": "parking"}, queue="admin")
    later = queue_job(fail, {"n": 9}, queue="fails")  # created after the action: not touched
    wait_status(later, "failed")
    worker_factory("admin")
    assert wait_status(action, "success")["result"] == {"requeued": 3, "cancelled": 0}
    assert wait_status(cancel, "success")["result"] == {"requeued": 0, "cancelled": 2}
    for job_id in failed:
        data = Job(job_id).fetch().data
        assert data is not None and data["status"] == "queued" and data["queue"] == "parked"
    assert Queue("parked").size() == 3  # really on the queue, in Redis
    assert Job(later).fetch().status == "failed"
    assert [Job(i).fetch().status for i in waiting] == ["cancel", "cancel"]
    worker_factory("parking")
    assert Queue("parking").size() == 0 and [Job(i).fetch().status for i in waiting] == ["cancel", "cancel"]

    # mrq-run, params as MRQ's dashboard sent them (params as JSON), and bad input
    done = run_command(store.settings, "mrq.cli.run", ["mrq.basetasks.utils.JobAction",
                                                       json.dumps({"action": "cancel", "queue": "parked",
                                                                   "params": json.dumps({"n": 1})})])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"requeued": 0, "cancelled": 1}
    assert Job(failed[1]).fetch().status == "cancel" and Job(failed[0]).fetch().status == "queued"
    for bad, message in (({"action": "delete"}, "action must be one of"), ({"action": "cancel", "wrker": "x"},
                         "unknown param 'wrker'"), ({"action": "cancel", "worker": "nope"}, "worker must be")):
        done = run_command(store.settings, "mrq.cli.run", ["mrq.basetasks.utils.JobAction", json.dumps(bad)])
        assert done.returncode != 0 and message in done.stderr, done.stderr


def wait_idle(port: int) -> None:
    import urllib.request

    urllib.request.urlopen(f"http://127.0.0.1:{port}/wait_for_idle?timeout=15", timeout=20).close()


def test_task_whitelist_and_blacklist(store: Store, worker_factory: Any) -> None:
    from mrq.job import queue_jobs
    from mrq.queue import Queue
    from mrq.testing.stack import free_port

    add, echo = "tests.tasks.general.Add", "tests.tasks.general.Echo"
    first_echo = queue_jobs(echo, [{"n": 0}], queue="mixed")
    adds = queue_jobs(add, [{"a": i, "b": 1} for i in range(3)], queue="mixed")
    echos = first_echo + queue_jobs(echo, [{"n": 1}], queue="mixed")
    port = free_port()
    only_add = worker_factory("mixed", "--admin_port", str(port), "--greenlets", "2",
                              "--task_whitelist", f"{add},tests.tasks.general.Fail")
    for job_id in adds:
        wait_status(job_id, "success")
    wait_idle(port)
    for job_id in echos:  # never taken: still queued, untouched, in their order
        data = Job(job_id).fetch().data
        assert data is not None and data["status"] == "queued" and "datestarted" not in data and "worker" not in data
    assert Queue("mixed").list_job_ids(0, 10) == [str(i) for i in echos]
    assert only_add.stop() == 0

    port = free_port()
    worker_factory("mixed", "--admin_port", str(port), "--task_blacklist", add)
    late_add = queue_job(add, {"a": 5, "b": 5}, queue="mixed")
    for job_id in echos:
        wait_status(job_id, "success")
    wait_idle(port)
    assert Job(late_add).fetch().status == "queued" and Queue("mixed").list_job_ids(0, 10) == [str(late_add)]
    worker_factory("mixed")
    assert wait_status(late_add, "success")["result"] == 10


def test_old_worker_flags_start_with_a_warning(store: Store, worker_factory: Any) -> None:
    worker = worker_factory("--max_latency", "0.5", "--subqueues_refresh_interval", "10", "--use_large_job_ids",
                            "--worker_class", "mrq.worker.Worker", "--report_file", "/tmp/nothing.json", "default")
    assert wait_status(queue_job("tests.tasks.general.Add", {"a": 1, "b": 1}), "success")["result"] == 2
    lines = [line for line in worker.output().splitlines() if "is deprecated and ignored" in line]
    assert len(lines) == 5 and lines[0].startswith("mrq-worker: warning: --max_latency is deprecated and ignored:")
    from mrq.version import __version__

    for module in ("mrq.cli.worker", "mrq.cli.run"):
        done = run_command(store.settings, module, ["--version"])
        assert done.returncode == 0 and done.stdout.strip() == f"mrq {__version__}"


def test_task_filter_bad_paths_stop_the_worker(store: Store, worker_factory: Any) -> None:
    for flag, value in (("--task_whitelist", "tests.tasks.general.Add,tests.tasks.general.Nope"),
                        ("--task_blacklist", "not a path"), ("--task_whitelist", "tests.tasks.broken_import.X")):
        worker = worker_factory(flag, value, wait=False)
        assert worker.wait(20) == 2
        assert f"{flag}: " in worker.output() and "is not a task" in worker.output(), worker.output()


def test_log_handlers_log_level_bytes_and_capped_logs(store: Store, worker_factory: Any, tmp_path: Any) -> None:
    from mrq.testing.workers import wait_until

    assert store.logs is not None
    store.logs.insert_one({"job": ObjectId(), "logs": "written before: not capped yet"})
    log_file = tmp_path / "jobs.log"
    config = mrq_config(tmp_path, f'LOG_HANDLERS = {{"logging.FileHandler": {{"filename": "{log_file}", '
                                  '"format": "%(levelname)s %(message)s"}, '
                                  '"mrq.logger.MongoHandler": {"mongodb_logs_size": 65536}}\n')
    worker = worker_factory("--config", config, "--log_level", "info")
    job_id = queue_job(f"{M09}.LogLines", {})
    assert wait_status(job_id, "success")["result"] == "logged"
    options = store.logs.options()
    assert options["capped"] is True and options["size"] >= 65536  # converted, as MRQ did

    def stored() -> str:
        assert store.logs is not None
        return "\n".join(doc["logs"] for doc in store.logs.find({"job": job_id}))

    text = wait_until(lambda: "a warning line" in stored() and stored(), 10, message="job logs stored")
    assert "latin-1 bytes: caf\ufffd" in text and "formatted na\ufffdve" in text
    lines = wait_until(lambda: "WARNING a warning line" in log_file.read_text() and log_file.read_text(), 10,
                       message="the FileHandler got the job's lines")
    assert "INFO latin-1 bytes: caf\ufffd" in lines and "a debug line" not in lines  # --log_level info
    assert "a debug line" not in worker.output() and "caf\ufffd" in worker.output()
    assert any(i["name"] == "job_id" for i in store.logs.list_indexes())  # indexes back after the conversion


def test_bad_logging_config_stops_the_worker(store: Store, worker_factory: Any, tmp_path: Any) -> None:
    cases = [
        ('LOG_HANDLERS = {"nope.Handler": {}}\n', "LOG_HANDLERS['nope.Handler']: cannot import 'nope.Handler'"),
        ('LOG_HANDLERS = {"logging.Formatter": {}}\n', "is not a logging.Handler class"),
        ('LOG_HANDLERS = {"logging.FileHandler": {"no_such_argument": 1}}\n', "cannot build the handler"),
        ('MONGODB_LOGS_SIZE = "big"\n', "MONGODB_LOGS_SIZE: expected an integer, got 'big'"),
        ('LOG_HANDLERS = {"mrq.logger.MongoHandler": {"mongodb_logs_size": "16MB"}}\n',
         "LOG_HANDLERS['mrq.logger.MongoHandler']['mongodb_logs_size']: expected an integer, got '16MB'"),
    ]
    for index, (text, message) in enumerate(cases):
        path = tmp_path / f"config{index}.py"
        path.write_text(text)
        worker = worker_factory("--config", str(path), wait=False)
        assert worker.wait(20) == 2
        assert message in worker.output(), worker.output()
    done = run_command(store.settings, "mrq.cli.run", ["--log_level", "loud", "tests.tasks.general.Echo"])
    assert done.returncode == 2 and "log_level: expected one of" in done.stderr


def test_scheduler_state_in_mrq_scheduled_jobs(store: Store, worker_factory: Any, tmp_path: Any) -> None:
    import datetime

    import pytest

    from mrq.clock import utcnow
    from mrq.testing.workers import wait_until

    now = utcnow()
    if now.time() > datetime.time(23, 59, 30) or now.time() < datetime.time(0, 0, 30):
        pytest.skip("too close to midnight UTC for dailytime entries of today")
    soon = (now + datetime.timedelta(seconds=4)).time().replace(microsecond=0)
    passed = (now - datetime.timedelta(seconds=20)).time().replace(microsecond=0)
    config = mrq_config(tmp_path, f"""import datetime
SCHEDULER_TASKS = [
    {{"path": "{M09}.Tick", "params": {{"kind": "interval"}}, "interval": 3600}},
    {{"path": "{M09}.Tick", "params": {{"kind": "soon"}}, "dailytime": {soon!r}}},
    {{"path": "{M09}.Tick", "params": {{"kind": "passed"}}, "dailytime": {passed!r}}},
]
""")
    worker_factory("--config", config, "--scheduler")
    scheduled = store.connections.mongodb_jobs["mrq_scheduled_jobs"]

    def ran(kind: str) -> Any:
        return store.jobs.find_one({"path": f"{M09}.Tick", "params.kind": kind, "status": "success"})

    interval_job = wait_until(lambda: ran("interval"), 10, message="interval entry queued at start, as MRQ did")
    assert ran("soon") is None  # its time of day has not come yet
    soon_job = wait_until(lambda: ran("soon"), 15, message="dailytime entry queued once its time passed")
    assert soon_job["datequeued"] >= datetime.datetime.combine(now.date(), soon)
    docs = {doc["params"]["kind"]: doc for doc in scheduled.find()}
    assert sorted(docs) == ["interval", "passed", "soon"]  # one document per SCHEDULER_TASKS entry
    for doc in docs.values():
        assert {"_id", "hash", "path", "params", "queue", "datelastqueued"} <= set(doc)
    assert docs["interval"]["interval"] == 3600 and docs["interval"]["lastjob"] == interval_job["_id"]
    assert docs["soon"]["datelastqueued"] == datetime.datetime.combine(now.date(), soon)
    assert docs["soon"]["dailytime"] == soon.strftime("%H:%M:%S") and docs["soon"]["lastjob"] == soon_job["_id"]
    # `passed` was already past today when the entry appeared: not queued today (MRQ's behaviour)
    assert docs["passed"]["datelastqueued"] == datetime.datetime.combine(now.date(), passed)
    assert docs["passed"]["lastjob"] is None
    assert store.jobs.count_documents({"path": f"{M09}.Tick", "params.kind": "passed"}) == 0
