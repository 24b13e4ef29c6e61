"""The `mrq-worker --processes N` parent: it runs supervisord with the configuration of
supervisord_conf.py, turns the signals it gets into the stop levels that mrq/processes/__init__.py
describes, and leaves no worker behind when it exits.
"""

from __future__ import annotations

import ctypes
import fcntl
import http.client
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from ..exceptions import SupervisorFailed
from .child import PARENT_PID_ENV, SUBPROCESS_ENV
from .supervisord_conf import render_config

log = logging.getLogger("mrq.processes")

#: After SIGTERM, seconds the workers have to interrupt their jobs before SIGKILL.
STOP_TIMEOUT = 30.0

EXIT_OK = 0
EXIT_FAILED = 1  # some worker had to be SIGKILLed, or a burst worker could not start

# supervisord process states (supervisor.states.ProcessStates)
_EXITED, _FATAL = 100, 200

# Stop levels requested by signals, in increasing order.
_RUN, _GRACEFUL, _HARD = 0, 1, 2

_RELAY = """\
import os
while True:
    data = os.read(0, 65536)
    if not data:
        break
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
"""


# Lines of supervisord's output that never explain a failure.
_NOISE = ("For help, use", "Privileges were not dropped", "without any HTTP authentication checking")


# --- the parent ------------------------------------------------------------------------------------


