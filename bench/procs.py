"""Every process the benchmark starts, each in its own process group, so that a finished run, an
error or a SIGINT/SIGTERM of the harness ends all of them (and their children: RQ's work horses,
mrq's supervised workers) and nothing outlives the run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil


class Processes:
    def __init__(self) -> None:
        self._procs: list[subprocess.Popen] = []

    def spawn(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str | Path, log: Path) -> subprocess.Popen:
        """Start a command in a new session (its own process group), output appended to `log`."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(list(argv), env=dict(env), cwd=str(cwd), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self._procs.append(proc)
        return proc

    def run(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str | Path, log: Path,
            timeout: float) -> tuple[int, str]:
        """Run a command to completion; returns its exit code and output. Killed after `timeout` s."""
        start = log.stat().st_size if log.exists() else 0
        proc = self.spawn(argv, env=env, cwd=cwd, log=log)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc, signal.SIGTERM, 2.0)
            code = -signal.SIGKILL
        self._forget(proc)  # not on an interruption: close_all() must still end it
        with open(log, "rb") as handle:
            handle.seek(start)
            return code, handle.read().decode(errors="replace")

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 20.0,
             group: bool = False) -> int | None:
        """Send `sig` to the process (to its whole group with `group`); if it is still there after
        `timeout` s, SIGTERM then SIGKILL its group. Returns its exit code (None if it was killed)."""
        code: int | None = None
        if proc.poll() is None:
            try:
                if group:
                    os.killpg(proc.pid, sig)
                else:
                    proc.send_signal(sig)
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        else:
            code = proc.returncode
        self._end_group(proc.pid)
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        self._forget(proc)
        return code

    def _end_group(self, pgid: int) -> None:
        """SIGTERM, then SIGKILL, whatever is left in a process group."""
        for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                return
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if not _group_alive(pgid):
                    return
                time.sleep(0.02)

    @property
    def procs(self) -> list[subprocess.Popen]:
        """The processes started and not yet ended (each leads its own process group)."""
        return self._procs

    def _forget(self, proc: subprocess.Popen) -> None:
        if proc in self._procs:
            self._procs.remove(proc)

    def close_all(self) -> None:
        """End every process (group) still registered: the cleanup of an interrupted run."""
        for proc in list(self._procs):
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in list(self._procs):
            try:
                proc.wait(3.0)
            except subprocess.TimeoutExpired:
                pass
            self._end_group(proc.pid)
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            self._forget(proc)


def stop_groups(pgids: list[int], grace: float = 2.0) -> None:
    """SIGTERM every process group, then SIGKILL what is left after `grace` seconds, and wait (at
    most 5 s) until none of their processes is left. Takes no lock: safe in a signal handler."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in pgids:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            _reap_children()
            if not any(_group_alive(pgid) for pgid in pgids):
                return
            time.sleep(0.05)


def _reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _group_alive(pgid: int) -> bool:
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return False


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants that still run."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss_mb(pid: int) -> float:
    total = 0
    for proc in tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total / 1048576


def cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    """User + system CPU seconds of the processes (their exited children included)."""
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.Error:
            pass
    return total
