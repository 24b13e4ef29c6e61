"""Where the mrq worker's time goes: workload A again with py-spy (a sampling profiler, from PyPI
into bench/.cache/venvs/tools) attached to the worker from its first finished job to its last, so
that start-up is left out; cProfile (the whole process) when py-spy cannot run. The report gets
the top functions by their own samples, for the worker's main thread (where gevent runs every
greenlet); the other OS threads (lease renewal, gevent's thread pool) are counted apart."""

from __future__ import annotations

import pstats
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from .systems import Mode, System
from .venvs import InstallFailed, ensure_venv
from .workloads import Context, RunError, drain

PY_SPY = "py-spy==0.4.3"
RATE = 250
TOP = 15
_LINE = re.compile(r":\d+\)$")
ROOT = str(Path(__file__).resolve().parents[1])


class PySpy:
    """Attach `py-spy record` to a pid between started() and finished()."""

    def __init__(self, ctx: Context, binary: Path, out: Path) -> None:
        self.ctx, self.binary, self.out = ctx, binary, out
        self.proc: subprocess.Popen | None = None

    def started(self, pid: int) -> None:
        argv = [str(self.binary), "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw", "--threads",
                "--nonblocking", "--output", str(self.out)]
        self.proc = self.ctx.procs.spawn(argv, env={"PATH": "/usr/bin:/bin"}, cwd=self.ctx.workdir,
                                         log=self.ctx.workdir / "py-spy.log")

    def finished(self) -> None:
        if self.proc is not None:
            self.ctx.procs.stop(self.proc, signal.SIGINT, timeout=30.0)
            self.proc = None


def profile_worker(ctx: Context, system: System, mode: Mode, n: int, tools_venv: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"mode": mode.name, "jobs": n}
    try:
        python, _ = ensure_venv(tools_venv, [PY_SPY], ctx.procs, ctx.workdir / "pip.log")
        out = ctx.workdir / "profile.pyspy.txt"
        out.unlink(missing_ok=True)
        run = drain(ctx, system, mode, "profile-pyspy", n, observer=PySpy(ctx, python.parent / "py-spy", out))
        if out.exists() and out.stat().st_size:
            top, samples, other = collapsed_top(out.read_text())
            rate = run["figures"]["jobs_per_s"]
            return result | {"tool": "py-spy", "top": top, "samples": samples, "jobs_per_s": rate,
                             "note": f"py-spy at {RATE} Hz from the first finished job to the last: {samples:,} "
                                     f"samples of the main thread's CPU time (idle waits left out; other OS "
                                     f"threads: {other:,} samples, not shown). {rate:,.0f} jobs/s under the "
                                     f"profiler."}
        reason = "py-spy wrote no samples"
    except (InstallFailed, RunError, OSError) as exc:
        reason = f"py-spy: {exc}"
    try:
        out = ctx.workdir / "profile.cprofile"
        out.unlink(missing_ok=True)
        run = drain(ctx, system, mode, "profile-cprofile", n, wrap=[sys.executable, "-m", "cProfile", "-o", str(out)],
                    strip_python=True)
        return result | {"tool": "cProfile", "top": cprofile_top(out), "fallback_reason": reason,
                         "jobs_per_s": run["figures"]["jobs_per_s"],
                         "note": f"cProfile, the whole process with its start-up (py-spy unavailable: {reason}); "
                                 "tottime shares; deterministic profiling slows the worker several times."}
    except (RunError, OSError) as exc:
        return result | {"tool": "none", "error": f"{reason}; cProfile: {exc}", "top": []}


def collapsed_top(text: str) -> tuple[list[dict[str, Any]], int, int]:
    """Top functions of py-spy's raw output (`thread (0x..);frame;frame count` per line), by own
    samples, for the thread running the gevent hub. Returns them, its samples and the others'."""
    stacks: list[tuple[str, list[str], int]] = []
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [_LINE.sub(")", f) for f in stack.split(";") if f and not f.startswith("process ")]
        thread = frames.pop(0) if frames and frames[0].startswith("thread ") else ""
        if frames:
            stacks.append((thread, frames, int(count_text)))
    per_thread: Counter[str] = Counter()  # samples of the threads that run the hub or the script
    for thread, frames, count in stacks:
        if any(frame.startswith(("Hub.run ", "_run_module_as_main ")) for frame in frames):
            per_thread[thread] += count
    main = per_thread.most_common(1)[0][0] if per_thread else None
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = other = 0
    for thread, frames, count in stacks:
        if main is not None and thread != main:
            other += count
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    top = [{"function": _short(name), "self_pct": 100 * count / samples, "total_pct": 100 * total[name] / samples}
           for name, count in own.most_common(TOP)] if samples else []
    return top, samples, other


def cprofile_top(path: Path) -> list[dict[str, Any]]:
    stats = pstats.Stats(str(path))
    entries = stats.stats  # type: ignore[attr-defined]
    whole = sum(tt for (_, _, tt, _, _) in entries.values()) or 1.0
    rows = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:TOP]
    return [{"function": _short(f"{name} ({file}:{line})"), "self_pct": 100 * tt / whole, "total_pct": 100 * ct / whole}
            for (file, line, name), (_, _, tt, ct, _) in rows]


def _short(name: str) -> str:
    """Paths shortened to the package: `dequeue (mrq/queue/regular.py)`."""
    for marker in ("site-packages/", f"{ROOT}/", "lib/python3.11/"):
        if marker in name:
            head, _, rest = name.partition("(")
            return f"{head}({rest.split(marker, 1)[-1]}"
    return name
