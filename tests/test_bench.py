"""The benchmark harness (bench/): it runs end to end, writes the documented files, refuses bad
input clearly, reports a peer that cannot be installed, and leaves no process behind when killed.
It asserts that figures exist, never how fast anything is (speed is what the report is for).

The runs are marked `bench` (deselect locally with `-m "not bench"`); CI runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pymongo.errors
import pytest

from bench.report import aggregate, evaluate_round2_targets, evaluate_targets
from mrq.testing.pytest_plugin import use_plain_mongodb
from mrq.testing.workers import still_running

_plain_uri, _plain_client = use_plain_mongodb()  # the test server's counters, also in strict mode

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = {"system", "mode", "workload", "metric", "median", "min", "max", "runs"}
#: What --quick must produce for every system and mode: (row workload, metric, workload letter).
EXPECTED = [("A", "jobs_per_s", "A"), ("B", "p50_ms", "B"), ("B", "p99_ms", "B"), ("C", "jobs_per_s", "C"),
            ("D-single", "enqueue_jobs_per_s", "D"), ("D-bulk", "enqueue_jobs_per_s", "D"),
            ("E-enqueue", "redis_cmds_per_job", "E"), ("E-execute", "redis_cmds_per_job", "E"),
            ("F", "rss_mb", "F"), ("F", "redis_bytes_per_job", "F")]
EXPECTED_MRQ = [("E-enqueue", "mongo_cmds_per_job", "E"), ("E-execute", "mongo_cmds_per_job", "E"),
                ("G-2proc", "jobs_per_s", "G"), ("G-100k", "jobs_per_s", "G")]


def bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={k: v for k, v in os.environ.items() if not k.startswith("MRQ_")})


def check_schema(latest: dict) -> None:
    assert set(latest) == {"machine", "results"}
    assert latest["machine"]["cores"] and latest["machine"]["redis"]
    for row in latest["results"]:
        assert set(row) == ROW_KEYS, row
        assert all(isinstance(row[k], str) for k in ("system", "mode", "workload", "metric"))
        assert all(isinstance(row[k], (int, float)) for k in ("median", "min", "max"))
        assert row["min"] <= row["median"] <= row["max"]
        assert isinstance(row["runs"], int) and row["runs"] >= 1


@pytest.mark.bench
@pytest.mark.timeout(300)
def test_quick_run_produces_every_figure_and_the_documented_files(tmp_path: Path) -> None:
    started = time.monotonic()
    result = bench("run", "--quick", "--output", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert time.monotonic() - started < 180, "--quick must stay under 3 minutes"

    latest = json.loads((tmp_path / "latest.json").read_text())
    check_schema(latest)
    (day,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert json.loads((day / "latest.json").read_text()) == latest
    raw = json.loads((day / "raw.json").read_text())
    report = (day / "report.md").read_text()
    assert "## Targets" in report and "## Configurations" in report
    assert (day / "throughput.png").stat().st_size > 0

    rows = {(r["system"], r["mode"], r["workload"], r["metric"]) for r in latest["results"]}
    not_run = {(e["system"], e["mode"], e["workload"]): e["reason"] for e in raw["not_run"]}
    configs = [(c["system"], c["mode"]) for c in raw["configurations"]]
    assert {system for system, _ in configs} == {"mrq", "huey"}
    for system, mode in configs:
        for workload, metric, letter in EXPECTED + (EXPECTED_MRQ if system == "mrq" else []):
            reason = not_run.get((system, mode, letter))
            assert (system, mode, workload, metric) in rows or reason, (system, mode, workload, metric)
            if reason:
                assert f"not run: {reason}" in report
    # Every target of the issue is judged (or says why it could not be).
    assert {t["status"] for t in raw["targets"]} <= {"PASS", "MISS", "NOT RUN"}
    assert len(raw["targets"]) >= 10


def test_unknown_workload_or_system_is_refused_with_the_valid_names() -> None:
    result = bench("run", "--workloads", "A,Z")
    assert result.returncode == 2
    assert "unknown workload 'Z'" in result.stderr and "A, B, C, D, E, F, G" in result.stderr

    result = bench("run", "--systems", "mrq,sidekiq")
    assert result.returncode == 2
    assert "unknown system 'sidekiq'" in result.stderr
    assert "mrq, rq, celery, dramatiq, huey, arq" in result.stderr


@pytest.mark.bench
@pytest.mark.timeout(180)
def test_a_peer_that_cannot_be_installed_is_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    result = bench("run", "--quick", "--workloads", "D", "--systems", "mrq,huey",
                   "--pin", "huey=huey==0.0.0.999", "--output", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    latest = json.loads((tmp_path / "latest.json").read_text())
    assert {r["system"] for r in latest["results"]} == {"mrq"}
    report = next(tmp_path.glob("*/report.md")).read_text()
    assert "| huey | greenlet | not run: install failed: pip install" in report
    assert "huey==0.0.0.999" in report


@pytest.mark.bench
@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_killed_run_ends_every_process_it_started(tmp_path: Path, sig: int) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", "--quick", "--workloads", "B", "--systems", "mrq",
                             "--output", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    started: list[psutil.Process] = []
    while time.monotonic() < deadline and proc.poll() is None:
        started = parent.children(recursive=True)
        if any("mrq.cli.worker" in " ".join(_cmdline(p)) for p in started):
            break
        time.sleep(0.02)
    assert any("mrq.cli.worker" in " ".join(_cmdline(p)) for p in started), "no worker seen"
    assert any("redis-server" in " ".join(_cmdline(p)) for p in started)
    started = parent.children(recursive=True)

    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, output
    assert "interrupted" in output
    psutil.wait_procs(started, timeout=10)
    assert still_running(started) == []
    assert not list(tmp_path.glob("*/report.md"))


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


@pytest.mark.testserver_only
def test_mongo_test_server_counts_commands_like_server_status(mongo_db) -> None:
    def status() -> dict:
        return mongo_db.client.admin.command("serverStatus")

    before = status()
    assert set(before["opcounters"]) == {"insert", "query", "update", "delete", "getmore", "command"}
    mongo_db.jobs.insert_many([{"n": i} for i in range(3)])
    list(mongo_db.jobs.find({"n": {"$gte": 0}}).batch_size(1))
    mongo_db.jobs.update_many({}, {"$set": {"x": 1}})
    with pytest.raises(pymongo.errors.OperationFailure):
        mongo_db.command("collStats", {"not": "a name"})
    after = status()

    def delta(*path: str) -> int:
        a, b = after, before
        for key in path:
            a, b = a.get(key, {}), b.get(key, {})
        return int(a or 0) - int(b or 0)

    assert delta("opcounters", "insert") == 3  # per document, as in MongoDB
    assert delta("opcounters", "query") == 1
    assert delta("opcounters", "getmore") >= 1
    assert delta("opcounters", "update") == 1
    commands = after["metrics"]["commands"]
    assert delta("metrics", "commands", "insert", "total") == 1  # one command for the three documents
    assert delta("metrics", "commands", "getMore", "total") >= 1
    assert delta("metrics", "commands", "collStats", "failed") == 1
    assert commands["serverStatus"]["total"] >= 1


def test_targets_are_ratios_to_the_best_peer_and_say_how_much_is_missing() -> None:
    def run(system: str, mode: str, **figures: float) -> dict:
        return {"ok": True, "kind": "A", "system": system, "mode": mode, "figures": figures}

    runs = [run("mrq", "regular", jobs_per_s=v) for v in (900, 1000, 1100)]
    runs += [run("huey", "greenlet", jobs_per_s=v) for v in (1900, 2000, 2100)]
    runs += [run("rq", "simple", jobs_per_s=500)]
    figures = aggregate(runs, {"A"})
    (regular, raw) = sorted(evaluate_targets(figures, {"A"}, {("mrq", "raw", "A"): "not built"}, 1000),
                            key=lambda t: t.mode, reverse=True)
    assert regular.status == "MISS" and regular.ratio == pytest.approx(0.5)
    assert regular.reference == "huey/greenlet 2,000"
    assert "50% short" in regular.note and "+100% to go" in regular.note
    assert raw.status == "NOT RUN" and raw.note == "not built"


def test_round2_targets_compare_single_calls_with_rq_and_the_client_cpu_with_its_limit() -> None:
    def run(kind: str, system: str, mode: str, **figures: float) -> dict:
        return {"ok": True, "kind": kind, "system": system, "mode": mode, "figures": figures}

    runs = [run("D", "mrq", "regular", single_jobs_per_s=2000, bulk_jobs_per_s=1, single_cpu_us=300),
            run("D", "rq", "simple", single_jobs_per_s=2500, bulk_jobs_per_s=1, single_cpu_us=310),
            run("D", "huey", "thread", single_jobs_per_s=9000, bulk_jobs_per_s=1, single_cpu_us=120),
            run("C", "mrq", "regular", jobs_per_s=960), run("C", "mrq", "raw", jobs_per_s=940),
            run("B", "mrq", "regular", p50_ms=1.3, p99_ms=3.0), run("B", "huey", "thread", p50_ms=1.0, p99_ms=2.1)]
    targets = {(t.name, t.mode): t for t in evaluate_round2_targets(aggregate(runs, {"B", "C", "D"}), {"B", "C", "D"},
                                                                    {}, 1000)}
    single = targets["D single queue_job calls", "regular"]
    assert single.reference == "rq/simple 2,500" and single.ratio == pytest.approx(0.8)  # Huey is not the reference
    assert single.status == "MISS"
    cpu = targets["D client CPU per single call (µs)", "regular"]
    assert cpu.status == "MISS" and cpu.value == pytest.approx(300)
    assert targets["C IO-bound, share of the ceiling", "regular"].status == "PASS"  # 960 >= 950
    assert targets["C IO-bound, share of the ceiling", "raw"].status == "MISS"  # 940 < 950
    assert targets["B pickup latency p50, regular queue", "regular"].status == "MISS"  # 1.3 > 1.2 x 1.0
    assert targets["B pickup latency p99, regular queue", "regular"].status == "PASS"  # 3.0 <= 1.5 x 2.1
    assert targets["B pickup latency p50, raw queue", "raw"].status == "NOT RUN"
