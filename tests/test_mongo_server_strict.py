"""Contract tests of the Mongo test server's strict options, through pymongo: ``--auth`` (SCRAM,
users, the localhost exception, the built-in roles per command and per option) and
``--notablescan`` (the queries no index serves are refused, the index-backed shapes run).

Each asserts the exception class and code that pymongo raises, as mongod 7.0 started with
``--auth --setParameter notablescan=1`` answers. The servers are this module's own (started with
the options), so the tests run the same whether or not the session runs in strict mode.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import bson
import pymongo
import pytest
from bson.binary import Binary
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, OperationFailure, WriteError
from pymongo.monitoring import CommandListener

from mrq.testing.mongo_engine import Engine
from mrq.testing.stack import MongoTestServer

pytestmark = pytest.mark.testserver_only

ROOT_PASSWORD = uuid.uuid4().hex
NOTABLESCAN = "No indexed plans available, and running with 'notablescan'"


class Commands(CommandListener):
    """The names of the commands a client sends."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event: Any) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


@pytest.fixture(scope="module")
def strict_server() -> Iterator[MongoTestServer]:
    """A server with --auth --notablescan whose first user, root, came through the localhost exception."""
    server = MongoTestServer(args=["--auth", "--notablescan"])
    server.start()
    with pymongo.MongoClient(server.uri) as client:
        client.admin.command("createUser", "root", pwd=ROOT_PASSWORD, roles=["root"])
    yield server
    server.close()


@pytest.fixture
def connect(strict_server: MongoTestServer) -> Iterator[Callable[..., pymongo.MongoClient]]:
    """``connect(user, password, source)``: a client of the strict server, closed after the test."""
    clients: list[pymongo.MongoClient] = []

    def make(user: str | None = None, password: str | None = None, source: str = "admin",
             server: MongoTestServer = strict_server, **options: Any) -> pymongo.MongoClient:
        credentials = {"username": user, "password": password, "authSource": source} if user else {}
        clients.append(pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=5000, **credentials, **options))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def root(connect: Callable[..., pymongo.MongoClient]) -> pymongo.MongoClient:
    return connect("root", ROOT_PASSWORD)


@pytest.fixture
def app(root: pymongo.MongoClient) -> Iterator[Database]:
    """A fresh database (as root) holding ``things`` with an index on ``a`` and one document."""
    db = root[f"app_{uuid.uuid4().hex[:10]}"]
    _prepare(db)
    yield db
    root.drop_database(db.name)
    for user in db.command("usersInfo", 1)["users"]:
        db.command("dropUser", user["user"])


def _prepare(db: Database) -> None:
    db.things.create_index("a")
    db.things.update_one({"_id": 1}, {"$set": {"a": 1}}, upsert=True)


def _user(db: Database, roles: list[Any]) -> tuple[str, str]:
    name, password = f"u{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    db.command("createUser", name, pwd=password, roles=roles)
    return name, password


def _code(call: Callable[[], Any]) -> int | None:
    """None when the call succeeds, else the code of the OperationFailure it raises."""
    try:
        call()
    except OperationFailure as exc:
        return exc.code
    return None


# --------------------------------------------------------------------------- authentication


def test_localhost_exception_allows_only_the_first_user_in_admin(connect: Callable[..., Any]) -> None:
    with MongoTestServer(args=["--auth"]) as server:
        client = connect(server=server)
        assert client.admin.command("ping")["ok"] == 1  # hello, ping, buildInfo need nothing
        with pytest.raises(OperationFailure, match="not authorized on app to execute command") as find:
            client.app.things.find_one({"_id": 1})
        assert find.value.code == 13
        assert _code(lambda: client.app.command("createUser", "u", pwd="p", roles=["readWrite"])) == 13
        client.admin.command("createUser", "root", pwd="pw", roles=["root"])
        with pytest.raises(OperationFailure, match=r"^Command find requires authentication") as after:
            client.app.things.find_one({"_id": 1})
        assert after.value.code == 13
        assert _code(lambda: client.admin.command("createUser", "x", pwd="p", roles=["root"])) == 13


def test_localhost_exception_needs_a_loopback_client() -> None:
    engine = Engine(auth=True)
    engine.connect(1, loopback=False)
    reply = bson.decode(engine.run({"createUser": "root", "pwd": "pw", "roles": ["root"], "$db": "admin"}, 1))
    assert (reply["ok"], reply["code"], reply["errmsg"]) == (0.0, 13, "Command createUser requires authentication")


