"""The test server's query helpers (mongo_collection.py's ``FastCollection`` and the commands use
them): the ``_id`` fast path and quick equality checks of a filter, and sorting with native keys
(top-k when limited)."""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import Any

from bson.binary import Binary
from bson.code import Code
from bson.datetime_ms import DatetimeMS
from bson.dbref import DBRef
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.regex import Regex
from bson.timestamp import Timestamp
from mongomock_ng import filtering, helpers

Doc = dict[str, Any]


class CommandError(Exception):
    """A command failure, sent to the client as ``{ok: 0, errmsg, code, codeName}``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# fmt: off
#: Python types whose values sort natively in the engine's BSON type order, as (rank, value).
_SORT_RANKS = {type(None): 5, int: 10, Int64: 10, float: 10, str: 15, ObjectId: 35, bool: 40, datetime: 45}
#: Python types whose ``==`` is MongoDB's equality between two values of the same kind.
_EQ_KINDS = {type(None): "null", int: "num", Int64: "num", float: "num", str: "str", ObjectId: "oid", bool: "bool",
             datetime: "date"}
#: Types the engine stores as they come (``helpers.patch_datetime_awareness_in_document`` leaves
#: them alone): what ``_plain`` needs not look into.
_ATOMS = frozenset({str, int, float, bool, type(None), ObjectId, Int64, bytes, Binary, Regex, Decimal128, Code, MinKey,
                    MaxKey, DBRef, DatetimeMS})
# fmt: on
_MISSING = object()


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
    matches_rest = _rest_matcher(rest) if rest else None
    found: dict[int, Doc] = {}
    for value in values:
        value_type = type(value)
        if value_type is ObjectId or value_type is str:  # the usual ids: hashable, no operator
            doc = documents.get(value)
            if doc is None or id(doc) in found:
                continue
            same = type(doc["_id"]) is value_type and value == doc["_id"]
        else:
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
            kind = _EQ_KINDS.get(value_type)
            same = kind is not None and kind == _EQ_KINDS.get(type(doc["_id"])) and value == doc["_id"]
        same = same or filtering.filter_applies({"_id": value}, doc)
        if same and (matches_rest is None or matches_rest(doc)):
            found[id(doc)] = doc
    result = list(found.values())
    if len(result) > 1 and all(type(doc["_id"]) is ObjectId for doc in result):
        result.sort(key=_object_id_bytes)  # ObjectIds order as their bytes: what _order would do, faster
        return result
    return _order(result, ["_id"], [1], 0) if len(result) > 1 else result  # in _id index order


def _object_id_bytes(doc: Doc) -> bytes:
    return doc["_id"].binary


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


def _plain(value: Any) -> bool:
    """Whether the engine would store ``value`` as it is: ``patch_datetime_awareness_in_document``
    (which the engine runs on every document and filter it writes with) would return an equal
    copy of it. True for what the wire decodes (naive datetimes to the millisecond), except a
    ``Timestamp(0, 0)``, which the engine replaces with the current time."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            for child in item.values():
                if type(child) not in _ATOMS:
                    stack.append(child)
        elif kind is list:
            for child in item:
                if type(child) not in _ATOMS:
                    stack.append(child)
        elif kind is datetime:
            if item.tzinfo is not None or item.microsecond % 1000:
                return False
        elif kind is Timestamp:
            if not item.time and not item.inc:
                return False
        elif kind not in _ATOMS:
            return False
    return True


def _rest_matcher(rest: Doc) -> Callable[[Doc], bool]:
    """``lambda doc: filtering.filter_applies(rest, doc)``, quicker when the conditions are on
    top-level fields and compare to a string or an ObjectId, or ``$in`` a list of those, or are
    ``$exists`` (mrq's final writes guard on ``dependents: {$exists: false}``): against a string
    or ObjectId value, Python's equality between these is the engine's, and a missing field
    matches none of them; a field exists when the document has the key, whatever its value. A
    document with another value there goes to the engine. Conditions are looked at in order, as
    the engine does, so the first that fails decides."""
    compiled: list[tuple[str, Any, frozenset[Any] | None, bool | None]] = []
    for key, cond in rest.items():
        if not key or key[0] == "$" or "." in key:
            return partial(filtering.filter_applies, rest)
        if type(cond) is dict and len(cond) == 1 and "$in" in cond and type(cond["$in"]) is list \
                and all(type(v) is str or type(v) is ObjectId for v in cond["$in"]):  # fmt: skip
            compiled.append((key, None, frozenset(cond["$in"]), None))
        elif type(cond) is dict and len(cond) == 1 and "$exists" in cond and type(cond["$exists"]) is bool:
            compiled.append((key, None, None, cond["$exists"]))
        elif type(cond) is str or type(cond) is ObjectId:
            compiled.append((key, cond, None, None))
        else:
            return partial(filtering.filter_applies, rest)

    def matches(doc: Doc) -> bool:
        for key, cond, values, exists in compiled:
            if exists is not None:
                if (key in doc) is not exists:
                    return False
                continue
            actual = doc.get(key, _MISSING)
            actual_type = type(actual)
            if actual_type is not str and actual_type is not ObjectId:
                return False if actual is _MISSING else filtering.filter_applies(rest, doc)
            if not (actual == cond if values is None else actual in values):
                return False
        return True

    return matches


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
