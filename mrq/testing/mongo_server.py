"""A MongoDB-wire-protocol-compatible server for tests and demos. NOT for production.

It keeps everything in memory (``mongomock_ng`` is the query/update engine) and has no
authentication, persistence, replication or transactions. It exists because no real ``mongod``
can be installed on the project's dev and CI machines, while every process of the project
(workers, dashboard, CLI) must share one database through the real pymongo driver::

    python -m mrq.testing.mongo_server --port 27117 [--host 127.0.0.1]

The process prints nothing on success, is ready when its port accepts connections, and exits
with status 0 on SIGTERM or SIGINT.

Design:

- One thread per connection; every command runs under ONE global lock, so each command
  (``findAndModify`` claims included) is atomic with respect to all clients and processes.
- Wire protocol: OP_MSG (document sequences, checksum, moreToCome) and the legacy OP_QUERY
  handshake answered with OP_REPLY. The server advertises MongoDB 7.0 (wire version 21).
- Speed: filters on ``_id`` (``{_id: X}``, ``{_id: {$in: [...]}}``, with or without other
  conditions) are looked up instead of scanned; top-level equalities on scalars are checked
  before the engine's matcher; sort + limit is a top-k selection; unique indexes are checked
  through hash tables. Every other filter scans the collection.
- TTL indexes are enforced by a background thread every ``TTL_PERIOD`` seconds (real MongoDB:
  about every 60 s). Idle cursors are dropped after ``CURSOR_TIMEOUT`` seconds, as in MongoDB.
- Capped collections are emulated (``size``/``max``; the oldest documents go on insert).

Known gaps: tailable cursors, change streams, transactions, ``$text``, collations, ``explain``,
views, ``$$NOW``; ties in a sort come back in insertion order; arrays sort by their first element.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from bson.regex import Regex
from mongomock_ng import MongoClient, filtering, helpers
from mongomock_ng.aggregate import process_pipeline
from mongomock_ng.collection import Collection
from pymongo.errors import DuplicateKeyError, PyMongoError

Doc = dict[str, Any]

MAX_BSON_SIZE = 16 * 1024 * 1024
MAX_MESSAGE_SIZE = 48_000_000
MAX_WIRE_VERSION = 21  # MongoDB 7.0; >= 25 would make pymongo send 8.0-only commands
SERVER_VERSION = "7.0.0"
DEFAULT_BATCH = 101
#: Seconds between two TTL passes (real MongoDB: 60).
TTL_PERIOD = 1.0
#: Seconds after which an idle cursor is dropped (MongoDB's cursorTimeoutMillis).
CURSOR_TIMEOUT = 600.0
OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013

_DECODE: CodecOptions[Doc] = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO)
# fmt: off
_IGNORED_FIELDS = ("$db", "lsid", "$readPreference", "$clusterTime", "readConcern", "writeConcern", "maxTimeMS",
                   "comment", "backpressure", "txnNumber", "autocommit", "startTransaction", "apiVersion", "apiStrict",
                   "apiDeprecationErrors", "hint")
_CODE_NAMES = {
    1: "InternalError", 2: "BadValue", 9: "FailedToParse", 20: "IllegalOperation", 26: "NamespaceNotFound",
    27: "IndexNotFound", 43: "CursorNotFound", 48: "NamespaceExists", 59: "CommandNotFound", 72: "InvalidOptions",
    73: "InvalidNamespace", 85: "IndexOptionsConflict", 238: "NotImplemented", 10334: "BSONObjectTooLarge",
    11000: "DuplicateKey",
}
#: Python types whose values sort natively in the engine's BSON type order, as (rank, value).
_SORT_RANKS = {type(None): 5, int: 10, Int64: 10, float: 10, str: 15, ObjectId: 35, bool: 40, datetime: 45}
#: Python types whose ``==`` is MongoDB's equality between two values of the same kind.
_EQ_KINDS = {type(None): "null", int: "num", Int64: "num", float: "num", str: "str", ObjectId: "oid", bool: "bool",
             datetime: "date"}
# fmt: on
#: How MongoDB spells the commands in ``serverStatus().metrics.commands`` (clients may send any case).
_CANONICAL_NAMES = {name.lower(): name for name in (
    "insert", "update", "delete", "find", "getMore", "findAndModify", "aggregate", "count", "distinct", "create",
    "drop", "dropDatabase", "createIndexes", "listIndexes", "dropIndexes", "listCollections", "listDatabases",
    "renameCollection", "collStats", "dbStats", "killCursors", "hello", "isMaster", "ping", "buildInfo",
    "serverStatus", "endSessions", "killSessions", "killAllSessions", "commitTransaction", "abortTransaction",
)}  # fmt: skip
_UNSUPPORTED_FIND_OPTIONS = ("tailable", "awaitData", "min", "max", "returnKey", "showRecordId")
_INDEX_OPTIONS = ("unique", "sparse", "expireAfterSeconds", "partialFilterExpression")
_COUNT_STAGE = {"$group": {"_id": 1, "n": {"$sum": 1}}}  # what pymongo's count_documents ends with
_MISSING = object()


class CommandError(Exception):
    """A command failure, sent to the client as ``{ok: 0, errmsg, code, codeName}``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _TooLarge:
    """Stands for a document of a document sequence that exceeds ``MAX_BSON_SIZE``."""

    def __init__(self, size: int) -> None:
        self.size = size