def test_the_command_line_offers_both_options() -> None:
    usage = subprocess.run([sys.executable, "-m", "mrq.testing.mongo_server", "--help"], capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    assert "--auth" in usage and "--notablescan" in usage


def test_scram_sha_256_is_speculative_in_the_handshake(connect: Callable[..., Any]) -> None:
    commands = Commands()
    client = connect("root", ROOT_PASSWORD, event_listeners=[commands])
    status = client.admin.command("connectionStatus")["authInfo"]
    assert status["authenticatedUsers"] == [{"user": "root", "db": "admin"}]
    assert status["authenticatedUserRoles"] == [{"role": "root", "db": "admin"}]
    assert "saslStart" not in commands.names and "saslContinue" in commands.names  # saslStart rode on hello


def test_scram_sha_1_and_the_mechanisms_a_user_has(app: Database, connect: Callable[..., Any]) -> None:
    name, password = _user(app, ["read"])
    for mechanism in ("SCRAM-SHA-1", "SCRAM-SHA-256"):
        assert connect(name, password, app.name, authMechanism=mechanism)[app.name].things.find_one({"_id": 1})
    only_256 = f"v{uuid.uuid4().hex[:8]}"
    app.command("createUser", only_256, pwd="pw", roles=["read"], mechanisms=["SCRAM-SHA-256"])
    assert app.command("usersInfo", only_256)["users"][0]["mechanisms"] == ["SCRAM-SHA-256"]
    sha1 = connect(only_256, "pw", app.name, authMechanism="SCRAM-SHA-1")
    assert _code(lambda: sha1[app.name].things.find_one({"_id": 1})) == 18


def test_wrong_password_and_unknown_user_fail_with_18(app: Database, connect: Callable[..., Any]) -> None:
    name, _ = _user(app, ["read"])
    for user, password, source in ((name, "wrong", app.name), ("nobody", "pw", app.name), (name, "pw", "admin")):
        with pytest.raises(OperationFailure, match="Authentication failed") as failed:
            connect(user, password, source)[app.name].things.find_one({"_id": 1})
        assert failed.value.code == 18


def test_unauthenticated_clients_run_only_the_handshake_commands(app: Database, connect: Callable[..., Any]) -> None:
    client = connect()
    assert client.admin.command("ping")["ok"] == 1 and client.admin.command("buildInfo")["version"]
    for call in (lambda: client[app.name].things.find_one({"_id": 1}), lambda: client.list_database_names(),
                 lambda: client[app.name].things.insert_one({"a": 2})):  # fmt: skip
        with pytest.raises(OperationFailure, match="requires authentication") as refused:
            call()
        assert refused.value.code == 13


def _scram(db: Database, user: str, password: str, skip_empty: bool = True) -> dict[str, Any]:
    """A whole SCRAM-SHA-256 conversation on ``db``, written from RFC 5802/7677 (not pymongo's)."""
    first_bare = f"n={user},r={base64.b64encode(os.urandom(24)).decode()}"
    options = {"skipEmptyExchange": True} if skip_empty else {}
    start = db.command("saslStart", 1, mechanism="SCRAM-SHA-256", payload=Binary(f"n,,{first_bare}".encode()),
                       options=options)  # fmt: skip
    server_first = bytes(start["payload"]).decode()
    fields = dict(part.split("=", 1) for part in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = f"c=biws,r={fields['r']}"
    message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), message, "sha256")
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True))).decode()
    reply = db.command("saslContinue", 1, conversationId=start["conversationId"],
                       payload=Binary(f"{without_proof},p={proof}".encode()))  # fmt: skip
    server_signature = hmac.digest(hmac.digest(salted, b"Server Key", "sha256"), message, "sha256")
    assert bytes(reply["payload"]).decode() == "v=" + base64.b64encode(server_signature).decode()  # the server knows
    if not reply["done"]:  # the empty third message of a client that did not ask to skip it
        reply = db.command("saslContinue", 1, conversationId=start["conversationId"], payload=Binary(b""))
    return dict(reply)


