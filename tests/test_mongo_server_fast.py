"""The test server's fast paths give what its general path gives.

The fast paths (mrq/testing/mongo_collection.py, mongo_query.py, mongo_engine.py, mongo_planner.py, mongo_auth.py,
mongo_server.py): inserts of decoded documents stored as they are (``insert_decoded``), updates of
top-level ``$set``/``$unset``/``$inc``/``$setOnInsert`` applied in place (``plan_update``,
``apply_update``), findAndModify without a second lookup nor copies, the ``_id`` lookup with quick
guards (``_rest_matcher``), the planner's ``_id`` shortcut (``served_by_id``), the per-user
privilege cache, the TTL pass in steps and the connection loop.

Differential tests run the same commands, encoded and decoded as on the wire, on in-process
engines with the fast paths on and off (monkeypatched) and compare every reply and every stored
document byte for byte. The other tests check the same semantics through pymongo, on the plain
test server (``testserver_only``: they are about this server's internals).
"""

from __future__ import annotations

import functools
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import bson
import pymongo
import pytest
from bson import Binary, Code, Decimal128, Int64, ObjectId, Regex, Timestamp
from mongomock_ng import filtering, helpers
from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, OperationFailure, WriteError

from mrq.testing import mongo_engine, mongo_query
from mrq.testing.mongo_collection import FastCollection
from mrq.testing.mongo_engine import Engine
from mrq.testing.mongo_planner import ID_INDEX, check_indexed, served_by_id
from mrq.testing.mongo_query import _id_candidates, _order
from mrq.testing.mongo_server import OP_MSG, handle_message
from mrq.testing.pytest_plugin import use_plain_mongodb

_plain_uri, _plain_client = use_plain_mongodb()

DB = "db"
OID = [ObjectId(f"65a0000000000000000000{i:02x}") for i in range(8)]
WORKER = ObjectId("65b000000000000000000001")
WHEN = datetime(2024, 5, 6, 7, 8, 9, 123000)


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"d": value}
    return value


# ---------------------------------------------------------------- differential: fast paths on and off


def _message(cmd: dict[str, Any], sequence: tuple[str, list[dict[str, Any]]] | None = None) -> bytes:
    """An OP_MSG body as a driver sends it (documents in a kind-1 section when given)."""
    body = struct.pack("<I", 0) + b"\x00" + bson.encode(cmd)
    if sequence is not None:
        name, docs = sequence
        section = name.encode() + b"\x00" + b"".join(bson.encode(doc) for doc in docs)
        body += b"\x01" + struct.pack("<i", 4 + len(section)) + section
    return body


def _insert(coll: str, *docs: dict[str, Any], **options: Any) -> tuple[dict[str, Any], Any]:
    return {"insert": coll, "$db": DB, **options}, ("documents", list(docs))


def _update(coll: str, *statements: dict[str, Any], **options: Any) -> tuple[dict[str, Any], Any]:
    return {"update": coll, "$db": DB, **options}, ("updates", list(statements))


def _fam(coll: str, **fields: Any) -> tuple[dict[str, Any], Any]:
    return {"findAndModify": coll, **fields, "$db": DB}, None


def _find(coll: str, spec: dict[str, Any], **fields: Any) -> tuple[dict[str, Any], Any]:
    return {"find": coll, "filter": spec, **fields, "$db": DB}, None


