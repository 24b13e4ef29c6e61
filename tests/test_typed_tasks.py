"""The typed task decorator (`from mrq.task import task`): `fn.queue(...)` checks the arguments
against the function's signature and queues an ordinary job whose path is the function's; a
worker runs the decorated function; the decorator's settings apply as a TASKS entry's would;
mypy sees the parameters (ParamSpec)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId

from mrq.config import Settings
from mrq.exceptions import InvalidJob, InvalidQueueName
from mrq.job import Job, queue_job
from mrq.store import Store
from mrq.task import defined_in_source, load_task, task
from tests.tasks import typed
from tests.test_jobs import queued_ids
from tests.test_worker import wait_status

ROOT = Path(__file__).resolve().parent.parent


def test_queue_returns_the_id_of_an_ordinary_job(store: Store) -> None:
    job_id = typed.add.queue(a=1, b=5)
    assert isinstance(job_id, ObjectId)
    doc = store.jobs.find_one({"_id": job_id})
    assert doc is not None
    assert doc["path"] == "tests.tasks.typed.add" and doc["params"] == {"a": 1, "b": 5}
    assert doc["queue"] == "typed_high" and doc["status"] == "queued"  # the decorator's queue
    assert queued_ids(store, "typed_high") == [str(job_id)]
    # Positional arguments are bound to their names; defaults stay the function's.
    second = typed.add.queue(7)
    assert store.jobs.find_one({"_id": second})["params"] == {"a": 7}
    # **extra is spread into the params, as a worker passes them back.
    third = typed.greet.queue("ann", punctuation="?", lang="en")
    assert store.jobs.find_one({"_id": third})["params"] == {"name": "ann", "punctuation": "?", "lang": "en"}


def test_calling_the_function_still_calls_it(store: Store) -> None:
    assert typed.add(1, 2) == 3 and typed.add(a=4) == 6
    assert typed.greet("bob", x=1) == "hello bob! x=1"
    assert typed.add.__name__ == "add" and typed.add.__doc__ is None and typed.add.__module__ == "tests.tasks.typed"
    assert store.jobs.count_documents({}) == 0


@pytest.mark.parametrize(("call", "message"), [
    (lambda: typed.add.queue(a=1, c=2), "unexpected keyword argument 'c'"),
    (lambda: typed.add.queue(b=2), "missing a required argument: 'a'"),
    (lambda: typed.add.queue(1, 2, 3), "too many positional arguments"),
    (lambda: typed.greet.queue(), "missing a required argument: 'name'"),
    (lambda: typed.add.queue(a={1, 2}), "cannot be stored in MongoDB: "),
    (lambda: typed.add.queue(b=2, a=object()), "(parameter 'a': object)"),
    (lambda: typed.add.queue_many([{"a": 1}, {"b": 1}]), "params #1: tests.tasks.typed.add: missing a required "
                                                           "argument: 'a'"),
    (lambda: typed.add.queue_many([{"a": 1}, [("a", 1)]]), "params #1 must be a dict"),
    (lambda: typed.add.queue_many([{"a": 1}, {"a": {1}}]), "params #1 cannot be stored"),
    (lambda: typed.add.queue(a="x" * (17 * 1024 * 1024)), "MongoDB documents are limited to 16 MiB"),
])
def test_bad_arguments_raise_naming_them_and_store_nothing(store: Store, call: Any, message: str) -> None:
    with pytest.raises(InvalidJob) as caught:
        call()
    assert message in str(caught.value)
    assert "tests.tasks.typed" in str(caught.value) or "params #1" in str(caught.value)
    assert store.jobs.count_documents({}) == 0
    assert queued_ids(store, "typed_high") == [] and queued_ids(store, "default") == []


def test_queue_many_queues_in_order_on_the_decorator_queue(store: Store) -> None:
    ids = typed.add.queue_many([{"a": i} for i in range(5)], batch_size=2)
    assert queued_ids(store, "typed_high") == [str(i) for i in ids]
    assert [store.jobs.find_one({"_id": i})["params"]["a"] for i in ids] == list(range(5))
    other = typed.add.using(queue="elsewhere").queue(a=1)
    assert queued_ids(store, "elsewhere") == [str(other)]
    with pytest.raises(InvalidQueueName):
        typed.add.using(queue="bad name")


def test_the_path_based_api_queues_the_same_job(store: Store) -> None:
    job_id = queue_job("tests.tasks.typed.add", {"a": 1})
    assert store.jobs.find_one({"_id": job_id})["queue"] == "typed_high"  # the module is imported here
    assert load_task("tests.tasks.typed.add")({"a": 40}) == 42
    assert defined_in_source("tests.tasks.typed.add") and defined_in_source("tests.tasks.typed.greet")
    assert not defined_in_source("tests.tasks.typed.alias")


def test_a_worker_runs_the_decorated_function_with_its_settings(store: Store, worker_factory: Any) -> None:
    worker_factory("--greenlets", "2", "typed_high", "default")
    done = typed.add.queue(a=20, b=22)
    greeted = typed.greet.queue("eve", lang="fr")
    slow = typed.slow.queue(seconds=30)  # @task(timeout=0.5); the default is an hour
    assert wait_status(done, "success")["result"] == 42
    assert wait_status(greeted, "success")["result"] == "hello eve! lang=fr"
    assert wait_status(slow, "timeout", timeout=30)["exceptiontype"] == "TimeoutInterrupt"
    assert Job(done).fetch().queue == "typed_high"


def test_settings_precedence(mrq_settings: Settings) -> None:
    """An exact TASKS entry > the decorator > a TASKS prefix entry > default_job_* settings."""
    prefix = Store(mrq_settings.replace(tasks={"tests.tasks": {"queue": "p", "timeout": 77, "result_ttl": 5}}))
    settings = prefix.task_settings("tests.tasks.typed.add")
    assert (settings.queue, settings.timeout, settings.max_retries, settings.result_ttl) == ("typed_high", 30, 2, 5)
    assert prefix.task_settings("tests.tasks.typed.plain").queue == "p"  # not decorated: the prefix entry
    exact = Store(mrq_settings.replace(tasks={"tests.tasks.typed.add": {"timeout": 99}}))
    settings = exact.task_settings("tests.tasks.typed.add")
    assert (settings.queue, settings.timeout, settings.max_retries) == ("typed_high", 99, 2)
    plain = Store(mrq_settings).task_settings("tests.tasks.typed.greet")
    assert plain.queue is None and plain.timeout == mrq_settings.default_job_timeout


def _decorate_in(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "usermod.py").write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, "-c", "import usermod"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"})


def test_functions_a_worker_cannot_find_are_refused_at_decoration() -> None:
    with pytest.raises(TypeError, match="lambda"):
        task(lambda a: a)
    with pytest.raises(TypeError, match="defined inside another"):
        @task
        def nested(a: int) -> int:
            return a

    class Holder:
        def method(self, a: int) -> int:
            return a

    with pytest.raises(TypeError, match="defined inside another"):
        task(Holder.method)
    with pytest.raises(TypeError, match="module-level function"):
        task(Holder)  # type: ignore[arg-type]


@pytest.mark.parametrize(("source", "message"), [
    ("from mrq.task import task\nclass K:\n    @task\n    def m(self, a: int) -> int:\n        return a\n",
     "cannot decorate the method K.m"),
    ("from mrq.task import task\n@task\ndef f(a, /, b):\n    return a\n", "parameter a cannot be passed by name"),
    ("from mrq.task import task\n@task\ndef f(*args):\n    return args\n", "parameter *args cannot be passed by name"),
    ("from mrq.task import task\n@task\nasync def f(a):\n    return a\n", "an async function cannot run"),
    ("from mrq.task import task\n@task\ndef _f(a):\n    return a\n", "a private name is never a task path"),
    ("from mrq.task import task\n@task(queue='a b')\ndef f(a):\n    return a\n", "contains ' '"),
    ("from mrq.task import task\n@task(queue='x_raw')\ndef f(a):\n    return a\n", "is a raw queue"),
    ("from mrq.task import task\n@task(timeout=-1)\ndef f(a):\n    return a\n", "usermod.f.timeout: expected a value"),
    ("from mrq.task import task\n@task(timout=5)\ndef f(a):\n    return a\n", "unknown key 'timout'"),
])
def test_bad_declarations_fail_at_import(tmp_path: Path, source: str, message: str) -> None:
    result = _decorate_in(tmp_path, source)
    assert result.returncode == 1 and message in result.stderr, result.stderr


def test_a_task_in_the_main_script_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text("from mrq.task import task\n@task\ndef f(a):\n    return a\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1 and "in the __main__ script" in result.stderr, result.stderr


def test_mypy_reports_a_wrong_parameter_name(tmp_path: Path) -> None:
    (tmp_path / "usage.py").write_text(textwrap.dedent("""
        from tests.tasks.typed import add

        add.queue(a=1, b=2)
        add.queue(a=1, c=2)
        add(a="one")
        result: str = add(1)
    """))
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
                             "--follow-imports", "silent", str(tmp_path / "usage.py")],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    lines = [line for line in result.stdout.splitlines() if "error:" in line]
    assert any(':5: error: Unexpected keyword argument "c" for "queue"' in line for line in lines), result.stdout
    assert any(":6: error:" in line and '"str"' in line for line in lines), result.stdout  # a = "one"
    assert any(":7: error: Incompatible types in assignment" in line for line in lines), result.stdout
    assert len(lines) == 3, result.stdout  # line 4 is fine
