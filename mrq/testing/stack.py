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

import psutil


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
            self._wait_for_own_listener(timeout)
        except Exception as exc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            self._log.close()
            self._log = None
            raise RuntimeError(f"{self.name} failed to start: {exc}\n{self.read_log()[-2000:]}") from exc

    def _wait_for_own_listener(self, timeout: float) -> None:
        """The port answering is not enough: between free_port() and the bind, another process (a
        server of a test running beside this one) may have taken it, and ours then exits while
        theirs answers. Wait until the listener on the port is our process's (or its child's)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server process exited with code {self.proc.returncode}: 127.0.0.1:{self.port} "
                                   "answers, but not from this server (another process took the port?)")
            if self._listening(self.proc.pid):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"127.0.0.1:{self.port} answers, but not from this server's process")
            time.sleep(0.02)

    def _listening(self, pid: int) -> bool:
        try:
            root = psutil.Process(pid)
            for proc in (root, *root.children(recursive=True)):
                for conn in proc.net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == self.port:
                        return True
        except psutil.Error:
            return False
        return False

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

    def __init__(self, port: int | None = None, workdir: str | None = None, binary: str = "redis-server",
                 args: Sequence[str] = ()) -> None:
        super().__init__(port, workdir)
        resolved = shutil.which(binary)
        if resolved is None:
            raise RuntimeError("redis-server not found on PATH (Debian: apt-get install -y redis-server)")
        self.binary = resolved
        self.args = list(args)  # more options, e.g. ["--replicaof", "127.0.0.1", "6379"]

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
            *self.args,
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class MongoTestServer(ServerProcess):
    """The project's MongoDB-wire-compatible in-memory server (mrq.testing.mongo_server); `args`
    are more options, e.g. `["--auth", "--notablescan"]`."""

    name = "mongo"

    def __init__(self, port: int | None = None, workdir: str | None = None, args: Sequence[str] = ()) -> None:
        super().__init__(port, workdir)
        self.args = list(args)

    def command(self) -> Sequence[str]:
        return [sys.executable, "-m", "mrq.testing.mongo_server", "--port", str(self.port), *self.args]

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"


class RedisClusterNode(RedisServer):
    """One master of a test Redis Cluster (cluster mode on, its nodes file in its own directory)."""

    name = "redis-cluster-node"

    def __init__(self, port: int | None = None, workdir: str | None = None, binary: str = "redis-server") -> None:
        super().__init__(port, workdir, binary)
        self.bus_port = free_port()  # explicit (Redis >= 7): the default port + 10000 may be taken or too high

    def command(self) -> Sequence[str]:
        return [
            *super().command(),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-port", str(self.bus_port),
            "--cluster-node-timeout", "5000",
        ]


class RedisCluster:
    """A Redis Cluster of `masters` redis-server processes (no replicas) on free loopback ports,
    each in its own temporary directory. The 16384 slots are split evenly (CLUSTER ADDSLOTS) and
    the nodes introduced to each other (CLUSTER MEET), as `redis-cli --cluster create` does;
    start() returns once every node says the cluster is ok and knows every other node."""

    def __init__(self, masters: int = 3, binary: str = "redis-server") -> None:
        if masters < 1:
            raise ValueError("a cluster needs at least one master")
        self.nodes = [RedisClusterNode(binary=binary) for _ in range(masters)]

    @property
    def url(self) -> str:
        """The mrq URI of the cluster (any node is a valid entry point)."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self, timeout: float = 30.0) -> None:
        import redis

        clients: list[Any] = []
        try:
            for node in self.nodes:
                node.start()
            clients = [redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=5) for node in self.nodes]
            per_node = 16384 // len(self.nodes)
            for index, client in enumerate(clients):
                first = index * per_node
                last = 16383 if index == len(self.nodes) - 1 else first + per_node - 1
                client.execute_command("CLUSTER ADDSLOTS", *range(first, last + 1))
                client.execute_command("CLUSTER SET-CONFIG-EPOCH", index + 1)
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port, node.bus_port)
            deadline = time.monotonic() + timeout
            while not all(self._ready(client) for client in clients):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the Redis Cluster did not become ready within {timeout:g}s: "
                                       f"{[client.cluster('INFO').get('cluster_state') for client in clients]}")
                time.sleep(0.05)
        except Exception:
            self.close()
            raise
        finally:
            for client in clients:
                client.close()

    def _ready(self, client: Any) -> bool:
        fields = client.cluster("INFO")  # parsed by redis-py into a dict of strings
        return fields.get("cluster_state") == "ok" and int(fields.get("cluster_known_nodes", 0)) == len(self.nodes)

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisSentinel(ServerProcess):
    """A Redis Sentinel (`redis-server <conf> --sentinel`) monitoring one master as `service`, with
    a quorum of 1 and short timeouts (a failover takes a second or two). Sentinel rewrites its
    configuration file, so it lives in the sentinel's own directory."""

    name = "redis-sentinel"

    def __init__(self, master_port: int, service: str = "mymaster", port: int | None = None,
                 binary: str = "redis-server") -> None:
        super().__init__(port)
        resolved = shutil.which(binary)
        if resolved is None:
            raise RuntimeError("redis-server not found on PATH (Debian: apt-get install -y redis-server)")
        self.binary = resolved
        self.service = service
        self.master_port = master_port

    def command(self) -> Sequence[str]:
        conf = self.workdir / "sentinel.conf"
        if not conf.exists():
            conf.write_text(
                f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.master_port} 1\n"
                f"sentinel down-after-milliseconds {self.service} 1000\n"
                f"sentinel failover-timeout {self.service} 5000\n"
            )
        return [self.binary, str(conf), "--sentinel"]

    @property
    def url(self) -> str:
        """The mrq URI of the monitored master, through this sentinel."""
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}"

    def master_address(self) -> tuple[str, int] | None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        try:
            found = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", self.service)
        finally:
            client.close()
        if not found:
            return None
        host, port = found
        return (host.decode() if isinstance(host, bytes) else str(host)), int(port)

    def failover(self, timeout: float = 20.0) -> None:
        """Promote a replica now (SENTINEL FAILOVER), without waiting for the master to fail. Retries
        while the sentinel has no replica in a good state yet (NOGOODSLAVE: just discovered)."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.execute_command("SENTINEL FAILOVER", self.service)
                    return
                except redis.exceptions.ResponseError as exc:
                    if "NOGOODSLAVE" not in str(exc) or time.monotonic() > deadline:
                        raise
                time.sleep(0.1)
        finally:
            client.close()
