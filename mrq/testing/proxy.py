"""A TCP proxy for fault injection: put it between clients and a server on loopback, then switch
its mode at any time to cut, refuse or slow the traffic. For tests only (real OS threads, not
gevent: it runs in the test process, never in a worker).

    proxy = FaultProxy(upstream_port=redis.port)   # listens on a free loopback port (or `port=`)
    proxy.start()
    proxy.blackhole(); ...; proxy.heal()
    proxy.close()

What each mode guarantees, from the moment the call returns (mode changes are applied by the
proxy's thread and acknowledged before the call returns):

- `pass`: bytes are relayed unchanged and in order, both ways; a close on one side reaches the
  other after the bytes sent before it. A connection whose server refuses or resets is reset.
- `blackhole()`: a partition. New connections are accepted and every connection is still read,
  but nothing is forwarded either way, on existing connections too: requests hang, nothing is
  refused or reset. What was read is held in order, and delivered on `heal()` (as TCP delivers
  its retransmissions once a partition heals; a request that timed out on the client may
  therefore still reach the server). Connections accepted during the partition reach the server
  only once it heals.
- `refuse()`: new connections are refused (nothing listens on the port: ECONNREFUSED) and every
  existing connection is reset (RST, on both sides); data in flight is dropped.
- `latency(seconds)`: each chunk read is forwarded `seconds` after it was read (order kept).
  Chunks read before the change keep the delay they were read with.
- `heal()`: back to `pass`; held data flows at once.
- `close()`: stops the thread and closes every socket and the port. Idempotent.

One thread per proxy runs a selector loop over every socket; nothing blocks it except a short
connect to the upstream on loopback.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .stack import free_port

PASS = "pass"
BLACKHOLE = "blackhole"
REFUSE = "refuse"
LATENCY = "latency"
MODES = (PASS, BLACKHOLE, REFUSE, LATENCY)

#: Longest the loop sleeps without a reason (it is woken for commands and new data anyway).
_IDLE = 0.5
_CHUNK = 65536


def _reset(sock: socket.socket | None) -> None:
    """Close with RST (SO_LINGER 0), as a crashed peer or a refusing firewall would."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


@dataclass
class _Direction:
    """Bytes read from one side, waiting to be written to the other: (due time, data or None
    for the end of stream)."""

    chunks: deque[tuple[float, bytes | None]] = field(default_factory=deque)
    eof_read: bool = False
    eof_sent: bool = False
    blocked: bool = False  # the last send would block: wait for the socket to be writable


@dataclass
class _Link:
    client: socket.socket
    upstream: socket.socket | None
    up: _Direction = field(default_factory=_Direction)  # client -> upstream
    down: _Direction = field(default_factory=_Direction)  # upstream -> client
    closed: bool = False


@dataclass
class ProxyStats:
    accepted: int = 0
    reset: int = 0  # connections reset by refuse() or by an error on one side
    bytes_up: int = 0
    bytes_down: int = 0


