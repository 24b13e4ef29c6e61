"""`mrq-worker --processes N`: N real worker processes under a real supervisord, restarted when
they die, stopped by signals to the parent without leaving a process behind."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from mrq.config import Settings
from mrq.job import Job, queue_job, queue_jobs
from mrq.processes import render_config, worker_argv
from mrq.store import Store
from mrq.testing.pytest_plugin import PROJECT_ROOT
from mrq.testing.workers import (
    CommandProcess,
    WorkerProcess,
    command_env,
    descendants,
    still_running,
    wait_until,
)

TASKS = "tests.tasks.general"
RECORD = f"{TASKS}.RecordExecution"
STARTED = re.compile(r"worker \S+\.(\d+) \(\w+\) started:")


def started_pids(parent: CommandProcess) -> list[int]:
    """Pids of the workers that printed their "started:" line, in order (default names end in .pid)."""
    return [int(pid) for pid in STARTED.findall(parent.output())]


def worker_pids(parent: CommandProcess) -> set[int]:
    pids = set()
    for proc in descendants(parent.pid):
        try:
            if "mrq.cli.worker" in proc.cmdline():
                pids.add(proc.pid)
        except psutil.Error:
            pass
    return pids


def wait_workers(parent: CommandProcess, count: int, timeout: float = 20.0) -> set[int]:
    """Wait until exactly `count` workers run under the parent and all printed "started:"."""
    def ready() -> set[int] | None:
        pids = worker_pids(parent)
        return pids if len(pids) == count and pids <= set(started_pids(parent)) else None

    try:
        return wait_until(ready, timeout, interval=0.05, message=f"{count} workers")
    except TimeoutError:
        raise AssertionError(f"{count} workers not running:\n{parent.output()[-3000:]}") from None


def wait_all(store: Store, ids: list[Any], status: str, timeout: float = 20.0) -> None:
    try:
        wait_until(lambda: store.jobs.count_documents({"_id": {"$in": ids}, "status": status}) == len(ids),
                   timeout, interval=0.05, message=f"{len(ids)} jobs {status}")
    except TimeoutError:
        seen = sorted(d["status"] for d in store.jobs.find({"_id": {"$in": ids}}))
        raise AssertionError(f"not all {status}: {seen}") from None


def executions(store: Store) -> list[dict[str, Any]]:
    return list(store.connections.mongodb_jobs.executions.find())


def assert_interrupted_and_queued(store: Store, ids: list[Any]) -> None:
    for doc in store.jobs.find({"_id": {"$in": ids}}):
        assert doc["status"] == "queued"
        assert doc["traceback_history"][-1]["status"] == "interrupt"


def assert_all_gone(tree: list[psutil.Process], timeout: float = 10.0) -> None:
    try:
        wait_until(lambda: not still_running(tree), timeout, interval=0.05, message="no process left")
    except TimeoutError:
        left = [(p.pid, " ".join(p.cmdline())) for p in still_running(tree)]
        raise AssertionError(f"processes left behind: {left}") from None


@pytest.fixture
def short_tmpdir() -> Iterator[Path]:
    """A TMPDIR for the parents (short: it holds supervisord's unix socket), so that a test sees
    the supervisord directory come and go, and a parent killed by a test leaves nothing in /tmp."""
    with tempfile.TemporaryDirectory(prefix="mrqp", dir="/tmp") as name:
        yield Path(name)


@pytest.fixture
def supervised(short_tmpdir: Path, worker_factory: Any) -> Callable[..., WorkerProcess]:
    """`mrq-worker` parents: worker_factory with TMPDIR=short_tmpdir."""
    def start(*args: str, env: dict[str, str] | None = None, wait: bool = True) -> WorkerProcess:
        return worker_factory(*args, env={"TMPDIR": str(short_tmpdir), **(env or {})}, wait=wait)

    return start


def test_three_processes_share_the_jobs(store: Store, supervised: Any) -> None:
    parent = supervised("--processes", "3", "--greenlets", "2")
    pids = wait_workers(parent, 3)
    assert len(started_pids(parent)) == 3
    ids = queue_jobs(RECORD, [{"seconds": 0.1}] * 30)
    wait_all(store, ids, "success")
    ran_in = {pid for doc in executions(store) for pid in doc["pids"]}
    assert len(ran_in) > 1 and ran_in <= pids
    assert all(doc["count"] == 1 for doc in executions(store))


def test_a_killed_worker_is_replaced(store: Store, supervised: Any) -> None:
    parent = supervised("--processes", "2")
    pids = wait_workers(parent, 2)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    replaced = wait_until(lambda: (now := worker_pids(parent)) - pids and len(now) == 2 and now, 15,
                          message="a replacement worker")
    assert victim not in replaced
    newcomer = (replaced - pids).pop()
    wait_until(lambda: newcomer in started_pids(parent), 15, message="the replacement started")
    ids = queue_jobs(RECORD, [{"seconds": 0.2}] * 10)
    wait_all(store, ids, "success")
    ran_in = {pid for doc in executions(store) for pid in doc["pids"]}
    assert newcomer in ran_in and ran_in <= replaced


def test_a_crash_looping_worker_is_restarted_with_growing_delays(store: Store, supervised: Any,
                                                                tmp_path: Path) -> None:
    spawns = tmp_path / "spawns"
    config = tmp_path / "crash-config.py"
    config.write_text(
        "import os, time\n"
        "if os.environ.get('MRQ_IS_SUBPROCESS'):\n"
        f"    with open({str(spawns)!r}, 'a') as f:\n"
        "        f.write(f'{time.time()}\\n')\n"
        "    raise SystemExit(3)\n"
    )
    parent = supervised("--processes", "1", "--config", str(config), wait=False)
    # When each worker process was created (the kernel's clock, not the end of its imports, whose
    # length varies with the machine's load): polled, since each lives about a second. Only the
    # workers (`-m mrq.cli.worker`): the parent's log relay (`python -c`) is a descendant too, and
    # counting it measured supervisord's own start as the first gap.
    created: dict[int, float] = {}

    def three_starts() -> bool:
        for proc in descendants(parent.pid):
            try:
                if "mrq.cli.worker" in proc.cmdline():
                    created.setdefault(proc.pid, proc.create_time())
            except psutil.Error:
                pass
        return len(created) >= 3 and spawns.exists() and len(spawns.read_text().split()) >= 3

    wait_until(three_starts, 20, interval=0.02, message="three starts")
    first, second, third = sorted(created.values())[:3]
    assert second - first >= 0.9 and third - second >= 1.9  # supervisord's backoff: 1 s, then 2 s
    assert parent.running
    tree = descendants(parent.pid)
    assert parent.stop(signal.SIGINT, 10) == 0
    assert_all_gone(tree, timeout=2)


def test_sigint_finishes_running_jobs_then_exits_0(store: Store, supervised: Any, short_tmpdir: Path) -> None:
    parent = supervised("--processes", "2", "--greenlets", "2")
    wait_workers(parent, 2)
    assert [p.name[:15] for p in short_tmpdir.iterdir()] == ["mrq-supervisor-"]
    ids = queue_jobs(RECORD, [{"seconds": 2}] * 4)
    wait_all(store, ids, "started")
    tree = descendants(parent.pid)
    assert len(tree) == 3  # supervisord and two workers
    parent.send(signal.SIGINT)
    wait_until(lambda: parent.output().count("SIGINT: finishing 2 running jobs") == 2, 10,
               message="both workers told to finish")
    late = queue_job(RECORD, {})
    assert parent.wait(20) == 0
    wait_all(store, ids, "success", timeout=1)
    assert Job(late).fetch().status == "queued"  # stopping workers take no new job
    assert len(started_pids(parent)) == 2  # nothing was restarted
    assert_all_gone(tree, timeout=2)
    assert list(short_tmpdir.iterdir()) == []


@pytest.mark.parametrize("signals", [["SIGTERM"], ["SIGINT", "SIGINT"]], ids=["sigterm", "double-sigint"])
def test_sigterm_interrupts_and_requeues_the_jobs(store: Store, supervised: Any, signals: list[str]) -> None:
    parent = supervised("--processes", "2")
    wait_workers(parent, 2)
    ids = queue_jobs(f"{TASKS}.Sleep", [{"seconds": 60}] * 2)
    wait_all(store, ids, "started")
    tree = descendants(parent.pid)
    for name in signals:
        parent.send(getattr(signal, name))
        if name == "SIGINT":
            wait_until(lambda: parent.output().count("SIGINT: finishing 1 running jobs") == 2, 10,
                       message="both workers told to finish")
    assert parent.wait(20) == 0
    assert_interrupted_and_queued(store, ids)
    assert_all_gone(tree, timeout=2)


def test_sigkill_of_the_parent_leaves_nothing(store: Store, supervised: Any) -> None:
    parent = supervised("--processes", "2")
    wait_workers(parent, 2)
    job_id = queue_job(f"{TASKS}.Sleep", {"seconds": 60})
    wait_all(store, [job_id], "started")
    tree = descendants(parent.pid)
    assert len(tree) == 3
    parent.send(signal.SIGKILL)
    parent.wait(5)
    assert_all_gone(tree, timeout=10)
    assert_interrupted_and_queued(store, [job_id])  # the orphaned worker stopped itself with SIGTERM


def test_supervisord_killed_stops_the_workers_and_fails_the_parent(store: Store, supervised: Any) -> None:
    parent = supervised("--processes", "2")
    wait_workers(parent, 2)
    job_id = queue_job(f"{TASKS}.Sleep", {"seconds": 60})
    wait_all(store, [job_id], "started")
    tree = descendants(parent.pid)
    (supervisord,) = [p for p in tree if "supervisor.supervisord" in p.cmdline()]
    supervisord.kill()
    assert parent.wait(10) == 1
    assert "mrq-worker: supervisord exited unexpectedly with code -9" in parent.output()
    assert_all_gone(tree, timeout=10)
    assert_interrupted_and_queued(store, [job_id])  # the orphaned worker stopped itself with SIGTERM


def test_max_jobs_recycles_the_workers(store: Store, supervised: Any) -> None:
    ids = queue_jobs(RECORD, [{}] * 30)
    parent = supervised("--processes", "2", "--max_jobs", "5", wait=False)
    wait_all(store, ids, "success", timeout=25)
    runs = executions(store)
    assert len(runs) == 30 and all(doc["count"] == 1 for doc in runs)
    ran_in = {pid for doc in runs for pid in doc["pids"]}
    assert len(ran_in) >= 6  # 30 jobs, 5 per worker life
    assert parent.running
    tree = descendants(parent.pid)
    assert parent.stop(signal.SIGINT, 20) == 0
    assert_all_gone(tree, timeout=2)


def test_burst_workers_exit_and_the_parent_with_them(store: Store, supervised: Any) -> None:
    # Few jobs: the workers exit well within supervisord's startsecs, which must not count as a
    # failed start (that would restart them).
    ids = queue_jobs(RECORD, [{}] * 6)
    parent = supervised("--processes", "2", "--greenlets", "2", "--dequeue_strategy", "burst", wait=False)
    assert parent.wait(25) == 0
    wait_all(store, ids, "success", timeout=1)
    assert len(started_pids(parent)) == 2  # a clean burst exit is not restarted
    assert "every worker process has emptied its queues and exited" in parent.output()


def test_processes_0_or_inside_a_supervised_worker_is_a_plain_worker(store: Store, worker_factory: Any) -> None:
    plain = worker_factory("--processes", "0")
    inside = worker_factory(env={"MRQ_PROCESSES": "3", "MRQ_IS_SUBPROCESS": "1"})
    for worker in (plain, inside):
        assert descendants(worker.pid) == []
        assert started_pids(worker) == [worker.pid]
    wait_all(store, [queue_job(f"{TASKS}.Add", {"a": 1, "b": 2})], "success")


def test_supervisord_failing_to_start_is_one_error_line(store: Store, supervised: Any, tmp_path: Path) -> None:
    broken = tmp_path / "supervisor"
    broken.mkdir()
    (broken / "__init__.py").write_text("")
    (broken / "supervisord.py").write_text("import sys\nsys.stderr.write('Error: broken on purpose\\n')\nsys.exit(2)\n")
    parent = supervised("--processes", "2", wait=False, env={"PYTHONPATH": str(tmp_path)})
    assert parent.wait(20) == 1
    lines = parent.output().strip().splitlines()
    assert lines == ["mrq-worker: supervisord exited with code 2 at start: Error: broken on purpose"]
    assert descendants(parent.pid) == []


def test_odd_characters_in_arguments_and_paths(store: Store, mrq_settings: Settings, tmp_path: Path) -> None:
    """Spaces, %, quotes and comment characters survive supervisord's configuration intact."""
    project = tmp_path / "my project 100% ;#x"
    project.mkdir()
    (project / "mrq-config.py").write_text("GREENLETS = 3\n")
    name = "w 50% ;x #y 'q\" %(here)s"
    parent = WorkerProcess(mrq_settings, ["--processes", "1", "--name", name, "--", "-odd"], cwd=project)
    try:
        parent.start()
        assert f"worker {name} (" in parent.output()
        assert "queues -odd, 3 greenlets" in parent.output()
        assert parent.stop(signal.SIGINT, 20) == 0
    finally:
        parent.close()


def test_worker_command_line_is_rebuilt_without_processes() -> None:
    from mrq.config import WORKER, build_parser

    args = build_parser(WORKER).parse_args(
        ["-p", "4", "-g", "3", "--no-ensure_indexes", "-c", "conf.py", "--max_jobs", "5", "--", "high", "-low"]
    )
    assert worker_argv(args) == ["--config", "conf.py", "--greenlets", "3", "--max_jobs", "5",
                                 "--no-ensure_indexes", "--", "high", "-low"]
    assert worker_argv(build_parser(WORKER).parse_args(["--processes", "2"])) == []


def test_config_quoting_round_trips_through_supervisor(tmp_path: Path) -> None:
    from supervisor.options import ServerOptions

    command = ["/opt/py thon/bin/python", "-m", "mrq.cli.worker", "--name", "a;b #c %(here)s 'q\" \\z é",
               "--", "-q", "trailing ", ""]
    config = tmp_path / "supervisord.conf"
    config.write_text(render_config(command, 2, tmp_path))
    options = ServerOptions()
    options.realize(args=["-c", str(config)])
    (group,) = options.process_group_configs
    assert [shlex.split(p.command) for p in group.process_configs] == [command, command]
    assert [p.name for p in group.process_configs] == ["mrq-worker_0", "mrq-worker_1"]
    with pytest.raises(ValueError, match="line breaks"):
        render_config([*command, "two\nlines"], 1, tmp_path)


@pytest.mark.parametrize("kind", ["socket", "truncated-file"])
def test_output_reaches_any_stdout(store: Store, mrq_settings: Settings, tmp_path: Path, kind: str) -> None:
    """supervisord cannot reopen /dev/stdout when it is a socket (systemd's journal): the output
    then goes through a relay. A file opened without O_APPEND (`> log`) must not have the
    parent's lines overwrite the workers'."""
    received = bytearray()
    if kind == "socket":
        ours, theirs = socket.socketpair()

        def read() -> None:
            while data := ours.recv(65536):
                received.extend(data)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        stdout: Any = theirs
    else:
        log_path = tmp_path / "out.log"
        stdout = open(log_path, "wb")  # noqa: SIM115 - closed below, after Popen

        def output() -> bytes:
            return log_path.read_bytes()

    proc = subprocess.Popen([sys.executable, "-m", "mrq.cli.worker", "--processes", "2"], cwd=PROJECT_ROOT,
                            env=command_env(mrq_settings), stdout=stdout, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    stdout.close()
    if kind == "socket":
        def output() -> bytes:
            return bytes(received)

    try:
        wait_until(lambda: output().count(b" started:") == 2, 20, message="two workers started")
        tree = descendants(proc.pid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        assert_all_gone(tree, timeout=5)
        if kind == "socket":
            reader.join(5)
        text = output().decode()
        assert text.count(" started:") == 2 and text.count(" stopped after 0 jobs") == 2
        assert "running 2 worker processes" in text and text.rstrip().endswith("all worker processes stopped")
        assert all(re.match(r"\d{4}-\d\d-\d\d ", line) for line in text.splitlines())  # no line clobbered
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if kind == "socket":
            ours.close()


def test_each_supervised_process_gets_its_own_admin_port(store: Any, worker_factory: Any) -> None:
    import json
    import urllib.request

    from mrq.testing.stack import free_port, port_open

    base = free_port()
    while port_open(base + 1):
        base = free_port()
    worker_factory("--processes", "2", "--admin_port", str(base))

    def pids() -> set[int]:
        found = set()
        for port in (base, base + 1):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/report", timeout=2) as response:
                    found.add(json.loads(response.read())["pid"])
            except OSError:
                return set()
        return found

    assert len(wait_until(pids, 20, message="both admin ports answering")) == 2
