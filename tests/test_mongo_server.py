"""Contract tests of the MongoDB test server (mrq.testing.mongo_server), through pymongo.

They are written to hold on a real MongoDB too (``MRQ_TEST_MONGODB_URI``), except the ones
marked ``testserver_only``: raw wire-protocol checks, TTL timing, transactions and speed.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import bson
import pymongo
import pytest
from bson import Binary, Decimal128, Int64, ObjectId
from pymongo import ReturnDocument, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError,
    CollectionInvalid,
    CursorNotFound,
    DocumentTooLarge,
    DuplicateKeyError,
    OperationFailure,
    WriteError,
)
from pymongo.monitoring import CommandListener, CommandSucceededEvent, ConnectionPoolListener
from pymongo.write_concern import WriteConcern

from mrq.testing.pytest_plugin import use_plain_mongodb


class Recorder(CommandListener, ConnectionPoolListener):
    """Records succeeded commands (name, reply) and closed pool connections."""

    def __init__(self) -> None:
        self.replies: list[tuple[str, dict[str, Any]]] = []
        self.closed = 0

    def named(self, name: str) -> list[dict[str, Any]]:
        return [reply for command, reply in self.replies if command == name]

    def succeeded(self, event: CommandSucceededEvent) -> None:
        self.replies.append((event.command_name, event.reply))

    def connection_closed(self, event: Any) -> None:
        self.closed += 1

    def ignore(self, event: Any) -> None:
        pass

    started = failed = pool_created = pool_ready = pool_cleared = pool_closed = ignore
    connection_created = connection_ready = connection_check_out_started = connection_check_out_failed = ignore
    connection_checked_out = connection_checked_in = ignore


# The test server's contract tests run on a plain server, also in strict mode.
_plain_uri, _plain_client = use_plain_mongodb()


@pytest.fixture
def recorded(mongodb_uri: str, mongo_db: Database) -> Iterator[tuple[Database, Recorder]]:
    """The test database through a one-connection client that records replies and pool events."""
    recorder = Recorder()
    client: pymongo.MongoClient = pymongo.MongoClient(mongodb_uri, event_listeners=[recorder], maxPoolSize=1)
    yield client[mongo_db.name], recorder
    client.close()


@pytest.fixture
def coll(mongo_db: Database) -> Collection:
    return mongo_db["things"]


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.05)


# ---------------------------------------------------------------- handshake and server commands


def test_hello_reports_a_writable_standalone_with_sessions(mongo_client: pymongo.MongoClient) -> None:
    reply = mongo_client.admin.command("hello")
    assert reply["isWritablePrimary"] is True
    assert reply["maxWireVersion"] >= 9
    assert reply["maxBsonObjectSize"] == 16 * 1024 * 1024
    assert reply["logicalSessionTimeoutMinutes"] > 0


def test_legacy_is_master_answers_ismaster(mongo_client: pymongo.MongoClient) -> None:
    assert mongo_client.admin.command("isMaster")["ismaster"] is True


def test_ping_and_build_info(mongo_client: pymongo.MongoClient) -> None:
    assert mongo_client.admin.command("ping")["ok"] == 1.0
    assert mongo_client.server_info()["versionArray"][0] >= 4


def test_explicit_session_can_be_used_and_ended(mongo_client: pymongo.MongoClient, coll: Collection) -> None:
    with mongo_client.start_session() as session:
        coll.insert_one({"_id": 1}, session=session)
        assert coll.find_one({"_id": 1}, session=session) == {"_id": 1}


def test_unknown_command_fails(mongo_db: Database) -> None:
    with pytest.raises(OperationFailure) as info:
        mongo_db.command("noSuchCommandAtAll")
    assert info.value.code == 59


def test_server_status_answers(mongo_client: pymongo.MongoClient) -> None:
    assert mongo_client.admin.command("serverStatus")["ok"] == 1.0


@pytest.mark.testserver_only
def test_transactions_are_rejected_like_a_standalone(mongo_client: pymongo.MongoClient, coll: Collection) -> None:
    with (
        mongo_client.start_session() as session,
        pytest.raises(OperationFailure) as info,
        session.start_transaction(),
    ):
        coll.insert_one({"x": 1}, session=session)
    assert info.value.code == 20


# ---------------------------------------------------------------- inserts and duplicate keys


def test_insert_many_assigns_ids_and_documents_read_back(coll: Collection) -> None:
    result = coll.insert_many([{"n": 1}, {"n": 2}])
    assert all(isinstance(i, ObjectId) for i in result.inserted_ids)
    assert [d["n"] for d in coll.find({"_id": {"$in": result.inserted_ids}}).sort("n", 1)] == [1, 2]


def test_duplicate_id_raises_duplicate_key_error(coll: Collection) -> None:
    coll.insert_one({"_id": "a"})
    with pytest.raises(DuplicateKeyError) as info:
        coll.insert_one({"_id": "a"})
    assert info.value.code == 11000
    assert info.value.details["keyValue"] == {"_id": "a"}


def test_ordered_insert_many_stops_at_the_duplicate(coll: Collection) -> None:
    with pytest.raises(BulkWriteError) as info:
        coll.insert_many([{"_id": 1}, {"_id": 1}, {"_id": 2}])
    details = info.value.details
    assert details["nInserted"] == 1
    assert [(e["index"], e["code"]) for e in details["writeErrors"]] == [(1, 11000)]
    assert coll.count_documents({}) == 1


def test_unordered_insert_many_continues_after_the_duplicate(coll: Collection) -> None:
    with pytest.raises(BulkWriteError) as info:
        coll.insert_many([{"_id": 1}, {"_id": 1}, {"_id": 2}, {"_id": 2}, {"_id": 3}], ordered=False)
    details = info.value.details
    assert details["nInserted"] == 3
    assert [e["index"] for e in details["writeErrors"]] == [1, 3]
    assert coll.count_documents({}) == 3


def test_unique_index_rejects_duplicates_and_reports_the_key(coll: Collection) -> None:
    coll.create_index("email", unique=True)
    coll.insert_one({"email": "a@x"})
    with pytest.raises(DuplicateKeyError) as info:
        coll.insert_one({"email": "a@x"})
    assert info.value.details["keyPattern"] == {"email": 1}
    assert info.value.details["keyValue"] == {"email": "a@x"}


def test_unique_index_follows_updates_and_deletes(coll: Collection) -> None:
    coll.create_index("k", unique=True)
    coll.insert_many([{"_id": 1, "k": "a"}, {"_id": 2, "k": "b"}])
    coll.update_one({"_id": 1}, {"$set": {"k": "c"}})  # frees "a", takes "c"
    coll.insert_one({"_id": 3, "k": "a"})
    with pytest.raises(DuplicateKeyError):
        coll.update_one({"_id": 2}, {"$set": {"k": "c"}})
    assert coll.find_one({"_id": 2})["k"] == "b"  # the failed update left the document alone
    coll.delete_one({"_id": 1})
    coll.insert_one({"_id": 4, "k": "c"})
    assert coll.count_documents({}) == 3


def test_sparse_unique_index_allows_many_missing_values(coll: Collection) -> None:
    coll.create_index("k", unique=True, sparse=True)
    coll.insert_many([{"x": 1}, {"x": 2}, {"k": 1}])
    with pytest.raises(DuplicateKeyError):
        coll.insert_one({"k": 1})


def test_compound_unique_index_needs_every_field_equal(coll: Collection) -> None:
    coll.create_index([("a", 1), ("b", 1)], unique=True)
    coll.insert_many([{"a": 1, "b": 1}, {"a": 1, "b": 2}, {"a": 2, "b": 1}])
    with pytest.raises(DuplicateKeyError):
        coll.insert_one({"a": 1, "b": 2})


def test_unique_index_creation_fails_on_existing_duplicates(coll: Collection) -> None:
    coll.insert_many([{"k": 1}, {"k": 1}])
    with pytest.raises(OperationFailure):
        coll.create_index("k", unique=True)


def test_upsert_into_a_taken_unique_key_fails(coll: Collection) -> None:
    coll.create_index("k", unique=True)
    coll.insert_one({"k": 1, "state": "a"})
    with pytest.raises(DuplicateKeyError):
        coll.update_one({"state": "b"}, {"$set": {"k": 1}}, upsert=True)


# ---------------------------------------------------------------- find, cursors, projection, sort


def test_cursor_returns_every_document_across_batches(recorded: tuple[Database, Recorder]) -> None:
    db, recorder = recorded
    db.c.insert_many([{"_id": i} for i in range(350)])
    assert [d["_id"] for d in db.c.find().sort("_id", 1).batch_size(100)] == list(range(350))
    assert [len(r["cursor"]["nextBatch"]) for r in recorder.named("getMore")] == [100, 100, 50]


def test_first_batch_defaults_to_101_documents(recorded: tuple[Database, Recorder]) -> None:
    db, recorder = recorded
    db.c.insert_many([{"_id": i} for i in range(150)])
    assert len(list(db.c.find())) == 150
    (find,) = recorder.named("find")
    assert len(find["cursor"]["firstBatch"]) == 101
    assert find["cursor"]["id"] != 0


def test_limit_spans_batches_and_closes_the_cursor(recorded: tuple[Database, Recorder]) -> None:
    db, recorder = recorded
    db.c.insert_many([{"_id": i} for i in range(300)])
    assert len(list(db.c.find().limit(250).batch_size(100))) == 250
    assert recorder.named("getMore")[-1]["cursor"]["id"] == 0
    assert not recorder.named("killCursors")


def test_negative_limit_returns_a_single_batch(recorded: tuple[Database, Recorder]) -> None:
    db, recorder = recorded
    db.c.insert_many([{"_id": i} for i in range(20)])
    assert len(list(db.c.find().limit(-5))) == 5
    assert recorder.named("find")[0]["cursor"]["id"] == 0
    assert not recorder.named("getMore")


def test_closing_a_cursor_early_kills_it(recorded: tuple[Database, Recorder]) -> None:
    db, recorder = recorded
    db.c.insert_many([{"_id": i} for i in range(50)])
    cursor = db.c.find().batch_size(10)
    next(cursor)
    cursor_id = cursor.cursor_id
    cursor.close()
    assert recorder.named("killCursors")[0]["cursorsKilled"] == [cursor_id]


def test_killed_cursor_is_not_found_on_get_more(mongo_db: Database) -> None:
    mongo_db.c.insert_many([{"_id": i} for i in range(50)])
    cursor = mongo_db.c.find().batch_size(10)
    next(cursor)
    mongo_db.command("killCursors", "c", cursors=[cursor.cursor_id])
    with pytest.raises(CursorNotFound):
        list(cursor)


def test_get_more_of_an_unknown_cursor_fails_with_code_43(mongo_db: Database) -> None:
    mongo_db.c.insert_one({"x": 1})
    with pytest.raises(OperationFailure) as info:
        mongo_db.command("getMore", Int64(123456789), collection="c")
    assert info.value.code == 43


def test_projection_inclusion(coll: Collection) -> None:
    coll.insert_one({"_id": 1, "a": 1, "b": 2, "n": {"x": 1, "y": 2}})
    assert coll.find_one({}, {"a": 1, "n.x": 1}) == {"_id": 1, "a": 1, "n": {"x": 1}}


def test_projection_exclusion(coll: Collection) -> None:
    coll.insert_one({"_id": 1, "a": 1, "b": 2})
    assert coll.find_one({}, {"b": 0}) == {"_id": 1, "a": 1}


def test_projection_can_exclude_id(coll: Collection) -> None:
    coll.insert_one({"_id": 1, "a": 1, "b": 2})
    assert coll.find_one({}, {"_id": 0, "a": 1}) == {"a": 1}


def test_sort_on_several_keys_with_id_tiebreak(coll: Collection) -> None:
    coll.insert_many([{"_id": i, "g": i % 3} for i in range(9)])
    order = [d["_id"] for d in coll.find().sort([("g", 1), ("_id", -1)])]
    assert order == [6, 3, 0, 7, 4, 1, 8, 5, 2]


def test_sort_numbers_descending_then_id_ascending_with_limit(coll: Collection) -> None:
    coll.insert_many([{"_id": i, "priority": i % 4} for i in range(20)])
    order = [d["_id"] for d in coll.find().sort([("priority", -1), ("_id", 1)]).limit(6)]
    assert order == [3, 7, 11, 15, 19, 2]


def test_sort_strings_descending_then_id_ascending(coll: Collection) -> None:
    coll.insert_many([{"_id": i, "q": "ab"[i % 2]} for i in range(6)])
    assert [d["_id"] for d in coll.find().sort([("q", -1), ("_id", 1)])] == [1, 3, 5, 0, 2, 4]


def test_sort_follows_bson_type_order(coll: Collection) -> None:
    coll.insert_many([{"_id": 1, "v": "b"}, {"_id": 2, "v": 2}, {"_id": 3}, {"_id": 4, "v": 1.5}, {"_id": 5, "v": "a"}])
    assert [d["_id"] for d in coll.find().sort([("v", 1), ("_id", 1)])] == [3, 4, 2, 5, 1]


def test_skip_and_limit_after_sort(coll: Collection) -> None:
    coll.insert_many([{"_id": i} for i in range(10)])
    assert [d["_id"] for d in coll.find().sort("_id", -1).skip(2).limit(3)] == [7, 6, 5]


def test_equality_matches_array_members_and_not_other_types(coll: Collection) -> None:
    coll.insert_many([{"_id": 1, "t": ["x", "y"]}, {"_id": 2, "t": "x"}, {"_id": 3, "t": 1}, {"_id": 4, "t": "1"}])
    assert sorted(d["_id"] for d in coll.find({"t": "x"})) == [1, 2]
    assert [d["_id"] for d in coll.find({"t": 1})] == [3]


def test_null_matches_missing_and_null_fields(coll: Collection) -> None:
    coll.insert_many([{"_id": 1, "a": None}, {"_id": 2}, {"_id": 3, "a": 0}])
    assert sorted(d["_id"] for d in coll.find({"a": None})) == [1, 2]


def test_query_operators_combined_with_equality(coll: Collection) -> None:
    coll.insert_many([{"_id": i, "s": "on" if i % 2 else "off", "n": i, "d": {"k": i}} for i in range(10)])
    found = coll.find({"s": "on", "n": {"$gte": 5}, "$or": [{"d.k": 5}, {"d.k": {"$in": [7, 9]}}]})
    assert sorted(d["_id"] for d in found) == [5, 7, 9]


def test_id_lookups_use_mongodb_equality(coll: Collection) -> None:
    coll.insert_many([{"_id": 1, "x": 1}, {"_id": "1", "x": 2}, {"_id": 2, "x": 3}])
    assert coll.find_one({"_id": 1.0})["x"] == 1
    assert [d["x"] for d in coll.find({"_id": {"$in": [2, "1", 99]}, "x": {"$gt": 2}})] == [3]
    assert coll.find_one({"_id": 3}) is None


# ---------------------------------------------------------------- updates and deletes


def test_update_operators_inc_push_add_to_set_unset(coll: Collection) -> None:
    coll.insert_one({"_id": 1, "n": 1, "tags": ["a"], "gone": True})
    coll.update_one({"_id": 1}, {"$inc": {"n": 2}, "$push": {"log": "x"}, "$addToSet": {"tags": "a"}})
    coll.update_one({"_id": 1}, {"$addToSet": {"tags": "b"}, "$unset": {"gone": ""}})
    assert coll.find_one({"_id": 1}) == {"_id": 1, "n": 3, "tags": ["a", "b"], "log": ["x"]}


def test_set_on_insert_applies_only_when_upserting(coll: Collection) -> None:
    update = {"$setOnInsert": {"created": 1}, "$inc": {"hits": 1}}
    coll.update_one({"_id": "k"}, update, upsert=True)
    coll.update_one({"_id": "k"}, {**update, "$setOnInsert": {"created": 2}}, upsert=True)
    assert coll.find_one({"_id": "k"}) == {"_id": "k", "created": 1, "hits": 2}


def test_upsert_returns_the_new_id_and_copies_the_filter(coll: Collection) -> None:
    result = coll.update_one({"name": "x"}, {"$set": {"v": 1}}, upsert=True)
    assert result.matched_count == 0 and result.upserted_id is not None
    assert coll.find_one({"_id": result.upserted_id}) == {"_id": result.upserted_id, "name": "x", "v": 1}


def test_bulk_write_reports_upserted_ids_by_index(coll: Collection) -> None:
    coll.insert_one({"_id": 1})
    result = coll.bulk_write(
        [
            UpdateOne({"_id": 1}, {"$set": {"a": 1}}, upsert=True),
            UpdateOne({"_id": 2}, {"$set": {"a": 2}}, upsert=True),
        ]
    )
    assert result.upserted_ids == {1: 2}
    assert (result.matched_count, result.modified_count, result.upserted_count) == (1, 1, 1)


def test_update_many_counts_matched_and_modified(coll: Collection) -> None:
    coll.insert_many([{"_id": i, "x": 1 if i < 2 else 0} for i in range(5)])
    result = coll.update_many({}, {"$set": {"x": 1}})
    assert (result.matched_count, result.modified_count) == (5, 3)


def test_update_many_by_id_in_list(coll: Collection) -> None:
    coll.insert_many([{"_id": i, "n": 0} for i in range(200)])
    result = coll.update_many({"_id": {"$in": list(range(50, 150))}}, {"$inc": {"n": 1}})
    assert result.modified_count == 100
    assert coll.count_documents({"n": 1}) == 100


def test_array_filters_update_matching_elements(coll: Collection) -> None:
    coll.insert_one({"_id": 1, "items": [{"id": 1, "done": False}, {"id": 2, "done": False}]})
    coll.update_one({"_id": 1}, {"$set": {"items.$[it].done": True}}, array_filters=[{"it.id": 2}])
    assert [i["done"] for i in coll.find_one({"_id": 1})["items"]] == [False, True]


def test_positional_operator_updates_the_matched_element(coll: Collection) -> None:
    coll.insert_one({"_id": 1, "items": [{"id": 1, "n": 0}, {"id": 2, "n": 0}]})
    coll.update_one({"_id": 1, "items.id": 2}, {"$inc": {"items.$.n": 5}})
    assert [i["n"] for i in coll.find_one({"_id": 1})["items"]] == [0, 5]


def test_replace_one_replaces_the_whole_document(coll: Collection) -> None:
    coll.insert_one({"_id": 1, "a": 1, "b": 2})
    coll.replace_one({"_id": 1}, {"c": 3})
    assert coll.find_one({"_id": 1}) == {"_id": 1, "c": 3}


def test_invalid_update_operator_is_a_write_error(coll: Collection) -> None:
    coll.insert_one({"_id": 1})
    with pytest.raises(WriteError):
        coll.update_one({"_id": 1}, {"$notAnOperator": {"a": 1}})


def test_delete_one_and_delete_many(coll: Collection) -> None:
    coll.insert_many([{"k": 1}, {"k": 1}, {"k": 1}, {"k": 2}])
    assert coll.delete_one({"k": 1}).deleted_count == 1
    assert coll.delete_many({"k": 1}).deleted_count == 2
    assert [d["k"] for d in coll.find()] == [2]


# ---------------------------------------------------------------- findAndModify


def test_find_one_and_update_returns_before_or_after(coll: Collection) -> None:
    coll.insert_one({"_id": 1, "n": 0})
    assert coll.find_one_and_update({"_id": 1}, {"$inc": {"n": 1}})["n"] == 0
    after = coll.find_one_and_update({"_id": 1}, {"$inc": {"n": 1}}, return_document=ReturnDocument.AFTER)
    assert after["n"] == 2


def test_find_one_and_update_takes_the_first_by_sort(coll: Collection) -> None:
    coll.insert_many([{"_id": i, "p": i % 3, "state": "queued"} for i in range(9)])
    claimed = coll.find_one_and_update(
        {"state": "queued"},
        {"$set": {"state": "started"}},
        sort=[("p", -1), ("_id", 1)],
        projection={"_id": 1},
    )
    assert claimed == {"_id": 2}
    assert coll.find_one({"_id": 2})["state"] == "started"


def test_find_one_and_update_without_match_returns_none(coll: Collection) -> None:
    assert coll.find_one_and_update({"x": 1}, {"$set": {"y": 1}}) is None
    assert coll.count_documents({}) == 0


def test_find_one_and_update_upsert_returns_the_new_document(coll: Collection) -> None:
    doc = coll.find_one_and_update({"name": "n"}, {"$inc": {"c": 1}}, upsert=True, return_document=ReturnDocument.AFTER)
    assert doc["name"] == "n" and doc["c"] == 1 and coll.count_documents({}) == 1


def test_find_one_and_delete_removes_the_sorted_first(coll: Collection) -> None:
    coll.insert_many([{"_id": i} for i in range(3)])
    assert coll.find_one_and_delete({}, sort=[("_id", -1)]) == {"_id": 2}
    assert coll.count_documents({}) == 2


def test_find_one_and_replace(coll: Collection) -> None:
    coll.insert_one({"_id": 1, "a": 1})
    new = coll.find_one_and_replace({"a": 1}, {"b": 2}, return_document=ReturnDocument.AFTER)
    assert new == {"_id": 1, "b": 2}


# ---------------------------------------------------------------- aggregate, count, distinct


def test_aggregate_match_group_sort(coll: Collection) -> None:
    coll.insert_many([{"g": i % 3, "v": i} for i in range(9)])
    pipeline = [
        {"$match": {"v": {"$gte": 3}}},
        {"$group": {"_id": "$g", "total": {"$sum": "$v"}}},
        {"$sort": {"_id": 1}},
    ]
    assert list(coll.aggregate(pipeline)) == [
        {"_id": 0, "total": 9},
        {"_id": 1, "total": 11},
        {"_id": 2, "total": 13},
    ]


def test_aggregate_unwind_add_fields_project_skip_limit(coll: Collection) -> None:
    coll.insert_one({"_id": 1, "tags": ["a", "b", "c", "d"]})
    pipeline = [
        {"$unwind": "$tags"},
        {"$addFields": {"upper": {"$toUpper": "$tags"}}},
        {"$project": {"_id": 0, "upper": 1}},
        {"$skip": 1},
        {"$limit": 2},
    ]
    assert list(coll.aggregate(pipeline)) == [{"upper": "B"}, {"upper": "C"}]


def test_aggregate_count_stage(coll: Collection) -> None:
    coll.insert_many([{"v": i} for i in range(7)])
    assert list(coll.aggregate([{"$match": {"v": {"$lt": 4}}}, {"$count": "n"}])) == [{"n": 4}]


def test_aggregate_cursor_spans_batches(recorded: tuple[Database, Recorder]) -> None:
    db, recorder = recorded
    db.c.insert_many([{"_id": i} for i in range(300)])
    docs = list(db.c.aggregate([{"$sort": {"_id": 1}}], batchSize=0))
    assert [d["_id"] for d in docs] == list(range(300))
    assert recorder.named("aggregate")[0]["cursor"]["firstBatch"] == []
    assert recorder.named("getMore")


def test_count_documents_with_skip_and_limit_and_estimated_count(coll: Collection) -> None:
    coll.insert_many([{"k": i % 2} for i in range(10)])
    assert coll.count_documents({"k": 1}) == 5
    assert coll.count_documents({"k": 1}, skip=2, limit=2) == 2
    assert coll.count_documents({"k": 1}, skip=4) == 1
    assert coll.estimated_document_count() == 10


def test_distinct_with_filter(coll: Collection) -> None:
    coll.insert_many([{"g": i % 3, "v": i} for i in range(9)])
    assert sorted(coll.distinct("g", {"v": {"$gt": 4}})) == [0, 1, 2]
    assert sorted(coll.distinct("g", {"v": {"$gt": 6}})) == [1, 2]


# ---------------------------------------------------------------- collections, databases, indexes


def test_capped_collection_keeps_the_newest_max_documents(mongo_db: Database) -> None:
    log = mongo_db.create_collection("log", capped=True, size=100_000, max=5)
    for i in range(8):
        log.insert_one({"i": i})
    assert [d["i"] for d in log.find()] == [3, 4, 5, 6, 7]
    assert log.options()["capped"] is True and log.options()["max"] == 5


def test_capped_collection_trims_by_size(mongo_db: Database) -> None:
    log = mongo_db.create_collection("log", capped=True, size=4096)
    log.insert_many([{"i": i, "pad": "x" * 200} for i in range(100)])
    kept = [d["i"] for d in log.find()]
    assert 0 < len(kept) < 30
    assert kept == list(range(100 - len(kept), 100))


def test_convert_to_capped_keeps_the_newest_documents_and_the_id_index(mongo_db: Database) -> None:
    logs = mongo_db["logs"]
    logs.insert_many([{"i": i, "pad": "x" * 200} for i in range(100)])
    logs.create_index("i", name="by_i")
    mongo_db.command("convertToCapped", "logs", size=8192)
    assert logs.options()["capped"] is True and logs.options()["size"] >= 8192
    kept = [d["i"] for d in logs.find()]
    assert 0 < len(kept) < 50 and kept == list(range(100 - len(kept), 100))
    assert [info["name"] for info in logs.list_indexes()] == ["_id_"]
    logs.insert_many([{"i": 100 + i, "pad": "x" * 200} for i in range(50)])
    assert max(d["i"] for d in logs.find()) == 149 and logs.count_documents({}) < 50
    with pytest.raises(OperationFailure):
        mongo_db.command("convertToCapped", "missing", size=8192)


def test_create_existing_collection_fails(mongo_db: Database) -> None:
    mongo_db.create_collection("c")
    with pytest.raises(CollectionInvalid):
        mongo_db.create_collection("c")


def test_list_collection_names_filter_and_drop(mongo_db: Database) -> None:
    mongo_db.create_collection("a")
    mongo_db.b.insert_one({})
    assert sorted(mongo_db.list_collection_names()) == ["a", "b"]
    assert mongo_db.list_collection_names(filter={"name": "b"}) == ["b"]
    mongo_db.drop_collection("a")
    mongo_db.drop_collection("never-existed")  # tolerated by pymongo
    assert mongo_db.list_collection_names() == ["b"]


def test_list_collections_reports_capped_options(mongo_db: Database) -> None:
    mongo_db.create_collection("capped", capped=True, size=8192)
    mongo_db.create_collection("plain")
    infos = {c["name"]: c for c in mongo_db.list_collections()}
    assert infos["capped"]["options"]["capped"] is True
    assert not infos["plain"]["options"].get("capped")


def test_list_database_names_and_drop_database(mongo_client: pymongo.MongoClient, mongo_db: Database) -> None:
    mongo_db.c.insert_one({"x": 1})
    assert mongo_db.name in mongo_client.list_database_names()
    assert [d["name"] for d in mongo_client.list_databases(filter={"name": mongo_db.name})] == [mongo_db.name]
    mongo_client.drop_database(mongo_db.name)
    assert mongo_db.name not in mongo_client.list_database_names()
    assert mongo_db.c.count_documents({}) == 0


def test_rename_collection(mongo_db: Database) -> None:
    mongo_db.old.insert_one({"_id": 1})
    mongo_db.other.insert_one({"_id": 2})
    mongo_db.old.rename("new")
    assert sorted(mongo_db.list_collection_names()) == ["new", "other"]
    assert mongo_db.new.find_one() == {"_id": 1}
    with pytest.raises(OperationFailure):
        mongo_db.new.rename("other")


def test_list_indexes_shows_unique_and_ttl_options(coll: Collection) -> None:
    coll.create_index("email", unique=True)
    coll.create_index([("at", 1)], expireAfterSeconds=3600)
    info = coll.index_information()
    assert sorted(info) == ["_id_", "at_1", "email_1"]
    assert info["email_1"]["unique"] is True and info["email_1"]["key"] == [("email", 1)]
    assert info["at_1"]["expireAfterSeconds"] == 3600


def test_list_indexes_of_a_missing_collection_is_empty(mongo_db: Database) -> None:
    assert list(mongo_db.missing.list_indexes()) == []


def test_dropping_an_unknown_or_the_id_index_fails(coll: Collection) -> None:
    coll.insert_one({})
    with pytest.raises(OperationFailure) as info:
        coll.drop_index("nope_1")
    assert info.value.code == 27
    with pytest.raises(OperationFailure):
        coll.drop_index("_id_")


def test_drop_indexes_keeps_only_the_id_index(coll: Collection) -> None:
    coll.create_index("a")
    coll.create_index([("b", -1), ("c", 1)])
    coll.drop_index([("b", -1), ("c", 1)])
    assert sorted(coll.index_information()) == ["_id_", "a_1"]
    coll.drop_indexes()
    assert list(coll.index_information()) == ["_id_"]


def test_coll_stats_and_db_stats_measure_documents(mongo_db: Database) -> None:
    mongo_db.c.insert_many([{"pad": "x" * 1000} for _ in range(10)])
    stats = mongo_db.command("collStats", "c")
    assert stats["count"] == 10 and stats["size"] >= 10_000 and stats["storageSize"] > 0
    db_stats = mongo_db.command("dbStats")
    assert db_stats["objects"] == 10 and db_stats["dataSize"] >= 10_000


@pytest.mark.testserver_only
def test_ttl_index_removes_expired_documents(coll: Collection) -> None:
    now = datetime.datetime.now(datetime.UTC)
    coll.create_index("at", expireAfterSeconds=1)
    coll.insert_many([{"_id": "old", "at": now - datetime.timedelta(minutes=1)}, {"_id": "new", "at": now}])
    coll.insert_one({"_id": "future", "at": now + datetime.timedelta(hours=1)})
    coll.insert_one({"_id": "no-date", "at": "not a date"})
    coll.insert_one({"_id": "array", "at": [now + datetime.timedelta(hours=1), now]})  # the earliest date counts
    wait_for(lambda: coll.find_one({"_id": "new"}) is None)
    assert sorted(d["_id"] for d in coll.find()) == ["future", "no-date"]


# ---------------------------------------------------------------- data types and sizes


def test_bson_types_round_trip(coll: Collection) -> None:
    when = datetime.datetime(2024, 2, 29, 23, 59, 58, 123000)
    doc = {
        "_id": ObjectId(),
        "text": "héllo wörld ✓ 日本語 🚀",
        "bytes": b"\x00\x01\xff",
        "uuid": Binary.from_uuid(uuid.UUID(int=7)),
        "when": when,
        "big": Int64(2**62),
        "dec": Decimal128("1.10"),
        "nested": {"list": [1, 2.5, None, True, {"deep": ["x"]}], "empty": {}},
    }
    coll.insert_one(dict(doc))
    assert coll.find_one({"_id": doc["_id"]}) == doc
    assert coll.find_one({"when": when, "bytes": b"\x00\x01\xff"})["_id"] == doc["_id"]
    assert coll.find_one({"dec": Decimal128(Decimal("1.10"))}) is not None


def test_unacknowledged_writes_then_a_normal_command(coll: Collection) -> None:
    fire_and_forget = coll.with_options(write_concern=WriteConcern(w=0))
    result = fire_and_forget.insert_many([{"_id": i} for i in range(10)])
    assert not result.acknowledged
    fire_and_forget.update_one({"_id": 1}, {"$set": {"x": 1}})
    fire_and_forget.delete_one({"_id": 2})
    assert coll.database.command("ping")["ok"] == 1.0
    wait_for(lambda: coll.count_documents({}) == 9 and coll.find_one({"_id": 1}) == {"_id": 1, "x": 1})


def test_document_over_16_mib_is_rejected(coll: Collection) -> None:
    with pytest.raises((DocumentTooLarge, OperationFailure)):
        coll.insert_one({"blob": "x" * (16 * 1024 * 1024 + 1)})
    assert coll.count_documents({}) == 0


NINE_MIB = "x" * (9 * 1024 * 1024)
TOO_LARGE_AFTER_UPDATE = "Resulting document after update is larger than 16777216"


def big_document(coll: Collection, _id: Any = 1) -> None:
    coll.insert_one({"_id": _id, "a": NINE_MIB})


def is_unchanged_big_document(doc: dict[str, Any] | None, _id: Any = 1) -> bool:
    return doc is not None and set(doc) == {"_id", "a"} and doc["_id"] == _id and doc["a"] == NINE_MIB


def test_update_growing_a_document_past_16_mib_is_refused(coll: Collection) -> None:
    big_document(coll)
    with pytest.raises(WriteError) as raised:
        coll.update_one({"_id": 1}, {"$set": {"b": NINE_MIB}})
    assert raised.value.code == 17419
    assert raised.value.details["codeName"] == "Location17419"
    assert raised.value.details["errmsg"] == TOO_LARGE_AFTER_UPDATE
    assert is_unchanged_big_document(coll.find_one({"_id": 1}))


def test_unordered_bulk_write_applies_the_other_updates(coll: Collection) -> None:
    big_document(coll)
    coll.insert_one({"_id": 2, "n": 0})
    with pytest.raises(BulkWriteError) as raised:
        coll.bulk_write(
            [UpdateOne({"_id": 1}, {"$set": {"b": NINE_MIB}}), UpdateOne({"_id": 2}, {"$inc": {"n": 1}})],
            ordered=False,
        )
    details = raised.value.details
    assert [(e["index"], e["code"]) for e in details["writeErrors"]] == [(0, 17419)]
    assert (details["nMatched"], details["nModified"]) == (1, 1)
    assert coll.find_one({"_id": 2}) == {"_id": 2, "n": 1}
    assert is_unchanged_big_document(coll.find_one({"_id": 1}))


def test_ordered_bulk_write_stops_at_the_refused_update(coll: Collection) -> None:
    big_document(coll)
    coll.insert_one({"_id": 2, "n": 0})
    with pytest.raises(BulkWriteError) as raised:
        coll.bulk_write([UpdateOne({"_id": 1}, {"$set": {"b": NINE_MIB}}), UpdateOne({"_id": 2}, {"$inc": {"n": 1}})])
    assert [(e["index"], e["code"]) for e in raised.value.details["writeErrors"]] == [(0, 17419)]
    assert coll.find_one({"_id": 2}) == {"_id": 2, "n": 0}
    assert is_unchanged_big_document(coll.find_one({"_id": 1}))


def nested(levels: int) -> dict[str, Any]:
    """A document ``levels`` deep as mongod counts: {"v": 1} is 1, {"n": {"v": 1}} is 2."""
    doc: dict[str, Any] = {"v": 1}
    for _ in range(levels - 1):
        doc = {"n": doc}
    return doc


def test_documents_nested_deeper_than_mongod_stores_are_refused_with_overflow(coll: Collection) -> None:
    coll.insert_one({"_id": 1, "doc": nested(179)})  # 180 levels with the top document
    with pytest.raises(WriteError) as raised:
        coll.insert_one({"_id": 2, "doc": nested(180)})
    assert (raised.value.code, raised.value.details["codeName"]) == (15, "Overflow")
    assert "180 levels of nesting" in raised.value.details["errmsg"]
    assert coll.find_one({"_id": 2}) is None
    coll.insert_one({"_id": 3, "doc": [nested(178)], "empty": {"a": {"b": {}}}})  # arrays count; empty ones not
    with pytest.raises(WriteError) as raised:
        coll.update_one({"_id": 1}, {"$set": {"doc": nested(180)}})
    assert raised.value.code == 15
    assert coll.find_one({"_id": 1}) == {"_id": 1, "doc": nested(179)}  # unchanged
    with pytest.raises(WriteError) as raised:
        coll.update_one({"_id": 4}, {"$set": {"doc": [nested(180)]}}, upsert=True)
    assert raised.value.code == 15 and coll.find_one({"_id": 4}) is None
    with pytest.raises(OperationFailure) as failed:
        coll.find_one_and_update({"_id": 1}, {"$set": {"doc": nested(180)}})
    assert failed.value.code == 15


def test_a_write_batch_larger_than_max_write_batch_size_fails_whole(coll: Collection) -> None:
    limit = coll.database.client.admin.command("hello")["maxWriteBatchSize"]
    assert limit == 100_000
    with pytest.raises(OperationFailure) as raised:
        coll.database.command({"insert": coll.name, "documents": [{"_id": i} for i in range(limit + 1)]})
    assert (raised.value.code, raised.value.details["codeName"]) == (16, "InvalidLength")
    assert coll.count_documents({}) == 0
    with pytest.raises(OperationFailure) as raised:
        coll.database.command({"delete": coll.name, "deletes": []})
    assert raised.value.code == 16
    coll.insert_many([{"_id": i} for i in range(limit + 5)])  # the driver splits it at the limit
    assert coll.count_documents({}) == limit + 5


def test_find_one_and_update_past_16_mib_is_a_command_error(coll: Collection) -> None:
    big_document(coll)
    with pytest.raises(OperationFailure) as raised:
        coll.find_one_and_update({"_id": 1}, {"$set": {"b": NINE_MIB}}, return_document=ReturnDocument.AFTER)
    assert raised.value.code == 17419
    assert raised.value.details["errmsg"] == f"Plan executor error during findAndModify :: caused by :: " \
        f"{TOO_LARGE_AFTER_UPDATE}"
    assert is_unchanged_big_document(coll.find_one({"_id": 1}))


def test_upsert_inserting_a_document_past_16_mib_is_refused(coll: Collection) -> None:
    copy_a = [{"$set": {"b": "$a"}}]  # a pipeline update: the statement stays under 16 MiB
    with pytest.raises(WriteError) as raised:
        coll.update_one({"_id": 1, "a": NINE_MIB}, copy_a, upsert=True)
    assert raised.value.code == 17420
    assert raised.value.details["errmsg"] == "Document to upsert is larger than 16777216"
    with pytest.raises(OperationFailure) as raised:
        coll.find_one_and_update({"_id": 1, "a": NINE_MIB}, copy_a, upsert=True)
    assert raised.value.code == 17420
    assert coll.count_documents({}) == 0


def test_updates_staying_under_16_mib_pass(coll: Collection) -> None:
    big_document(coll)
    six_mib = "y" * (6 * 1024 * 1024)
    assert coll.update_one({"_id": 1}, {"$set": {"b": six_mib}}).modified_count == 1
    before = coll.find_one_and_update({"_id": 1}, {"$set": {"c": 1}})
    assert before is not None and set(before) == {"_id", "a", "b"}
    after = coll.find_one({"_id": 1})
    assert after is not None and (after["a"], after["b"], after["c"]) == (NINE_MIB, six_mib, 1)


def test_connection_survives_server_side_errors(recorded: tuple[Database, Recorder]) -> None:
    db, recorder = recorded
    db.c.insert_one({"_id": 1, "n": Int64(2**63 - 1)})
    with pytest.raises(OperationFailure):
        db.command("noSuchCommandAtAll")
    with pytest.raises(OperationFailure):
        db.c.find_one({"$bogus": 1})
    with pytest.raises(OperationFailure):  # int64 overflow: fails on write (MongoDB) or read (test server)
        db.c.update_one({"_id": 1}, {"$inc": {"n": 1}})
        db.c.find_one({"_id": 1})
    assert db.command("ping")["ok"] == 1.0
    assert recorder.closed == 0


# ---------------------------------------------------------------- raw wire protocol


def _address(uri: str) -> tuple[str, int]:
    parts = urlsplit(uri)
    return parts.hostname or "127.0.0.1", parts.port or 27017


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def _op_msg(
    request_id: int, body: dict[str, Any], flags: int = 0, sequence: tuple[str, list[bytes]] | None = None
) -> bytes:
    payload = struct.pack("<I", flags) + b"\x00" + bson.encode(body)
    if sequence is not None:
        name, docs = sequence
        section = name.encode() + b"\x00" + b"".join(docs)
        payload += b"\x01" + struct.pack("<i", 4 + len(section)) + section
    message = struct.pack("<iiii", 16 + len(payload) + (4 if flags & 1 else 0), request_id, 0, 2013) + payload
    return message + struct.pack("<I", _crc32c(message)) if flags & 1 else message


def _read_reply(sock: socket.socket) -> tuple[int, int, dict[str, Any]]:
    """(responseTo, opcode, first document) of the next message on the socket."""
    reader = sock.makefile("rb")
    length, _, response_to, opcode = struct.unpack("<iiii", reader.read(16))
    body = reader.read(length - 16)
    reader.close()
    offset = 5 if opcode == 2013 else 20
    return response_to, opcode, bson.decode(body[offset:])


@pytest.mark.testserver_only
def test_legacy_op_query_handshake_gets_op_reply(mongodb_uri: str) -> None:
    query = bson.encode({"isMaster": 1, "helloOk": True})
    body = struct.pack("<i", 0) + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1) + query
    with socket.create_connection(_address(mongodb_uri), timeout=10) as sock:
        sock.sendall(struct.pack("<iiii", 16 + len(body), 7, 0, 2004) + body)
        response_to, opcode, reply = _read_reply(sock)
    assert (response_to, opcode) == (7, 1)
    assert reply["ismaster"] is True and reply["helloOk"] is True and reply["maxWireVersion"] >= 9


@pytest.mark.testserver_only
def test_op_msg_with_checksum_is_answered(mongodb_uri: str) -> None:
    with socket.create_connection(_address(mongodb_uri), timeout=10) as sock:
        sock.sendall(_op_msg(9, {"ping": 1, "$db": "admin"}, flags=1))
        response_to, opcode, reply = _read_reply(sock)
    assert (response_to, opcode, reply["ok"]) == (9, 2013, 1.0)


@pytest.mark.testserver_only
def test_more_to_come_write_gets_no_reply(mongo_db: Database, mongodb_uri: str) -> None:
    docs = [bson.encode({"_id": i}) for i in range(3)]
    with socket.create_connection(_address(mongodb_uri), timeout=10) as sock:
        insert = {"insert": "c", "$db": mongo_db.name, "writeConcern": {"w": 0}}
        sock.sendall(_op_msg(1, insert, flags=2, sequence=("documents", docs)))
        sock.sendall(_op_msg(2, {"count": "c", "$db": mongo_db.name}))
        response_to, _, reply = _read_reply(sock)
    assert (response_to, reply["n"]) == (2, 3)


@pytest.mark.testserver_only
def test_server_rejects_an_oversize_document_it_receives(mongo_db: Database, mongodb_uri: str) -> None:
    big = bson.encode({"_id": 1, "blob": b"x" * (16 * 1024 * 1024 + 10)})
    with socket.create_connection(_address(mongodb_uri), timeout=30) as sock:
        sock.sendall(_op_msg(1, {"insert": "c", "$db": mongo_db.name}, sequence=("documents", [big])))
        _, _, reply = _read_reply(sock)
        sock.sendall(_op_msg(2, {"ping": 1, "$db": "admin"}))
        _, _, ping = _read_reply(sock)
    assert reply["n"] == 0 and reply["writeErrors"][0]["code"] == 10334
    assert ping["ok"] == 1.0


# ---------------------------------------------------------------- atomicity, speed, process


CLAIMER = textwrap.dedent(
    """
    import sys
    import pymongo
    uri, db_name, worker, claims = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    coll = pymongo.MongoClient(uri)[db_name]["jobs"]
    coll.database.command("ping")
    print("ready", flush=True)
    sys.stdin.readline()
    claimed = 0
    for _ in range(claims):
        update = {"$set": {"claimed_by": worker}, "$inc": {"claims": 1}}
        doc = coll.find_one_and_update({"claimed_by": None}, update)
        claimed += doc is not None
    print(claimed, flush=True)
    """
)


def test_find_one_and_update_claims_are_atomic_across_processes(mongodb_uri: str, mongo_db: Database) -> None:
    mongo_db.jobs.insert_many([{"_id": i, "claimed_by": None, "claims": 0} for i in range(2000)])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, mongodb_uri, mongo_db.name, f"w{n}", "1000"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    claimed = [int(proc.communicate(timeout=100)[0].strip()) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert sum(claimed) == 2000
    assert mongo_db.jobs.count_documents({"claimed_by": {"$ne": None}}) == 2000
    assert mongo_db.jobs.count_documents({"claims": {"$ne": 1}}) == 0
    assert all(c > 0 for c in claimed)


@pytest.mark.testserver_only
def test_updates_by_id_do_not_scan_the_collection(coll: Collection) -> None:
    for start in range(0, 50_000, 10_000):
        coll.insert_many([{"_id": i, "n": 0} for i in range(start, start + 10_000)])
    began = time.perf_counter()
    for round_ in range(20):
        ids = list(range(round_ * 100, round_ * 100 + 100))
        assert coll.update_many({"_id": {"$in": ids}}, {"$inc": {"n": 1}}).modified_count == 100
    coll.bulk_write([UpdateOne({"_id": i}, {"$inc": {"n": 1}}) for i in range(100)])
    assert time.perf_counter() - began < 1.5  # a scan costs ~0.1 s per statement here


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_module_is_silent_and_exits_cleanly_on_sigterm() -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mrq.testing.mongo_server", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        client: pymongo.MongoClient = pymongo.MongoClient(
            f"mongodb://127.0.0.1:{port}", serverSelectionTimeoutMS=10_000
        )
        assert client.admin.command("ping")["ok"] == 1.0
        client.t.c.insert_one({"x": 1})
        with pytest.raises(OperationFailure):  # errors go to the client, not to stderr
            client.t.command("noSuchCommandAtAll")
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert (out, err) == (b"", b"")


def test_server_module_reports_a_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "mrq.testing.mongo_server", "--port", str(port)],
            capture_output=True,
            timeout=30,
        )
    assert result.returncode != 0
    assert result.stdout == b"" and b"cannot listen" in result.stderr
