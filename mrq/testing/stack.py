"""Real servers for tests and the local demo: a private redis-server and the Mongo test server.

Each server runs as a child process on a free loopback port, in its own temporary directory,
and can be stopped, killed, frozen (SIGSTOP) and restarted on the same port, which is what the
fault tests need. Nothing here touches a server the developer already runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until something accepts connections on the port, or raise with a reason."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with code {proc.returncode} before listening on {port}")
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s")


def wait_for_port_closed(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not port_open(port):
            return
        time.sleep(0.02)
    raise TimeoutError(f"127.0.0.1:{port} still accepts connections after {timeout:.0f}s")


class ServerProcess:
    """A server child process bound to one port for its whole life (restarts reuse the port)."""

    name = "server"

    def __init__(self, port: int | None = None, workdir: str | None = None) -> None:
        self.port = port or free_port()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"mrq-{self.name}-"))
        self.proc: subprocess.Popen | None = None
        self._log: Any = None

    def command(self) -> Sequence[str]:
        raise NotImplementedError

    def start(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.name} already running on port {self.port}")
        self._log = open(self.workdir / f"{self.name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            list(self.command()),
            cwd=self.workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_port(self.port, timeout, self.proc)
        except Exception as exc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            self._log.close()
            self._log = None
            raise RuntimeError(f"{self.name} failed to start: {exc}\n{self.read_log()[-2000:]}") from exc

    def read_log(self) -> str:
        try:
            return (self.workdir / f"{self.name}.log").read_text(errors="replace")
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), then SIGKILL if it does not exit in time."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        self._end(signal.SIGKILL, 10.0)

    def _end(self, sig: int, timeout: float) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGCONT)
                proc.send_signal(sig)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
            except ProcessLookupError:
                pass
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        wait_for_port_closed(self.port)

    def freeze(self) -> None:
        """SIGSTOP: the process stays alive but answers nothing (a hung server, a partition)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.kill()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisServer(ServerProcess):
    """A private redis-server: loopback only, no persistence, `noeviction`."""

    name = "redis"

    def __init__(self, port: int | None = None, workdir: str | None = None, binary: str = "redis-server") -> None:
        super().__init__(port, workdir)
        resolved = shutil.which(binary)
        if resolved is None:
            raise RuntimeError("redis-server not found on PATH (Debian: apt-get install -y redis-server)")
        self.binary = resolved

    def command(self) -> Sequence[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--maxmemory-policy", "noeviction",
            "--protected-mode", "yes",
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class MongoTestServer(ServerProcess):
    """The project's MongoDB-wire-compatible in-memory server (mrq.testing.mongo_server)."""

    name = "mongo"

    def command(self) -> Sequence[str]:
        return [sys.executable, "-m", "mrq.testing.mongo_server", "--port", str(self.port)]

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"