def test_a_connection_authenticates_as_one_user_only(app: Database, connect: Callable[..., Any]) -> None:
    name, password = _user(app, ["read"])
    other, other_password = _user(app, ["read"])
    db = connect(name, password, app.name, maxPoolSize=1)[app.name]
    assert _scram(db, name, password)["done"] and _scram(db, name, password, skip_empty=False)["done"]
    with pytest.raises(OperationFailure, match="may only be authenticated once") as same_db:
        _scram(db, other, other_password)
    with pytest.raises(OperationFailure, match="multiple databases") as other_db:
        _scram(db.client.admin, "root", ROOT_PASSWORD)
    assert (same_db.value.code, other_db.value.code) == (5626701, 5626702)
    assert db.command("connectionStatus")["authInfo"]["authenticatedUsers"] == [{"user": name, "db": app.name}]


def test_a_dropped_user_is_unauthenticated_at_its_next_command(app: Database, connect: Callable[..., Any]) -> None:
    name, password = _user(app, ["readWrite"])
    client = connect(name, password, app.name, maxPoolSize=1)
    assert client[app.name].things.find_one({"_id": 1})
    app.command("dropUser", name)
    with pytest.raises(OperationFailure, match="requires authentication"):
        client[app.name].things.find_one({"_id": 1})


def test_user_management_errors(app: Database, root: pymongo.MongoClient) -> None:
    name, _ = _user(app, ["read"])
    assert _code(lambda: app.command("createUser", name, pwd="p", roles=[])) == 51003
    assert _code(lambda: app.command("createUser", "x", pwd="p", roles=["nosuchrole"])) == 31
    assert _code(lambda: app.command("createUser", "x", pwd="p", roles=["root"])) == 31  # root: admin only
    assert _code(lambda: app.command("createUser", "x", pwd="p")) == 40414  # roles are required
    assert _code(lambda: app.command("dropUser", "nobody")) == 11
    app.command("createUser", "mixed", pwd="p", roles=["read", {"role": "readWriteAnyDatabase", "db": "admin"}])
    users = {user["user"]: user for user in app.command("usersInfo", 1)["users"]}
    roles = [{"role": "read", "db": app.name}, {"role": "readWriteAnyDatabase", "db": "admin"}]
    assert users["mixed"]["roles"] == roles
    assert "credentials" not in users["mixed"] and users[name]["db"] == app.name
    all_dbs = root.admin.command("usersInfo", {"forAllDBs": True})["users"]
    assert {"root", name, "mixed"} <= {user["user"] for user in all_dbs}


# --------------------------------------------------------------------------- roles and privileges

#: Each operation runs on the test database ``db`` (with an index on things.a and {_id: 1, a: 1}).
OPERATIONS: dict[str, Callable[[Database], Any]] = {
    "find": lambda db: db.things.find_one({"_id": 1}),
    "count": lambda db: db.things.count_documents({"a": 1}),
    "aggregate": lambda db: list(db.things.aggregate([{"$match": {"a": 1}}])),
    "listIndexes": lambda db: list(db.things.list_indexes()),
    "listCollections": lambda db: db.list_collection_names(),
    "collStats": lambda db: db.command("collStats", "things"),
    "dbStats": lambda db: db.command("dbStats"),
    "insert": lambda db: db.things.insert_one({"a": 2}),
    "update": lambda db: db.things.update_one({"_id": 1}, {"$inc": {"n": 1}}),
    "upsert": lambda db: db.things.update_one({"_id": 7}, {"$set": {"a": 7}}, upsert=True),
    "delete": lambda db: db.things.delete_one({"a": 2}),
    "findAndModify": lambda db: db.things.find_one_and_update({"_id": 1}, {"$inc": {"n": 1}}),
    "createIndexes": lambda db: db.things.create_index("b"),
    "dropIndexes": lambda db: db.things.drop_index("a_1"),
    "insert bypassing validation": lambda db: db.things.insert_one({"a": 3}, bypass_document_validation=True),
    "update bypassing validation": lambda db: db.things.update_one({"_id": 1}, {"$set": {"b": 1}},
                                                                   bypass_document_validation=True),
    "convertToCapped": lambda db: db.command("convertToCapped", "things", size=1 << 20),
    "drop": lambda db: db.things.drop(),
    "dropDatabase": lambda db: db.client.drop_database(db.name),
    "createUser": lambda db: db.command("createUser", f"w{uuid.uuid4().hex[:6]}", pwd="p", roles=[]),
    "serverStatus": lambda db: db.client.admin.command("serverStatus"),
}  # fmt: skip
READ = {"find", "count", "aggregate", "listIndexes", "listCollections", "collStats", "dbStats"}
WRITE = {"insert", "update", "upsert", "delete", "findAndModify", "createIndexes", "dropIndexes", "convertToCapped",
         "drop"}
