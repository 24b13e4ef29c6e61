"""A MongoDB-wire-protocol-compatible server for tests and demos. NOT for production.

It keeps everything in memory (``mongomock_ng`` is the query/update engine), has no
authentication, no persistence, no replication and no transactions. It exists because no real
``mongod`` can be installed on the project's dev and CI machines, while every process of the
project (workers, dashboard, CLI) must share one database through the real pymongo driver::

    python -m mrq.testing.mongo_server --port 27117 [--host 127.0.0.1]

The process prints nothing on success, is ready when its port accepts connections, and exits
with status 0 on SIGTERM or SIGINT.

Design:

- One thread per connection; every command runs under ONE global lock, so each command
  (``findAndModify`` claims included) is atomic with respect to all clients and processes.
- Wire protocol: OP_MSG (document sequences, checksum, moreToCome) and the legacy OP_QUERY
  handshake answered with OP_REPLY. The server advertises MongoDB 7.0 (wire version 21).
- Speed: filters on ``_id`` (``{_id: X}``, ``{_id: {$in: [...]}}``, plus other conditions) are
  looked up directly instead of scanning; sort + limit uses top-k selection; unique indexes are
  checked through a hash table instead of a scan. Other filters scan the collection.
- TTL indexes are enforced by a background thread every ``TTL_PERIOD`` seconds (real MongoDB:
  about every 60 s). Idle cursors are dropped after ``CURSOR_TIMEOUT`` seconds, as in MongoDB.
- Capped collections are emulated (``size``/``max``; the oldest documents go on insert).

Known gaps: tailable cursors, change streams, transactions, ``$text``, collations, ``explain``,
``$$NOW``; ties in a sort come back in insertion order; arrays sort by their first element.
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
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
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

MAX_BSON_SIZE = 16 * 1024 * 1024
MAX_MESSAGE_SIZE = 48_000_000
MAX_WRITE_BATCH = 100_000
MAX_WIRE_VERSION = 21  # MongoDB 7.0; >= 25 would make pymongo use 8.0-only commands
SERVER_VERSION = "7.0.0"
DEFAULT_BATCH = 101
#: Seconds between two TTL passes (real MongoDB: 60).
TTL_PERIOD = 1.0
#: Seconds after which an idle cursor is dropped (as MongoDB's cursorTimeoutMillis).
CURSOR_TIMEOUT = 600.0

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
_DECODE = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO)
_IGNORED_FIELDS = (
    "$db",
    "lsid",
    "$readPreference",
    "$clusterTime",
    "readConcern",
    "writeConcern",
    "maxTimeMS",
    "comment",
    "backpressure",
    "txnNumber",
    "autocommit",
    "startTransaction",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
)
_CODE_NAMES = {
    1: "InternalError",
    2: "BadValue",
    9: "FailedToParse",
    20: "IllegalOperation",
    26: "NamespaceNotFound",
    27: "IndexNotFound",
    43: "CursorNotFound",
    48: "NamespaceExists",
    59: "CommandNotFound",
    72: "InvalidOptions",
    73: "InvalidNamespace",
    85: "IndexOptionsConflict",
    121: "DocumentValidationFailure",
    238: "NotImplemented",
    10334: "BSONObjectTooLarge",
    11000: "DuplicateKey",
}
_UNSUPPORTED_FIND_OPTIONS = ("tailable", "awaitData", "min", "max", "returnKey", "showRecordId")
_MISSING = object()
_COUNT_STAGE = {"$group": {"_id": 1, "n": {"$sum": 1}}}
_SKIP_LIMIT = {"$skip", "$limit"}
#: Python types whose values sort natively in the engine's BSON order (rank, value).
_SORT_RANKS = {type(None): 5, int: 10, Int64: 10, float: 10, str: 15, ObjectId: 35, bool: 40, datetime: 45}
#: Python types whose equality is MongoDB's equality within one kind.
_EQ_KINDS = {
    type(None): "null",
    int: "num",
    Int64: "num",
    float: "num",
    str: "str",
    ObjectId: "oid",
    bool: "bool",
    datetime: "date",
}

Doc = dict[str, Any]


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
    elif isinstance(exc, (ValueError, TypeError, bson.InvalidDocument)):
        code = 2
    else:
        code = 1
    message = getattr(exc, "_message", None) or str(exc) or type(exc).__name__
    fields: Doc = {"errmsg": message, "code": code, "codeName": _CODE_NAMES.get(code, "UnknownError")}
    details = getattr(exc, "details", None)
    if isinstance(exc, DuplicateKeyError) and isinstance(details, dict):
        fields.update({k: details[k] for k in ("keyPattern", "keyValue") if k in details})
        pattern = list(fields.get("keyPattern", {"_id": 1}).items())
        index = "_id_" if pattern == [("_id", 1)] else helpers.gen_index_name(pattern)
        fields["errmsg"] = f"E11000 duplicate key error index: {index} dup key: {fields.get('keyValue')}"
    return fields


# --------------------------------------------------------------------------- engine helpers


def _store_key(value: Any) -> Any:
    return helpers.hashdict(value) if isinstance(value, dict) else value


def _id_candidates(documents: dict[Any, Doc], spec: Doc | None) -> list[Doc] | None:
    """Documents matching ``spec`` found through ``_id`` alone, or None when a scan is needed."""
    if not spec or "_id" not in spec:
        return None
    cond = spec["_id"]
    if isinstance(cond, dict) and any(str(k).startswith("$") for k in cond):
        if list(cond) == ["$eq"]:
            values = [cond["$eq"]]
        elif list(cond) == ["$in"] and isinstance(cond["$in"], list):
            values = cond["$in"]
        else:
            return None
    else:
        values = [cond]
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
        if (same or filtering.filter_applies({"_id": value}, doc)) and (
            not rest or filtering.filter_applies(rest, doc)
        ):
            found[id(doc)] = doc
    result = list(found.values())
    if len(result) > 1:  # an _id index scan returns documents in _id order
        result = _order(result, ["_id"], [1], 0)
    return result


class _SortKey:
    """Sort key over several fields with mixed directions."""

    __slots__ = ("dirs", "parts")

    def __init__(self, parts: list[Any], dirs: list[int]) -> None:
        self.parts = parts
        self.dirs = dirs

    def __lt__(self, other: _SortKey) -> bool:
        for a, b, direction in zip(self.parts, other.parts, self.dirs, strict=True):
            if a < b:
                return direction > 0
            if b < a:
                return direction < 0
        return False


def _native_columns(docs: list[Doc], names: list[str], dirs: list[int]) -> tuple[list[Any], list[int]] | None:
    """Per field, plain-Python keys in the engine's BSON type order; None if a value needs the engine.

    In a mixed-direction sort, a descending field holding numbers only is negated and becomes
    ascending, so that the common ``priority`` descending, ``_id`` ascending compares natively.
    """
    if any("." in name for name in names):
        return None
    columns, new_dirs = [], list(dirs)
    for i, name in enumerate(names):
        values = [doc.get(name) for doc in docs]
        ranks = [_SORT_RANKS.get(type(value)) for value in values]
        if None in ranks or any(value != value for value in values):  # NaN
            return None
        if dirs[i] < 0 and len(set(dirs)) > 1 and set(ranks) == {10}:
            columns.append([(10, -value) for value in values])
            new_dirs[i] = 1
        else:
            columns.append(list(zip(ranks, values, strict=True)))
    return columns, new_dirs


def _order(docs: list[Doc], names: list[str], dirs: list[int], count: int) -> list[Doc]:
    """``docs`` sorted, stable (only the first ``count`` when non-zero)."""
    native = _native_columns(docs, names, dirs)
    for columns, directions in ([native] if native else []) + [(None, dirs)]:
        engine_keys = columns is None
        if columns is None:
            columns = [[filtering.resolve_sort_key(name, doc) for doc in docs] for name in names]
        keys: list[Any] = list(zip(*columns, strict=True))
        if len(set(directions)) > 1:
            keys = [_SortKey(list(key), directions) for key in keys]
        reverse = directions[0] < 0 and len(set(directions)) == 1
        try:
            if count:
                pick = heapq.nlargest if reverse else heapq.nsmallest
                order = pick(count, range(len(docs)), key=keys.__getitem__)
            else:
                order = sorted(range(len(docs)), key=keys.__getitem__, reverse=reverse)
        except TypeError:  # e.g. naive and aware datetimes: let the engine compare
            if engine_keys:
                raise
            continue
        return [docs[i] for i in order]
    raise AssertionError("unreachable")


def _select(docs: list[Doc], sort: Doc | None, skip: int = 0, limit: int = 0) -> list[Doc]:
    """Sort (stable; top-k selection when limited), then skip and limit."""
    if sort:
        keys = [(k, d) for k, d in sort.items() if k != "$natural"]
        if sort.get("$natural", 1) < 0:
            docs = docs[::-1]
        for key, direction in keys:
            if not isinstance(direction, (int, float)) or key.startswith("$"):
                raise CommandError(238, f"sort by {key}: {direction!r} is not supported here")
        if keys:
            count = skip + limit if limit > 0 and skip + limit < len(docs) else 0
            docs = _order(docs, [k for k, _ in keys], [1 if d > 0 else -1 for _, d in keys], count)
    if skip:
        docs = docs[skip:]
    if limit > 0:
        docs = docs[:limit]
    return docs


def _quick_conditions(spec: Doc) -> list[tuple[str, Any, str]]:
    """The top-level ``{field: scalar}`` equalities of a filter, checkable without the engine."""
    conditions = []
    for key, value in spec.items():
        kind = _EQ_KINDS.get(type(value))
        if kind is not None and not key.startswith("$") and "." not in key and value == value:
            conditions.append((key, value, kind))
    return conditions


def _quick_match(conditions: list[tuple[str, Any, str]], doc: Doc) -> bool | None:
    """True/False when the conditions decide alone, None when an array (or other) needs the engine."""
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


class FastCollection(Collection):
    """The engine's collection with an ``_id`` fast path and hashed unique-index checks."""

    def _iter_documents(self, filter: Doc) -> Any:
        found = _id_candidates(self._store._documents, filter)
        if found is not None:
            return iter(found)
        conditions = _quick_conditions(filter) if isinstance(filter, dict) else []
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
        """Check unique indexes with a lazily built ``entry -> _id`` table per index.

        Every engine write of a document goes through this method, so the table is current for
        every live document; entries left by deleted or changed documents are detected by
        re-checking the document the table points to.
        """
        store = self._store
        tables: dict[str, tuple[Doc, dict[Any, Any] | None]] = store.__dict__.setdefault("_mrq_uniq", {})
        to_register: list[tuple[dict[Any, Any], list[Any]]] = []
        new_id = new_data.get("_id")
        for name, index in store.indexes.items():
            if not index.get("unique"):
                continue
            pfe, key, sparse = index.get("partialFilterExpression"), index["key"], index.get("sparse")
            if pfe is not None and not filtering.filter_applies(pfe, new_data):
                continue
            entries = self._compute_index_entries(new_data, key, sparse)
            if entries is None:
                continue
            cached = tables.get(name)
            if cached is None or cached[0] is not index:
                cached = tables[name] = (index, self._build_unique_table(index, new_id))
            table = cached[1]
            try:
                holders = {table.get(e, _MISSING) for e in entries} if table is not None else None
            except TypeError:
                holders = None
            if holders is None:  # unhashable values: scan like the engine
                candidates: Iterable[Doc] = list(store._documents.values())
            else:
                holders.discard(_MISSING)
                candidates = [d for h in holders if (d := store._documents.get(_store_key(h))) is not None]
            for doc in candidates:
                if doc.get("_id") == new_id or (pfe is not None and not filtering.filter_applies(pfe, doc)):
                    continue
                other = self._compute_index_entries(doc, key, sparse)
                if other is not None and self._entries_overlap(entries, other):
                    value = {k: helpers.get_value_by_dot(new_data, k) for k, _ in key}
                    raise DuplicateKeyError(
                        "E11000 Duplicate Key Error", 11000, {"keyPattern": dict(key), "keyValue": value}
                    )
            if table is not None and holders is not None:
                to_register.append((table, entries))
        for table, entries in to_register:
            for entry in entries:
                table[entry] = new_id

    def _build_unique_table(self, index: Doc, exclude_id: Any) -> dict[Any, Any] | None:
        table: dict[Any, Any] = {}
        pfe = index.get("partialFilterExpression")
        for doc in self._store._documents.values():
            if doc.get("_id") == exclude_id or (pfe is not None and not filtering.filter_applies(pfe, doc)):
                continue
            try:
                for entry in self._compute_index_entries(doc, index["key"], index.get("sparse")) or ():
                    table[entry] = doc.get("_id")
            except TypeError:
                return None
        return table