#: Commands that go through every fast path and around them: each reply and the stored documents
#: must be the same with the fast paths off.
# fmt: off
BATTERY: list[tuple[dict[str, Any], Any]] = [
    ({"createIndexes": "c", "$db": DB, "indexes": [
        {"key": {"u": 1}, "name": "u_1", "unique": True, "sparse": True},
        {"key": {"status": 1}, "name": "status_1"}]}, None),
    _insert("c",
            {"_id": OID[0], "status": "queued", "n": 1, "u": "a", "params": {"x": [1, {"y": 2}]}, "d": WHEN},
            {"_id": 1, "status": "queued", "n": Int64(5), "f": 1.5},
            {"_id": "s", "status": "started", "worker": WORKER, "n": True},
            {"_id": {"k": 1}, "status": "queued", "n": 2},
            {"_id": 2.5, "status": ["queued", "x"], "n": "text"},
            {"_id": OID[1], "status": "queued", "ts": Timestamp(5, 1), "z": Timestamp(0, 0)},
            {"_id": OID[2], "status": "queued", "dec": Decimal128("1.5"), "bin": Binary(b"x" * 16, 4),
             "re": Regex("^a", "i"), "code": Code("f()"), "none": None, "list": [[], {}, [1, [2]]]}),
    _insert("c", {"_id": 1.0, "dup": True}),  # the same _id as 1
    _insert("c", {"_id": 3, "u": "a"}, {"_id": 4, "u": "z"}, ordered=False),  # unique index
    _insert("c", {"_id": 5, "$bad": 1}),  # a top-level $ field: the engine refuses it
    _insert("c", {"_id": 6, "deep": deep(180)}),  # 181 levels: refused
    _insert("c", {"_id": 6, "deep": deep(179)}),  # 180 levels: stored
    _find("c", {"_id": OID[0]}),
    _find("c", {"_id": 1.0}),
    _find("c", {"_id": Int64(1)}),
    _find("c", {"_id": {"$in": [1, "s", OID[0], {"k": 1}, "missing"]}}),
    _find("c", {"_id": {"$in": [OID[2], OID[0], OID[1]]}}),  # returned in _id order
    _find("c", {"_id": "s", "status": "started", "worker": WORKER}),
    _find("c", {"_id": "s", "status": {"$in": ["queued", "retry"]}}),
    _find("c", {"_id": 2.5, "status": "queued"}),  # an array value: the engine decides
    _find("c", {"_id": 1, "status": {"$in": ["queued"]}, "n": {"$gt": 1}}),
    _find("c", {"_id": OID[0], "missing": "x"}),
    _find("c", {"_id": OID[0], "missing": {"$in": ["x"]}}),
    _fam("c", query={"_id": OID[0], "status": {"$in": ["queued", "retry"]}}, new=True,
         update={"$set": {"status": "started", "worker": WORKER, "when": WHEN}, "$unset": {"d": "", "nope": ""}}),
    _fam("c", query={"_id": OID[0], "status": {"$in": ["queued", "retry"]}}, new=True,
         update={"$set": {"status": "started"}}),  # the guard no longer matches
    _fam("c", query={"_id": 1}, update={"$inc": {"n": 1, "f": 0.5, "new": 1}}),  # the document before
    _fam("c", query={"_id": "s"}, update={"$inc": {"n": 1}}, new=True),  # a boolean: the engine's way
    _fam("c", query={"_id": 2.5}, update={"$inc": {"n": 1}}),  # a string: refused
    _fam("c", query={"_id": OID[0]}, update={"$set": {"u": "b"}}, fields={"status": 1, "u": 1}, new=True),
    _fam("c", query={"_id": OID[0]}, update={"$set": {"v": 1}}, fields={"params": 0}),
    _insert("c", {"_id": 8, "u": "a"}),
    _fam("c", query={"_id": OID[2]}, update={"$set": {"u": "a"}}),  # duplicate key: nothing changes
    _fam("c", query={"_id": 42}, update={"$set": {"x": 1}}, upsert=True, new=True),
    _fam("c", query={"_id": 43, "status": "new"}, update={"$set": {"x": 1}, "$setOnInsert": {"c": WHEN}},
         upsert=True),
    _fam("c", query={"_id": 43}, update={"$set": {"x": 2}, "$setOnInsert": {"c": 0}}, upsert=True, new=True),
    _fam("c", query={"_id": 1}, update={"$set": {"deep": deep(180)}}),  # too deep: refused whole
    _fam("c", query={"_id": 6}, update={"$set": {"deep2": deep(179)}}, new=True),  # may nest 180 levels
    _fam("c", query={"status": "queued"}, sort={"_id": -1}, update={"$set": {"picked": True}}, new=True),
    _fam("c", query={"_id": 43}, remove=True),
    _fam("c", query={"_id": OID[1], "ts": Timestamp(0, 0)}, update={"$set": {"m": 1}}),  # a filter rewritten
    _fam("c", query={"_id": OID[1]}, update={"$set": {"tz": Timestamp(0, 0)}}, new=True),
    _update("c", {"q": {"_id": {"$in": [OID[0], 1, "s", OID[1], OID[2], 999]},
                        "status": {"$in": ["queued", "started"]}},
                  "u": {"$set": {"status": "queued", "obj": {"a": 1}, "arr": [1]}, "$unset": {"worker": ""}},
                  "multi": True}),
    _update("c", {"q": {"_id": OID[1]}, "u": {"$set": {"obj.a": 2}, "$push": {"arr": 2}}}),  # not in the others
    _update("c", {"q": {"_id": 1}, "u": {"$set": {"status": "queued"}}}),  # no change: nModified 0
    _update("c", {"q": {"_id": 1}, "u": {"$set": {"f": 2}}}, {"q": {"_id": 1}, "u": {"$set": {"f": 2.0}}}),
    _update("c", {"q": {"_id": 1}, "u": {"$set": {"u": "a"}}}, {"q": {"_id": 1}, "u": {"$set": {"after": 1}}}),
    _update("c", {"q": {"_id": 1}, "u": {"$set": {"u": "a"}}}, {"q": {"_id": 1}, "u": {"$set": {"later": 1}}},
            ordered=False),
    _update("c", {"q": {"_id": 50}, "u": {"$set": {"a": 1}}, "upsert": True}),
    _update("c", {"q": {"name": "up", "_id": 60}, "u": {"$set": {"a": 1}}, "upsert": True}),  # _id stored second
    _fam("c", query={"_id": 60}, update={"$set": {"b": 1}}),
    _fam("c", query={"_id": 60}, update={"$set": {"b": 2}}, new=True),
    _find("c", {"_id": 60}),
    _find("c", {"_id": 60}, projection={"a": 1}),
    _update("c", {"q": {"_id": 1}, "u": {"$inc": {"n": Int64(3), "m": 2.5}}}),
    _update("c", {"q": {"_id": 999}, "u": {"$set": {"a": 1}}}),
    _update("c", {"q": {"_id": 1}, "u": {"$set": {"_id": 1, "same": True}}}),
    _update("c", {"q": {"_id": 1}, "u": {"$set": {}}}),
    _update("c", {"q": {"_id": 1}, "u": {"$set": {"deep": deep(180)}}}),  # too deep: a write error
    _update("c", {"q": {"_id": 1}, "u": {"$set": {"big": "x" * (16 * 1024 * 1024)}}}),  # too large: 17419
    _update("c", {"q": {"_id": 1}, "u": {"$set": {"a": 1}, "$unset": {"a": ""}}}),  # a conflict: the engine's
    _update("c", {"q": {"_id": 1}, "u": {"$set": {"a.b": 1}}}, {"q": {"_id": 1}, "u": {"$rename": {"n": "nn"}}}),
    # The engine's general path fails any update of a document with an object _id ("unhashable type"),
    # after changing it; the fast path updates it (test_ids_of_every_type_and_guards_of_other_types).
    ({"delete": "c", "$db": DB}, ("deletes", [{"q": {"_id": {"k": 1}}, "limit": 1}])),
    _update("c", {"q": {"status": "queued"}, "u": {"$set": {"all": True}}, "multi": True}),  # no _id: a scan
    _update("c", {"q": {"_id": {"$gt": 0}}, "u": {"$inc": {"count": 1}}, "multi": True}),
    _update("c", {"q": {"_id": 1}, "u": {"x": 1}}),  # a replacement
    ({"delete": "c", "$db": DB}, ("deletes", [{"q": {"_id": 8}, "limit": 1}])),
    _insert("other", {"_id": 1, "n": 1}),  # a collection without indexes
    _update("other", {"q": {"_id": 1}, "u": {"$inc": {"n": 1}}}),
    _find("c", {}),
    _find("other", {}),
    # mrq's final write: guarded on the dependents read at start ($exists: false when none).
    _update("c", {"q": {"_id": OID[0], "status": "started", "dependents": {"$exists": False}},
                  "u": {"$set": {"fin": 1}}}),
    _update("c", {"q": {"_id": OID[1]}, "u": {"$set": {"dependents": None}}}),  # null: the field exists
    _update("c", {"q": {"_id": OID[1], "dependents": {"$exists": False}}, "u": {"$set": {"fin": 2}}}),
    _update("c", {"q": {"_id": OID[1], "dependents": {"$exists": True}}, "u": {"$set": {"fin": 3}}}),
    _find("c", {"_id": {"$in": [OID[0], OID[1], OID[2]]}, "dependents": {"$exists": False}}),
    _find("c", {"_id": {"$in": [OID[0], OID[1]]}, "dependents": {"$exists": 0}}),  # not a bool: the engine
]
# fmt: on


