"""Who may run what on the test server started with ``--auth`` (mongo_server.py): mongod's built-in
roles as privileges, and the privileges each command requires, options included.

Guarantees, as mongod 7.0 decides them (src/mongo/db/auth/role_graph_builtin_roles.cpp,
authorization_session_impl.cpp; the manual's "Built-In Roles" and "Privilege Actions" pages):

- A privilege is a resource and a set of actions. Resources: one database (its non-``system.``
  collections and the database itself), any normal resource (every database but ``local`` and
  ``config``, non-``system.`` collections), the cluster, or any resource at all (``root`` here).
- ``read`` grants find, listCollections, listIndexes, collStats, dbStats, killCursors;
  ``readWrite`` adds insert, update, remove, createIndex, dropIndex, createCollection,
  dropCollection, renameCollectionSameDB, convertToCapped, but NOT bypassDocumentValidation nor
  dropDatabase; ``dbAdmin`` grants bypassDocumentValidation, collMod, dropDatabase, the index and
  collection management actions and the statistics, but no find, insert, update or remove;
  ``userAdmin`` manages users; ``dbOwner`` is the three together; the ``...AnyDatabase`` roles
  (defined in ``admin`` only) grant the same on every normal database plus listDatabases; ``root``
  (``admin`` only) grants everything.
- Every command names the actions it needs on which resource (``required``), including the
  actions its options add: ``bypassDocumentValidation: true`` on a write, ``upsert`` (insert),
  findAndModify's query (find), ``$out``/``$merge`` and ``$lookup``/``$unionWith`` of an
  aggregation. A command this module does not know requires ``root``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from .mongo_collection import Doc

#: Commands any client may run, authenticated or not.
NO_AUTH = frozenset({"hello", "ismaster", "ping", "buildinfo", "saslstart", "saslcontinue", "connectionstatus",
                     "endsessions"})  # fmt: skip
#: Commands that need an authenticated user but no privilege (they act on the user's own cursors
#: and sessions, checked where those are used).
AUTH_ONLY = frozenset({"getmore", "killcursors", "killsessions", "committransaction", "aborttransaction"})

_READ = frozenset({"changeStream", "collStats", "dbHash", "dbStats", "find", "killCursors", "listCollections",
                   "listIndexes", "planCacheRead"})  # fmt: skip
_READ_WRITE = _READ | {"convertToCapped", "createCollection", "dropCollection", "dropIndex", "emptycapped",
                       "createIndex", "insert", "remove", "renameCollectionSameDB", "update"}  # fmt: skip
_DB_ADMIN = frozenset({"bypassDocumentValidation", "collMod", "collStats", "compact", "convertToCapped",
                       "createCollection", "dbStats", "dropCollection", "dropDatabase", "dropIndex", "createIndex",
                       "enableProfiler", "listCollections", "listIndexes", "planCacheIndexFilter", "planCacheRead",
                       "planCacheWrite", "reIndex", "renameCollectionSameDB", "validate"})  # fmt: skip
_USER_ADMIN = frozenset({"changeCustomData", "changePassword", "createUser", "createRole", "dropUser", "dropRole",
                         "grantRole", "revokeRole", "viewUser", "viewRole"})  # fmt: skip


class Privilege(NamedTuple):
    """``scope``: "db" (the database ``db``), "normal" (any normal resource), "cluster" or "any"."""

    scope: str
    db: str | None
    actions: frozenset[str]


#: role -> (defined in admin only, privileges granted when defined in database ``db``).
_ROLES: dict[str, tuple[bool, Any]] = {
    "read": (False, lambda db: [Privilege("db", db, _READ)]),
    "readWrite": (False, lambda db: [Privilege("db", db, _READ_WRITE)]),
    "dbAdmin": (False, lambda db: [Privilege("db", db, _DB_ADMIN)]),
    "userAdmin": (False, lambda db: [Privilege("db", db, _USER_ADMIN)]),
    "dbOwner": (False, lambda db: [Privilege("db", db, _READ_WRITE | _DB_ADMIN | _USER_ADMIN)]),
    "readAnyDatabase": (True, lambda db: _any(_READ)),
    "readWriteAnyDatabase": (True, lambda db: _any(_READ_WRITE)),
    "dbAdminAnyDatabase": (True, lambda db: _any(_DB_ADMIN)),
    "userAdminAnyDatabase": (True, lambda db: _any(_USER_ADMIN)),
    "root": (True, lambda db: [Privilege("any", None, frozenset())]),
}


def _any(actions: frozenset[str]) -> list[Privilege]:
    return [Privilege("normal", None, actions), Privilege("cluster", None, frozenset({"listDatabases"}))]


def role_exists(role: str, db: str) -> bool:
    """Whether ``role`` is a built-in role of database ``db`` (the ``...AnyDatabase`` ones and
    ``root`` exist in ``admin`` only)."""
    return role in _ROLES and (db == "admin" or not _ROLES[role][0])


def privileges_of(roles: Iterable[tuple[str, str]]) -> list[Privilege]:
    """The privileges that the built-in roles ``(role, db)`` grant together."""
    return [privilege for role, db in roles if role_exists(role, db) for privilege in _ROLES[role][1](db)]


#: What the localhost exception grants while no user exists: the first user, in admin.
LOCALHOST_PRIVILEGES = [Privilege("db", "admin", frozenset({"createUser", "grantRole"}))]


#: ``("ns", db, collection)``, ``("db", db, None)`` or ``("cluster", None, None)``.
Resource = tuple[str, str | None, str | None]
CLUSTER: Resource = ("cluster", None, None)


def is_allowed(privileges: Iterable[Privilege], resource: Resource, action: str) -> bool:
    """Whether ``action`` on ``resource`` is granted. Resources: ``("ns", db, collection)``,
    ``("db", db, None)``, ``("cluster", None, None)``."""
    kind, db, coll = resource
    normal_db = db not in ("local", "config")
    normal = kind == "db" or (kind == "ns" and not str(coll).startswith("system."))
    for privilege in privileges:
        if privilege.scope == "any":
            return True
        if action not in privilege.actions:
            continue
        if kind == "cluster":
            granted = privilege.scope == "cluster"
        else:
            granted = normal and ((privilege.scope == "normal" and normal_db) or privilege.db == db)
        if granted:
            return True
    return False


def has_any_privilege_on(privileges: Iterable[Privilege], db: str) -> bool:
    """Whether the privileges grant anything in database ``db`` (listDatabases without the action)."""
    return any(p.scope == "any" or (p.scope == "normal" and db not in ("local", "config")) or p.db == db
               for p in privileges if p.scope != "cluster")  # fmt: skip


# --------------------------------------------------------------------------- what each command needs

Requirement = tuple[Resource, str]

_ON_COLLECTION = {"find": "find", "count": "find", "distinct": "find", "insert": "insert", "delete": "remove",
                  "create": "createCollection", "drop": "dropCollection", "createindexes": "createIndex",
                  "listindexes": "listIndexes", "dropindexes": "dropIndex", "collstats": "collStats",
                  "collmod": "collMod", "converttocapped": "convertToCapped"}  # fmt: skip
_ON_DATABASE = {"dropdatabase": "dropDatabase", "listcollections": "listCollections", "dbstats": "dbStats",
                "createuser": "createUser", "dropuser": "dropUser", "updateuser": "changePassword"}  # fmt: skip
_ON_CLUSTER = {"serverstatus": "serverStatus", "killallsessions": "killAnySession", "listdatabases": "listDatabases"}


def required(name: str, db: str, cmd: Doc) -> list[Requirement]:
    """The ``(resource, action)`` pairs that command ``name`` (lower case) needs, run on ``db``."""
    target = cmd.get(next(iter(cmd), ""))
    ns: Resource = ("ns", db, target if isinstance(target, str) else "")
    bypass: list[Requirement] = [(ns, "bypassDocumentValidation")] if cmd.get("bypassDocumentValidation") else []
    if name in _ON_COLLECTION:
        return [(ns, _ON_COLLECTION[name])] + (bypass if name == "insert" else [])
    if name in _ON_DATABASE:
        return [(("db", db, None), _ON_DATABASE[name])]
    if name in _ON_CLUSTER:
        return [(CLUSTER, _ON_CLUSTER[name])]
    if name == "update":
        upsert = any(isinstance(st, dict) and st.get("upsert") for st in cmd.get("updates") or ())
        return [(ns, "update")] + ([(ns, "insert")] if upsert else []) + bypass
    if name == "findandmodify":
        if cmd.get("remove"):
            return [(ns, "find"), (ns, "remove")]
        return [(ns, "find"), (ns, "update")] + ([(ns, "insert")] if cmd.get("upsert") else []) + bypass
    if name == "aggregate":
        return _aggregate(db, ns, cmd, bypass)
    if name == "usersinfo":
        return [(("db", db, None), "viewUser")]
    if name == "renamecollection":
        (src_db, _, src), (dst_db, _, dst) = str(target).partition("."), str(cmd.get("to")).partition(".")
        needs: list[Requirement] = [(("ns", src_db, src), "renameCollectionSameDB")]
        return needs + ([(("ns", dst_db, dst), "dropCollection")] if cmd.get("dropTarget") else [])
    return [(CLUSTER, f"<{name}>")]  # unknown here: root only


def _aggregate(db: str, ns: Resource, cmd: Doc, bypass: list[Requirement]) -> list[Requirement]:
    stages = [stage for stage in cmd.get("pipeline") or () if isinstance(stage, dict)]
    first = next(iter(stages[0]), "") if stages else ""
    needs: list[Requirement] = [(ns, "collStats" if first == "$collStats" else "find")]
    for stage in stages:
        for op, spec in stage.items():
            if op in ("$lookup", "$unionWith"):
                source = spec if isinstance(spec, str) else (spec or {}).get("from" if op == "$lookup" else "coll")
                if isinstance(source, str):
                    needs.append((("ns", db, source), "find"))
            elif op in ("$out", "$merge"):
                into = spec if isinstance(spec, str) else (spec or {}).get("into" if op == "$merge" else "coll")
                out_db = spec.get("db", db) if isinstance(spec, dict) else db
                if isinstance(into, dict):
                    out_db, into = into.get("db", db), into.get("coll")
                out: Resource = ("ns", out_db, str(into))
                needs += [(out, "insert"), (out, "remove" if op == "$out" else "update")]
                needs += [(out, "bypassDocumentValidation")] if bypass else []
    return needs
