"""The test server's collection (mongo_server.py): the engine's (``mongomock_ng``) collection
with an ``_id`` fast path, quick equality checks and hashed unique indexes, and the helpers the
commands use on documents: sorting (native keys, top-k), TTL expiry, BSON sizes.

``Doc``, the limits, ``CommandError`` and ``bson_text`` (a document written as mongod writes one
in its error messages) are shared by every module of the test server.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
from bson.int64 import Int64
from bson.objectid import ObjectId
from bson.regex import Regex
from mongomock_ng import filtering, helpers
from mongomock_ng.collection import Collection
from pymongo.errors import DuplicateKeyError

Doc = dict[str, Any]

MAX_BSON_SIZE = 16 * 1024 * 1024
#: Levels of nesting a stored document may have (mongod: maxBSONDepth 200 minus 20 kept for the
#: server's own wrapping). Objects and arrays count when they hold something; ``{a: {}}`` is 1 deep.
MAX_USER_DEPTH = 180
DEFAULT_BATCH = 101
# fmt: off
#: Python types whose values sort natively in the engine's BSON type order, as (rank, value).
_SORT_RANKS = {type(None): 5, int: 10, Int64: 10, float: 10, str: 15, ObjectId: 35, bool: 40, datetime: 45}
#: Python types whose ``==`` is MongoDB's equality between two values of the same kind.
_EQ_KINDS = {type(None): "null", int: "num", Int64: "num", float: "num", str: "str", ObjectId: "oid", bool: "bool",
             datetime: "date"}
# fmt: on
_MISSING = object()


class CommandError(Exception):
    """A command failure, sent to the client as ``{ok: 0, errmsg, code, codeName}``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def bson_text(value: Any) -> str:
    """``value`` as mongod prints BSON in its messages: ``{ find: "c", filter: { a: 1 } }``."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k}: {bson_text(v)}" for k, v in value.items()) + " }" if value else "{}"
    if isinstance(value, (list, tuple)):
        return "[ " + ", ".join(map(bson_text, value)) + " ]" if value else "[]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if value is None:
        return "null"
    if isinstance(value, ObjectId):
        return f"ObjectId('{value}')"
    if isinstance(value, datetime):
        return f"new Date({int(value.replace(tzinfo=value.tzinfo or UTC).timestamp() * 1000)})"
    if isinstance(value, bytes):
        return f"BinData(0, {value.hex().upper()})"
    return str(value)


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


class _GrownTooLarge(DuplicateKeyError):
    """An update would store a document larger than ``MAX_BSON_SIZE`` (or deeper than
    ``MAX_USER_DEPTH``: ``deep``). A DuplicateKeyError only because the engine, which updates
    documents in place, puts the old document back on that error alone; ``FastCollection._update``
    turns it into mongod's error before anything else sees it."""

    def __init__(self, deep: bool = False) -> None:
        super().__init__("document too large", 17419)
        self.upsert = False  # set when it was the insert of an upsert
        self.deep = deep


class FastCollection(Collection):
    """The engine's collection, with an ``_id`` fast path, quick equality checks and hashed unique
    indexes, and mongod's limit on the documents an update writes."""

    #: True while ``_update`` runs. Inserted documents are checked where they arrive: the wire
    #: protocol refuses any document over the limit (mongo_server._decode_sequence).
    _limit_size = False

    def _update(self, *args: Any, **kwargs: Any) -> Doc:
        """The engine's update, refusing like mongod a document it would make larger than
        MAX_BSON_SIZE (code 17419; 17420 when the upsert would insert it) or deeper than
        MAX_USER_DEPTH (code 15, Overflow): the document stays as it was."""
        self._limit_size = True
        try:
            return super()._update(*args, **kwargs)
        except _GrownTooLarge as exc:
            if exc.deep:
                raise CommandError(15, f"Document exceeds maximum nesting depth of {MAX_USER_DEPTH}") from None
            what = "Document to upsert is" if exc.upsert else "Resulting document after update is"
            raise CommandError(17420 if exc.upsert else 17419, f"{what} larger than {MAX_BSON_SIZE}") from None
        finally:
            self._limit_size = False

    def _insert(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._insert(data, *args, **kwargs)  # the engine deletes the document again
        except _GrownTooLarge as exc:
            exc.upsert = True  # raised only under _update: this insert is the one of an upsert
            raise

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
        if self._limit_size and too_deep(new_data):
            raise _GrownTooLarge(deep=True)
        if self._limit_size and _too_large(new_data):
            raise _GrownTooLarge()
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


def _too_large(doc: Doc) -> bool:
    """Whether ``doc`` is larger than ``MAX_BSON_SIZE`` (False when BSON cannot encode it: reading it fails)."""
    try:
        return _bson_size(doc) > MAX_BSON_SIZE
    except (bson.InvalidDocument, OverflowError):
        return False


def too_deep(doc: Doc) -> bool:
    """Whether ``doc`` nests deeper than ``MAX_USER_DEPTH`` (iterative: any depth is measured)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, level = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if isinstance(child, (dict, list)) and child:
                if level + 1 > MAX_USER_DEPTH:
                    return True
                stack.append((child, level + 1))
    return False
