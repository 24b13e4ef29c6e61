"""pymongo 3 method names on the MongoDB objects handed to task code (MRQ 0.9 pinned pymongo 3).

`mrq.context.connections.mongodb_jobs`, `.mongodb_logs` and `.mongodb_<name>` are
`LegacyDatabase` objects: real pymongo 4 databases whose collections (`LegacyCollection`) and
cursors (`LegacyCursor`) also answer pymongo 3's removed methods, each mapped to its pymongo 4
equivalent:

| pymongo 3 | pymongo 4 |
|---|---|
- `insert(doc or docs)` -> id or ids: `insert_one` / `insert_many`;
- `update(spec, doc, upsert=False, manipulate=False, multi=False)` -> `{"n", "nModified", ...}`:
  `update_one` / `update_many` / `replace_one`;
- `remove(spec_or_id=None, multi=True)` -> `{"n", "ok"}`: `delete_many` / `delete_one`;
- `count(filter=None, skip=, limit=)`, `find(...).count(with_limit_and_skip=False)`:
  `count_documents` (`estimated_document_count` without a filter, as pymongo 3's `count` command);
- `find_and_modify(query, update, upsert, sort, full_response, new=, fields=, remove=)`:
  `find_one_and_update` / `find_one_and_replace` / `find_one_and_delete`;
- `save(doc)` -> id: `insert_one` / `replace_one(upsert=True)`;
- `ensure_index(keys, **kwargs)` -> name: `create_index`;
- `Database.collection_names()`: `list_collection_names`.

pymongo 3's write-concern keyword arguments (`w`, `j`, `wtimeout`, `fsync`) apply to the call.
Each name warns once per process with a DeprecationWarning naming its replacement (shown when
warnings are enabled, e.g. `python -W default`). mrq's own code never goes through this module: it
uses plain pymongo objects.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from pymongo import ReturnDocument
from pymongo.collection import Collection
from pymongo.cursor import Cursor
from pymongo.database import Database
from pymongo.write_concern import WriteConcern

_WRITE_CONCERN_KEYS = ("w", "j", "wtimeout", "fsync")
_warned: set[str] = set()


def _deprecated(name: str, replacement: str) -> None:
    if name not in _warned:
        _warned.add(name)
        warnings.warn(f"pymongo 3's {name}() is deprecated: use {replacement} (mrq maps it for MRQ 0.9 task code)",
                      DeprecationWarning, stacklevel=3)


def legacy_database(db: Any) -> Any:
    """`db` as a LegacyDatabase when it is a pymongo Database; anything else (None, a client built
    in the config file) as it is."""
    if db is None or isinstance(db, LegacyDatabase) or not isinstance(db, Database):
        return db
    return LegacyDatabase(db.client, db.name, codec_options=db.codec_options, read_preference=db.read_preference,
                          write_concern=db.write_concern, read_concern=db.read_concern)


class LegacyDatabase(Database):
    """A pymongo Database whose collections answer pymongo 3's methods too."""

    def __getitem__(self, name: str) -> LegacyCollection:
        return LegacyCollection(self, name)

    def get_collection(self, name: str, codec_options: Any = None, read_preference: Any = None,
                       write_concern: Any = None, read_concern: Any = None) -> LegacyCollection:
        return LegacyCollection(self, name, False, codec_options, read_preference, write_concern, read_concern)

    def collection_names(self, include_system_collections: bool = True) -> list[str]:
        _deprecated("collection_names", "list_collection_names()")
        names = self.list_collection_names()
        return names if include_system_collections else [n for n in names if not n.startswith("system.")]


