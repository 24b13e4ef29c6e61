"""The test server's command engine (mongo_server.py): one decoded command in, one reply out, under
one global lock. Dispatch and per-command counters, error replies, cursors, the TTL pass, the
handshake and server information, writes and reads; the catalog commands come from ``Catalog``
(mongo_catalog.py).

Every command passes the access check of ``Auth`` (mongo_auth.py; enforced with ``--auth``) before
it runs, and with ``--notablescan`` every query (find, count, distinct, aggregate's leading
``$match``/``$sort``, each update and delete statement, findAndModify) passes mongo_planner.py's
check first. A cursor belongs to the user that opened it: another one's getMore is refused (13).
Refusals (codes 13, 18, 291) are logged on stderr with the command, one line each.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import bson
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from mongomock_ng.aggregate import process_pipeline

from .mongo_auth import Auth
from .mongo_catalog import Catalog
from .mongo_collection import (
    DEFAULT_BATCH,
    MAX_BSON_SIZE,
    MAX_USER_DEPTH,
    CommandError,
    Doc,
    FastCollection,
    _expire,
    too_deep,
)
from .mongo_errors import _error_fields, _log_refusal, _TooLarge
from .mongo_planner import ID_INDEX, check_indexed, exempt, pushed_down, served_by_id
from .mongo_query import _plain, _select, _store_key

MAX_MESSAGE_SIZE = 48_000_000
MAX_WRITE_BATCH = 100_000  # statements per insert/update/delete command (mongod's maxWriteBatchSize)
MAX_WIRE_VERSION = 21  # MongoDB 7.0; >= 25 would make pymongo send 8.0-only commands
SERVER_VERSION = "7.0.0"
#: Seconds after which an idle cursor is dropped (MongoDB's cursorTimeoutMillis).
CURSOR_TIMEOUT = 600.0
#: Documents a TTL pass looks at per taking of the lock (``Engine.expire_in_steps``).
TTL_STEP = 2000
# fmt: off
_IGNORED_FIELDS = ("$db", "lsid", "$readPreference", "$clusterTime", "readConcern", "writeConcern", "maxTimeMS",
                   "comment", "backpressure", "txnNumber", "autocommit", "startTransaction", "apiVersion", "apiStrict",
                   "apiDeprecationErrors")
_IGNORED = frozenset(_IGNORED_FIELDS)
# fmt: on
#: How MongoDB spells the commands in ``serverStatus().metrics.commands`` (clients may send any case).
_CANONICAL_NAMES = {name.lower(): name for name in (
    "insert", "update", "delete", "find", "getMore", "findAndModify", "aggregate", "count", "distinct", "create",
    "drop", "dropDatabase", "createIndexes", "listIndexes", "dropIndexes", "listCollections", "listDatabases",
    "renameCollection", "collStats", "dbStats", "killCursors", "hello", "isMaster", "ping", "buildInfo",
    "serverStatus", "endSessions", "killSessions", "killAllSessions", "commitTransaction", "abortTransaction",
    "saslStart", "saslContinue", "createUser", "updateUser", "dropUser", "usersInfo", "connectionStatus",
    "convertToCapped",
)}  # fmt: skip
_UNSUPPORTED_FIND_OPTIONS = ("tailable", "awaitData", "min", "max", "returnKey", "showRecordId")
_COUNT_STAGE = {"$group": {"_id": 1, "n": {"$sum": 1}}}  # what pymongo's count_documents ends with


class _Cursor:
    __slots__ = ("docs", "id", "last_used", "ns", "owner", "pos", "project")

    def __init__(self, cursor_id: int, ns: str, docs: list[Doc], project: Callable[[Doc], Any] | None) -> None:
        self.id, self.ns, self.docs, self.project = cursor_id, ns, docs, project
        self.pos, self.last_used = 0, time.monotonic()
        self.owner: tuple[str, str] | None = None  # the user that opened it, under --auth


# --------------------------------------------------------------------------- commands


class Engine(Catalog):
    """Executes decoded commands against the in-memory store, one at a time."""

    def __init__(self, auth: bool = False, notablescan: bool = False) -> None:
        super().__init__()
        self.auth = Auth(enforce=auth)
        self.notablescan = notablescan
        self.lock = threading.Lock()
        self.cursors: dict[int, _Cursor] = {}
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
        self.handlers.update(self.auth.handlers())

    def connect(self, conn_id: int, loopback: bool) -> None:
        """A client connected (from a loopback address or not: the localhost exception)."""
        with self.lock:
            self.auth.connect(conn_id, loopback)

    def disconnect(self, conn_id: int) -> None:
        with self.lock:
            self.auth.disconnect(conn_id)

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
        for field in _IGNORED & cmd.keys():
            del cmd[field]
        name = next(iter(cmd), "")
        lower = name.lower()
        handler = self.handlers.get(lower)
        if handler is None:
            self._count("<UNKNOWN>", failed=True)
            raise CommandError(59, f"no such command: '{name}'")
        try:
            if self.auth.enforce:
                self.auth.authorize(conn_id, db, lower, _CANONICAL_NAMES.get(lower, name), cmd)
            reply = handler(db, cmd, conn_id)
        except Exception as exc:
            self._count(name, cmd, failed=True)
            _log_refusal(exc, db, cmd)
            raise
        self._count(name, cmd)
        cursor = reply.get("cursor")
        if self.auth.enforce and isinstance(cursor, dict) and cursor.get("id") in self.cursors:
            self.cursors[cursor["id"]].owner = self.auth.user(conn_id)
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

    def _plan(self, db: str, coll: FastCollection, spec: Any, sort: Any = None, hint: Any = None,
              upsert: bool = False) -> None:
        """With ``--notablescan``, refuse (291) a query no index serves; nothing is planned on a
        collection that does not exist, unless an upsert creates it (mongo_planner.py)."""
        if not self.notablescan or exempt(db, coll.name) or not (coll._store.is_created or upsert):
            return
        if served_by_id(spec, sort, hint):
            return
        indexes = [ID_INDEX] + [
            (list(i["key"]), bool(i.get("sparse")), i.get("partialFilterExpression"))
            for i in coll._store.indexes.values()
        ]
        check_indexed(f"{db}.{coll.name}", indexes, spec, sort, hint)

    def _matching(self, coll: FastCollection, spec: Any) -> list[Doc]:
        if not isinstance(spec, dict | None):
            raise CommandError(2, "the filter must be an object")
        return list(coll._iter_documents(spec or {}))

    # ---- cursors
    def _batch(self, cursor: _Cursor, size: int) -> list[Any]:
        """Up to ``size`` documents (0: any number) and about 16 MiB, each encoded once (the reply
        is encoded under the lock: cursors hold the stored documents themselves)."""
        alone = self._only_document(cursor)
        if alone is not None:
            return alone
        out: list[Any] = []
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

    @staticmethod
    def _only_document(cursor: _Cursor) -> list[Any] | None:
        """The batch of a cursor of one document without projection (find_one): the document
        itself, encoded with the reply as it would be alone (a document encodes its ``_id``
        first: only when it is first already). None otherwise."""
        if cursor.pos or len(cursor.docs) != 1 or cursor.project is not None or next(iter(cursor.docs[0]), 0) != "_id":
            return None
        cursor.pos, cursor.last_used = 1, time.monotonic()
        return [cursor.docs[0]]

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
        if self.auth.enforce and cursor.owner != self.auth.user(conn_id):
            raise CommandError(13, f"cursor id {cmd['getMore']} was not created by the authenticated user")
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
        for cstore, index in self._ttl_indexes():
            _expire(cstore._documents, index)
        self._drop_idle_cursors()

    def expire_in_steps(self, step: int = TTL_STEP) -> None:
        """One TTL pass, the lock taken for ``step`` documents at a time (and for the idle-cursor
        cleanup), so that a pass over a large collection does not hold every client up. A step
        looks at the documents as they are then: deleted ones are skipped, changed ones judged
        as they now are; documents inserted during the pass wait for the next one."""
        with self.lock:
            work = [(cstore, index, list(cstore._documents)) for cstore, index in self._ttl_indexes()]
            self._drop_idle_cursors()
        for cstore, index, keys in work:
            for start in range(0, len(keys), step):
                with self.lock:
                    if not any(i is index for i in cstore.indexes.values()):  # dropped meanwhile (or its collection)
                        break
                    _expire(cstore._documents, index, keys[start : start + step])

    def _ttl_indexes(self) -> list[tuple[Any, Doc]]:
        return [(cstore, index) for db_store in list(self.client._store._databases.values())
                for cstore in list(db_store._collections.values()) for index in list(cstore.indexes.values())
                if index.get("expireAfterSeconds") is not None and len(index["key"]) == 1]  # fmt: skip

    def _drop_idle_cursors(self) -> None:
        deadline = time.monotonic() - CURSOR_TIMEOUT
        for cursor in [c for c in self.cursors.values() if c.last_used < deadline]:
            del self.cursors[cursor.id]

    # ---- handshake and server information
    def cmd_hello(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        legacy = next(iter(cmd)).lower() == "ismaster"
        reply: Doc = {"ismaster" if legacy else "isWritablePrimary": True}
        if cmd.get("helloOk") or not legacy:
            reply["helloOk"] = True
        return reply | {
            "maxBsonObjectSize": MAX_BSON_SIZE, "maxMessageSizeBytes": MAX_MESSAGE_SIZE,
            "maxWriteBatchSize": MAX_WRITE_BATCH,
            "localTime": datetime.now(UTC), "logicalSessionTimeoutMinutes": 30, "connectionId": conn_id,
            "minWireVersion": 0, "maxWireVersion": MAX_WIRE_VERSION, "readOnly": False, "ok": 1.0,
        } | self.auth.hello_fields(cmd, conn_id)  # fmt: skip

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
    def _write(self, db: str, cmd: Doc, statements: list[Any], apply: Callable[[int, Any], None]) -> Doc:
        """Apply each statement in order; failures become writeErrors (stop at the first if ordered).
        A batch of more than maxWriteBatchSize statements (or none) fails as a whole, as in mongod."""
        if not 1 <= len(statements) <= MAX_WRITE_BATCH:
            raise CommandError(16, f"Write batch sizes must be between 1 and {MAX_WRITE_BATCH}. "
                                   f"Got {len(statements)} operations.")
        errors = []
        for index, statement in enumerate(statements):
            try:
                if isinstance(statement, _TooLarge):
                    raise CommandError(10334, f"object too large: {statement.size} bytes > {MAX_BSON_SIZE}")
                apply(index, statement)
            except Exception as exc:
                errors.append({"index": index, **_error_fields(exc)})
                _log_refusal(exc, db, statement)
                if cmd.get("ordered", True):
                    break
        return {"writeErrors": errors} if errors else {}

    def cmd_insert(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        name, inserted = cmd["insert"], []
        coll, valid = self.coll(db, name), not cmd.get("bypassDocumentValidation")
        docs = cmd.get("documents", [])

        def apply(_: int, doc: Doc) -> None:
            if too_deep(doc):
                raise CommandError(15, f"cannot insert document because it exceeds {MAX_USER_DEPTH} levels of nesting")
            inserted.append(coll.insert_decoded(doc, validate=valid))

        errors = self._write(db, cmd, docs, apply)
        if (db, name) in self.capped:
            self._capped_insert(db, name, coll, inserted)
        return {"n": len(inserted), **errors, "ok": 1.0}

    def cmd_update(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        coll, counts, upserted = self.coll(db, cmd["update"]), [0, 0], []

        def apply(index: int, st: Doc) -> None:
            self._plan(db, coll, st.get("q"), hint=st.get("hint"), upsert=bool(st.get("upsert")))
            result = coll._update(st["q"], st["u"], upsert=bool(st.get("upsert")), multi=bool(st.get("multi")),
                                  array_filters=st.get("arrayFilters"), collation=st.get("collation"),
                                  validate=not cmd.get("bypassDocumentValidation"))  # fmt: skip
            counts[0] += result["n"]
            counts[1] += result["nModified"]
            if result["upserted"] is not None:
                upserted.append({"index": index, "_id": result["upserted"]})

        errors = self._write(db, cmd, cmd.get("updates", []), apply)
        self._capped_recount(db, cmd["update"], coll)
        return {"n": counts[0], "nModified": counts[1], **({"upserted": upserted} if upserted else {}), **errors,
                "ok": 1.0}  # fmt: skip

    def cmd_delete(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        coll, deleted = self.coll(db, cmd["delete"]), []

        def apply(index: int, st: Doc) -> None:
            self._plan(db, coll, st.get("q"), hint=st.get("hint"))
            deleted.append(coll._delete(st["q"], collation=st.get("collation"), multi=not st.get("limit"))["n"])

        errors = self._write(db, cmd, cmd.get("deletes", []), apply)
        self._capped_recount(db, cmd["delete"], coll)
        return {"n": sum(deleted), **errors, "ok": 1.0}

    def cmd_findandmodify(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        name = next(iter(cmd.values()))
        coll = self.coll(db, name)
        query, update, projection = cmd.get("query") or {}, cmd.get("update"), cmd.get("fields")
        remove, new, upsert = bool(cmd.get("remove")), bool(cmd.get("new")), bool(cmd.get("upsert"))
        if remove == (update is not None) or (remove and (new or upsert)):
            raise CommandError(9, "specify either an update, or remove=true without new and upsert")
        self._plan(db, coll, query, cmd.get("sort"), cmd.get("hint"), upsert)
        if cmd.get("sort"):
            found = _select(self._matching(coll, query), cmd["sort"], 0, 1)
            old = found[0] if found else None
        else:
            old = next(coll._iter_documents(query), None)
        value, last_error, upserted = None, {"n": 0, "updatedExisting": False}, None
        plan = None
        if old is not None and not remove and not cmd.get("arrayFilters") and type(query) is dict and _plain(query):
            plan = coll.plan_update(update, validate=not cmd.get("bypassDocumentValidation"))
            plan = plan if plan is not None and coll._incrementable(old, plan) else None
        try:
            if old is not None and plan is not None:  # the document found is the one to update: no second lookup
                last_error = {"n": 1, "updatedExisting": True}
                if not new:  # apply_update replaces top-level values, changes none: a shallow copy keeps it
                    value = dict(old) if projection is None else coll._copy_only_fields(old, projection, dict,
                                                                                        filter=query)  # fmt: skip
                with coll._size_limited():
                    coll.apply_update(old, plan)
                if new:
                    value = old if projection is None else coll._copy_only_fields(old, projection, dict, filter=query)
            elif old is not None:
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
        except CommandError as exc:  # mongod words every failure of the write so; here only the size limit
            if exc.code not in (15, 17419, 17420):
                raise
            raise CommandError(exc.code, f"Plan executor error during findAndModify :: caused by :: {exc}") from None
        if new and plan is None and (old is not None or upserted is not None):
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
        self._plan(db, coll, spec, cmd.get("sort"), cmd.get("hint"))
        docs = _select(self._matching(coll, spec), cmd.get("sort"), int(cmd.get("skip", 0)), abs(limit))
        projection = cmd.get("projection")
        project = (lambda doc: coll._copy_only_fields(doc, projection, dict, filter=spec)) if projection else None
        batch = int(cmd.get("batchSize", DEFAULT_BATCH))
        return self._cursor_reply(f"{db}.{name}", docs, batch, project, single=cmd.get("singleBatch") or limit < 0)

    def cmd_count(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        coll = self.coll(db, cmd["count"])
        self._plan(db, coll, cmd.get("query"), hint=cmd.get("hint"))
        n = max(len(self._matching(coll, cmd.get("query"))) - int(cmd.get("skip", 0)), 0)
        limit = abs(int(cmd.get("limit", 0)))
        return {"n": min(n, limit) if limit else n, "ok": 1.0}

    def cmd_distinct(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        coll = self.coll(db, cmd["distinct"])
        self._plan(db, coll, cmd.get("query"), hint=cmd.get("hint"))
        return {"values": coll.distinct(cmd["key"], cmd.get("query") or {}), "ok": 1.0}

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
            self._plan(db, coll, *pushed_down(pipeline), cmd.get("hint"))
            docs = self._matching(coll, spec)
            pipeline = pipeline[1:] if spec else pipeline
            if pipeline[-1:] == [_COUNT_STAGE] and all(set(s) <= {"$skip", "$limit"} for s in pipeline[:-1]):
                n = len(docs)  # pymongo's count_documents: count without copying documents
                for stage in pipeline[:-1]:
                    n = max(n - int(stage["$skip"]), 0) if "$skip" in stage else min(n, int(stage["$limit"]))
                docs, pipeline = ([{"_id": 1, "n": n}] if n else []), []
            else:
                docs = [coll._copy_only_fields(doc, None, dict) for doc in docs]
        writes = any("$out" in stage or "$merge" in stage for stage in pipeline)
        if writes:
            self.guarantees.depth_checked = False  # documents of any depth may be written, unchecked
        if pipeline:
            docs = list(process_pipeline(docs, coll.database, pipeline, None))
        if writes:
            for cstore in self._db_store(db)._collections.values():
                cstore.__dict__.pop("_mrq_unique", None)  # written behind FastCollection's back
            docs = []
        return self._cursor_reply(f"{db}.{name}", docs, int((cmd.get("cursor") or {}).get("batchSize", DEFAULT_BATCH)))