DB_ADMIN = {"listIndexes", "listCollections", "collStats", "dbStats", "createIndexes", "dropIndexes", "convertToCapped",
            "drop", "dropDatabase"}  # fmt: skip
BYPASS = {"insert bypassing validation", "update bypassing validation"}
ALLOWED: dict[str, set[str]] = {
    "read": READ,
    "readWrite": READ | WRITE,
    "dbAdmin": DB_ADMIN,
    "readWrite+dbAdmin": READ | WRITE | DB_ADMIN | BYPASS,
    "dbOwner": READ | WRITE | DB_ADMIN | BYPASS | {"createUser"},
    "readWriteAnyDatabase@admin": READ | WRITE,
    "dbAdminAnyDatabase@admin": DB_ADMIN,
    "root@admin": set(OPERATIONS),
}


@pytest.mark.parametrize("role", list(ALLOWED))
def test_each_role_runs_what_mongod_allows_and_is_refused_the_rest(
    role: str, app: Database, root: pymongo.MongoClient, connect: Callable[..., Any]
) -> None:
    """Every operation, as a user with ``role``: mongod's answer (allowed, or code 13 Unauthorized)."""
    names = role.split("@")[0].split("+")
    in_admin = role.endswith("@admin")
    roles = [{"role": name, "db": "admin"} if in_admin else name for name in names]
    name, password = _user(root.admin if in_admin else app, roles)
    user_db = connect(name, password, "admin" if in_admin else app.name)[app.name]
    outcomes = {}
    for operation, call in OPERATIONS.items():
        _prepare(app)
        outcomes[operation] = _code(lambda call=call: call(user_db))
    if in_admin:
        root.admin.command("dropUser", name)
    assert outcomes == {operation: None if operation in ALLOWED[role] else 13 for operation in OPERATIONS}


def test_bypass_document_validation_is_refused_to_readwrite_in_every_write(app: Database, connect: Any) -> None:
    db = connect(*_user(app, ["readWrite"]), app.name)[app.name]
    for call in (lambda: db.things.insert_many([{"a": 4}], bypass_document_validation=True),
                 lambda: db.things.find_one_and_update({"_id": 1}, {"$set": {"c": 1}}, bypassDocumentValidation=True),
                 lambda: db.things.bulk_write([UpdateOne({"_id": 1}, {"$set": {"c": 1}})],
                                              bypass_document_validation=True)):  # fmt: skip
        with pytest.raises(OperationFailure, match=r"not authorized on .* bypassDocumentValidation: true") as refused:
            call()
        assert refused.value.code == 13
    owner = connect(*_user(app, ["readWrite", "dbAdmin"]), app.name)[app.name]
    owner.things.insert_many([{"a": 4}], bypass_document_validation=True)
    assert app.things.count_documents({"a": 4}) == 1


def test_a_cursor_belongs_to_its_user(app: Database, connect: Callable[..., Any]) -> None:
    app.things.insert_many([{"a": 1} for _ in range(5)])
    first = connect(*_user(app, ["read"]), app.name)[app.name]
    other = connect(*_user(app, ["read"]), app.name)[app.name]
    reply = first.command("find", "things", filter={"a": 1}, batchSize=1)
    with pytest.raises(OperationFailure, match="not created by the authenticated user") as refused:
        other.command("getMore", reply["cursor"]["id"], collection="things")
    assert refused.value.code == 13
    assert len(first.command("getMore", reply["cursor"]["id"], collection="things")["cursor"]["nextBatch"]) == 5


def test_list_databases_shows_a_user_only_its_databases(app: Database, root: pymongo.MongoClient, connect: Any) -> None:
    client = connect(*_user(app, ["readWrite"]), app.name)
    assert client.list_database_names() == [app.name]
    assert {app.name, "admin"} <= set(root.list_database_names())