def _error_fields(exc: BaseException) -> Doc:
    if isinstance(exc, CommandError):
        code = exc.code
    elif isinstance(exc, PyMongoError):
        code = getattr(exc, "code", None) or 2
    elif isinstance(exc, NotImplementedError):
        code = 238
    else:
        code = 2 if isinstance(exc, (ValueError, TypeError, bson.InvalidDocument)) else 1
    message = getattr(exc, "_message", None) or str(exc) or type(exc).__name__
    fields: Doc = {"errmsg": message, "code": code, "codeName": _CODE_NAMES.get(code, "UnknownError")}
    details = getattr(exc, "details", None)
    if isinstance(exc, DuplicateKeyError) and isinstance(details, dict):
        fields.update({k: details[k] for k in ("keyPattern", "keyValue") if k in details})
        pattern = list(fields.get("keyPattern", {"_id": 1}).items())
        index = "_id_" if pattern == [("_id", 1)] else helpers.gen_index_name(pattern)
        fields["errmsg"] = f"E11000 duplicate key error index: {index} dup key: {fields.get('keyValue')}"
    return fields


# --------------------------------------------------------------------------- query helpers


def _store_key(value: Any) -> Any:
    """The key of a document in the engine's store (``_id``, hashable)."""
    return helpers.hashdict(value) if isinstance(value, dict) else value


def _id_candidates(documents: dict[Any, Doc], spec: Doc) -> list[Doc] | None:
    """Documents matching ``spec``, found through its ``_id`` condition; None when a scan is needed."""
    if "_id" not in spec:
        return None
    cond = spec["_id"]
    values = [cond]
    if isinstance(cond, dict) and any(str(k).startswith("$") for k in cond):
        if list(cond) == ["$eq"]:
            values = [cond["$eq"]]
        elif list(cond) == ["$in"] and isinstance(cond["$in"], list):
            values = cond["$in"]
        else:
            return None
    rest = {k: v for k, v in spec.items() if k != "_id"}
    found: dict[int, Doc] = {}
    for value in values:
        if isinstance(value, (list, re.Pattern, Regex)) or (
            isinstance(value, dict) and any(str(k).startswith("$") for k in value)
        ):
            return None
        try:
            doc = documents.get(_store_key(value))
        except TypeError:
            return None
        if doc is None or id(doc) in found:
            continue
        kind = _EQ_KINDS.get(type(value))
        same = kind is not None and kind == _EQ_KINDS.get(type(doc["_id"])) and value == doc["_id"]
        same = same or filtering.filter_applies({"_id": value}, doc)
        if same and (not rest or filtering.filter_applies(rest, doc)):
            found[id(doc)] = doc
    result = list(found.values())
    return _order(result, ["_id"], [1], 0) if len(result) > 1 else result  # in _id index order


def _quick_conditions(spec: Doc) -> list[tuple[str, Any, str]]:
    """The top-level ``{field: scalar}`` equalities of a filter, checkable without the engine."""
    conditions = []
    for key, value in spec.items():
        kind = _EQ_KINDS.get(type(value))
        if kind is not None and not key.startswith("$") and "." not in key and value == value:  # not NaN
            conditions.append((key, value, kind))
    return conditions


def _quick_match(conditions: list[tuple[str, Any, str]], doc: Doc) -> bool | None:
    """True/False when the conditions decide alone; None when a value (an array...) needs the engine."""
    for key, value, kind in conditions:
        actual = doc.get(key, _MISSING)
        if actual is _MISSING:
            if kind != "null":
                return False
            continue
        actual_kind = _EQ_KINDS.get(type(actual))
        if actual_kind is None:
            return None
        if actual_kind != kind or actual != value:
            return False
    return True


class _SortKey:
    """Sort key over several fields with mixed directions."""

    __slots__ = ("dirs", "parts")

    def __init__(self, parts: list[Any], dirs: list[int]) -> None:
        self.parts, self.dirs = parts, dirs

    def __lt__(self, other: _SortKey) -> bool:
        for a, b, direction in zip(self.parts, other.parts, self.dirs, strict=True):
            if a < b:
                return direction > 0
            if b < a:
                return direction < 0
        return False


def _native_columns(docs: list[Doc], names: list[str], dirs: list[int]) -> tuple[list[Any], list[int]] | None:
    """Per field, plain-Python keys in the engine's BSON type order; None if a value needs the engine.

    In a mixed-direction sort, a descending field of numbers only is negated and made ascending,
    so that the common ``priority`` descending, ``_id`` ascending compares natively.
    """
    if any("." in name for name in names):
        return None
    columns, new_dirs = [], list(dirs)
    for i, name in enumerate(names):
        values: list[Any] = [doc.get(name) for doc in docs]
        ranks: list[Any] = [_SORT_RANKS.get(type(value)) for value in values]
        if None in ranks or any(value != value for value in values):  # NaN
            return None
        if dirs[i] < 0 and len(set(dirs)) > 1 and set(ranks) == {10}:
            columns.append([(10, -value) for value in values])
            new_dirs[i] = 1
        else:
            columns.append(list(zip(ranks, values, strict=True)))
    return columns, new_dirs


