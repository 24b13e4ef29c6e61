"""The test server's catalog (mongo_server.py): databases, collections (capped ones emulated),
indexes and their statistics. ``Catalog`` owns the in-memory store; the command engine
(mongo_engine.py) derives from it and adds the cursors, reads and writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mongomock_ng import MongoClient, filtering, helpers
from pymongo.errors import DuplicateKeyError, PyMongoError

from .mongo_auth import Auth
from .mongo_collection import DEFAULT_BATCH, CommandError, Doc, FastCollection, Guarantees, _bson_size
from .mongo_query import _store_key

_INDEX_OPTIONS = ("unique", "sparse", "expireAfterSeconds", "partialFilterExpression")


class Catalog:
    """The namespaces of the in-memory store and the catalog commands (``cmd_<name>``)."""

    #: The engine's cursor reply (mongo_engine.Engine): listings are answered as cursors.
    _cursor_reply: Callable[..., Doc]
    #: Users and connections (mongo_engine.Engine): listDatabases shows what the user may see.
    auth: Auth

    def __init__(self) -> None:
        self.client: Any = MongoClient()
        self.collections: dict[tuple[str, str], FastCollection] = {}
        self.capped: dict[tuple[str, str], Doc] = {}
        self.guarantees = Guarantees()

    def coll(self, db: str, name: Any) -> FastCollection:
        if not isinstance(name, str) or not name or "$" in name or "\x00" in name:
            raise CommandError(73, f"Invalid collection name: {name!r}")
        if (db, name) not in self.collections:
            database = self.client[db]
            coll = FastCollection(database, name, _db_store=database._store, codec_options=database.codec_options)
            coll.guarantees = self.guarantees
            self.collections[db, name] = coll
        return self.collections[db, name]

    def _existing(self, db: str, name: str) -> FastCollection:
        coll = self.coll(db, name)
        if not coll._store.is_created:
            raise CommandError(26, f"ns does not exist: {db}.{name}")
        return coll

    def _db_store(self, db: str) -> Any:
        return self.client._store._databases.get(db)

    # ---- capped collections (emulated)
    def _capped_insert(self, db: str, name: str, coll: FastCollection, ids: list[Any]) -> None:
        cap, documents = self.capped[db, name], coll._store._documents
        for key in map(_store_key, ids):
            if key in documents:
                cap["sizes"][key] = _bson_size(documents[key])
                cap["total"] += cap["sizes"][key]
        self._capped_trim(cap, documents)

    @staticmethod
    def _capped_trim(cap: Doc, documents: Any) -> None:
        """Remove the oldest documents until the collection fits its size (and max)."""
        while len(documents) > 1 and ((cap["max"] and len(documents) > cap["max"]) or cap["total"] > cap["size"]):
            key = next(iter(documents))
            del documents[key]
            cap["total"] -= cap["sizes"].pop(key, 0)

    def _capped_recount(self, db: str, name: str, coll: FastCollection) -> None:
        if (db, name) in self.capped:
            sizes = {k: _bson_size(d) for k, d in coll._store._documents.items()}
            self.capped[db, name].update(sizes=sizes, total=sum(sizes.values()))

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

    def cmd_converttocapped(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        """As mongod: the collection becomes capped at `size` bytes (its oldest documents go if it
        is larger), keeping only its _id index."""
        name = cmd["convertToCapped"]
        if not cmd.get("size"):
            raise CommandError(72, "the 'size' field is required when converting to a capped collection")
        coll = self._existing(db, name)
        size = max(4096, -(-int(cmd["size"]) // 256) * 256)
        self.capped[db, name] = {"size": size, "max": 0, "sizes": {}, "total": 0}
        self._capped_recount(db, name, coll)
        self._capped_trim(self.capped[db, name], coll._store._documents)
        coll._store.indexes.clear()
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
        if self.auth.users and "admin" not in names:
            names.append("admin")  # where mongod keeps its users (admin.system.users)
        names = self.auth.visible_databases(conn_id, names)
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
