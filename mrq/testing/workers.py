"""Real mrq command-line processes for tests: workers started as `python -m mrq.cli.worker` with
the environment of a Settings object, their output captured in a file, stopped with real signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from mrq.config import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that make an mrq command line use the same stores as `settings`."""
    return {
        "MRQ_REDIS": settings.redis,
        "MRQ_REDIS_PREFIX": settings.redis_prefix,
        "MRQ_MONGODB_JOBS": settings.mongodb_jobs,
        "MRQ_MONGODB_LOGS": settings.mongodb_logs,
    }


def command_env(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRQ_")}
    env.update(settings_env(settings))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; return it, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message} not reached within {timeout:g}s")
        time.sleep(interval)


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below `pid` (children, grandchildren...); empty once it is gone."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def still_running(processes: Sequence[psutil.Process]) -> list[psutil.Process]:
    """Those of `processes` that still run: not exited, not a zombie, not a reused pid."""
    alive = []
    for proc in processes:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.Error:
            pass
    return alive


class CommandProcess:
    """One mrq command line running in the background."""

    module = "mrq.cli.worker"

    def __init__(self, settings: Settings, args: Sequence[str] = (), *, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None, log_path: str | os.PathLike[str] | None = None,
                 python: str | None = None) -> None:
        """`log_path`: where the output goes (default: a temporary file, removed by close()).
        `python`: the interpreter to run the command with (default: this one)."""
        self.python = python or sys.executable
        self.settings = settings
        self.args = list(args)
        self.env = command_env(settings, env)
        self.cwd = str(cwd or os.getcwd())
        self.proc: subprocess.Popen | None = None
        if log_path is None:
            handle, name = tempfile.mkstemp(prefix="mrq-cmd-", suffix=".log")
            os.close(handle)
            log_path = name
        self.log_path = Path(log_path)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, ready_text: str | None = None, timeout: float = 20.0) -> CommandProcess:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [self.python, "-m", self.module, *self.args],
                cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        if ready_text is not None:
            self.wait_for_output(ready_text, timeout)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 20.0) -> None:
        def seen() -> bool:
            if text in self.output():
                return True
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"process exited with {self.proc.returncode} before printing {text!r}:\n"
                                   f"{self.output()[-3000:]}")
            return False

        try:
            wait_until(seen, timeout, message=f"output {text!r}")
        except TimeoutError:
            raise TimeoutError(f"{text!r} not printed within {timeout:g}s:\n{self.output()[-3000:]}") from None

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"process still running after {timeout:g}s:\n{self.output()[-3000:]}") from None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if not self.running:
            return self.proc.returncode if self.proc is not None else 0
        self.send(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        try:
            self.log_path.unlink()
        except OSError:
            pass


class WorkerProcess(CommandProcess):
    """`mrq-worker` with the given arguments; start() waits until it takes jobs."""

    module = "mrq.cli.worker"

    def start(self, ready_text: str | None = "started:", timeout: float = 20.0) -> WorkerProcess:
        super().start(ready_text, timeout)
        return self


def run_command(settings: Settings, module: str, args: Sequence[str], *, env: Mapping[str, str] | None = None,
                cwd: str | os.PathLike[str] | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run an mrq command line to completion (e.g. module="mrq.cli.run")."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=str(cwd or os.getcwd()), env=command_env(settings, env),
        capture_output=True, text=True, timeout=timeout,
    )