def _bson_size(doc: Doc) -> int:
    return len(bson.encode(doc))


class _Cursor:
    __slots__ = ("docs", "id", "last_used", "ns", "pos", "project")

    def __init__(self, cursor_id: int, ns: str, docs: list[Doc], project: Callable[[Doc], Any] | None):
        self.id, self.ns, self.docs, self.project = cursor_id, ns, docs, project
        self.pos = 0
        self.last_used = time.monotonic()


# --------------------------------------------------------------------------- the server state


class Engine:
    """Executes decoded commands against the in-memory store (callers hold ``self.lock``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.client = MongoClient()
        self._collections: dict[tuple[str, str], FastCollection] = {}
        self.cursors: dict[int, _Cursor] = {}
        self._cursor_ids = itertools.count(1)
        self.capped: dict[tuple[str, str], Doc] = {}
        self.connection_ids = itertools.count(1)
        self.started = time.monotonic()
        self.handlers: dict[str, Callable[[str, Doc, int], Doc]] = {
            name[4:].lower(): getattr(self, name) for name in dir(self) if name.startswith("cmd_")
        }
        self.handlers["ismaster"] = self.cmd_hello

    # ---- plumbing
    def run(self, cmd: Doc, conn_id: int, db: str = "admin") -> bytes:
        """Execute one command; always returns an encoded reply, never raises."""
        try:
            with self.lock:
                return bson.encode(self.dispatch(cmd, conn_id, db))
        except Exception as exc:
            return bson.encode({"ok": 0.0, **_error_fields(exc)})

    def dispatch(self, cmd: Doc, conn_id: int, db: str) -> Doc:
        db = cmd.get("$db", db)
        if cmd.get("startTransaction") or "txnNumber" in cmd:
            raise CommandError(20, "Transaction numbers are only allowed on a replica set member or mongos")
        for field in _IGNORED_FIELDS:
            cmd.pop(field, None)
        if not cmd:
            raise CommandError(59, "no command given")
        name = next(iter(cmd))
        handler = self.handlers.get(name.lower())
        if handler is None:
            raise CommandError(59, f"no such command: '{name}'")
        return handler(db, cmd, conn_id)

    def coll(self, db: str, name: Any) -> FastCollection:
        if not isinstance(name, str) or not name or "$" in name or "\x00" in name:
            raise CommandError(73, f"Invalid collection name: {name!r}")
        try:
            return self._collections[db, name]
        except KeyError:
            database = self.client[db]
            coll = FastCollection(database, name, _db_store=database._store, codec_options=database.codec_options)
            self._collections[db, name] = coll
            return coll

    def _db_store(self, db: str) -> Any:
        return self.client._store._databases.get(db)

    def _new_cursor(self, ns: str, docs: list[Doc], project: Callable[[Doc], Any] | None) -> _Cursor:
        cursor = _Cursor(next(self._cursor_ids), ns, docs, project)
        self.cursors[cursor.id] = cursor
        return cursor

    def _batch(self, cursor: _Cursor, size: int) -> list[RawBSONDocument]:
        """Up to ``size`` documents (0: no count limit) and about 16 MiB, encoded once."""
        out: list[RawBSONDocument] = []
        total = 0
        while cursor.pos < len(cursor.docs) and (size <= 0 or len(out) < size):
            doc = cursor.docs[cursor.pos]
            if cursor.project is not None:
                doc = cursor.project(doc)
            raw = bson.encode(doc) if doc is not None else b""
            if out and total + len(raw) > MAX_BSON_SIZE:
                break
            cursor.pos += 1
            if raw:
                out.append(RawBSONDocument(raw))
                total += len(raw)
        cursor.last_used = time.monotonic()
        return out

    def _cursor_reply(self, ns: str, docs: list[Doc], size: int, project: Any = None, single: bool = False) -> Doc:
        cursor = self._new_cursor(ns, docs, project)
        batch = self._batch(cursor, size) if size != 0 else []
        cursor_id = cursor.id
        if single or cursor.pos >= len(docs):
            del self.cursors[cursor_id]
            cursor_id = 0
        return {"cursor": {"firstBatch": batch, "id": Int64(cursor_id), "ns": ns}, "ok": 1.0}

    def _projector(self, coll: FastCollection, projection: Doc | None, spec: Doc) -> Any:
        if not projection:
            return None
        return lambda doc: coll._copy_only_fields(doc, projection, dict, filter=spec)

    def expire(self) -> None:
        """One TTL pass plus idle-cursor cleanup (runs under the lock)."""
        for db_store in list(self.client._store._databases.values()):
            for cstore in list(db_store._collections.values()):
                for index in list(cstore.indexes.values()):
                    if index.get("expireAfterSeconds") is not None:
                        cstore._expire_documents(index)
        deadline = time.monotonic() - CURSOR_TIMEOUT
        for cursor_id in [c.id for c in self.cursors.values() if c.last_used < deadline]:
            del self.cursors[cursor_id]

    # ---- capped collections (emulated)
    def _capped_insert(self, db: str, name: str, coll: FastCollection, ids: list[Any]) -> None:
        cap = self.capped.get((db, name))
        if cap is None:
            return
        documents = coll._store._documents
        sizes: dict[Any, int] = cap["sizes"]
        for _id in ids:
            doc = documents.get(_store_key(_id))
            if doc is not None:
                sizes[_store_key(_id)] = _bson_size(doc)
                cap["total"] += sizes[_store_key(_id)]
        while len(documents) > 1 and ((cap["max"] and len(documents) > cap["max"]) or cap["total"] > cap["size"]):
            key = next(iter(documents))
            del documents[key]
            cap["total"] -= sizes.pop(key, 0)

    def _capped_recount(self, db: str, name: str, coll: FastCollection) -> None:
        cap = self.capped.get((db, name))
        if cap is not None:
            cap["sizes"] = {k: _bson_size(d) for k, d in coll._store._documents.items()}
            cap["total"] = sum(cap["sizes"].values())

    # ---- handshake and server information
    def cmd_hello(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        legacy = next(iter(cmd)).lower() == "ismaster"
        reply: Doc = {"ismaster" if legacy else "isWritablePrimary": True}
        if cmd.get("helloOk") or not legacy:
            reply["helloOk"] = True
        reply.update(
            maxBsonObjectSize=MAX_BSON_SIZE,
            maxMessageSizeBytes=MAX_MESSAGE_SIZE,
            maxWriteBatchSize=MAX_WRITE_BATCH,
            localTime=datetime.now(UTC),
            logicalSessionTimeoutMinutes=30,
            connectionId=conn_id,
            minWireVersion=0,
            maxWireVersion=MAX_WIRE_VERSION,
            readOnly=False,
            ok=1.0,
        )
        return reply

    def cmd_ping(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        return {"ok": 1.0}

    def cmd_buildinfo(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        version = [int(p) for p in SERVER_VERSION.split(".")] + [0]
        return {
            "version": SERVER_VERSION,
            "gitVersion": "mrq-test-server",
            "versionArray": version,
            "bits": 64,
            "debug": False,
            "maxBsonObjectSize": MAX_BSON_SIZE,
            "ok": 1.0,
        }

    def cmd_serverstatus(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        return {
            "host": socket.gethostname(),
            "version": SERVER_VERSION,
            "process": "mrq-test-mongod",
            "uptime": time.monotonic() - self.started,
            "localTime": datetime.now(UTC),
            "connections": {"current": 0, "totalCreated": conn_id},
            "ok": 1.0,
        }

    def cmd_endsessions(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        return {"ok": 1.0}

    cmd_killsessions = cmd_endsessions

    def cmd_connectionstatus(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        return {"authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": []}, "ok": 1.0}

    def cmd_committransaction(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        raise CommandError(20, "Transactions are not supported by this test server (standalone)")

    cmd_aborttransaction = cmd_committransaction

    # ---- CRUD
    def cmd_insert(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        name = cmd["insert"]
        coll = self.coll(db, name)
        validate = not cmd.get("bypassDocumentValidation", False)
        inserted: list[Any] = []
        errors: list[Doc] = []
        for index, doc in enumerate(cmd.get("documents", [])):
            try:
                if isinstance(doc, _TooLarge):
                    raise CommandError(
                        10334,
                        f"object to insert too large. size in bytes: {doc.size}, max size: {MAX_BSON_SIZE}",
                    )
                inserted.append(coll._insert(doc, validate=validate))
            except Exception as exc:
                errors.append({"index": index, **_error_fields(exc)})
                if cmd.get("ordered", True):
                    break
        if (db, name) in self.capped:
            self._capped_insert(db, name, coll, inserted)
        reply: Doc = {"n": len(inserted), "ok": 1.0}
        if errors:
            reply["writeErrors"] = errors
        return reply

    def cmd_update(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        name = cmd["update"]
        coll = self.coll(db, name)
        matched = modified = 0
        upserted: list[Doc] = []
        errors: list[Doc] = []
        for index, st in enumerate(cmd.get("updates", [])):
            try:
                if isinstance(st, _TooLarge):
                    raise CommandError(10334, "update statement too large")
                result = coll._update(
                    st["q"],
                    st["u"],
                    upsert=bool(st.get("upsert")),
                    multi=bool(st.get("multi")),
                    array_filters=st.get("arrayFilters"),
                    collation=st.get("collation"),
                    validate=not cmd.get("bypassDocumentValidation", False),
                )
            except Exception as exc:
                errors.append({"index": index, **_error_fields(exc)})
                if cmd.get("ordered", True):
                    break
                continue
            matched += result["n"]
            modified += result["nModified"]
            if result["upserted"] is not None:
                upserted.append({"index": index, "_id": result["upserted"]})
        self._capped_recount(db, name, coll)
        reply: Doc = {"n": matched, "nModified": modified, "ok": 1.0}
        if upserted:
            reply["upserted"] = upserted
        if errors:
            reply["writeErrors"] = errors
        return reply

    def cmd_delete(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        name = cmd["delete"]
        coll = self.coll(db, name)
        deleted = 0
        errors: list[Doc] = []
        for index, st in enumerate(cmd.get("deletes", [])):
            try:
                deleted += coll._delete(st["q"], collation=st.get("collation"), multi=not st.get("limit"))["n"]
            except Exception as exc:
                errors.append({"index": index, **_error_fields(exc)})
                if cmd.get("ordered", True):
                    break
        self._capped_recount(db, name, coll)
        reply: Doc = {"n": deleted, "ok": 1.0}
        if errors:
            reply["writeErrors"] = errors
        return reply

    def _matching(self, coll: FastCollection, spec: Any) -> list[Doc]:
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise CommandError(2, "filter must be an object")
        return list(coll._iter_documents(spec))

    def cmd_find(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        for option in _UNSUPPORTED_FIND_OPTIONS:
            if cmd.get(option):
                raise CommandError(238, f"find option '{option}' is not supported by this test server")
        if cmd.get("collation") and cmd["collation"].get("locale") != "simple":
            raise CommandError(238, "collations are not supported by this test server")
        name = cmd["find"]
        coll = self.coll(db, name)
        spec = cmd.get("filter") or {}
        limit, batch = int(cmd.get("limit", 0)), int(cmd.get("batchSize", DEFAULT_BATCH))
        single = bool(cmd.get("singleBatch")) or limit < 0
        limit = abs(limit)
        docs = _select(self._matching(coll, spec), cmd.get("sort"), int(cmd.get("skip", 0)), limit)
        if limit and (batch == 0 or batch > limit) and "batchSize" not in cmd:
            batch = limit
        return self._cursor_reply(
            f"{db}.{name}", docs, batch, self._projector(coll, cmd.get("projection"), spec), single=single
        )

    def cmd_getmore(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        cursor = self.cursors.get(int(cmd["getMore"]))
        if cursor is None:
            raise CommandError(43, f"cursor id {cmd['getMore']} not found")
        batch = self._batch(cursor, int(cmd.get("batchSize", 0)))
        cursor_id = cursor.id
        if cursor.pos >= len(cursor.docs):
            del self.cursors[cursor_id]
            cursor_id = 0
        return {"cursor": {"nextBatch": batch, "id": Int64(cursor_id), "ns": cursor.ns}, "ok": 1.0}

    def cmd_killcursors(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        killed, not_found = [], []
        for cursor_id in cmd.get("cursors", []):
            (killed if self.cursors.pop(int(cursor_id), None) else not_found).append(cursor_id)
        return {
            "cursorsKilled": killed,
            "cursorsNotFound": not_found,
            "cursorsAlive": [],
            "cursorsUnknown": [],
            "ok": 1.0,
        }

    def cmd_findandmodify(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        name = next(iter(cmd.values()))
        coll = self.coll(db, name)
        query, update = cmd.get("query") or {}, cmd.get("update")
        remove, new, upsert = bool(cmd.get("remove")), bool(cmd.get("new")), bool(cmd.get("upsert"))
        if remove == (update is not None):
            raise CommandError(9, "Either an update or remove=true must be specified")
        if remove and (new or upsert):
            raise CommandError(9, "Cannot specify new or upsert with remove=true")
        projection = cmd.get("fields")
        if cmd.get("sort"):
            found = _select(self._matching(coll, query), cmd["sort"], 0, 1)
            old = found[0] if found else None
        else:
            old = next(coll._iter_documents(query), None)
        value: Any = None
        last_error: Doc = {"n": 0}
        if old is not None:
            last_error = {"n": 1} if remove else {"n": 1, "updatedExisting": True}
            value = None if new else coll._copy_only_fields(old, projection, dict, filter=query)
            spec = {**query, "_id": old["_id"]}
            if remove:
                coll._delete(spec)
            else:
                coll._update(
                    spec,
                    update,
                    array_filters=cmd.get("arrayFilters"),
                    validate=not cmd.get("bypassDocumentValidation", False),
                )
                if new:
                    value = self._fetch_projected(coll, old["_id"], projection, query)
        elif upsert:
            result = coll._update(query, update, upsert=True, array_filters=cmd.get("arrayFilters"))
            last_error = {"n": 1, "updatedExisting": False, "upserted": result["upserted"]}
            if new:
                value = self._fetch_projected(coll, result["upserted"], projection, query)
        elif not remove:
            last_error["updatedExisting"] = False
        self._capped_recount(db, name, coll)
        return {"lastErrorObject": last_error, "value": value, "ok": 1.0}

    def _fetch_projected(self, coll: FastCollection, _id: Any, projection: Any, spec: Doc) -> Doc | None:
        doc = coll._store._documents.get(_store_key(_id))
        return None if doc is None else coll._copy_only_fields(doc, projection, dict, filter=spec)

    def cmd_count(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        coll = self.coll(db, cmd["count"])
        docs = self._matching(coll, cmd.get("query"))
        skip, limit = int(cmd.get("skip", 0)), abs(int(cmd.get("limit", 0)))
        n = max(len(docs) - skip, 0)
        return {"n": min(n, limit) if limit else n, "ok": 1.0}

    def cmd_distinct(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        coll = self.coll(db, cmd["distinct"])
        return {"values": coll.distinct(cmd["key"], cmd.get("query") or {}), "ok": 1.0}

    def cmd_aggregate(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        name, pipeline = cmd["aggregate"], list(cmd.get("pipeline", []))
        if not isinstance(name, str):
            raise CommandError(238, "database-level aggregation is not supported by this test server")
        if cmd.get("explain"):
            raise CommandError(238, "explain is not supported by this test server")
        coll = self.coll(db, name)
        first = pipeline[0] if pipeline else {}
        if "$collStats" in first:
            stats = self.cmd_collstats(db, {"collStats": name}, conn_id)
            stats.pop("ok")
            docs: list[Doc] = [{"ns": stats["ns"], "storageStats": stats, "count": stats["count"]}]
            pipeline.pop(0)
        else:
            spec = first["$match"] if "$match" in first and len(first) == 1 else {}
            if spec:
                pipeline.pop(0)
            docs = self._matching(coll, spec)
            if pipeline[-1:] == [_COUNT_STAGE] and all(set(x) <= _SKIP_LIMIT for x in pipeline[:-1]):
                n = len(docs)  # pymongo's count_documents: count without copying documents
                for stage in pipeline[:-1]:
                    n = max(n - int(stage["$skip"]), 0) if "$skip" in stage else min(n, int(stage["$limit"]))
                docs, pipeline = ([{"_id": 1, "n": n}] if n else []), []
            else:
                docs = [coll._copy_only_fields(d, None, dict) for d in docs]
        if pipeline:
            docs = list(process_pipeline(docs, coll.database, pipeline, None))
        if any("$out" in stage or "$merge" in stage for stage in pipeline):
            for cstore in self._db_store(db)._collections.values():
                cstore.__dict__.pop("_mrq_uniq", None)  # written behind FastCollection's back
            docs = []
        size = int((cmd.get("cursor") or {}).get("batchSize", DEFAULT_BATCH))
        return self._cursor_reply(f"{db}.{name}", docs, size)

    # ---- catalog
    def cmd_create(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        name = cmd["create"]
        coll = self.coll(db, name)
        if coll._store.is_created:
            raise CommandError(48, f"Collection {db}.{name} already exists.")
        if "viewOn" in cmd:
            raise CommandError(238, "views are not supported by this test server")
        options = {k: v for k, v in cmd.items() if k in coll._store._supported_options}
        if cmd.get("capped"):
            if not cmd.get("size"):
                raise CommandError(72, "the 'size' field is required when 'capped' is true")
            size = max(4096, -(-int(cmd["size"]) // 256) * 256)
            self.capped[db, name] = {"size": size, "max": int(cmd.get("max") or 0), "sizes": {}, "total": 0}
        self.client[db]._store.create_collection(name, **options)
        return {"ok": 1.0}

    def _collection_options(self, db: str, name: str, cstore: Any) -> Doc:
        options = dict(cstore.options)
        cap = self.capped.get((db, name))
        if cap is not None:
            options.update(capped=True, size=cap["size"])
            if cap["max"]:
                options["max"] = cap["max"]
        return options

    def cmd_listcollections(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        db_store = self._db_store(db)
        entries = []
        for name, cstore in list(db_store._collections.items()) if db_store else []:
            if cstore.is_created:
                entries.append(
                    {
                        "name": name,
                        "type": "collection",
                        "options": self._collection_options(db, name, cstore),
                        "info": {"readOnly": False},
                        "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"},
                    }
                )
        if cmd.get("filter"):
            entries = [e for e in entries if filtering.filter_applies(cmd["filter"], e)]
        if cmd.get("nameOnly"):
            entries = [{"name": e["name"], "type": e["type"]} for e in entries]
        size = int((cmd.get("cursor") or {}).get("batchSize", DEFAULT_BATCH))
        return self._cursor_reply(f"{db}.$cmd.listCollections", entries, size)

    def cmd_listdatabases(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        entries = []
        for name, db_store in list(self.client._store._databases.items()):
            if db_store.is_created:
                entry: Doc = {"name": name}
                if not cmd.get("nameOnly"):
                    stats = self.cmd_dbstats(name, {}, conn_id)
                    entry.update(sizeOnDisk=stats["storageSize"], empty=stats["objects"] == 0)
                entries.append(entry)
        if cmd.get("filter"):
            entries = [e for e in entries if filtering.filter_applies(cmd["filter"], e)]
        reply: Doc = {"databases": entries, "ok": 1.0}
        if not cmd.get("nameOnly"):
            reply["totalSize"] = sum(e["sizeOnDisk"] for e in entries)
        return reply

    def cmd_drop(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        name = cmd["drop"]
        db_store = self._db_store(db)
        cstore = db_store._collections.get(name) if db_store else None
        if cstore is None or not cstore.is_created:
            raise CommandError(26, "ns not found")
        indexes = len(cstore.indexes) + 1
        cstore.drop()
        del db_store._collections[name]
        self.capped.pop((db, name), None)
        return {"ns": f"{db}.{name}", "nIndexesWas": indexes, "ok": 1.0}

    def cmd_dropdatabase(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        self.client._store._databases.pop(db, None)
        self.client._database_accesses.pop(db, None)
        for key in [k for k in self._collections if k[0] == db]:
            del self._collections[key]
        for key in [k for k in self.capped if k[0] == db]:
            del self.capped[key]
        return {"dropped": db, "ok": 1.0}

    def cmd_renamecollection(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        source, target = str(cmd["renameCollection"]), str(cmd.get("to", ""))
        (src_db, _, src), (dst_db, _, dst) = source.partition("."), target.partition(".")
        if src_db != dst_db:
            raise CommandError(238, "renaming across databases is not supported by this test server")
        self.coll(dst_db, dst)
        db_store = self._db_store(src_db)
        if db_store is None or src not in db_store._collections or not db_store._collections[src].is_created:
            raise CommandError(26, f"Source collection {source} does not exist")
        if dst in db_store._collections and db_store._collections[dst].is_created:
            if not cmd.get("dropTarget"):
                raise CommandError(48, f"Target collection {target} already exists")
            self.cmd_drop(dst_db, {"drop": dst}, conn_id)
        db_store.rename(src, dst)
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
            options = {
                k: spec[k] for k in ("unique", "sparse", "expireAfterSeconds", "partialFilterExpression") if k in spec
            }
            try:
                coll.create_index(keys, name=spec.get("name") or helpers.gen_index_name(keys), **options)
            except DuplicateKeyError:
                raise
            except PyMongoError as exc:
                raise CommandError(85, str(exc))
            coll._store._ttl_indexes.clear()  # TTL runs in the background thread, not on every access
        coll._store._is_force_created = True
        return {
            "createdCollectionAutomatically": not existed,
            "numIndexesBefore": before,
            "numIndexesAfter": len(coll._store.indexes) + 1,
            "ok": 1.0,
        }

    def _existing(self, db: str, name: str) -> FastCollection:
        coll = self.coll(db, name)
        if not coll._store.is_created:
            raise CommandError(26, f"ns does not exist: {db}.{name}")
        return coll

    def cmd_listindexes(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        coll = self._existing(db, cmd["listIndexes"])
        docs = [
            {"v": 2, "key": dict(info["key"]), "name": name, **{k: v for k, v in info.items() if k != "key"}}
            for name, info in coll._list_all_indexes()
        ]
        size = int((cmd.get("cursor") or {}).get("batchSize", DEFAULT_BATCH))
        return self._cursor_reply(f"{db}.{cmd['listIndexes']}", docs, size)

    def cmd_dropindexes(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        coll = self._existing(db, cmd["dropIndexes"])
        indexes = coll._store.indexes
        count = len(indexes) + 1
        wanted = cmd.get("index")
        if wanted == "*":
            indexes.clear()
            return {"nIndexesWas": count, "ok": 1.0}
        if isinstance(wanted, dict):
            names = [n for n, info in indexes.items() if dict(info["key"]) == wanted]
            if list(wanted.items()) == [("_id", 1)]:
                names = ["_id_"]
        else:
            names = wanted if isinstance(wanted, list) else [wanted]
        for name in names:
            if name == "_id_":
                raise CommandError(72, "cannot drop _id index")
            if name not in indexes:
                raise CommandError(27, f"index not found with name [{name}]")
        if not names:
            raise CommandError(27, f"can't find index with key: {wanted}")
        for name in names:
            del indexes[name]
        return {"nIndexesWas": count, "ok": 1.0}

    def cmd_collmod(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        coll = self._existing(db, cmd["collMod"])
        change = cmd.get("index")
        if change is not None:
            for name, info in coll._store.indexes.items():
                if name == change.get("name") or dict(info["key"]) == change.get("keyPattern"):
                    old = info.get("expireAfterSeconds")
                    if "expireAfterSeconds" in change:
                        info["expireAfterSeconds"] = change["expireAfterSeconds"]
                    return {
                        "expireAfterSeconds_old": old,
                        "expireAfterSeconds_new": change.get("expireAfterSeconds"),
                        "ok": 1.0,
                    }
            raise CommandError(27, "cannot find index for collMod")
        options = {k: v for k, v in cmd.items() if k != "collMod"}
        return coll.database.command({"collMod": cmd["collMod"], **options})

    def cmd_collstats(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        name = cmd["collStats"]
        db_store = self._db_store(db)
        cstore = db_store._collections.get(name) if db_store else None
        docs = list(cstore._documents.values()) if cstore is not None else []
        size = sum(_bson_size(d) for d in docs)
        indexes = len(cstore.indexes) + 1 if cstore is not None and cstore.is_created else 0
        reply: Doc = {
            "ns": f"{db}.{name}",
            "count": len(docs),
            "size": size,
            "avgObjSize": size // len(docs) if docs else 0,
            "storageSize": size,
            "nindexes": indexes,
            "totalIndexSize": 0,
            "indexSizes": {},
            "totalSize": size,
            "capped": (db, name) in self.capped,
            "ok": 1.0,
        }
        cap = self.capped.get((db, name))
        if cap is not None:
            reply.update(maxSize=cap["size"], max=cap["max"])
        return reply

    def cmd_dbstats(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        db_store = self._db_store(db)
        names = db_store.list_created_collection_names() if db_store else []
        stats = [self.cmd_collstats(db, {"collStats": n}, conn_id) for n in names]
        objects, size = sum(s["count"] for s in stats), sum(s["size"] for s in stats)
        return {
            "db": db,
            "collections": len(names),
            "views": 0,
            "objects": objects,
            "avgObjSize": size / objects if objects else 0,
            "dataSize": size,
            "storageSize": size,
            "indexes": sum(s["nindexes"] for s in stats),
            "indexSize": 0,
            "totalSize": size,
            "scaleFactor": 1,
            "ok": 1.0,
        }


# --------------------------------------------------------------------------- wire protocol


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\x00", pos)
    return data[pos:end].decode(), end + 1


def _decode_sequence(data: bytes) -> list[Any]:
    """Decode the documents of an OP_MSG kind-1 section; oversize ones become ``_TooLarge``."""
    sizes, pos = [], 0
    while pos < len(data):
        (size,) = struct.unpack_from("<i", data, pos)
        sizes.append(size)
        pos += size
    if all(size <= MAX_BSON_SIZE for size in sizes):
        return bson.decode_all(data, _DECODE)
    docs: list[Any] = []
    pos = 0
    for size in sizes:
        docs.append(_TooLarge(size) if size > MAX_BSON_SIZE else bson.decode(data[pos : pos + size], _DECODE))
        pos += size
    return docs


def parse_op_msg(body: bytes) -> tuple[int, Doc]:
    """Return ``(flags, command)`` of an OP_MSG body (the bytes after the 16-byte header)."""
    (flags,) = struct.unpack_from("<I", body)
    end = len(body) - 4 if flags & 1 else len(body)
    pos, command, sequences = 4, None, {}
    while pos < end:
        kind = body[pos]
        (size,) = struct.unpack_from("<i", body, pos + 1)
        if kind == 0:
            if size > MAX_BSON_SIZE + 16 * 1024:
                raise CommandError(10334, f"command document too large: {size} bytes")
            command = bson.decode(body[pos + 1 : pos + 1 + size], _DECODE)
            pos += 1 + size
        elif kind == 1:
            identifier, start = _cstring(body, pos + 5)
            sequences[identifier] = _decode_sequence(body[start : pos + 1 + size])
            pos += 1 + size
        else:
            raise CommandError(2, f"unknown OP_MSG section kind {kind}")
    if command is None:
        raise CommandError(2, "OP_MSG without a body section")
    for identifier, docs in sequences.items():
        command.setdefault(identifier, []).extend(docs)
    return flags, command


def _header(length: int, response_to: int, opcode: int) -> bytes:
    return struct.pack("<iiii", 16 + length, 0, response_to, opcode)


def handle_message(engine: Engine, opcode: int, request_id: int, body: bytes, conn_id: int) -> bytes | None:
    """Answer one wire message: the reply bytes, or None when no reply is due (moreToCome)."""
    if opcode == OP_MSG:
        try:
            flags, command = parse_op_msg(body)
        except Exception as exc:
            flags, reply = 0, bson.encode({"ok": 0.0, **_error_fields(exc)})
        else:
            reply = engine.run(command, conn_id)
        if flags & 2:
            return None
        payload = b"\x00\x00\x00\x00\x00" + reply
        return _header(len(payload), request_id, OP_MSG) + payload
    if opcode == OP_QUERY:
        namespace, pos = _cstring(body, 4)
        (size,) = struct.unpack_from("<i", body, pos + 8)
        query = bson.decode(body[pos + 8 : pos + 8 + size], _DECODE)
        reply = engine.run(query.get("$query", query), conn_id, namespace.partition(".")[0])
        payload = struct.pack("<iqii", 0, 0, 0, 1) + reply
        return _header(len(payload), request_id, OP_REPLY) + payload
    raise ConnectionAbortedError(f"unsupported opcode {opcode}")


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        engine = self.server.engine
        conn_id = next(engine.connection_ids)
        reader = sock.makefile("rb")
        try:
            while True:
                header = reader.read(16)
                if len(header) < 16:
                    return
                length, request_id, _, opcode = struct.unpack("<iiii", header)
                if not 16 < length <= MAX_MESSAGE_SIZE + 16 * 1024:
                    return
                body = reader.read(length - 16)
                if len(body) < length - 16:
                    return
                reply = handle_message(engine, opcode, request_id, body, conn_id)
                if reply is not None:
                    sock.sendall(reply)
        except (OSError, ConnectionAbortedError):
            return
        finally:
            reader.close()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], engine: Engine) -> None:
        self.engine = engine
        super().__init__(address, _Handler)


def _ttl_loop(engine: Engine, stop: threading.Event) -> None:
    while not stop.wait(TTL_PERIOD):
        try:
            with engine.lock:
                engine.expire()
        except Exception as exc:  # keep expiring; report once per failure
            print(f"mongo_server: TTL pass failed: {exc!r}", file=sys.stderr)


def serve(host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT (when called in the main thread) or KeyboardInterrupt."""
    warnings.filterwarnings("ignore", module=r"mongomock_ng(\..*)?$")
    engine = Engine()
    stop = threading.Event()
    server = _Server((host, port), engine)
    threading.Thread(target=_ttl_loop, args=(engine, stop), name="ttl", daemon=True).start()

    def on_signal(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        stop.set()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mrq.testing.mongo_server",
        description="In-memory MongoDB-wire-compatible server for tests and demos (not for production).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        serve(args.host, args.port)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"mongo_server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
