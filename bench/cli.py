"""`python -m bench run [--quick] [--workloads A,B,...] [--systems mrq,rq,...] [--repeat N]`.

Starts the stores, prepares one virtualenv per peer, runs every selected workload for every
system and mode (systems alternating within each repetition), then writes
<output>/<date>/{report.md, raw.json, *.png, latest.json} and <output>/latest.json.
Exit codes: 0 done (missed targets included), 1 the run could not start, 2 bad usage,
128 + signal when interrupted (every process started is ended first).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from .procs import Processes, stop_groups
from .report import aggregate, evaluate_round2_targets, evaluate_targets, fmt, write_all
from .servers import Stores
from .systems import QUICK_PEER, SYSTEMS, Mode, System
from .venvs import InstallFailed, ensure_venv, freeze
from .workloads import FULL, QUICK, WORKLOADS, Context, RunError, Sizes, drain, enqueue, latency

BENCH_DIR = Path(__file__).resolve().parent
CACHE = BENCH_DIR / ".cache"
RESULTS = BENCH_DIR / "results"
EXIT_USAGE = 2
#: Run kinds, the workloads each serves, and whether peers run it.
KINDS = {"A": ("A", "E", "F"), "B": ("B",), "C": ("C",), "D": ("D",), "G2": ("G",), "G100k": ("G",)}
MRQ_ONLY = {"G2", "G100k"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the benchmark and write the report",
                              description="Run the benchmark. Workloads: " + ", ".join(WORKLOADS)
                              + "; systems: " + ", ".join(SYSTEMS) + " (docs/performance.md).")
    run.add_argument("--quick", action="store_true",
                     help=f"small N, 1 repetition, mrq and {QUICK_PEER} only (unless --systems): checks the harness")
    run.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated workload letters")
    run.add_argument("--systems", help="comma-separated systems (default: all; --quick: mrq," + QUICK_PEER + ")")
    run.add_argument("--repeat", type=int, help="repetitions of every workload (default 3; --quick: 1)")
    run.add_argument("--output", default=str(RESULTS), help="results folder (default: bench/results)")
    run.add_argument("--pin", action="append", default=[], metavar="PEER=REQUIREMENT",
                     help="install another requirement in a peer's venv, e.g. --pin rq=rq==2.11.0")
    run.add_argument("--no-profile", action="store_true", help="skip the profile of the mrq worker on a missed target")
    report = commands.add_parser("report", help="write report.md, charts and latest.json again from a raw.json",
                                 description="Rewrite a run's report.md, charts and latest.json (in the folder of "
                                 "its raw.json, and latest.json in the folder above) from its raw.json.")
    report.add_argument("raw", help="path to a raw.json")
    return parser


def usage_error(message: str) -> int:
    print(f"python -m bench: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def parse_list(text: str, valid: list[str], what: str, upper: bool = False) -> list[str] | str:
    items = [item.strip().upper() if upper else item.strip().lower() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in valid]
    if unknown:
        return f"unknown {what} {', '.join(repr(u) for u in unknown)} (valid: {', '.join(valid)})"
    if not items:
        return f"no {what} given (valid: {', '.join(valid)})"
    return list(dict.fromkeys(items))


def apply_pins(system: System, pins: list[str]) -> str | None:
    for pin in pins:
        peer, _, requirement = pin.partition("=")
        if peer != system.name:
            continue
        name = re.match(r"[A-Za-z0-9_.-]+", requirement)
        if not name:
            return f"--pin {pin}: no requirement after '='"
        project = name.group(0).lower()
        kept = [r for r in system.requirements if re.split(r"[\[=<>!~ ]", r, maxsplit=1)[0].lower() != project]
        system.requirements = (*kept, requirement)
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "report":
        return rewrite_report(Path(args.raw))
    workloads = parse_list(args.workloads, list(WORKLOADS), "workload", upper=True)
    if isinstance(workloads, str):
        return usage_error(workloads)
    default_systems = f"mrq,{QUICK_PEER}" if args.quick else ",".join(SYSTEMS)
    names = parse_list(args.systems or default_systems, list(SYSTEMS), "system")
    if isinstance(names, str):
        return usage_error(names)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        return usage_error("--repeat must be at least 1")
    for pin in args.pin:
        peer = pin.partition("=")[0]
        if "=" not in pin or peer not in SYSTEMS or peer == "mrq":
            return usage_error(f"--pin {pin!r}: expected PEER=REQUIREMENT with PEER one of "
                               f"{', '.join(n for n in SYSTEMS if n != 'mrq')}")
    command = "python -m bench " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    runner = Runner(names, workloads, QUICK if args.quick else FULL, repeat, Path(args.output), args, command)

    def interrupt(signum: int, _frame: Any) -> None:
        # Ended from here, not by an exception raised wherever the run was: that could leave a
        # driver's or a Popen's lock held and the cleanup waiting on it forever.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        name = signal.Signals(signum).name
        os.write(1, f"interrupted by {name}: stopping every process this run started\n".encode())
        runner.stop_everything()
        os._exit(128 + signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return runner.run()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        runner.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def rewrite_report(raw_path: Path) -> int:
    try:
        raw = json.loads(raw_path.read_text())
    except (OSError, ValueError) as exc:
        return usage_error(f"cannot read {raw_path}: {exc}")
    machine = raw["machine"]
    not_run = {(e["system"], e["mode"], e["workload"]): e["reason"] for e in raw.get("not_run", [])}
    write_all(raw_path.parent.parent, raw_path.parent, machine, raw["runs"], not_run, raw["configurations"],
              set(machine["workloads"]), c_ceiling=50 / machine["sizes"]["c_seconds"], profile=raw.get("profile"))
    print(f"rewrote {raw_path.parent / 'report.md'}")
    return 0


class Runner:
    def __init__(self, names: list[str], workloads: list[str], sizes: Sizes, repeat: int, output: Path,
                 args: argparse.Namespace, command: str) -> None:
        self.names, self.workloads, self.sizes, self.repeat = names, set(workloads), sizes, repeat
        self.output, self.args, self.command = output, args, command
        self.procs = Processes()
        self.stores = Stores()
        CACHE.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE))
        self.runs: list[dict[str, Any]] = []
        self.not_run: dict[tuple[str, str, str], str] = {}
        self.failures: list[str] = []
        self.configs: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.start_time = dt.datetime.now()
        self.source_at_start = _mrq_source_digest()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    def stop_everything(self) -> None:
        """An interrupted run: every process group it started (peers' workers, the stores) gets
        SIGTERM, then SIGKILL after 2 s; no lock is taken (this runs in a signal handler)."""
        pgids = [proc.pid for proc in list(self.procs.procs)]
        pgids += [server.proc.pid for server in (self.stores.redis_server, self.stores.mongo_server)
                  if server is not None and server.proc is not None]
        stop_groups(pgids)
        if not self.failures:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def close(self) -> None:
        self.procs.close_all()
        self.stores.close()
        if not self.failures:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- the run -------------------------------------------------------------------------------------

    def run(self) -> int:
        self.say(f"{self.command}: workloads {','.join(sorted(self.workloads))}, systems {','.join(self.names)}, "
                 f"{self.repeat} repetition(s)")
        try:
            self.stores.start()
        except RuntimeError as exc:
            print(f"python -m bench: error: cannot start the stores: {exc}", file=sys.stderr)
            return 1
        ctx = Context(self.stores, self.procs, self.workdir, self.say)
        systems = self.prepare_systems()
        pairs = [(s, m) for s in systems for m in s.modes if not self.mode_skipped(s, m)]
        kinds = [k for k, served in KINDS.items() if self.workloads & set(served)]
        for rep in range(1, self.repeat + 1):
            for kind in kinds:
                order = [p for p in pairs if kind not in MRQ_ONLY or p[0].name == "mrq"]
                shift = (rep - 1) % len(order) if order else 0
                for system, mode in order[shift:] + order[:shift]:  # a different system first each time
                    self.run_one(ctx, rep, kind, system, mode)
        profile = self.maybe_profile(ctx, systems)
        machine = self.machine()
        day = self.output / self.start_time.date().isoformat()
        self.output.mkdir(parents=True, exist_ok=True)
        written = write_all(self.output, day, machine, self.runs, self.not_run, self.configs, self.workloads,
                            c_ceiling=50 / self.sizes.c_seconds, profile=profile)
        self.say(f"report: {day / 'report.md'}")
        for target in [*written["targets"], *written["round2_targets"]]:
            ratio = "" if target.ratio is None else f" (ratio {target.ratio:.2f}, {target.required})"
            self.say(f"  {target.status:7} {target.name} [{target.mode}]: {fmt(target.value)}{ratio}")
        if self.failures:
            self.say(f"{len(self.failures)} run(s) failed; their logs are in {self.workdir}")
        return 0

    def prepare_systems(self) -> list[System]:
        systems = []
        for name in self.names:
            system = SYSTEMS[name]()
            packages: list[str] = []
            if system.requirements:
                error = apply_pins(system, self.args.pin)
                try:
                    if error:
                        raise InstallFailed(error)
                    self.say(f"{name}: virtualenv with {' '.join(system.requirements)}")
                    venv = CACHE / "venvs" / name
                    if system.requirements != SYSTEMS[name].requirements:  # --pin: keep the default venv
                        digest = hashlib.sha1("\n".join(system.requirements).encode()).hexdigest()[:8]
                        venv = venv.with_name(f"{name}-{digest}")
                    python, seconds = ensure_venv(venv, system.requirements, self.procs,
                                                  self.workdir / f"pip-{name}.log")
                    system.use_venv(python)
                    packages = freeze(venv, self.procs, self.workdir / f"pip-{name}.log")
                    self.say(f"{name}: ready" + (f" (installed in {seconds:.1f}s)" if seconds else " (cached)"))
                except InstallFailed as exc:
                    self.say(f"{name}: not run: {exc}")
                    for mode in system.modes:
                        self.mark_not_run(system, mode, f"install failed: {exc}")
                    continue
            else:
                packages = [f"{p}=={_version(p)}" for p in ("mrq", "redis", "hiredis", "pymongo", "gevent")]
            for mode in system.modes:
                reason = system.not_run(mode)
                if reason:
                    self.mark_not_run(system, mode, reason)
                self.configs.append({"system": name, "mode": mode.name, "summary": mode.summary,
                                     "c_concurrency": mode.c_concurrency, "results": mode.results or system.results,
                                     "bulk": system.bulk, "sizes": self.sizes_text(system, mode),
                                     "packages": packages})
            systems.append(system)
        return systems

    def mode_skipped(self, system: System, mode: Mode) -> bool:
        return system.not_run(mode) is not None

    def mark_not_run(self, system: System, mode: Mode, reason: str) -> None:
        for workload in sorted(self.workloads):
            if workload == "G" and system.name != "mrq":
                continue
            self.not_run[system.name, mode.name, workload] = reason

    def size(self, mode: Mode, letter: str, value: int) -> int:
        return min(value, mode.caps.get(letter, value))

    def sizes_text(self, system: System, mode: Mode) -> str:
        s = self.sizes
        parts = [f"A {self.size(mode, 'A', s.a_jobs):,}", f"B {s.b_jobs} every {s.b_interval * 1000:g} ms",
                 f"C {self.size(mode, 'C', s.c_jobs):,}", f"D {s.d_single:,} single, {s.d_bulk:,} bulk"]
        if system.name == "mrq":
            parts.append(f"G {s.g_jobs:,} on 1 and on 2 processes")
        return "; ".join(parts)

    def run_one(self, ctx: Context, rep: int, kind: str, system: System, mode: Mode) -> None:
        s = self.sizes
        tag = f"{kind}-{system.name}-{mode.name}-{rep}"
        record: dict[str, Any] = {"rep": rep, "kind": kind, "system": system.name, "mode": mode.name}
        started = time.monotonic()
        try:
            if kind == "A":
                n = self.size(mode, "A", s.a_jobs)
                result = drain(ctx, system, mode, tag, n)
            elif kind == "B":
                n = s.b_jobs
                result = latency(ctx, system, mode, tag, n, s.b_interval)
            elif kind == "C":
                n = self.size(mode, "C", s.c_jobs)
                result = drain(ctx, system, mode, tag, n, task="sleep", seconds=s.c_seconds,
                               concurrency=mode.c_concurrency)
            elif kind == "D":
                n = s.d_bulk
                result = enqueue(ctx, system, mode, tag, s.d_single, s.d_bulk)
            elif kind == "G2":
                n = s.g_jobs
                result = drain(ctx, system, mode, tag, n, processes=2)
            else:
                n = s.g_jobs
                result = drain(ctx, system, mode, tag, n)
            record.update(ok=True, n=n, **result)
            summary = ", ".join(f"{k} {fmt(v)}" for k, v in result["figures"].items()
                                if k in ("jobs_per_s", "p50_ms", "p99_ms", "single_jobs_per_s", "bulk_jobs_per_s"))
        except RunError as exc:
            record.update(ok=False, error=str(exc))
            summary = f"FAILED: {exc}"
            self.failures.append(f"{tag}: {exc}")
        record["seconds"] = time.monotonic() - started
        self.runs.append(record)
        self.say(f"rep {rep}/{self.repeat} {kind:5} {system.name}/{mode.name}: {summary}")
        if not record["ok"] and not any(r["ok"] for r in self.runs if r["kind"] == kind
                                        and (r["system"], r["mode"]) == (system.name, mode.name)):
            for workload in KINDS[kind]:
                if workload in self.workloads:
                    self.not_run[system.name, mode.name, workload] = f"failed: {record['error']}"
        elif record["ok"]:
            for workload in KINDS[kind]:
                reason = self.not_run.get((system.name, mode.name, workload), "")
                if reason.startswith("failed:") and kind != "G2" and kind != "G100k":
                    del self.not_run[system.name, mode.name, workload]

    def maybe_profile(self, ctx: Context, systems: list[System]) -> list[dict[str, Any]] | None:
        mrq = next((s for s in systems if s.name == "mrq"), None)
        if mrq is None or "A" not in self.workloads or self.args.no_profile:
            return None
        figures = aggregate(self.runs, self.workloads)
        targets = evaluate_targets(figures, self.workloads, self.not_run, 50 / self.sizes.c_seconds)
        targets += evaluate_round2_targets(figures, self.workloads, self.not_run, 50 / self.sizes.c_seconds)
        if not any(t.passed is False for t in targets):
            return None
        from .profile import profile_worker

        profiles = []
        for mode in mrq.modes:
            if self.mode_skipped(mrq, mode):
                continue
            # Enough jobs for a few seconds of samples even on the fast raw queue.
            n = self.sizes.a_jobs if mode.name == "regular" else self.sizes.g_jobs
            self.say(f"a target was missed: profiling the mrq worker on workload A ({mode.name} queue, {n:,} jobs)")
            result = profile_worker(ctx, mrq, mode, n, CACHE / "venvs" / "tools")
            self.say(f"profile: {result.get('tool')}" + (f" ({result['error']})" if result.get("error") else ""))
            profiles.append(result)
        return profiles

    def machine(self) -> dict[str, Any]:
        cpu = "unknown CPU"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        versions = self.stores.versions()
        return {
            "date": self.start_time.date().isoformat(), "started": self.start_time.isoformat(timespec="seconds"),
            "command": self.command, "quick": bool(self.args.quick), "repeat": self.repeat,
            "runtime_s": round(time.monotonic() - self.started, 1), "host": platform.node(), "cpu": cpu,
            "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "os": platform.platform(terse=True), "python": platform.python_version(), "redis": versions["redis"],
            "mongodb": versions["mongodb"], "mrq_version": _version("mrq"), "git": _git_commit(),
            "mrq_source": {"start": self.source_at_start, "end": _mrq_source_digest()},
            "systems": self.names, "workloads": sorted(self.workloads),
            "sizes": {k: v for k, v in vars(self.sizes).items() if not math.isnan(float(v))},
        }


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _mrq_source_digest() -> str:
    """A digest of mrq's sources (the project's mrq/ package): a run whose start and end digests
    differ measured code that changed under it, and its report says so."""
    digest = hashlib.sha1()
    package = BENCH_DIR.parent / "mrq"
    for path in sorted(package.rglob("*")):
        if path.suffix in (".py", ".lua") and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(package)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH_DIR, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "mrq"], cwd=BENCH_DIR, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + (" (mrq/ has uncommitted changes)" if dirty else "")