def _slow_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every fast path off: the engine (mongomock_ng) does the work, as before they existed."""
    monkeypatch.setattr(FastCollection, "plan_update", lambda self, document, validate=True: None)
    monkeypatch.setattr(FastCollection, "insert_decoded",
                        lambda self, data, validate=True: self._insert(data, validate=validate))  # fmt: skip
    monkeypatch.setattr(mongo_query, "_rest_matcher",
                        lambda rest: functools.partial(filtering.filter_applies, rest))  # fmt: skip
    monkeypatch.setattr(mongo_engine, "served_by_id", lambda spec, sort=None, hint=None: False)
    monkeypatch.setattr(Engine, "_only_document", staticmethod(lambda cursor: None))


def _run(battery: list[tuple[dict[str, Any], Any]], engine: Engine, conn_id: int = 1) -> list[Any]:
    """Each reply, then every stored document, as BSON (key order and types count)."""
    out: list[Any] = []
    for cmd, sequence in battery:
        reply = handle_message(engine, OP_MSG, 1, _message(cmd, sequence), conn_id)
        assert reply is not None
        out.append(reply)
    for (db, name), coll in sorted(engine.collections.items(), key=repr):
        out.append((db, name, [bson.encode(doc) for doc in coll._store._documents.values()]))
    return out


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine stamps a Timestamp(0, 0) with the current time: the same in both runs."""
    monkeypatch.setattr(helpers, "get_current_timestamp", lambda: Timestamp(1_700_000_000, 1))