class LegacyCursor(Cursor):
    """A pymongo Cursor that also answers pymongo 3's `count()`."""

    def __init__(self, collection: Any, filter: Any = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(collection, filter, *args, **kwargs)
        self._legacy_filter = dict(filter or {})
        self._legacy_skip = int(kwargs.get("skip", args[1] if len(args) > 1 else 0) or 0)
        self._legacy_limit = int(kwargs.get("limit", args[2] if len(args) > 2 else 0) or 0)

    def skip(self, skip: int) -> LegacyCursor:
        super().skip(skip)
        self._legacy_skip = skip
        return self

    def limit(self, limit: int) -> LegacyCursor:
        super().limit(limit)
        self._legacy_limit = limit
        return self

    def count(self, with_limit_and_skip: bool = False) -> int:
        _deprecated("Cursor.count", "Collection.count_documents(filter)")
        collection: LegacyCollection = self.collection  # type: ignore[assignment]
        if with_limit_and_skip:
            return collection._legacy_count(self._legacy_filter, self._legacy_skip, self._legacy_limit)
        return collection._legacy_count(self._legacy_filter, 0, 0)


class LegacyCollection(Collection):
    """A pymongo Collection that also answers pymongo 3's removed methods (module docstring)."""

    def __getitem__(self, name: str) -> LegacyCollection:
        return LegacyCollection(self.database, f"{self.name}.{name}")

    def with_options(self, codec_options: Any = None, read_preference: Any = None, write_concern: Any = None,
                     read_concern: Any = None) -> LegacyCollection:
        plain = super().with_options(codec_options, read_preference, write_concern, read_concern)
        return LegacyCollection(self.database, self.name, False, plain.codec_options, plain.read_preference,
                                plain.write_concern, plain.read_concern)

    def find(self, *args: Any, **kwargs: Any) -> LegacyCursor:
        return LegacyCursor(self, *args, **kwargs)

    def _with_concern(self, kwargs: dict[str, Any]) -> LegacyCollection:
        """pymongo 3's per-call write concern (`w=1`, `j=True`...) as a collection with it."""
        concern = {key: kwargs.pop(key) for key in _WRITE_CONCERN_KEYS if key in kwargs}
        if "wtimeout" in concern:
            concern["wtimeout"] = int(concern["wtimeout"])
        return self.with_options(write_concern=WriteConcern(**concern)) if concern else self

    def _legacy_count(self, query: Mapping[str, Any], skip: int, limit: int, **kwargs: Any) -> int:
        if not query and not kwargs:
            # pymongo 3 sent the `count` command, which answers from the collection's metadata
            # when there is no filter (and applies skip and limit to that number).
            total = max(0, self.estimated_document_count() - skip)
            return min(total, abs(limit)) if limit else total
        options: dict[str, Any] = dict(kwargs)
        if skip:
            options["skip"] = skip
        if limit:
            options["limit"] = abs(limit)
        return self.count_documents(dict(query), **options)

    def insert(self, doc_or_docs: Any, manipulate: bool = True, check_keys: bool = True,
               continue_on_error: bool = False, **kwargs: Any) -> Any:
        _deprecated("insert", "insert_one() or insert_many()")
        coll = self._with_concern(kwargs)
        if isinstance(doc_or_docs, Mapping):
            return coll.insert_one(doc_or_docs, **kwargs).inserted_id
        docs = list(doc_or_docs)
        if not docs:
            raise TypeError("insert() needs a document or a non-empty list of documents")
        return coll.insert_many(docs, ordered=not continue_on_error, **kwargs).inserted_ids

    def update(self, spec: Mapping[str, Any], document: Mapping[str, Any], upsert: bool = False,
               manipulate: bool = False, multi: bool = False, check_keys: bool = True, **kwargs: Any) -> dict[str, Any]:
        _deprecated("update", "update_one(), update_many() or replace_one()")
        if not isinstance(spec, Mapping) or not isinstance(document, Mapping):
            raise TypeError("update(spec, document): both must be dicts")
        coll = self._with_concern(kwargs)
        operators = bool(document) and next(iter(document)).startswith("$")
        if operators:
            method = coll.update_many if multi else coll.update_one
            result = method(spec, document, upsert=upsert, **kwargs)
        else:
            if multi:
                raise ValueError("update(multi=True) needs update operators ($set...), not a replacement document")
            result = coll.replace_one(spec, document, upsert=upsert, **kwargs)
        upserted = result.upserted_id is not None
        answer: dict[str, Any] = {"n": result.matched_count + (1 if upserted else 0),
                                  "nModified": result.modified_count, "ok": 1.0,
                                  "updatedExisting": result.matched_count > 0}
        if upserted:
            answer["upserted"] = result.upserted_id
        return answer

    def remove(self, spec_or_id: Any = None, multi: bool = True, **kwargs: Any) -> dict[str, Any]:
        _deprecated("remove", "delete_one() or delete_many()")
        coll = self._with_concern(kwargs)
        spec = {} if spec_or_id is None else spec_or_id if isinstance(spec_or_id, Mapping) else {"_id": spec_or_id}
        result = (coll.delete_many if multi else coll.delete_one)(spec, **kwargs)
        return {"n": result.deleted_count, "ok": 1.0}

    def count(self, filter: Mapping[str, Any] | None = None, **kwargs: Any) -> int:
        _deprecated("count", "count_documents(filter) or estimated_document_count()")
        skip = int(kwargs.pop("skip", 0) or 0)
        limit = int(kwargs.pop("limit", 0) or 0)
        return self._legacy_count(filter or {}, skip, limit, **kwargs)

    def find_and_modify(self, query: Mapping[str, Any] | None = None, update: Mapping[str, Any] | None = None,
                        upsert: bool = False, sort: Any = None, full_response: bool = False,
                        manipulate: bool = False, **kwargs: Any) -> Any:
        _deprecated("find_and_modify", "find_one_and_update(), find_one_and_replace() or find_one_and_delete()")
        new = bool(kwargs.pop("new", False))
        fields = kwargs.pop("fields", None)
        remove = bool(kwargs.pop("remove", False))
        query = dict(query or {})
        if isinstance(sort, Mapping):
            sort = list(sort.items())
        if remove and update is not None:
            raise ValueError("find_and_modify: give update or remove=True, not both")
        if remove:
            if upsert or new:
                raise ValueError("find_and_modify(remove=True) cannot be combined with upsert or new")
            value = self.find_one_and_delete(query, projection=fields, sort=sort, **kwargs)
        elif update is None:
            raise ValueError("find_and_modify: give update (a document) or remove=True")
        else:
            returned = ReturnDocument.AFTER if new else ReturnDocument.BEFORE
            if update and next(iter(update)).startswith("$"):
                value = self.find_one_and_update(query, update, projection=fields, sort=sort, upsert=upsert,
                                                 return_document=returned, **kwargs)
            else:
                value = self.find_one_and_replace(query, update, projection=fields, sort=sort, upsert=upsert,
                                                  return_document=returned, **kwargs)
        return {"value": value, "ok": 1.0} if full_response else value

    def save(self, to_save: Mapping[str, Any], manipulate: bool = True, check_keys: bool = True,
             **kwargs: Any) -> Any:
        _deprecated("save", "insert_one() or replace_one(..., upsert=True)")
        if not isinstance(to_save, Mapping):
            raise TypeError(f"save() needs a document (a dict), got {type(to_save).__name__}")
        coll = self._with_concern(kwargs)
        if "_id" not in to_save:
            return coll.insert_one(to_save, **kwargs).inserted_id
        coll.replace_one({"_id": to_save["_id"]}, to_save, upsert=True, **kwargs)
        return to_save["_id"]

    def ensure_index(self, key_or_list: Any, cache_for: int = 300, **kwargs: Any) -> str:
        _deprecated("ensure_index", "create_index()")
        for old, new in (("drop_dups", None), ("dropDups", None), ("bucket_size", "bucketSize")):
            if old in kwargs:
                value = kwargs.pop(old)
                if new:
                    kwargs[new] = value
        return self.create_index(key_or_list, **kwargs)