def test_without_auth_users_authenticate_but_nothing_is_checked(connect: Callable[..., Any]) -> None:
    with MongoTestServer() as server:
        connect(server=server).app.command("createUser", "u", pwd="pw", roles=["read"])
        client = connect("u", "pw", "app", server=server)
        client.app.things.insert_one({"a": 1}, bypass_document_validation=True)
        client.drop_database("app")
        assert _code(lambda: connect("u", "wrong", "app", server=server).app.things.find_one()) == 18


# --------------------------------------------------------------------------- notablescan


@pytest.fixture
def indexed(app: Database) -> Database:
    """``things`` with indexes a_1, {b, c desc} and a sparse one on s, and 20 documents."""
    app.things.create_index([("b", ASCENDING), ("c", DESCENDING)])
    app.things.create_index("s", sparse=True)
    app.things.insert_many([{"a": i, "b": i % 3, "c": i, "s": i, "x": i} for i in range(2, 22)])
    return app


INDEXED_FILTERS = [
    {"_id": 1}, {"a": 5}, {"a": {"$gte": 3, "$lt": 9}}, {"a": {"$in": [2, 3]}}, {"a": 5, "x": 5},
    {"b": 1}, {"b": 1, "c": {"$gt": 4}}, {"$or": [{"a": 2}, {"b": 1}]}, {"$and": [{"x": 1}, {"a": 2}]},
    {"a": {"$exists": True}}, {"a": {"$ne": 3}}, {"s": 5}, {"s": {"$exists": True}}, {"a": {"$regex": "^1"}},
    {"$expr": {"$eq": ["$a", 2]}}, {"$expr": {"$and": [{"$gt": ["$b", 0]}, {"$eq": ["$x", "$c"]}]}},
]  # fmt: skip
UNINDEXED_FILTERS = [
    {"x": 5}, {"c": 5}, {"$or": [{"a": 2}, {"x": 1}]}, {"s": None}, {"s": {"$exists": False}},
    {"s": {"$in": [None, 1]}}, {"$nor": [{"a": 2}]}, {"a": {"$size": 2}}, {"$expr": {"$eq": ["$x", 2]}},
    {"$expr": {"$eq": ["$a", "$x"]}},
]  # fmt: skip


@pytest.mark.parametrize("spec", INDEXED_FILTERS, ids=str)
def test_queries_an_index_serves_run(indexed: Database, spec: dict[str, Any]) -> None:
    things = indexed.things
    expected = len([doc for doc in things.find(spec)])
    assert things.count_documents(spec) == expected
    assert len(list(things.aggregate([{"$match": spec}]))) == expected
    assert things.update_many(spec, {"$set": {"seen": True}}).matched_count == expected
    assert things.find_one_and_update(spec, {"$set": {"seen": 2}}, sort=[("_id", 1)]) is not None or expected == 0
    assert things.delete_many(spec).deleted_count == expected


@pytest.mark.parametrize("spec", UNINDEXED_FILTERS, ids=str)
def test_queries_no_index_serves_are_refused_with_291(indexed: Database, spec: dict[str, Any]) -> None:
    things = indexed.things
    for read in (lambda: things.find_one(spec), lambda: things.count_documents(spec),
                 lambda: list(things.aggregate([{"$sort": {"x": 1}}, {"$match": spec}])),
                 lambda: things.distinct("a", spec),
                 lambda: things.find_one_and_update(spec, {"$set": {"y": 1}})):  # fmt: skip
        with pytest.raises(OperationFailure, match=NOTABLESCAN) as refused:
            read()
        assert refused.value.code == 291
    for write in (lambda: things.update_one(spec, {"$set": {"y": 1}}), lambda: things.delete_many(spec)):
        with pytest.raises(WriteError, match=NOTABLESCAN) as refused_write:
            write()
        assert refused_write.value.code == 291
    with pytest.raises(BulkWriteError) as bulk:
        things.bulk_write([UpdateOne({"_id": 1}, {"$set": {"y": 1}}), UpdateOne(spec, {"$set": {"y": 1}})])
    assert [error["code"] for error in bulk.value.details["writeErrors"]] == [291]
    assert bulk.value.details["nModified"] == 1