def _order(docs: list[Doc], names: list[str], dirs: list[int], count: int) -> list[Doc]:
    """``docs`` sorted, stable; only the first ``count`` (top-k selection) when non-zero."""
    native = _native_columns(docs, names, dirs)
    for columns, directions in ([native] if native else []) + [(None, dirs)]:
        engine_keys = columns is None
        if columns is None:
            columns = [[filtering.resolve_sort_key(name, doc) for doc in docs] for name in names]
        keys: list[Any] = list(zip(*columns, strict=True))
        if len(set(directions)) > 1:
            keys = [_SortKey(list(key), directions) for key in keys]
        reverse = len(set(directions)) == 1 and directions[0] < 0
        try:
            if count:
                order = (heapq.nlargest if reverse else heapq.nsmallest)(count, range(len(docs)), keys.__getitem__)
            else:
                order = sorted(range(len(docs)), key=keys.__getitem__, reverse=reverse)
        except TypeError:  # e.g. naive and aware datetimes: let the engine compare
            if engine_keys:
                raise
            continue
        return [docs[i] for i in order]
    raise AssertionError("unreachable")


def _select(docs: list[Doc], sort: Doc | None, skip: int = 0, limit: int = 0) -> list[Doc]:
    """Sort, then skip and limit."""
    if sort:
        keys = [(k, d) for k, d in sort.items() if k != "$natural"]
        if sort.get("$natural", 1) < 0:
            docs = docs[::-1]
        for key, direction in keys:
            if not isinstance(direction, (int, float)) or key.startswith("$"):
                raise CommandError(238, f"sort by {key}: {direction!r} is not supported by this test server")
        if keys:
            count = skip + limit if limit > 0 and skip + limit < len(docs) else 0
            docs = _order(docs, [k for k, _ in keys], [1 if d > 0 else -1 for _, d in keys], count)
    return docs[skip : skip + limit if limit > 0 else None]


class FastCollection(Collection):
    """The engine's collection, with an ``_id`` fast path, quick equality checks and hashed unique indexes."""

    def _iter_documents(self, filter: Doc) -> Iterator[Doc]:
        if not isinstance(filter, dict):
            return super()._iter_documents(filter)
        found = _id_candidates(self._store._documents, filter)
        if found is not None:
            return iter(found)
        conditions = _quick_conditions(filter)
        if not conditions:
            return super()._iter_documents(filter)
        complete = len(conditions) == len(filter)
        return (
            doc
            for doc in list(self._store._documents.values())
            if (quick := _quick_match(conditions, doc)) is not False
            and ((quick and complete) or filtering.filter_applies(filter, doc))
        )

    def _ensure_uniques(self, new_data: Doc) -> None:
        """Check unique indexes through a lazily built ``entry -> _id`` table per index.

        The engine sends every document it writes through this method, so the table points to
        the holder of each entry; entries left by deleted or changed documents are detected by
        re-checking the document the table points to.
        """
        store = self._store
        tables: dict[str, tuple[Doc, dict[Any, Any] | None]] = store.__dict__.setdefault("_mrq_unique", {})
        to_register: list[tuple[dict[Any, Any], list[Any]]] = []
        new_id = new_data.get("_id")
        for name, index in store.indexes.items():
            pfe, key, sparse = index.get("partialFilterExpression"), index["key"], index.get("sparse")
            if not index.get("unique") or (pfe is not None and not filtering.filter_applies(pfe, new_data)):
                continue
            entries = self._compute_index_entries(new_data, key, sparse)
            if entries is None:
                continue
            if name not in tables or tables[name][0] is not index:
                tables[name] = (index, self._unique_table(index, new_id))
            table = tables[name][1]
            try:
                holders = None if table is None else {table.get(e, _MISSING) for e in entries} - {_MISSING}
            except TypeError:
                holders = None
            docs = store._documents
            keys = docs if holders is None else [k for k in map(_store_key, holders) if k in docs]
            for doc in [docs[k] for k in keys]:
                if doc.get("_id") == new_id or (pfe is not None and not filtering.filter_applies(pfe, doc)):
                    continue
                other = self._compute_index_entries(doc, key, sparse)
                if other is not None and self._entries_overlap(entries, other):
                    value = {k: helpers.get_value_by_dot(new_data, k) for k, _ in key}
                    raise DuplicateKeyError("E11000", 11000, {"keyPattern": dict(key), "keyValue": value})
            if table is not None and holders is not None:
                to_register.append((table, entries))
        for table, entries in to_register:
            table.update(dict.fromkeys(entries, new_id))

    def _unique_table(self, index: Doc, exclude_id: Any) -> dict[Any, Any] | None:
        table: dict[Any, Any] = {}
        pfe = index.get("partialFilterExpression")
        for doc in self._store._documents.values():
            if doc.get("_id") == exclude_id or (pfe is not None and not filtering.filter_applies(pfe, doc)):
                continue
            entries = self._compute_index_entries(doc, index["key"], index.get("sparse")) or ()
            try:
                table.update(dict.fromkeys(entries, doc.get("_id")))
            except TypeError:
                return None  # unhashable values: scan like the engine
        return table


def _expire(documents: dict[Any, Doc], index: Doc) -> None:
    """Delete the documents of a single-field TTL index whose (earliest) date is past expiry."""
    try:
        cutoff = datetime.now(UTC) - timedelta(seconds=float(index["expireAfterSeconds"]))
    except (TypeError, ValueError, OverflowError):
        return
    field, pfe, naive_cutoff = index["key"][0][0], index.get("partialFilterExpression"), cutoff.replace(tzinfo=None)
    expired = []
    for key, doc in documents.items():
        value = doc.get(field) if "." not in field else helpers.get_value_by_dot(doc, field)
        if type(value) is datetime and value.tzinfo is None:  # the common case, fast
            if value > naive_cutoff:
                continue
        elif isinstance(value, (datetime, list)):  # aware dates, arrays: the earliest date counts
            dates = [v if v.tzinfo else v.replace(tzinfo=UTC) for v in _as_list(value) if isinstance(v, datetime)]
            if not dates or min(dates) > cutoff:
                continue
        else:
            continue
        if pfe is None or filtering.filter_applies(pfe, doc):
            expired.append(key)
    for key in expired:
        del documents[key]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _bson_size(doc: Doc) -> int:
    return len(bson.encode(doc))