class ProcessSupervisor:
    """Run `command` in `processes` processes under supervisord until a signal stops them.
    `run()` returns the exit code or raises SupervisorFailed."""

    def __init__(self, command: Sequence[str], processes: int, *, burst: bool = False,
                 stop_timeout: float = STOP_TIMEOUT, start_timeout: float = 20.0) -> None:
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.command = list(command)
        self.processes = processes
        self.burst = burst
        self.stop_timeout = stop_timeout
        self.start_timeout = start_timeout
        self.directory: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._relay: subprocess.Popen | None = None
        self._rpc: xmlrpc.client.ServerProxy | None = None
        self._requested = _RUN
        self._signal_name = ""
        self._shutdown_sent = False

    # --- lifecycle

    def run(self) -> int:
        if importlib.util.find_spec("supervisor") is None:
            raise SupervisorFailed("--processes needs supervisord: the `supervisor` package is not installed")
        previous = self._install_signal_handlers()
        try:
            try:
                self.directory = Path(tempfile.mkdtemp(prefix="mrq-supervisor-", dir=_temp_base()))
                (self.directory / "supervisord.conf").write_text(
                    render_config(self.command, self.processes, self.directory, burst=self.burst))
            except OSError as exc:
                raise SupervisorFailed(f"cannot write the supervisord configuration: {exc}") from None
            self._start()
            return self._supervise()
        finally:
            self._restore_signal_handlers(previous)
            self._cleanup()

    def _start(self) -> None:
        assert self.directory is not None
        stdout_fd: int | None = None
        if not _stdout_reopenable():
            read_fd, stdout_fd = os.pipe()
            self._relay = subprocess.Popen([sys.executable, "-c", _RELAY], stdin=read_fd,
                                           start_new_session=True)
            os.close(read_fd)
        config = self.directory / "supervisord.conf"
        env = dict(os.environ)
        env[SUBPROCESS_ENV] = "1"
        env[PARENT_PID_ENV] = str(os.getpid())
        env.setdefault("PYTHONUNBUFFERED", "1")  # print() in tasks shows up at once, as in a terminal
        try:
            with open(self.directory / "supervisord.err", "wb") as err:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(config)],
                    env=env, stdin=subprocess.DEVNULL, stdout=stdout_fd, stderr=err,
                    start_new_session=True, preexec_fn=_parent_death_signal(os.getpid()),
                )
        except OSError as exc:
            raise SupervisorFailed(f"cannot run supervisord: {exc}") from None
        finally:
            if stdout_fd is not None:
                os.close(stdout_fd)
        self._rpc = xmlrpc.client.ServerProxy(
            "http://localhost/RPC2", transport=_UnixTransport(str(self.directory / "supervisor.sock"), 5.0)
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while self._requested == _RUN:
            code = self.proc.poll()
            if code is not None:
                raise SupervisorFailed(f"supervisord exited with code {code} at start: {self._last_error()}")
            state = self._call("getState")
            if isinstance(state, dict) and state.get("statename") == "RUNNING":
                return
            if time.monotonic() > deadline:
                raise SupervisorFailed(f"supervisord did not answer within {self.start_timeout:g}s: "
                                       f"{self._last_error()}")
            time.sleep(0.05)

    def _supervise(self) -> int:
        assert self.proc is not None
        log.info("running %d worker processes under supervisord (pid %d)", self.processes, self.proc.pid)
        acted = _RUN
        kill_at: float | None = None
        killed = failed = False
        while True:
            try:
                code = self.proc.wait(0.2)
            except subprocess.TimeoutExpired:
                code = None
            if code is not None:
                if acted == _RUN and not self._shutdown_sent:
                    raise SupervisorFailed(f"supervisord exited unexpectedly with code {code}: {self._last_error()}")
                break
            requested = self._requested
            if requested > acted:
                if requested == _GRACEFUL:
                    log.warning("SIGINT: the worker processes finish their running jobs, then exit "
                                "(SIGINT again or SIGTERM to interrupt the jobs)")
                else:
                    log.warning("%s: the worker processes interrupt their jobs, which are queued again",
                                self._signal_name)
                    if acted == _RUN:
                        self._call("stopAllProcesses", False)  # no restart from here on
                    self._signal_workers(signal.SIGTERM)
                    kill_at = time.monotonic() + self.stop_timeout
                self._shutdown()
                acted = requested
            elif kill_at is not None and not killed and time.monotonic() > kill_at:
                log.warning("worker processes still running %gs after SIGTERM: killing them", self.stop_timeout)
                self._signal_workers(signal.SIGKILL)
                killed = True
            elif killed and kill_at is not None and time.monotonic() > kill_at + 10:
                self.proc.kill()  # supervisord itself is stuck
            elif acted == _RUN and self.burst and not self._shutdown_sent:
                done = self._burst_done()
                if done is not None:
                    log.info("every worker process has emptied its queues and exited")
                    failed = failed or not done
                    self._shutdown()
        log.info("all worker processes stopped")
        return EXIT_FAILED if killed or failed else EXIT_OK

    def _burst_done(self) -> bool | None:
        """None while burst workers still run; then whether all of them ended well (not FATAL:
        supervisord gave up restarting one that could not start)."""
        infos = self._call("getAllProcessInfo")
        if not infos or not all(i["state"] in (_EXITED, _FATAL) for i in infos):
            return None
        if any(i["state"] == _EXITED and i["exitstatus"] != 0 for i in infos):
            return None  # about to be restarted
        return all(i["state"] != _FATAL for i in infos)

    def _cleanup(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:  # an error on the way: stop everything
            workers = self._workers()
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                _kill_groups(workers)
                proc.kill()
                proc.wait()
        if self._relay is not None:
            try:
                self._relay.wait(5)
            except subprocess.TimeoutExpired:
                self._relay.kill()
                self._relay.wait()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    # --- control

    def _call(self, method: str, *args: Any) -> Any:
        """An XML-RPC call to supervisord; None if it failed (it may be shutting down already)."""
        assert self._rpc is not None
        try:
            return getattr(self._rpc.supervisor, method)(*args)
        except (OSError, http.client.HTTPException, xmlrpc.client.Error) as exc:
            log.debug("supervisor.%s failed: %s", method, exc)
            return None

    def _shutdown(self) -> None:
        """supervisord stops every worker with SIGINT, restarts none, and exits once all exited."""
        if self._shutdown_sent:
            return
        self._shutdown_sent = True
        if self._call("shutdown") is None and self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the same shutdown

    def _workers(self) -> list[psutil.Process]:
        if self.proc is None:
            return []
        try:
            return psutil.Process(self.proc.pid).children()
        except psutil.Error:
            return []

    def _signal_workers(self, sig: int) -> None:
        workers = self._workers()
        if sig == signal.SIGKILL:
            _kill_groups(workers)
            return
        for worker in workers:
            try:
                worker.send_signal(sig)  # psutil checks the pid still is this process
            except psutil.Error:
                pass

    def _last_error(self) -> str:
        """The last line supervisord wrote on stderr or in its log, for one-line error messages."""
        if self.directory is None:
            return "no output"
        for name in ("supervisord.err", "supervisord.log"):
            try:
                lines = (self.directory / name).read_text(errors="replace").strip().splitlines()
            except OSError:
                continue
            lines = [line.strip() for line in lines if line.strip() and not any(n in line for n in _NOISE)]
            if lines:
                return lines[-1][:500]
        return "no output"

    # --- signals

    def _on_signal(self, signum: int, _frame: Any) -> None:
        second = " again" if signum == signal.SIGINT and self._requested != _RUN else ""
        self._signal_name = signal.Signals(signum).name + second
        if signum == signal.SIGINT and self._requested == _RUN:
            self._requested = _GRACEFUL
        else:
            self._requested = _HARD

    def _install_signal_handlers(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return previous
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's unix socket, with a timeout on every call."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        connection = self._connection[1]
        if connection is None:
            connection = _UnixHTTPConnection(self._path, self._timeout)
            self._connection = host, connection
        return connection


def _temp_base() -> str:
    """Where the temporary directory goes: the usual place, unless its path is unusable in a
    supervisord configuration or too long for a unix socket name (108 bytes)."""
    base = tempfile.gettempdir()
    if re.fullmatch(r"[\w./-]+", base) and len(base) <= 60:
        return base
    return "/tmp"


def _stdout_reopenable() -> bool:
    """Whether supervisord can write the workers' output by reopening /dev/stdout: not when
    stdout is a socket (systemd's journal). A regular file is switched to append mode, else our
    writes, at our own offset, would overwrite the workers' (`mrq-worker --processes 2 > log`)."""
    try:
        fd = os.open("/dev/stdout", os.O_WRONLY | os.O_APPEND | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    try:
        if stat.S_ISREG(os.fstat(1).st_mode):
            flags = fcntl.fcntl(1, fcntl.F_GETFL)
            fcntl.fcntl(1, fcntl.F_SETFL, flags | os.O_APPEND)
    except OSError:
        pass
    return True


def _kill_groups(workers: Sequence[psutil.Process]) -> None:
    """SIGKILL each worker's process group (supervisord makes each worker a group leader, so
    this includes what its jobs started)."""
    for worker in workers:
        try:
            if worker.is_running():
                os.killpg(worker.pid, signal.SIGKILL)
        except (OSError, psutil.Error):
            pass


PR_SET_PDEATHSIG = 1


def _parent_death_signal(parent_pid: int) -> Callable[[], None] | None:
    """A preexec_fn asking the kernel for SIGTERM when the parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl: nobody would tell us
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec

