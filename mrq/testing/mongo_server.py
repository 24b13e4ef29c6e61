"""A MongoDB-wire-protocol-compatible server for tests and demos. NOT for production.

It keeps everything in memory (``mongomock_ng`` is the query/update engine) and has no
persistence, replication or transactions. It exists because no real ``mongod`` can be installed
on the project's dev and CI machines, while every process of the project (workers, dashboard,
CLI) must share one database through the real pymongo driver::

    python -m mrq.testing.mongo_server --port 27117 [--host 127.0.0.1] [--auth] [--notablescan]

``--auth`` enforces access control as ``mongod --auth`` does (SCRAM-SHA-256/SHA-1 users, the
built-in roles, the localhost exception: mongo_auth.py, mongo_privileges.py); ``--notablescan``
refuses the queries no index serves, as ``mongod --setParameter notablescan=1`` does
(mongo_planner.py). Both refuse with mongod's codes (13, 18, 291) so that a suite that passes
here passes on MongoDB started the same way.

The process prints nothing on success, is ready when its port accepts connections, and exits
with status 0 on SIGTERM or SIGINT.

Design:

- One thread per connection; every command runs under ONE global lock, so each command
  (``findAndModify`` claims included) is atomic with respect to all clients and processes.
- Wire protocol: OP_MSG (document sequences, checksum, moreToCome) and the legacy OP_QUERY
  handshake answered with OP_REPLY. The server advertises MongoDB 7.0 (wire version 21).
- Speed: filters on ``_id`` (``{_id: X}``, ``{_id: {$in: [...]}}``, with or without other
  conditions) are looked up instead of scanned, their string and ObjectId conditions checked
  without the engine's matcher; top-level equalities on scalars are checked before the engine's
  matcher; sort + limit is a top-k selection; unique indexes are checked through hash tables.
  Every other filter scans the collection. Inserts store the decoded document; updates of
  top-level fields by ``$set``/``$unset``/``$inc``/``$setOnInsert`` are applied in place, and
  findAndModify updates the document it found without a second lookup (mongo_collection.py:
  ``insert_decoded``, ``plan_update``, ``apply_update``); anything else goes to the engine.
  Connections are read with one ``recv`` per message when it fits; the TTL pass takes the lock
  2,000 documents at a time. ``python -m mrq.testing.mongo_latency`` measures it.
- TTL indexes are enforced by a background thread every ``TTL_PERIOD`` seconds (real MongoDB:
  about every 60 s). Idle cursors are dropped after ``CURSOR_TIMEOUT`` seconds, as in MongoDB.
- Capped collections are emulated (``size``/``max``; the oldest documents go on insert).
- No stored document exceeds 16 MiB: larger ones are refused as they arrive (inserts) and, as
  mongod does (codes 17419 and 17420), when an update or upsert would produce one.
- No stored document nests deeper than 180 levels (code 15, Overflow, as mongod); a write command
  of more than 100,000 statements fails whole (code 16, InvalidLength).

Modules: this one (wire protocol, TCP server, command line), ``mongo_engine`` (the command engine:
dispatch, cursors, reads, writes), ``mongo_catalog`` (databases, collections, indexes) and
``mongo_collection`` (the fast collection, sorting, TTL expiry).

Known gaps: tailable cursors, change streams, transactions, ``$text``, collations, ``explain``,
views, ``$$NOW``; ties in a sort come back in insertion order; arrays sort by their first element;
an update that the engine applies (dotted or positional fields, operators other than the fast
path's) fails on a document whose ``_id`` is an object ("unhashable type"; the fast path
updates it).
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import signal
import socket
import socketserver
import struct
import sys
import threading
import warnings
from typing import Any

import bson
from bson.codec_options import CodecOptions, DatetimeConversion

from .mongo_collection import DEFAULT_BATCH, MAX_BSON_SIZE, CommandError, Doc, FastCollection
from .mongo_engine import (
    CURSOR_TIMEOUT,
    MAX_MESSAGE_SIZE,
    MAX_WIRE_VERSION,
    SERVER_VERSION,
    Engine,
    _error_fields,
    _TooLarge,
)

#: Seconds between two TTL passes (real MongoDB: 60).
TTL_PERIOD = 1.0
OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013

_DECODE: CodecOptions[Doc] = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO)
#: A message header: length, request id, response to, opcode.
_HEADER = struct.Struct("<iiii")

__all__ = [  # what this module offered before the engine moved out
    "CURSOR_TIMEOUT", "DEFAULT_BATCH", "MAX_BSON_SIZE", "MAX_MESSAGE_SIZE", "MAX_WIRE_VERSION", "OP_MSG", "OP_QUERY",
    "OP_REPLY", "SERVER_VERSION", "TTL_PERIOD", "CommandError", "Doc", "Engine", "FastCollection", "handle_message",
    "main", "parse_op_msg", "serve", "serve_connection",
]  # fmt: skip


# --------------------------------------------------------------------------- wire protocol


def _decode_sequence(data: bytes) -> list[Any]:
    """The documents of an OP_MSG kind-1 section; oversize ones become ``_TooLarge``."""
    sizes, pos = [], 0
    while pos < len(data):
        sizes.append(struct.unpack_from("<i", data, pos)[0])
        pos += sizes[-1]
    if max(sizes, default=0) <= MAX_BSON_SIZE:
        return bson.decode_all(data, _DECODE)
    starts = list(itertools.accumulate(sizes, initial=0))[:-1]
    return [
        _TooLarge(n) if n > MAX_BSON_SIZE else bson.decode(data[i : i + n], _DECODE)
        for i, n in zip(starts, sizes, strict=True)
    ]


def parse_op_msg(body: bytes) -> tuple[int, Doc]:
    """``(flags, command)`` of an OP_MSG body (after the header), document sequences merged in."""
    (flags,) = struct.unpack_from("<I", body)
    end = len(body) - 4 if flags & 1 else len(body)  # flag bit 0: a CRC-32C trailer follows
    pos, command, sequences = 4, None, []
    while pos < end:
        kind, size = body[pos], struct.unpack_from("<i", body, pos + 1)[0]
        if kind == 0:
            if size > MAX_BSON_SIZE + 16 * 1024:
                raise CommandError(10334, f"command document too large: {size} bytes")
            command = bson.decode(body[pos + 1 : pos + 1 + size], _DECODE)
        elif kind == 1:
            name_end = body.index(b"\x00", pos + 5)
            sequences.append((body[pos + 5 : name_end].decode(), _decode_sequence(body[name_end + 1 : pos + 1 + size])))
        else:
            raise CommandError(2, f"unknown OP_MSG section kind {kind}")
        pos += 1 + size
    if command is None:
        raise CommandError(2, "OP_MSG without a body section")
    for name, docs in sequences:
        command.setdefault(name, []).extend(docs)
    return flags, command


def handle_message(engine: Engine, opcode: int, request_id: int, body: bytes, conn_id: int) -> bytes | None:
    """The reply to one wire message, or None when none is due (OP_MSG moreToCome)."""
    if opcode == OP_MSG:
        try:
            flags, command = parse_op_msg(body)
            reply = engine.run(command, conn_id)
        except Exception as exc:
            flags, reply = 0, bson.encode({"ok": 0.0, **_error_fields(exc)})
        if flags & 2:
            return None
        return b"".join((_HEADER.pack(21 + len(reply), 0, request_id, OP_MSG), b"\x00\x00\x00\x00\x00", reply))
    if opcode == OP_QUERY:  # only the legacy handshake: flags, namespace, skip, limit, query
        name_end = body.index(b"\x00", 4)
        query = bson.decode(body[name_end + 9 : name_end + 9 + struct.unpack_from("<i", body, name_end + 9)[0]])
        reply = engine.run(query.get("$query", query), conn_id, body[4:name_end].decode().partition(".")[0])
        payload = struct.pack("<iqii", 0, 0, 0, 1) + reply
        return _HEADER.pack(16 + len(payload), 0, request_id, OP_REPLY) + payload
    raise ConnectionAbortedError(f"unsupported opcode {opcode}")


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        engine, conn_id = self.server.engine, next(self.server.engine.connection_ids)
        engine.connect(conn_id, _is_loopback(self.client_address))
        try:
            serve_connection(sock, engine, conn_id)
        except OSError:  # the client went away, or ConnectionAbortedError on an unknown opcode
            return
        finally:
            engine.disconnect(conn_id)


#: Bytes asked of each recv: a whole message of the usual size arrives in one system call.
_RECV_SIZE = 32 * 1024


def serve_connection(sock: socket.socket, engine: Engine, conn_id: int) -> None:
    """Answer the messages of one connection until it closes (or sends a malformed header).
    One ``recv`` usually brings a whole message (header and body); a larger one is completed
    with ``recv_into`` into a buffer of its size; messages that arrive together are answered
    in order."""
    recv, sendall, unpack = sock.recv, sock.sendall, _HEADER.unpack_from
    limit = MAX_MESSAGE_SIZE + 16 * 1024
    data = b""
    while True:
        if len(data) < 16:
            chunk = recv(_RECV_SIZE)
            if not chunk:
                return
            data = data + chunk if data else chunk
            continue
        length, request_id, _, opcode = unpack(data)
        if not 16 < length <= limit:
            return
        if len(data) < length:
            data = _receive_rest(sock, data, length)
            if len(data) < length:
                return
        body, data = data[16:length], data[length:]
        reply = handle_message(engine, opcode, request_id, body, conn_id)
        if reply is not None:
            sendall(reply)


def _receive_rest(sock: socket.socket, data: bytes, length: int) -> bytes:
    """``data`` completed to ``length`` bytes (shorter if the connection closed first)."""
    buffer = bytearray(length)
    buffer[: len(data)] = data
    view, got = memoryview(buffer), len(data)
    while got < length:
        received = sock.recv_into(view[got:], length - got)
        if not received:
            return bytes(buffer[:got])
        got += received
    return bytes(buffer)


def _is_loopback(address: Any) -> bool:
    try:
        return ipaddress.ip_address(str(address[0])).is_loopback
    except (ValueError, IndexError, TypeError):
        return False


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], engine: Engine) -> None:
        self.engine = engine
        super().__init__(address, _Handler)


def _expire_forever(engine: Engine, stop: threading.Event) -> None:
    while not stop.wait(TTL_PERIOD):
        try:
            engine.expire_in_steps()
        except Exception as exc:
            print(f"mongo_server: TTL pass failed: {exc!r}", file=sys.stderr)


def serve(host: str, port: int, auth: bool = False, notablescan: bool = False) -> None:
    """Serve until SIGTERM/SIGINT (signals are handled when called from the main thread)."""
    warnings.filterwarnings("ignore", module=r"mongomock_ng(\..*)?$")  # the engine's "no-op option" notes
    engine, stop = Engine(auth=auth, notablescan=notablescan), threading.Event()
    server = _Server((host, port), engine)
    threading.Thread(target=_expire_forever, args=(engine, stop), name="ttl", daemon=True).start()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        stop.set()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mrq.testing.mongo_server",
        description="In-memory MongoDB-wire-compatible server for tests and demos. Not for production.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--auth", action="store_true",
                        help="enforce access control as mongod --auth (create the first user in admin from loopback)")
    parser.add_argument("--notablescan", action="store_true",
                        help="refuse queries no index serves, as mongod --setParameter notablescan=1 (code 291)")
    args = parser.parse_args(argv)
    try:
        serve(args.host, args.port, auth=args.auth, notablescan=args.notablescan)
    except KeyboardInterrupt:
        return 0
    except (OSError, OverflowError) as exc:
        print(f"mongo_server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