class FaultProxy:
    """A loopback TCP proxy in front of `upstream_port` with switchable fault modes."""

    def __init__(self, upstream_port: int, port: int | None = None, upstream_host: str = "127.0.0.1",
                 connect_timeout: float = 2.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port or free_port()
        self.connect_timeout = connect_timeout
        self.stats = ProxyStats()
        self._mode = PASS
        self._delay = 0.0
        self._links: list[_Link] = []
        self._listener: socket.socket | None = None
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._commands: deque[tuple[str, float, threading.Event]] = deque()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # --- public API (any thread) -----------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def delay(self) -> float:
        return self._delay

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self) -> FaultProxy:
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._open_listener()
        self._thread = threading.Thread(target=self._run, name=f"fault-proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def pass_(self) -> None:
        self._command(PASS, 0.0)

    def heal(self) -> None:
        self._command(PASS, 0.0)

    def blackhole(self) -> None:
        self._command(BLACKHOLE, 0.0)

    def refuse(self) -> None:
        self._command(REFUSE, 0.0)

    def latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._command(LATENCY, float(seconds))

    def close(self) -> None:
        thread = self._thread
        if thread is None:
            self._close_all()
            return
        self._stopping = True
        self._wake()
        thread.join(10)
        self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _command(self, mode: str, delay: float) -> None:
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("proxy is not running")
        done = threading.Event()
        with self._lock:
            self._commands.append((mode, delay, done))
        self._wake()
        if not done.wait(10):
            raise TimeoutError(f"proxy on port {self.port} did not apply mode {mode!r}")

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # --- the loop (proxy thread only) -------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._apply_commands()
                for key, mask in self._selector.select(self._next_timeout()):
                    if key.fileobj is self._wake_r:
                        self._drain_wake()
                    elif key.fileobj is self._listener:
                        self._accept()
                    else:
                        link, side = key.data
                        if mask & selectors.EVENT_READ:
                            self._read(link, side)
                        if mask & selectors.EVENT_WRITE and not link.closed:
                            (link.up if side == "upstream" else link.down).blocked = False
                self._pump()
        finally:
            self._close_all()

    def _apply_commands(self) -> None:
        while True:
            with self._lock:
                if not self._commands:
                    return
                mode, delay, done = self._commands.popleft()
            previous = self._mode
            self._mode, self._delay = mode, delay
            if mode == REFUSE and previous != REFUSE:
                self._close_listener()
                for link in list(self._links):
                    self._reset_link(link)
            elif mode != REFUSE and previous == REFUSE:
                self._open_listener()
            done.set()

    def _next_timeout(self) -> float:
        if self._mode == BLACKHOLE:
            return _IDLE
        now = time.monotonic()
        soonest = _IDLE
        for link in self._links:
            for direction in (link.up, link.down):
                if direction.chunks and not direction.blocked:
                    soonest = min(soonest, direction.chunks[0][0] - now)
        return max(0.0, soonest)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    # --- listening ---------------------------------------------------------------------------------

    def _open_listener(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, None)

    def _close_listener(self) -> None:
        listener = self._listener
        if listener is None:
            return
        self._unregister(listener)
        listener.close()  # connections still in its backlog are reset by the kernel
        self._listener = None

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.stats.accepted += 1
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, None)
            self._links.append(link)
            self._selector.register(client, selectors.EVENT_READ, (link, "client"))
            if self._mode != BLACKHOLE and not self._connect_upstream(link):
                self._reset_link(link)  # as the server refused: the client sees a reset

    def _connect_upstream(self, link: _Link) -> bool:
        try:
            upstream = socket.create_connection(self.upstream, timeout=self.connect_timeout)
        except OSError:
            return False
        upstream.setblocking(False)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link.upstream = upstream
        self._selector.register(upstream, selectors.EVENT_READ, (link, "upstream"))
        return True

    # --- relaying ----------------------------------------------------------------------------------

    def _read(self, link: _Link, side: str) -> None:
        if link.closed:
            return
        sock = link.client if side == "client" else link.upstream
        direction = link.up if side == "client" else link.down
        assert sock is not None
        try:
            data = sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._reset_link(link)
            return
        due = time.monotonic() + (self._delay if self._mode == LATENCY else 0.0)
        if not data:
            direction.eof_read = True
            direction.chunks.append((due, None))
            self._set_events(link, side)  # stop polling a socket at its end of stream
            return
        if side == "client":
            self.stats.bytes_up += len(data)
        else:
            self.stats.bytes_down += len(data)
        direction.chunks.append((due, data))

    def _pump(self) -> None:
        if self._mode == BLACKHOLE:
            return
        now = time.monotonic()
        for link in list(self._links):
            if link.upstream is None and not link.closed and not self._connect_upstream(link):
                self._reset_link(link)  # held through a partition, and now the server refuses
                continue
            for direction, dst in ((link.up, link.upstream), (link.down, link.client)):
                if link.closed:
                    break
                assert dst is not None
                self._send(link, direction, dst, now)
            if not link.closed and link.up.eof_sent and link.down.eof_sent:
                self._close_link(link)

    def _send(self, link: _Link, direction: _Direction, dst: socket.socket, now: float) -> None:
        was_blocked = direction.blocked
        while direction.chunks and not direction.blocked:
            due, data = direction.chunks[0]
            if due > now:
                break
            if data is None:
                direction.chunks.popleft()
                direction.eof_sent = True
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                break
            try:
                sent = dst.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._reset_link(link)
                return
            if sent < len(data):
                direction.chunks[0] = (due, data[sent:])
                direction.blocked = True
            else:
                direction.chunks.popleft()
        if direction.blocked != was_blocked or direction.blocked:
            self._set_events(link, "upstream" if direction is link.up else "client")

    def _set_events(self, link: _Link, side: str) -> None:
        """Poll a socket for reading until its end of stream, and for writing while a send to it
        is blocked."""
        if link.closed:
            return
        sock = link.client if side == "client" else link.upstream
        if sock is None:
            return
        reading = link.up if side == "client" else link.down
        writing = link.down if side == "client" else link.up
        events = (0 if reading.eof_read else selectors.EVENT_READ) | \
            (selectors.EVENT_WRITE if writing.blocked else 0)
        try:
            if events:
                self._selector.modify(sock, events, (link, side))
            else:
                self._selector.unregister(sock)
        except KeyError:
            if events:
                self._selector.register(sock, events, (link, side))
        except (ValueError, OSError):
            pass

    # --- closing -----------------------------------------------------------------------------------

    def _unregister(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass

    def _reset_link(self, link: _Link) -> None:
        if link.closed:
            return
        self.stats.reset += 1
        for sock in (link.client, link.upstream):
            self._unregister(sock)
            _reset(sock)
        self._forget(link)

    def _close_link(self, link: _Link) -> None:
        for sock in (link.client, link.upstream):
            self._unregister(sock)
            if sock is not None:
                sock.close()
        self._forget(link)

    def _forget(self, link: _Link) -> None:
        link.closed = True
        if link in self._links:
            self._links.remove(link)

    def _close_all(self) -> None:
        for link in list(self._links):
            self._close_link(link)
        self._close_listener()
        for sock in (self._wake_r, self._wake_w):
            try:
                sock.close()
            except OSError:
                pass
        try:
            self._selector.close()
        except (OSError, ValueError):
            pass