def _both(monkeypatch: pytest.MonkeyPatch, battery: list[Any], make: Callable[[], Engine],
          setup: Callable[[Engine], None] = lambda engine: None) -> tuple[list[Any], list[Any]]:  # fmt: skip
    fast_engine = make()
    setup(fast_engine)
    fast = _run(battery, fast_engine)
    with monkeypatch.context() as patch:
        _slow_paths(patch)
        slow_engine = make()
        setup(slow_engine)
        slow = _run(battery, slow_engine)
    return fast, slow


def _assert_same(fast: list[Any], slow: list[Any], battery: list[Any]) -> None:
    assert len(fast) == len(slow)
    for index, (a, b) in enumerate(zip(fast, slow, strict=True)):
        what = battery[index] if index < len(battery) else "stored documents"
        if a != b and isinstance(a, bytes):  # say how
            decoded = bson.decode(a[21:]), bson.decode(b[21:])
            assert decoded[0] == decoded[1], f"differs at #{index}: {str(what)[:300]}"
            pytest.fail(f"differs in key order at #{index}: {decoded} for {str(what)[:300]}")
        assert a == b, f"differs at #{index}: {str(what)[:300]}"


@pytest.mark.usefixtures("fixed_clock")
def test_fast_paths_answer_and_store_what_the_engine_does(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = _both(monkeypatch, BATTERY, Engine)
    _assert_same(fast, slow, BATTERY)

    # The battery does reach what it means to: a few landmarks.
    def at(index: int, part: str) -> dict[str, Any]:
        assert part in repr(BATTERY[index]), (index, part)
        reply: dict[str, Any] = bson.decode(fast[index][21:])
        return reply

    assert at(10, "'missing']")["cursor"]["firstBatch"][0]["_id"] == 1
    started = at(18, "'when'")["value"]
    assert started["status"] == "started" and started["worker"] == WORKER and "d" not in started
    assert at(19, "'status': 'started'}}")["value"] is None  # the guard no longer matches
    assert at(20, "'new': 1}")["value"]["n"] == 5  # the document before the $inc
    assert at(26, "'u': 'a'")["code"] == 11000
    assert at(30, "'deep'")["code"] == 15
    assert (at(36, "'obj'")["n"], at(36, "'obj'")["nModified"]) == (5, 5)
    assert (at(38, "'status': 'queued'}}}")["n"], at(38, "'status'")["nModified"]) == (1, 0)


@pytest.mark.usefixtures("fixed_clock")
def test_fast_paths_in_strict_mode_refuse_and_allow_what_the_engine_does(monkeypatch: pytest.MonkeyPatch) -> None:
    planned = [
        *BATTERY[:2],
        _find("c", {"_id": 1, "n": 1}),  # served by _id
        _find("c", {"n": 1}),  # no index: 291
        _find("c", {"status": "queued"}),
        _find("c", {"_id": {"$in": [1, "s"]}, "n": {"$exists": True}}),
        _find("c", {"_id": {"$gt": 0}}),
        _find("c", {"_id": {"$size": 1}}),  # not an indexable condition
        _find("c", {"_id": 1}, sort={"$natural": 1}),  # a collection scan
        _find("c", {"_id": 1}, hint={"$natural": 1}),
        _find("c", {"n": 1}, hint="status_1"),
        _fam("c", query={"_id": 1}, update={"$set": {"x": 1}}, new=True),
        _fam("c", query={"n": 2}, update={"$set": {"x": 1}}),  # 291
        _update("c", {"q": {"_id": {"$in": [1, 2.5]}, "n": {"$ne": 0}}, "u": {"$set": {"y": 1}}, "multi": True},
                {"q": {"n": 1}, "u": {"$set": {"y": 2}}}),
        _update("c", {"q": {"_id": 77}, "u": {"$set": {"y": 1}}, "upsert": True}),
        _update("c", {"q": {"_id": 78}, "u": {"$set": {"y": 1}}, "upsert": True}, bypassDocumentValidation=True),
        _insert("c", {"_id": 79}, bypassDocumentValidation=True),  # readWrite may not bypass
        _find("c", {}),
    ]

    def as_app_user(engine: Engine) -> None:
        engine.connect(1, True)
        engine.run({"createUser": "root", "pwd": "pw", "roles": ["root"], "$db": "admin"}, 1)
        engine.auth.sessions[1].user = ("admin", "root")
        engine.run({"createUser": "app", "pwd": "pw", "roles": ["readWrite"], "$db": DB}, 1)
        engine.run({"createIndexes": "c", "indexes": [{"key": {"status": 1}, "name": "status_1"}], "$db": DB}, 1)
        engine.auth.sessions[1].user = (DB, "app")

    battery = planned[1:]  # the app user cannot create indexes: root did
    fast, slow = _both(monkeypatch, battery, lambda: Engine(auth=True, notablescan=True), as_app_user)
    _assert_same(fast, slow, battery)
    codes = [bson.decode(reply[21:]).get("code") for reply in fast[: len(battery)]]
    assert codes[:4] == [None, None, 291, None]  # the insert, _id with another condition, no index, an index
    assert codes[6:9] == [291, 291, 291]  # $size, $natural as a sort or a hint
    assert codes[10:12] == [None, 291] and codes[12:16] == [None, None, 13, 13]


def test_the_id_shortcut_of_the_planner_only_allows_what_check_indexed_allows() -> None:
    specs: list[Any] = [None, {}, {"_id": 1}, {"_id": {"$in": [1, 2]}}, {"_id": {"$eq": None}}, {"_id": {"$size": 1}},
                        {"_id": {"$regex": "^a"}}, {"_id": {"$not": {"$regex": "a"}}},
                        {"_id": {"$elemMatch": {"a": 1}}}, {"_id": {"$exists": False}}, {"_id": {"$all": []}},
                        {"_id": {"a": 1}}, {"n": 1, "_id": 2}, {"n": 1}, {"$or": [{"_id": 1}, {"n": 2}]},
                        {"_id": {"$gt": 1, "$size": 2}}, "not a filter"]  # fmt: skip
    sorts: list[Any] = [None, {"_id": 1}, {"$natural": 1}, {"n": 1}]
    hints: list[Any] = [None, "n_1", {"$natural": 1}, {"_id": 1}]
    for spec in specs:
        for sort in sorts:
            for hint in hints:
                if served_by_id(spec, sort, hint):  # then check_indexed lets it run, whatever the indexes
                    check_indexed("db.c", [ID_INDEX], spec, sort, hint)
    assert served_by_id({"_id": 1, "n": {"$size": 3}}) and not served_by_id({"n": 1})


def test_ids_found_through_the_index_come_back_in_id_order() -> None:
    rng = random.Random(7)
    docs = {oid: {"_id": oid} for oid in (ObjectId(rng.randbytes(12)) for _ in range(300))}
    wanted = rng.sample(list(docs), 120)
    found = _id_candidates(docs, {"_id": {"$in": wanted}})
    assert found is not None and found == _order([docs[oid] for oid in wanted], ["_id"], [1], 0)
    mixed: dict[Any, dict[str, Any]] = {1: {"_id": 1}, "a": {"_id": "a"}, OID[0]: {"_id": OID[0]}}
    assert [d["_id"] for d in _id_candidates(mixed, {"_id": {"$in": [OID[0], "a", 1]}}) or []] == [1, "a", OID[0]]


def test_role_changes_apply_to_the_next_command() -> None:
    engine = Engine(auth=True)
    engine.connect(1, True)
    engine.run({"createUser": "root", "pwd": "pw", "roles": ["root"], "$db": "admin"}, 1)
    engine.connect(2, True)

    def as_user(conn_id: int, cmd: dict[str, Any]) -> dict[str, Any]:
        return bson.decode(engine.run({**cmd, "$db": DB}, conn_id))

    engine.auth.sessions[1].user = ("admin", "root")
    as_user(1, {"createUser": "u", "pwd": "pw", "roles": ["read"]})
    engine.auth.sessions[2].user = (DB, "u")
    assert as_user(2, {"find": "c"})["ok"] == 1.0
    assert as_user(2, {"insert": "c", "documents": [{"_id": 1}]})["code"] == 13
    as_user(1, {"updateUser": "u", "roles": ["readWrite"]})
    assert as_user(2, {"insert": "c", "documents": [{"_id": 1}]})["n"] == 1
    as_user(1, {"dropUser": "u"})
    as_user(1, {"createUser": "u", "pwd": "pw", "roles": ["read"]})
    assert as_user(2, {"insert": "c", "documents": [{"_id": 2}]})["code"] == 13  # a new user: its own roles
    as_user(1, {"dropUser": "u"})
    assert as_user(2, {"find": "c"})["code"] == 13  # dropped: unauthenticated


def test_the_ttl_pass_in_steps_expires_what_one_pass_expires() -> None:
    past, future = datetime(2000, 1, 1), datetime(2999, 1, 1)
    engines = [Engine(), Engine()]
    for engine in engines:
        engine.run({"createIndexes": "c", "indexes": [{"key": {"at": 1}, "name": "ttl", "expireAfterSeconds": 0}],
                    "$db": DB}, 1)  # fmt: skip
        docs = [{"_id": i, "at": past if i % 3 else future} for i in range(50)] + [{"_id": "none"}]
        engine.run({"insert": "c", "documents": docs, "$db": DB}, 1)
    with engines[0].lock:
        engines[0].expire()
    engines[1].expire_in_steps(step=7)
    stored = [list(engine.coll(DB, "c")._store._documents) for engine in engines]
    assert stored[0] == stored[1] == [i for i in range(50) if i % 3 == 0] + ["none"]


def test_a_ttl_step_skips_documents_gone_and_stops_with_its_index(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine()
    engine.run({"createIndexes": "c", "indexes": [{"key": {"at": 1}, "name": "ttl", "expireAfterSeconds": 0}],
                "$db": DB}, 1)  # fmt: skip
    engine.run({"insert": "c", "documents": [{"_id": i, "at": datetime(2000, 1, 1)} for i in range(10)], "$db": DB}, 1)
    steps: list[int] = []
    expire = mongo_engine._expire

    def between_steps(documents: Any, index: Any, keys: Any = None) -> None:
        steps.append(len(keys))
        if len(steps) == 1:
            expire(documents, index, keys)
            del documents[keys[-1] + 1]  # a client deletes one the next step would look at
            engine.coll(DB, "c")._store.indexes.clear()  # and drops the index
        else:
            expire(documents, index, keys)

    monkeypatch.setattr(mongo_engine, "_expire", between_steps)
    engine.expire_in_steps(step=4)
    assert steps == [4] and list(engine.coll(DB, "c")._store._documents) == [5, 6, 7, 8, 9]


# ---------------------------------------------------------------- through pymongo


@pytest.fixture
def coll(mongo_db: Database) -> Collection:
    return mongo_db["fast"]


def _job(job_id: Any, status: str = "queued", **fields: Any) -> dict[str, Any]:
    return {"_id": job_id, "path": "tasks.add", "params": {"a": 1, "b": [1, 2]}, "queue": "q", "status": status,
            "priority": 0, "datequeued": WHEN, **fields}  # fmt: skip


@pytest.mark.testserver_only
def test_find_one_and_update_by_id_with_a_guard(coll: Collection) -> None:
    coll.insert_one(_job(OID[0], dateexpires=WHEN))
    guard = {"_id": OID[0], "status": {"$in": ["queued", "retry"]}}
    update = {"$set": {"status": "started", "worker": WORKER}, "$unset": {"dateexpires": ""}}
    before = coll.find_one_and_update(guard, update)
    assert before is not None and before["status"] == "queued" and before["dateexpires"] == WHEN
    assert coll.find_one_and_update(guard, update, return_document=ReturnDocument.AFTER) is None  # started now
    after = coll.find_one_and_update({"_id": OID[0], "status": "started", "worker": WORKER},
                                     {"$set": {"status": "success"}}, projection={"status": 1, "params.b": 1},
                                     return_document=ReturnDocument.AFTER)  # fmt: skip
    assert after == {"_id": OID[0], "status": "success", "params": {"b": [1, 2]}}
    stored = coll.find_one({"_id": OID[0]})
    assert stored is not None and "dateexpires" not in stored and stored["worker"] == WORKER
    assert list(stored) == ["_id", "path", "params", "queue", "status", "priority", "datequeued", "worker"]


@pytest.mark.testserver_only
def test_fast_updates_keep_unique_indexes_and_the_document_on_refusal(coll: Collection) -> None:
    coll.create_index("hash", unique=True)
    coll.insert_many([_job(1, hash="a"), _job(2, hash="b")])
    with pytest.raises(DuplicateKeyError):
        coll.update_one({"_id": 2}, {"$set": {"hash": "a", "status": "x"}, "$unset": {"queue": ""}})
    with pytest.raises(DuplicateKeyError):
        coll.find_one_and_update({"_id": 2, "status": "queued"}, {"$set": {"hash": "a"}})
    assert coll.find_one({"_id": 2}) == _job(2, hash="b")
    coll.update_one({"_id": 1}, {"$set": {"hash": "c"}})  # "a" is free again
    coll.update_one({"_id": 2}, {"$set": {"hash": "a"}})
    assert [d["hash"] for d in coll.find({}, sort=[("_id", 1)])] == ["c", "a"]


@pytest.mark.testserver_only
def test_fast_updates_refuse_documents_too_deep_and_leave_them(coll: Collection) -> None:
    coll.insert_one(_job(1))
    with pytest.raises(WriteError) as refused:
        coll.update_one({"_id": 1}, {"$set": {"status": "x", "deep": deep(180)}})
    assert refused.value.code == 15
    with pytest.raises(OperationFailure) as failed:
        coll.find_one_and_update({"_id": 1}, {"$set": {"deep": deep(180)}})
    assert failed.value.code == 15 and "Plan executor error during findAndModify" in str(failed.value)
    assert coll.find_one({"_id": 1}) == _job(1)
    coll.update_one({"_id": 1}, {"$set": {"deep": deep(179)}})  # 180 levels with the document: allowed
    assert coll.count_documents({"deep": {"$exists": True}}) == 1


@pytest.mark.testserver_only
def test_upserts_by_id_insert_the_filter_and_the_update(coll: Collection) -> None:
    result = coll.update_one({"_id": OID[3], "status": "started"}, {"$set": {"n": 1}, "$setOnInsert": {"c": 1}},
                             upsert=True)  # fmt: skip
    assert result.upserted_id == OID[3]
    doc = coll.find_one_and_update({"_id": OID[4]}, {"$inc": {"n": 2}}, upsert=True,
                                   return_document=ReturnDocument.AFTER)  # fmt: skip
    assert doc == {"_id": OID[4], "n": 2}
    coll.update_one({"_id": OID[3]}, {"$set": {"n": 5}, "$setOnInsert": {"c": 2}}, upsert=True)  # exists: no insert
    assert coll.find_one({"_id": OID[3]}) == {"_id": OID[3], "status": "started", "n": 5, "c": 1}


@pytest.mark.testserver_only
def test_ids_of_every_type_and_guards_of_other_types(coll: Collection) -> None:
    ids: list[Any] = [1, Int64(2), 3.5, "s", OID[5], {"k": 1}, datetime(2020, 1, 1), b"id"]
    coll.insert_many([{"_id": job_id, "status": "queued", "flag": True} for job_id in ids])
    for job_id in ids:
        assert coll.find_one({"_id": job_id}) == {"_id": job_id, "status": "queued", "flag": True}
        assert coll.find_one_and_update({"_id": job_id, "status": "queued", "flag": True}, {"$set": {"seen": 1}},
                                        return_document=ReturnDocument.AFTER)["seen"] == 1  # fmt: skip
    assert coll.find_one({"_id": 1.0})["_id"] == 1  # numbers compare as numbers
    assert coll.find_one({"_id": 2})["_id"] == 2
    assert coll.update_many({"_id": {"$in": ids}, "status": {"$in": ["queued"]}, "flag": True},
                            {"$inc": {"n": 1}}).modified_count == len(ids)  # fmt: skip
    none = coll.update_many({"_id": {"$in": ids}, "status": {"$in": ["started"]}}, {"$inc": {"n": 1}})
    assert none.matched_count == 0


@pytest.mark.testserver_only
def test_an_update_many_stores_its_values_in_each_document_apart(coll: Collection) -> None:
    coll.insert_many([_job(1), _job(2), _job(3), _job(4)])
    coll.update_many({"_id": {"$in": [1, 2]}}, {"$set": {"meta": {"a": 1}, "tags": ["x"]}})  # the fast path
    coll.update_many({"_id": {"$in": [3, 4]}}, {"$set": {"meta": {"a": 1}}, "$push": {"tags": "x"}})  # the engine's
    coll.update_one({"_id": 1}, {"$set": {"meta.a": 2}, "$push": {"tags": "y"}})
    coll.update_one({"_id": 3}, {"$set": {"meta.a": 2}, "$push": {"tags": "y"}})
    assert [(d["meta"], d["tags"]) for d in coll.find({}, sort=[("_id", 1)])] == [
        ({"a": 2}, ["x", "y"]), ({"a": 1}, ["x"]), ({"a": 2}, ["x", "y"]), ({"a": 1}, ["x"])]


@pytest.mark.testserver_only
def test_an_inc_of_a_value_that_is_not_a_number_is_refused(coll: Collection) -> None:
    coll.insert_one(_job(1, n="text"))
    with pytest.raises(OperationFailure):
        coll.update_one({"_id": 1}, {"$inc": {"n": 1}})
    with pytest.raises(OperationFailure):
        coll.find_one_and_update({"_id": 1}, {"$inc": {"n": 1}})


@pytest.mark.testserver_only
def test_the_mrq_job_sequence_counts_as_mongod_counts(coll: Collection, mongo_client: pymongo.MongoClient) -> None:
    def status() -> dict[str, Any]:
        return mongo_client.admin.command("serverStatus")

    before = status()
    coll.insert_one(_job(OID[6]))
    coll.find_one_and_update({"_id": OID[6], "status": {"$in": ["queued"]}}, {"$set": {"status": "started"}})
    coll.update_one({"_id": OID[6], "status": "started"}, {"$set": {"status": "success"}})
    after = status()
    assert after["opcounters"]["insert"] - before["opcounters"]["insert"] == 1
    assert after["opcounters"]["update"] - before["opcounters"]["update"] == 1
    commands = after["metrics"]["commands"]
    previous = before["metrics"]["commands"]
    assert commands["findAndModify"]["total"] - previous.get("findAndModify", {}).get("total", 0) == 1


# ---------------------------------------------------------------- the connection loop


def _address(uri: str) -> tuple[str, int]:
    parts = urlsplit(uri)
    return parts.hostname or "127.0.0.1", parts.port or 27017


def _message_bytes(request_id: int, cmd: dict[str, Any], sequence: Any = None) -> bytes:
    body = _message(cmd, sequence)
    return struct.pack("<iiii", 16 + len(body), request_id, 0, OP_MSG) + body


def _replies(sock: socket.socket, count: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(responseTo, document) of the next ``count`` messages, read exactly (nothing buffered away)."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "the server closed the connection"
            data += chunk
        return data

    for _ in range(count):
        length, _, response_to, _ = struct.unpack("<iiii", exactly(16))
        body = exactly(length - 16)
        yield response_to, bson.decode(body[5:])


@pytest.mark.testserver_only
def test_messages_sent_together_are_answered_in_order(mongodb_uri: str, mongo_db: Database) -> None:
    messages = [_message_bytes(i, {"ping": 1, "$db": "admin"}) for i in range(1, 4)]
    messages.append(_message_bytes(4, {"insert": "wire", "$db": mongo_db.name}, ("documents", [{"_id": 1}])))
    messages.append(_message_bytes(5, {"count": "wire", "$db": mongo_db.name}))
    with socket.create_connection(_address(mongodb_uri), timeout=10) as sock:
        sock.sendall(b"".join(messages))
        replies = list(_replies(sock, 5))
    assert [r for r, _ in replies] == [1, 2, 3, 4, 5]
    assert replies[3][1]["n"] == 1 and replies[4][1]["n"] == 1


@pytest.mark.testserver_only
def test_messages_arriving_in_pieces_are_put_together(mongodb_uri: str, mongo_db: Database) -> None:
    big = {"_id": 2, "blob": b"x" * 300_000}  # larger than one recv
    data = _message_bytes(1, {"ping": 1, "$db": "admin"}) + _message_bytes(
        2, {"insert": "wire", "$db": mongo_db.name}, ("documents", [big])
    )
    with socket.create_connection(_address(mongodb_uri), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start, end in [(0, 3), (3, 17), (17, 40), (40, 100_000), (100_000, len(data))]:
            sock.sendall(data[start:end])
            time.sleep(0.01)
        replies = list(_replies(sock, 2))
    assert [(r, d["ok"]) for r, d in replies] == [(1, 1.0), (2, 1.0)] and replies[1][1]["n"] == 1
    assert mongo_db.wire.find_one({"_id": 2})["blob"] == big["blob"]


@pytest.mark.testserver_only
def test_a_connection_closed_in_the_middle_of_a_message_leaves_the_server_serving(mongodb_uri: str) -> None:
    data = _message_bytes(1, {"ping": 1, "$db": "admin"})
    with socket.create_connection(_address(mongodb_uri), timeout=10) as sock:
        sock.sendall(data[:10])
    with socket.create_connection(_address(mongodb_uri), timeout=10) as sock:
        sock.sendall(data[:30])
    with socket.create_connection(_address(mongodb_uri), timeout=10) as sock:
        sock.sendall(data)
        assert next(_replies(sock, 1))[1]["ok"] == 1.0
