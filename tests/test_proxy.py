"""The fault-injection proxy (mrq.testing.proxy) in front of a real redis-server: each mode does
what the fault schedules rely on."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mrq.testing.proxy import BLACKHOLE, LATENCY, PASS, REFUSE, FaultProxy
from mrq.testing.stack import RedisServer, port_open


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(redis_server.port) as the_proxy:
        yield the_proxy


def client(proxy: FaultProxy, timeout: float = 2.0) -> redis.Redis:
    """A client that reports the first error (redis-py otherwise retries with backoff)."""
    return redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=timeout, socket_connect_timeout=timeout,
                       retry=Retry(NoBackoff(), 0))


def raw_connection(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(proxy.address, timeout=2)
    sock.settimeout(2)
    return sock


def test_pass_relays_both_ways_in_order(proxy: FaultProxy) -> None:
    conn = client(proxy)
    assert proxy.mode == PASS
    key = f"proxy:{time.monotonic_ns()}"
    pipe = conn.pipeline(transaction=False)
    for _ in range(500):
        pipe.incr(key)
    assert pipe.execute() == list(range(1, 501))  # every reply, in order
    conn.set(key, b"x" * 300_000)  # larger than one chunk, both ways
    assert conn.get(key) == b"x" * 300_000
    assert proxy.stats.bytes_up > 300_000 and proxy.stats.bytes_down > 300_000
    conn.delete(key)
    conn.close()


def test_blackhole_hangs_existing_and_new_connections_then_delivers_on_heal(proxy: FaultProxy,
                                                                           redis_server: RedisServer) -> None:
    existing = client(proxy, timeout=0.5)
    assert existing.ping()
    held = raw_connection(proxy)
    proxy.blackhole()
    assert proxy.mode == BLACKHOLE
    started = time.monotonic()
    with pytest.raises(redis.exceptions.TimeoutError):
        existing.ping()
    assert time.monotonic() - started >= 0.45  # it hung until the client's own timeout, no error
    fresh = socket.create_connection(proxy.address, timeout=1)  # accepted: nothing is refused
    fresh.settimeout(0.3)
    key = f"proxy:held:{time.monotonic_ns()}"
    held.sendall(f"SET {key} 1\r\n".encode())
    fresh.sendall(b"PING\r\n")
    with pytest.raises(TimeoutError):
        fresh.recv(100)
    direct = redis.Redis(port=redis_server.port, socket_timeout=2)
    assert direct.get(key) is None  # nothing reached the server during the partition
    proxy.heal()
    assert held.recv(100) == b"+OK\r\n"  # held, then delivered in order (as TCP retransmits)
    fresh.settimeout(2)
    assert fresh.recv(100) == b"+PONG\r\n"  # the connection made during the partition works now
    assert direct.get(key) == b"1"
    assert client(proxy).ping()
    for sock in (held, fresh):
        sock.close()
    direct.delete(key)
    direct.close()


def test_refuse_refuses_new_connections_and_resets_existing_ones(proxy: FaultProxy) -> None:
    existing = raw_connection(proxy)
    existing.sendall(b"PING\r\n")
    assert existing.recv(100) == b"+PONG\r\n"
    proxy.refuse()
    assert proxy.mode == REFUSE
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=1)
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        existing.sendall(b"PING\r\n")
        if not existing.recv(100):
            raise ConnectionResetError("closed")
    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError, match="refused"):
        client(proxy).ping()
    assert time.monotonic() - started < 1  # refused at once, not a hang
    proxy.heal()
    assert client(proxy).ping()
    existing.close()


def test_latency_delays_each_chunk_and_keeps_order(proxy: FaultProxy) -> None:
    conn = client(proxy)
    conn.ping()  # connected before the change
    started = time.monotonic()
    conn.ping()
    fast = time.monotonic() - started
    proxy.latency(0.15)
    assert proxy.mode == LATENCY and proxy.delay == 0.15
    started = time.monotonic()
    assert conn.ping()
    slow = time.monotonic() - started
    assert 0.3 <= slow < 1.0, slow  # the request, then the reply, each held 0.15 s
    key = f"proxy:lat:{time.monotonic_ns()}"
    pipe = conn.pipeline(transaction=False)
    for _ in range(50):
        pipe.incr(key)
    assert pipe.execute() == list(range(1, 51))
    proxy.heal()
    started = time.monotonic()
    assert conn.ping()
    assert time.monotonic() - started < max(0.1, 10 * fast)
    conn.delete(key)


def test_modes_switch_while_traffic_flows(proxy: FaultProxy) -> None:
    """A writer thread keeps incrementing through blackhole, latency and heal: every increment it
    saw acknowledged is in Redis, in order, and the thread never sees an error but timeouts."""
    key = f"proxy:flow:{time.monotonic_ns()}"
    stop = threading.Event()
    acked: list[int] = []
    errors: list[BaseException] = []

    def write() -> None:
        conn = client(proxy, timeout=5)
        while not stop.is_set():
            try:
                acked.append(int(conn.incr(key)))
            except BaseException as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=write)
    thread.start()
    time.sleep(0.1)
    proxy.blackhole()
    time.sleep(0.3)
    during = len(acked)
    time.sleep(0.3)
    assert len(acked) <= during + 1  # at most the reply already on its way
    proxy.latency(0.02)
    time.sleep(0.3)
    proxy.heal()
    time.sleep(0.1)
    stop.set()
    thread.join(10)
    assert not errors, errors
    assert acked == list(range(1, len(acked) + 1))
    assert int(client(proxy).get(key) or 0) == len(acked)
    client(proxy).delete(key)


def test_close_frees_the_port_and_the_thread(redis_server: RedisServer) -> None:
    before = threading.active_count()
    proxy = FaultProxy(redis_server.port).start()
    conn = client(proxy)
    assert conn.ping()
    proxy.close()
    assert not port_open(proxy.port)
    assert threading.active_count() == before
    with pytest.raises(redis.exceptions.ConnectionError):
        conn.ping()
    proxy.close()  # idempotent


def test_a_restarted_server_is_reached_again(redis_server: RedisServer) -> None:
    """The server goes away behind the proxy: clients see a reset, not a hang, and reconnect
    through the proxy once the server is back on its port."""
    server = RedisServer()
    server.start()
    try:
        with FaultProxy(server.port) as proxy:
            conn = client(proxy, timeout=1)
            conn.set("k", "v")
            server.kill()
            with pytest.raises(redis.exceptions.ConnectionError):
                conn.ping()
            server.start()
            assert conn.ping()
            assert conn.get("k") is None  # a new, empty server
    finally:
        server.close()