class _Cursor:
    __slots__ = ("docs", "id", "last_used", "ns", "pos", "project")

    def __init__(self, cursor_id: int, ns: str, docs: list[Doc], project: Callable[[Doc], Any] | None) -> None:
        self.id, self.ns, self.docs, self.project = cursor_id, ns, docs, project
        self.pos, self.last_used = 0, time.monotonic()


# --------------------------------------------------------------------------- commands


class Engine:
    """Executes decoded commands against the in-memory store, one at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.client: Any = MongoClient()
        self.collections: dict[tuple[str, str], FastCollection] = {}
        self.cursors: dict[int, _Cursor] = {}
        self.capped: dict[tuple[str, str], Doc] = {}
        self.cursor_ids = itertools.count(1)
        self.connection_ids = itertools.count(1)
        self.started = time.monotonic()
        self.handlers: dict[str, Callable[[str, Doc, int], Doc]] = {
            name[4:]: getattr(self, name) for name in dir(self) if name.startswith("cmd_")
        }
        self.handlers["ismaster"] = self.cmd_hello
        self.opcounters = dict.fromkeys(("insert", "query", "update", "delete", "getmore", "command"), 0)
        self.command_counts: dict[str, list[int]] = {}  # name -> [total, failed]
        for name in ("ping", "endsessions", "killsessions", "killallsessions"):
            self.handlers[name] = lambda db, cmd, conn_id: {"ok": 1.0}

    def run(self, cmd: Doc, conn_id: int, db: str = "admin") -> bytes:
        """Execute one command and encode its reply (an error reply on any failure)."""
        try:
            with self.lock:  # encoding too: cursors hold references to stored documents
                return bson.encode(self.dispatch(cmd, conn_id, db))
        except Exception as exc:
            return bson.encode({"ok": 0.0, **_error_fields(exc)})

    def dispatch(self, cmd: Doc, conn_id: int, db: str) -> Doc:
        db = cmd.get("$db", db)
        if cmd.get("startTransaction") or "txnNumber" in cmd:
            raise CommandError(20, "Transaction numbers are only allowed on a replica set member or mongos")
        for field in _IGNORED_FIELDS:
            cmd.pop(field, None)
        name = next(iter(cmd), "")
        handler = self.handlers.get(name.lower())
        if handler is None:
            self._count("<UNKNOWN>", failed=True)
            raise CommandError(59, f"no such command: '{name}'")
        try:
            reply = handler(db, cmd, conn_id)
        except Exception:
            self._count(name, cmd, failed=True)
            raise
        self._count(name, cmd)
        return reply

    # ---- per-command counters, shaped like serverStatus().opcounters and metrics.commands
    def _count(self, name: str, cmd: Doc | None = None, failed: bool = False) -> None:
        """Count one command as MongoDB does: per command in ``metrics.commands.<name>``, and in
        ``opcounters`` per inserted document, per update/delete statement, per find and getMore,
        and per other command."""
        name = _CANONICAL_NAMES.get(name.lower(), name)
        entry = self.command_counts.setdefault(name, [0, 0])
        entry[0] += 1
        entry[1] += failed
        ops = self.opcounters
        if cmd is None:
            ops["command"] += 1
        elif name == "insert":
            ops["insert"] += len(cmd.get("documents") or ())
        elif name == "update":
            ops["update"] += len(cmd.get("updates") or ())
        elif name == "delete":
            ops["delete"] += len(cmd.get("deletes") or ())
        elif name == "find":
            ops["query"] += 1
        elif name == "getMore":
            ops["getmore"] += 1
        else:
            ops["command"] += 1

    def coll(self, db: str, name: Any) -> FastCollection:
        if not isinstance(name, str) or not name or "$" in name or "\x00" in name:
            raise CommandError(73, f"Invalid collection name: {name!r}")
        if (db, name) not in self.collections:
            database = self.client[db]
            self.collections[db, name] = FastCollection(
                database, name, _db_store=database._store, codec_options=database.codec_options
            )
        return self.collections[db, name]

    def _existing(self, db: str, name: str) -> FastCollection:
        coll = self.coll(db, name)
        if not coll._store.is_created:
            raise CommandError(26, f"ns does not exist: {db}.{name}")
        return coll

    def _db_store(self, db: str) -> Any:
        return self.client._store._databases.get(db)

    def _matching(self, coll: FastCollection, spec: Any) -> list[Doc]:
        if not isinstance(spec, dict | None):
            raise CommandError(2, "the filter must be an object")
        return list(coll._iter_documents(spec or {}))

    # ---- cursors
    def _batch(self, cursor: _Cursor, size: int) -> list[RawBSONDocument]:
        """Up to ``size`` documents (0: any number) and about 16 MiB, each encoded once."""
        out: list[RawBSONDocument] = []
        total = 0
        while cursor.pos < len(cursor.docs) and (size <= 0 or len(out) < size):
            doc = cursor.docs[cursor.pos]
            raw = bson.encode(doc) if cursor.project is None else bson.encode(cursor.project(doc) or {})
            if out and total + len(raw) > MAX_BSON_SIZE:
                break
            cursor.pos += 1
            if len(raw) > 5:  # a projection may drop a document ($size): skip empty ones
                out.append(RawBSONDocument(raw))
                total += len(raw)
        cursor.last_used = time.monotonic()
        return out

    def _cursor_reply(self, ns: str, docs: list[Doc], size: int, project: Any = None, single: bool = False) -> Doc:
        cursor = _Cursor(next(self.cursor_ids), ns, docs, project)
        batch = self._batch(cursor, size) if size != 0 else []
        cursor_id = 0 if single or cursor.pos >= len(docs) else cursor.id
        if cursor_id:
            self.cursors[cursor_id] = cursor
        return {"cursor": {"firstBatch": batch, "id": Int64(cursor_id), "ns": ns}, "ok": 1.0}

    def cmd_getmore(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        cursor = self.cursors.get(int(cmd["getMore"]))
        if cursor is None:
            raise CommandError(43, f"cursor id {cmd['getMore']} not found")
        batch = self._batch(cursor, int(cmd.get("batchSize", 0)))
        if cursor.pos >= len(cursor.docs):
            del self.cursors[cursor.id]
        cursor_id = cursor.id if cursor.id in self.cursors else 0
        return {"cursor": {"nextBatch": batch, "id": Int64(cursor_id), "ns": cursor.ns}, "ok": 1.0}

    def cmd_killcursors(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        ids = cmd.get("cursors", [])
        killed = [cursor_id for cursor_id in ids if self.cursors.pop(int(cursor_id), None)]
        not_found = [cursor_id for cursor_id in ids if cursor_id not in killed]
        return {"cursorsKilled": killed, "cursorsNotFound": not_found, "cursorsAlive": [], "cursorsUnknown": [],
                "ok": 1.0}  # fmt: skip

    def expire(self) -> None:
        """One TTL pass plus the idle-cursor cleanup (the caller holds the lock)."""
        for db_store in list(self.client._store._databases.values()):
            for cstore in list(db_store._collections.values()):
                for index in list(cstore.indexes.values()):
                    if index.get("expireAfterSeconds") is not None and len(index["key"]) == 1:
                        _expire(cstore._documents, index)
        deadline = time.monotonic() - CURSOR_TIMEOUT
        for cursor in [c for c in self.cursors.values() if c.last_used < deadline]:
            del self.cursors[cursor.id]

    # ---- capped collections (emulated)
    def _capped_insert(self, db: str, name: str, coll: FastCollection, ids: list[Any]) -> None:
        cap, documents = self.capped[db, name], coll._store._documents
        for key in map(_store_key, ids):
            if key in documents:
                cap["sizes"][key] = _bson_size(documents[key])
                cap["total"] += cap["sizes"][key]
        while len(documents) > 1 and ((cap["max"] and len(documents) > cap["max"]) or cap["total"] > cap["size"]):
            key = next(iter(documents))
            del documents[key]
            cap["total"] -= cap["sizes"].pop(key, 0)

    def _capped_recount(self, db: str, name: str, coll: FastCollection) -> None:
        if (db, name) in self.capped:
            sizes = {k: _bson_size(d) for k, d in coll._store._documents.items()}
            self.capped[db, name].update(sizes=sizes, total=sum(sizes.values()))

    # ---- handshake and server information
    def cmd_hello(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        legacy = next(iter(cmd)).lower() == "ismaster"
        reply: Doc = {"ismaster" if legacy else "isWritablePrimary": True}
        if cmd.get("helloOk") or not legacy:
            reply["helloOk"] = True
        return reply | {
            "maxBsonObjectSize": MAX_BSON_SIZE, "maxMessageSizeBytes": MAX_MESSAGE_SIZE, "maxWriteBatchSize": 100_000,
            "localTime": datetime.now(UTC), "logicalSessionTimeoutMinutes": 30, "connectionId": conn_id,
            "minWireVersion": 0, "maxWireVersion": MAX_WIRE_VERSION, "readOnly": False, "ok": 1.0,
        }  # fmt: skip

    def cmd_buildinfo(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        version = [*map(int, SERVER_VERSION.split(".")), 0]
        return {"version": SERVER_VERSION, "gitVersion": "mrq-test-server", "versionArray": version, "bits": 64,
                "debug": False, "maxBsonObjectSize": MAX_BSON_SIZE, "ok": 1.0}  # fmt: skip

    def cmd_serverstatus(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        """The parts of MongoDB's serverStatus this server keeps. ``opcounters`` and
        ``metrics.commands`` count every command answered before this one (a command is counted
        when it ends; ``failed`` counts the ``ok: 0`` replies)."""
        commands = {name: {"failed": Int64(failed), "total": Int64(total)}
                    for name, (total, failed) in sorted(self.command_counts.items())}
        return {"host": socket.gethostname(), "version": SERVER_VERSION, "process": "mrq-test-mongod",
                "uptime": time.monotonic() - self.started, "localTime": datetime.now(UTC),
                "connections": {"totalCreated": conn_id},
                "opcounters": {name: Int64(value) for name, value in self.opcounters.items()},
                "metrics": {"commands": commands}, "ok": 1.0}  # fmt: skip

    def cmd_committransaction(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        raise CommandError(20, "Transactions are not supported by this test server (a standalone)")

    cmd_aborttransaction = cmd_committransaction

    # ---- writes
    def _write(self, cmd: Doc, statements: list[Any], apply: Callable[[int, Any], None]) -> Doc:
        """Apply each statement in order; failures become writeErrors (stop at the first if ordered)."""
        errors = []
        for index, statement in enumerate(statements):
            try:
                if isinstance(statement, _TooLarge):
                    raise CommandError(10334, f"object too large: {statement.size} bytes > {MAX_BSON_SIZE}")
                apply(index, statement)
            except Exception as exc:
                errors.append({"index": index, **_error_fields(exc)})
                if cmd.get("ordered", True):
                    break
        return {"writeErrors": errors} if errors else {}

    def cmd_insert(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        name, inserted = cmd["insert"], []
        coll, valid = self.coll(db, name), not cmd.get("bypassDocumentValidation")
        docs = cmd.get("documents", [])
        errors = self._write(cmd, docs, lambda _, doc: inserted.append(coll._insert(doc, validate=valid)))
        if (db, name) in self.capped:
            self._capped_insert(db, name, coll, inserted)
        return {"n": len(inserted), **errors, "ok": 1.0}

    def cmd_update(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        coll, counts, upserted = self.coll(db, cmd["update"]), [0, 0], []

        def apply(index: int, st: Doc) -> None:
            result = coll._update(st["q"], st["u"], upsert=bool(st.get("upsert")), multi=bool(st.get("multi")),
                                  array_filters=st.get("arrayFilters"), collation=st.get("collation"),
                                  validate=not cmd.get("bypassDocumentValidation"))  # fmt: skip
            counts[0] += result["n"]
            counts[1] += result["nModified"]
            if result["upserted"] is not None:
                upserted.append({"index": index, "_id": result["upserted"]})

        errors = self._write(cmd, cmd.get("updates", []), apply)
        self._capped_recount(db, cmd["update"], coll)
        return {"n": counts[0], "nModified": counts[1], **({"upserted": upserted} if upserted else {}), **errors,
                "ok": 1.0}  # fmt: skip

    def cmd_delete(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        coll, deleted = self.coll(db, cmd["delete"]), []

        def apply(index: int, st: Doc) -> None:
            deleted.append(coll._delete(st["q"], collation=st.get("collation"), multi=not st.get("limit"))["n"])

        errors = self._write(cmd, cmd.get("deletes", []), apply)
        self._capped_recount(db, cmd["delete"], coll)
        return {"n": sum(deleted), **errors, "ok": 1.0}

    def cmd_findandmodify(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        name = next(iter(cmd.values()))
        coll = self.coll(db, name)
        query, update, projection = cmd.get("query") or {}, cmd.get("update"), cmd.get("fields")
        remove, new, upsert = bool(cmd.get("remove")), bool(cmd.get("new")), bool(cmd.get("upsert"))
        if remove == (update is not None) or (remove and (new or upsert)):
            raise CommandError(9, "specify either an update, or remove=true without new and upsert")
        if cmd.get("sort"):
            found = _select(self._matching(coll, query), cmd["sort"], 0, 1)
            old = found[0] if found else None
        else:
            old = next(coll._iter_documents(query), None)
        value, last_error, upserted = None, {"n": 0, "updatedExisting": False}, None
        if old is not None:
            last_error = {"n": 1} if remove else {"n": 1, "updatedExisting": True}
            value = None if new else coll._copy_only_fields(old, projection, dict, filter=query)
            spec = {**query, "_id": old["_id"]}  # keeps the query for the positional operator
            if remove:
                coll._delete(spec)
            else:
                validate = not cmd.get("bypassDocumentValidation")
                coll._update(spec, update, array_filters=cmd.get("arrayFilters"), validate=validate)
        elif upsert:
            upserted = coll._update(query, update, upsert=True, array_filters=cmd.get("arrayFilters"))["upserted"]
            last_error = {"n": 1, "updatedExisting": False, "upserted": upserted}
        if new and (old is not None or upserted is not None):
            doc = coll._store._documents.get(_store_key(upserted if old is None else old["_id"]))
            value = None if doc is None else coll._copy_only_fields(doc, projection, dict, filter=query)
        self._capped_recount(db, name, coll)
        return {"lastErrorObject": {"n": 0} if remove and old is None else last_error, "value": value, "ok": 1.0}

    # ---- reads
    def cmd_find(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        for option in _UNSUPPORTED_FIND_OPTIONS:
            if cmd.get(option):
                raise CommandError(238, f"find option '{option}' is not supported by this test server")
        if cmd.get("collation") and cmd["collation"].get("locale") != "simple":
            raise CommandError(238, "collations are not supported by this test server")
        name, spec, limit = cmd["find"], cmd.get("filter") or {}, int(cmd.get("limit", 0))
        coll = self.coll(db, name)
        docs = _select(self._matching(coll, spec), cmd.get("sort"), int(cmd.get("skip", 0)), abs(limit))
        projection = cmd.get("projection")
        project = (lambda doc: coll._copy_only_fields(doc, projection, dict, filter=spec)) if projection else None
        batch = int(cmd.get("batchSize", DEFAULT_BATCH))
        return self._cursor_reply(f"{db}.{name}", docs, batch, project, single=cmd.get("singleBatch") or limit < 0)

    def cmd_count(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        n = max(len(self._matching(self.coll(db, cmd["count"]), cmd.get("query"))) - int(cmd.get("skip", 0)), 0)
        limit = abs(int(cmd.get("limit", 0)))
        return {"n": min(n, limit) if limit else n, "ok": 1.0}

    def cmd_distinct(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        return {"values": self.coll(db, cmd["distinct"]).distinct(cmd["key"], cmd.get("query") or {}), "ok": 1.0}

    def cmd_aggregate(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        name, pipeline = cmd["aggregate"], list(cmd.get("pipeline", []))
        if not isinstance(name, str) or cmd.get("explain"):
            raise CommandError(238, "database aggregations and explain are not supported by this test server")
        coll = self.coll(db, name)
        first = pipeline[0] if pipeline else {}
        if "$collStats" in first:
            stats = self.cmd_collstats(db, {"collStats": name}, conn_id)
            docs = [{"ns": stats["ns"], "count": stats["count"], "storageStats": stats}]
            pipeline.pop(0)
        else:
            spec = first["$match"] if list(first) == ["$match"] else {}
            docs = self._matching(coll, spec)
            pipeline = pipeline[1:] if spec else pipeline
            if pipeline[-1:] == [_COUNT_STAGE] and all(set(s) <= {"$skip", "$limit"} for s in pipeline[:-1]):
                n = len(docs)  # pymongo's count_documents: count without copying documents
                for stage in pipeline[:-1]:
                    n = max(n - int(stage["$skip"]), 0) if "$skip" in stage else min(n, int(stage["$limit"]))
                docs, pipeline = ([{"_id": 1, "n": n}] if n else []), []
            else:
                docs = [coll._copy_only_fields(doc, None, dict) for doc in docs]
        if pipeline:
            docs = list(process_pipeline(docs, coll.database, pipeline, None))
        if any("$out" in stage or "$merge" in stage for stage in pipeline):
            for cstore in self._db_store(db)._collections.values():
                cstore.__dict__.pop("_mrq_unique", None)  # written behind FastCollection's back
            docs = []
        return self._cursor_reply(f"{db}.{name}", docs, int((cmd.get("cursor") or {}).get("batchSize", DEFAULT_BATCH)))

    # ---- catalog
    def cmd_create(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        name = cmd["create"]
        store = self.coll(db, name)._store
        if store.is_created:
            raise CommandError(48, f"Collection {db}.{name} already exists.")
        if "viewOn" in cmd:
            raise CommandError(238, "views are not supported by this test server")
        if cmd.get("capped"):
            if not cmd.get("size"):
                raise CommandError(72, "the 'size' field is required when 'capped' is true")
            size = max(4096, -(-int(cmd["size"]) // 256) * 256)  # rounded up like MongoDB
            self.capped[db, name] = {"size": size, "max": int(cmd.get("max") or 0), "sizes": {}, "total": 0}
        store.create(**{k: v for k, v in cmd.items() if k in store._supported_options})
        return {"ok": 1.0}

    def cmd_listcollections(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        entries = []
        for name, cstore in list(getattr(self._db_store(db), "_collections", {}).items()):
            if cstore.is_created:
                options = dict(cstore.options)
                if (db, name) in self.capped:
                    cap = self.capped[db, name]
                    options.update(capped=True, size=cap["size"], **({"max": cap["max"]} if cap["max"] else {}))
                entries.append({"name": name, "type": "collection", "options": options, "info": {"readOnly": False},
                                "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}})  # fmt: skip
        entries = [e for e in entries if filtering.filter_applies(cmd.get("filter") or {}, e)]
        if cmd.get("nameOnly"):
            entries = [{"name": e["name"], "type": e["type"]} for e in entries]
        batch = int((cmd.get("cursor") or {}).get("batchSize", DEFAULT_BATCH))
        return self._cursor_reply(f"{db}.$cmd.listCollections", entries, batch)

    def cmd_listdatabases(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        names = [name for name, store in list(self.client._store._databases.items()) if store.is_created]
        entries: list[Doc] = []
        for name in names:
            size = {} if cmd.get("nameOnly") else {"sizeOnDisk": self.cmd_dbstats(name, {}, conn_id)["storageSize"]}
            entries.append({"name": name, **size, **({"empty": False} if size else {})})
        entries = [e for e in entries if filtering.filter_applies(cmd.get("filter") or {}, e)]
        total = {} if cmd.get("nameOnly") else {"totalSize": sum(e["sizeOnDisk"] for e in entries)}
        return {"databases": entries, **total, "ok": 1.0}

    def cmd_drop(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        name = cmd["drop"]
        store = self._existing(db, name)._store
        indexes = len(store.indexes) + 1
        store.drop()
        self._db_store(db)._collections.pop(name, None)
        self.capped.pop((db, name), None)
        return {"ns": f"{db}.{name}", "nIndexesWas": indexes, "ok": 1.0}

    def cmd_dropdatabase(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        self.client._store._databases.pop(db, None)
        self.client._database_accesses.pop(db, None)
        for mapping in (self.collections, self.capped):
            for key in [k for k in mapping if k[0] == db]:
                del mapping[key]
        return {"dropped": db, "ok": 1.0}

    def cmd_renamecollection(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        (src_db, _, src), (dst_db, _, dst) = str(cmd["renameCollection"]).partition("."), str(cmd["to"]).partition(".")
        if src_db != dst_db:
            raise CommandError(238, "renaming across databases is not supported by this test server")
        self._existing(src_db, src)
        if self.coll(dst_db, dst)._store.is_created:
            if not cmd.get("dropTarget"):
                raise CommandError(48, f"target namespace {cmd['to']} exists")
            self.cmd_drop(dst_db, {"drop": dst}, conn_id)
        self._db_store(src_db).rename(src, dst)
        if (src_db, src) in self.capped:
            self.capped[dst_db, dst] = self.capped.pop((src_db, src))
        return {"ok": 1.0}

    def cmd_createindexes(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        coll = self.coll(db, cmd["createIndexes"])
        existed = bool(coll._store.is_created)
        before = len(coll._store.indexes) + 1 if existed else 0
        for spec in cmd.get("indexes", []):
            keys = list(spec["key"].items())
            if keys == [("_id", 1)]:
                continue
            options = {k: spec[k] for k in _INDEX_OPTIONS if k in spec}
            try:
                coll.create_index(keys, name=spec.get("name") or helpers.gen_index_name(keys), **options)
            except DuplicateKeyError:
                raise
            except PyMongoError as exc:
                raise CommandError(85, str(exc))
            coll._store._ttl_indexes.clear()  # TTL runs in the background thread, not on every access
        coll._store._is_force_created = True
        after = len(coll._store.indexes) + 1
        return {"createdCollectionAutomatically": not existed, "numIndexesBefore": before, "numIndexesAfter": after,
                "ok": 1.0}  # fmt: skip

    def cmd_listindexes(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        name = cmd["listIndexes"]
        indexes = [{"v": 2, **info, "key": dict(info["key"]), "name": index}
                   for index, info in self._existing(db, name)._list_all_indexes()]  # fmt: skip
        batch = int((cmd.get("cursor") or {}).get("batchSize", DEFAULT_BATCH))
        return self._cursor_reply(f"{db}.{name}", indexes, batch)

    def cmd_dropindexes(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        indexes, wanted = self._existing(db, cmd["dropIndexes"])._store.indexes, cmd.get("index")
        reply = {"nIndexesWas": len(indexes) + 1, "ok": 1.0}
        if wanted == "*":
            indexes.clear()
            return reply
        if isinstance(wanted, dict):
            names = ["_id_"] if wanted == {"_id": 1} else [n for n, i in indexes.items() if dict(i["key"]) == wanted]
        else:
            names = wanted if isinstance(wanted, list) else [wanted]
        for name in names or [str(wanted)]:
            if name == "_id_":
                raise CommandError(72, "cannot drop _id index")
            if name not in indexes:
                raise CommandError(27, f"index not found with name [{name}]")
        for name in names:
            del indexes[name]
        return reply

    def cmd_collstats(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        name, db_store = cmd["collStats"], self._db_store(db)
        cstore = db_store._collections.get(name) if db_store else None
        docs = list(cstore._documents.values()) if cstore is not None else []
        size = sum(map(_bson_size, docs))
        cap = self.capped.get((db, name))
        return {"ns": f"{db}.{name}", "count": len(docs), "size": size, "avgObjSize": size // len(docs) if docs else 0,
                "storageSize": size, "nindexes": len(cstore.indexes) + 1 if cstore is not None else 0,
                "totalIndexSize": 0, "indexSizes": {}, "totalSize": size, "capped": cap is not None,
                **({"maxSize": cap["size"], "max": cap["max"]} if cap else {}), "ok": 1.0}  # fmt: skip

    def cmd_dbstats(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        names = self._db_store(db).list_created_collection_names() if self._db_store(db) else []
        stats = [self.cmd_collstats(db, {"collStats": n}, conn_id) for n in names]
        objects, size = sum(s["count"] for s in stats), sum(s["size"] for s in stats)
        return {"db": db, "collections": len(names), "views": 0, "objects": objects,
                "avgObjSize": size / objects if objects else 0, "dataSize": size, "storageSize": size,
                "indexes": sum(s["nindexes"] for s in stats), "indexSize": 0, "totalSize": size, "scaleFactor": 1,
                "ok": 1.0}  # fmt: skip


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
        payload = b"\x00\x00\x00\x00\x00" + reply
    elif opcode == OP_QUERY:  # only the legacy handshake: flags, namespace, skip, limit, query
        name_end = body.index(b"\x00", 4)
        query = bson.decode(body[name_end + 9 : name_end + 9 + struct.unpack_from("<i", body, name_end + 9)[0]])
        reply = engine.run(query.get("$query", query), conn_id, body[4:name_end].decode().partition(".")[0])
        payload = struct.pack("<iqii", 0, 0, 0, 1) + reply
    else:
        raise ConnectionAbortedError(f"unsupported opcode {opcode}")
    return struct.pack("<iiii", 16 + len(payload), 0, request_id, OP_REPLY if opcode == OP_QUERY else OP_MSG) + payload


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        engine, conn_id = self.server.engine, next(self.server.engine.connection_ids)
        with sock.makefile("rb") as reader:
            try:
                while len(header := reader.read(16)) == 16:
                    length, request_id, _, opcode = struct.unpack("<iiii", header)
                    if not 16 < length <= MAX_MESSAGE_SIZE + 16 * 1024:
                        return
                    if len(body := reader.read(length - 16)) < length - 16:
                        return
                    reply = handle_message(engine, opcode, request_id, body, conn_id)
                    if reply is not None:
                        sock.sendall(reply)
            except OSError:  # the client went away, or ConnectionAbortedError on an unknown opcode
                return


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
            with engine.lock:
                engine.expire()
        except Exception as exc:
            print(f"mongo_server: TTL pass failed: {exc!r}", file=sys.stderr)


def serve(host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT (signals are handled when called from the main thread)."""
    warnings.filterwarnings("ignore", module=r"mongomock_ng(\..*)?$")  # the engine's "no-op option" notes
    engine, stop = Engine(), threading.Event()
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
    args = parser.parse_args(argv)
    try:
        serve(args.host, args.port)
    except KeyboardInterrupt:
        return 0
    except (OSError, OverflowError) as exc:
        print(f"mongo_server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
