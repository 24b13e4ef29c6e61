"""The test server's collection (mongo_server.py): the engine's (``mongomock_ng``) collection
with an ``_id`` fast path, quick equality checks and hashed unique indexes, and the helpers the
commands use on documents: sorting (native keys, top-k), TTL expiry, BSON sizes.

``Doc``, the limits, ``CommandError`` (from mongo_query.py) and ``bson_text`` (a document written as mongod writes one
in its error messages) are shared by every module of the test server.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
from bson.int64 import Int64
from bson.objectid import ObjectId
from mongomock_ng import filtering, helpers
from mongomock_ng.collection import Collection
from pymongo.errors import DuplicateKeyError

from .mongo_query import (
    _ATOMS,
    _MISSING,
    CommandError,
    _id_candidates,
    _plain,
    _quick_conditions,
    _quick_match,
    _store_key,
)

Doc = dict[str, Any]

MAX_BSON_SIZE = 16 * 1024 * 1024
#: Levels of nesting a stored document may have (mongod: maxBSONDepth 200 minus 20 kept for the
#: server's own wrapping). Objects and arrays count when they hold something; ``{a: {}}`` is 1 deep.
MAX_USER_DEPTH = 180
DEFAULT_BATCH = 101
#: The update operators of the fast update path (``FastCollection.plan_update``).
_FAST_UPDATE_OPERATORS = frozenset({"$set", "$unset", "$inc", "$setOnInsert"})
#: The ``_update`` options the fast update path knows (the others go to the engine).
_FAST_UPDATE_OPTIONS = frozenset({"upsert", "multi", "array_filters", "collation", "validate"})
_NUMBERS = (int, float, Int64)


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


class Guarantees:
    """What holds for every document of a catalog's store. ``depth_checked``: no document nests
    deeper than ``MAX_USER_DEPTH`` (every insert and update checks it; an aggregation's ``$out``
    or ``$merge`` writes documents unchecked and clears it for good)."""

    def __init__(self) -> None:
        self.depth_checked = True


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
    #: What the catalog (mongo_catalog.py) knows of every stored document; None: nothing.
    guarantees: Guarantees | None = None

    def _update(self, spec: Any, document: Any, *args: Any, **kwargs: Any) -> Doc:
        """The engine's update, refusing like mongod a document it would make larger than
        MAX_BSON_SIZE (code 17419; 17420 when the upsert would insert it) or deeper than
        MAX_USER_DEPTH (code 15, Overflow): the document stays as it was.

        The updates of ``plan_update``'s shapes that match documents are applied here
        (``_fast_update``), the others by the engine."""
        with self._size_limited():
            result = None
            if not args and not (kwargs.keys() - _FAST_UPDATE_OPTIONS) and not kwargs.get("array_filters") \
                    and not kwargs.get("collation"):  # fmt: skip
                result = self._fast_update(spec, document, bool(kwargs.get("upsert")), bool(kwargs.get("multi")),
                                           kwargs.get("validate", True))  # fmt: skip
            return super()._update(spec, document, *args, **kwargs) if result is None else result

    @contextmanager
    def _size_limited(self) -> Iterator[None]:
        """Refuse (``_ensure_uniques``) the documents an update would make too large or too deep,
        with mongod's errors."""
        self._limit_size = True
        try:
            yield
        except _GrownTooLarge as exc:
            if exc.deep:
                raise CommandError(15, f"Document exceeds maximum nesting depth of {MAX_USER_DEPTH}") from None
            what = "Document to upsert is" if exc.upsert else "Resulting document after update is"
            raise CommandError(17420 if exc.upsert else 17419, f"{what} larger than {MAX_BSON_SIZE}") from None
        finally:
            self._limit_size = False

    def _apply_update_document(self, existing_document: Doc, spec: Any, document: Any, was_insert: bool) -> None:
        """The engine's, given a copy of the update for each document: the engine would store the
        same object (a ``$set`` object value) in every document an update_many changes."""
        super()._apply_update_document(existing_document, spec, helpers._clone_document(document), was_insert)

    # ---- the fast paths: the engine's semantics for the common shapes, without its copies
    def plan_update(self, document: Any, validate: bool = True) -> list[tuple[str, str, Any]] | None:
        """``(operator, field, value)`` of an update the fast path applies: ``$set``, ``$unset``,
        ``$inc`` (of a number) and ``$setOnInsert`` on distinct top-level fields other than
        ``_id``, values the engine stores as they are (``_plain``), no validator to check. None
        for any other update (the engine applies it)."""
        if type(document) is not dict or not document or (validate and self._store.options.get("validator")):
            return None
        plan: list[tuple[str, str, Any]] = []
        seen: set[str] = set()
        for operator, fields in document.items():
            if operator not in _FAST_UPDATE_OPERATORS or type(fields) is not dict:
                return None
            for field, value in fields.items():
                if not field or field == "_id" or "$" in field or "." in field or field in seen:
                    return None
                if operator == "$inc" and type(value) not in _NUMBERS:
                    return None
                seen.add(field)
                plan.append((operator, field, value))
        return plan if _plain(document) else None

    def _fast_update(self, spec: Any, document: Any, upsert: bool, multi: bool, validate: bool) -> Doc | None:
        """The engine's ``_update`` for a ``plan_update`` update of matching documents; None when
        the engine must do it (another update, a filter it would rewrite, an upsert that inserts,
        an ``$inc`` of a value that is not a number)."""
        plan = self.plan_update(document, validate)
        if plan is None or type(spec) is not dict or not _plain(spec):
            return None
        docs = list(self._iter_documents(spec))
        if not docs and upsert:
            return None
        targets = docs if multi else docs[:1]
        if not all(self._incrementable(doc, plan) for doc in targets):
            return None
        modified = sum(self.apply_update(doc, plan, copy=i > 0) for i, doc in enumerate(targets))
        return {"connectionId": self.database.client._id, "err": None, "n": len(targets),
                "nModified": modified, "ok": 1, "upserted": None, "updatedExisting": bool(targets)}  # fmt: skip

    @staticmethod
    def _incrementable(doc: Doc, plan: list[tuple[str, str, Any]]) -> bool:
        """Whether each ``$inc`` of the plan adds to a number (or a missing field) of ``doc``."""
        return all(type(doc.get(field, 0)) in _NUMBERS for operator, field, _ in plan if operator == "$inc")

    def apply_update(self, doc: Doc, plan: list[tuple[str, str, Any]], copy: bool = False) -> bool:
        """Apply a ``plan_update`` plan to a stored document in place, as the engine would: True
        when the document changed (Python equality, as the engine compares). A document that
        would break a unique index or the size and depth limits is put back as it was and the
        error raised (under ``_size_limited``, mongod's). ``copy``: store copies of object
        and array values (the same plan applied to several documents). The caller has checked
        that each ``$inc`` applies to a number (``_incrementable``)."""
        saved = dict(doc)
        for operator, field, value in plan:
            if operator == "$set":
                doc[field] = helpers._clone_document(value) if copy and type(value) in (dict, list) else value
            elif operator == "$unset":
                doc.pop(field, None)
            elif operator == "$inc":
                doc[field] = doc.get(field, 0) + value
        for operator, field, _ in plan:
            before, after = saved.get(field, _MISSING), doc.get(field, _MISSING)
            if operator != "$setOnInsert" and not (before is after or before == after):
                break
        else:
            return False
        try:
            # The document was no deeper than the limit (every write checks it): only the new
            # values can make it deeper, unless documents were written unchecked ($out, $merge).
            shallow = self.guarantees.depth_checked if self.guarantees is not None else False
            if too_deep({field: value for operator, field, value in plan if operator == "$set"} if shallow else doc):
                raise _GrownTooLarge(deep=True)
            if _too_large(doc):
                raise _GrownTooLarge()
            self._check_unique(doc)
        except DuplicateKeyError:
            doc.clear()
            doc.update(saved)
            raise
        return True

    def insert_decoded(self, data: Doc, validate: bool = True) -> Any:
        """``_insert`` of a document decoded from the wire (the engine's ``_insert`` stores a
        normalized copy; such a document is already what it would store, and is not used
        elsewhere): its ``_id``."""
        if type(data) is not dict or any(key[:1] == "$" for key in data) or not _plain(data) \
                or (validate and self._store.options.get("validator")):  # fmt: skip
            return self._insert(data, validate=validate)
        if "_id" not in data:
            data["_id"] = ObjectId()
        object_id = _store_key(data["_id"])
        documents = self._store._documents
        if object_id in documents:
            raise DuplicateKeyError("E11000 Duplicate Key Error", 11000,
                                    {"keyPattern": {"_id": 1}, "keyValue": {"_id": data["_id"]}})  # fmt: skip
        documents[object_id] = data
        try:
            self._ensure_uniques(data)
        except DuplicateKeyError:
            del documents[object_id]
            raise
        return data["_id"]

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
        """Check unique indexes through a lazily built ``entry -> _id`` table per index (and, under
        ``_update``, the size and depth limits first).

        The engine sends every document it writes through this method, so the table points to
        the holder of each entry; entries left by deleted or changed documents are detected by
        re-checking the document the table points to.
        """
        if self._limit_size and too_deep(new_data):
            raise _GrownTooLarge(deep=True)
        if self._limit_size and _too_large(new_data):
            raise _GrownTooLarge()
        self._check_unique(new_data)

    def _check_unique(self, new_data: Doc) -> None:
        store = self._store
        if not any(index.get("unique") for index in store.indexes.values()):
            return
        tables: dict[str, tuple[Doc, dict[Any, Any] | None]] = store.__dict__.setdefault("_mrq_unique", {})
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


def _expire(documents: dict[Any, Doc], index: Doc, keys: list[Any] | None = None) -> None:
    """Delete the documents of a single-field TTL index whose (earliest) date is past expiry
    (those of ``keys`` only, when given: a step of a pass)."""
    try:
        cutoff = datetime.now(UTC) - timedelta(seconds=float(index["expireAfterSeconds"]))
    except (TypeError, ValueError, OverflowError):
        return
    field, pfe, naive_cutoff = index["key"][0][0], index.get("partialFilterExpression"), cutoff.replace(tzinfo=None)
    expired = []
    items = documents.items() if keys is None else [(k, documents[k]) for k in keys if k in documents]
    for key, doc in items:
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
    atoms = _ATOMS
    while stack:
        value, level = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        for child in children:
            if type(child) not in atoms and isinstance(child, (dict, list)) and child:
                if level + 1 > MAX_USER_DEPTH:
                    return True
                stack.append((child, level + 1))
    return False