def test_sorts_an_index_provides_run_with_any_filter(indexed: Database) -> None:
    things = indexed.things
    assert things.find_one({"x": 5}, sort=[("a", DESCENDING)])["x"] == 5  # a full scan of index a_1, in order
    assert things.find_one({"x": 5}, sort=[("b", ASCENDING), ("c", DESCENDING)])["x"] == 5
    assert things.find_one({"x": 5}, sort=[("b", DESCENDING), ("c", ASCENDING)])["x"] == 5  # the reverse order
    assert things.find_one({}, sort=[("x", DESCENDING)])["x"] == 21  # an empty filter: mongod never refuses it
    assert things.find_one({"x": 5}, hint="a_1")["x"] == 5  # a hinted index is a plan
    for sort in ([("x", 1)], [("b", 1), ("c", 1)], [("c", 1)], [("s", 1)], [("$natural", 1)]):
        assert _code(lambda sort=sort: things.find_one({"x": 5}, sort=sort)) == 291  # s: sparse, no sort
    with pytest.raises(OperationFailure, match="hint \\$natural is not allowed") as natural:
        things.find_one({"a": 5}, hint=[("$natural", 1)])
    assert natural.value.code == 291


def test_what_notablescan_leaves_alone(indexed: Database, root: pymongo.MongoClient) -> None:
    things, missing = indexed.things, indexed[f"missing_{uuid.uuid4().hex[:6]}"]
    assert things.count_documents({}) == 21 and things.delete_many({"_id": {"$gt": 100}}).deleted_count == 0
    assert missing.find_one({"x": 1}) is None and missing.count_documents({"x": 1}) == 0
    assert missing.update_one({"x": 1}, {"$set": {"y": 1}}).matched_count == 0  # nothing planned, nothing created
    root.admin.scratch.insert_one({"x": 1})
    assert root.admin.scratch.find_one({"x": 1})["x"] == 1  # admin, local and config are exempt
    root.admin.scratch.drop()
    with pytest.raises(WriteError, match=NOTABLESCAN):  # an upsert creates the collection first, then plans
        missing.update_one({"x": 1}, {"$set": {"y": 1}}, upsert=True)


def test_refusals_are_logged_by_the_server(strict_server: MongoTestServer, indexed: Database) -> None:
    with pytest.raises(OperationFailure):
        indexed.things.find_one({"x": 17})
    assert f"refused (code 291) on {indexed.name}: {{ find: \"things\", filter: {{ x: 17 }}" in strict_server.read_log()


def test_pymongo_async_client_authenticates_and_is_held_to_the_same_rules(strict_server: MongoTestServer) -> None:
    """mrq.aio's client (pymongo's AsyncMongoClient) does its own handshake: SCRAM through
    `hello`, then the commands the async producer sends (insert, find, delete), with the same
    access control and notablescan answers as the sync driver gets."""
    import asyncio

    from pymongo.asynchronous.mongo_client import AsyncMongoClient

    with pymongo.MongoClient(strict_server.uri, username="root", password=ROOT_PASSWORD) as root:
        root.asyncapp.command("createUser", "writer", pwd="pw", roles=["readWrite"])

    async def scenario() -> tuple[Any, ...]:
        client: AsyncMongoClient = AsyncMongoClient(strict_server.uri, username="writer", password="pw",
                                                    authSource="asyncapp", serverSelectionTimeoutMS=5000)
        try:
            jobs = client.asyncapp.jobs
            status = (await client.asyncapp.command("connectionStatus"))["authInfo"]["authenticatedUsers"]
            await jobs.insert_many([{"_id": 1, "status": "queued"}, {"_id": 2, "status": "queued"}])
            found = [doc["_id"] async for doc in jobs.find({"_id": {"$in": [1, 2]}}, {"_id": 1})]
            with pytest.raises(OperationFailure) as scan:
                await jobs.find_one({"status": "queued"})  # no index on status: refused, as mongod would
            with pytest.raises(OperationFailure) as denied:
                await client.otherdb.things.insert_one({"x": 1})  # readWrite on asyncapp only
            deleted = (await jobs.delete_many({"_id": {"$in": [1, 2]}, "status": "queued"})).deleted_count
            return status, found, scan.value.code, denied.value.code, deleted
        finally:
            await client.close()

    status, found, scan_code, denied_code, deleted = asyncio.run(scenario())
    assert status == [{"user": "writer", "db": "asyncapp"}]
    assert sorted(found) == [1, 2] and deleted == 2
    assert (scan_code, denied_code) == (291, 13)
