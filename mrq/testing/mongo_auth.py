"""Authentication and authorization of the test server (mongo_server.py), as ``mongod --auth``.

Guarantees:

- Users live in memory, per database, with salted SCRAM-SHA-256 and SCRAM-SHA-1 credentials as
  mongod stores them (iteration counts 15000 and 10000; the password itself is not kept).
  ``createUser`` (``pwd``, ``roles`` as names or ``{role, db}``, ``mechanisms``), ``updateUser``
  (``pwd``, ``roles``), ``dropUser``, ``usersInfo`` and ``connectionStatus`` answer as mongod's do.
- Authentication is SCRAM (RFC 5802, RFC 7677) over ``saslStart``/``saslContinue``, also started
  speculatively in the ``hello`` handshake (``speculativeAuthenticate``) and negotiated through
  ``saslSupportedMechs``, as pymongo 4 does. A wrong password, an unknown user or a mechanism the
  user has no credential for: code 18, ``Authentication failed.``. A connection is authenticated as
  one user at most (codes 5626701/5626702 for a second one, as mongod 5.0+); a dropped user's connections
  are unauthenticated from their next command on, and role changes apply at once.
- Without ``--auth`` (``enforce`` false) users can be created and clients authenticate, but no
  command is checked, as on a mongod started without ``--auth``.
- With ``--auth``: the commands of ``NO_AUTH`` run for anyone. While no user exists, a loopback
  connection has the localhost exception: it may create the first user, in ``admin``, and do
  nothing else. Otherwise an unauthenticated connection is refused with code 13
  ``Command <name> requires authentication``, and an authenticated one that lacks a privilege
  (mongo_privileges.py) with code 13 ``not authorized on <db> to execute command { ... }``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import uuid
from dataclasses import dataclass
from typing import Any

from bson.binary import Binary
from pymongo.saslprep import saslprep

from .mongo_collection import CommandError, Doc, bson_text
from .mongo_privileges import (
    AUTH_ONLY,
    CLUSTER,
    LOCALHOST_PRIVILEGES,
    NO_AUTH,
    Privilege,
    Requirement,
    has_any_privilege_on,
    is_allowed,
    privileges_of,
    required,
    role_exists,
)

#: mechanism -> (hash name, iteration count, salt length), mongod's defaults.
MECHANISMS = {"SCRAM-SHA-256": ("sha256", 15000, 28), "SCRAM-SHA-1": ("sha1", 10000, 16)}
_FAILED = "Authentication failed."
UserKey = tuple[str, str]  # (database, user name)


def _b64(data: bytes) -> str:
    return base64.standard_b64encode(data).decode()


def _secret(mechanism: str, user: str, password: str) -> bytes:
    if mechanism == "SCRAM-SHA-256":
        return saslprep(password).encode()
    return hashlib.md5(f"{user}:mongo:{password}".encode()).hexdigest().encode()  # SCRAM-SHA-1's password


def scram_credential(mechanism: str, user: str, password: str) -> Doc:
    """The stored form of a password for one mechanism: ``{iterationCount, salt, storedKey, serverKey}``."""
    digest, iterations, salt_size = MECHANISMS[mechanism]
    salt = os.urandom(salt_size)
    salted = hashlib.pbkdf2_hmac(digest, _secret(mechanism, user, password), salt, iterations)
    stored_key = hashlib.new(digest, hmac.digest(salted, b"Client Key", digest)).digest()
    server_key = hmac.digest(salted, b"Server Key", digest)
    return {"iterationCount": iterations, "salt": _b64(salt), "storedKey": _b64(stored_key),
            "serverKey": _b64(server_key)}


def _attributes(message: bytes) -> dict[str, str]:
    try:
        return {part[:1]: part[2:] for part in message.decode().split(",") if part[1:2] == "="}
    except UnicodeDecodeError:
        raise CommandError(18, _FAILED) from None


@dataclass
class _Conversation:
    """One SCRAM exchange in progress on a connection."""

    mechanism: str
    user: UserKey
    client_first_bare: str
    server_first: str
    nonce: str
    skip_empty: bool
    proven: bool = False


@dataclass
class _Session:
    loopback: bool = True
    user: UserKey | None = None
    conversation: _Conversation | None = None


class Auth:
    """The users of the server and the authentication state of each connection."""

    def __init__(self, enforce: bool) -> None:
        self.enforce = enforce
        self.users: dict[UserKey, Doc] = {}
        self.sessions: dict[int, _Session] = {}
        #: user -> (its roles list, their privileges): valid while the user has that very list
        #: (createUser and updateUser give a user a new one), so role changes apply at once.
        self._privilege_cache: dict[UserKey, tuple[list[Doc], list[Privilege]]] = {}

    def handlers(self) -> dict[str, Any]:
        return {name[4:]: getattr(self, name) for name in dir(self) if name.startswith("cmd_")}

    # ---- connections
    def connect(self, conn_id: int, loopback: bool) -> None:
        self.sessions[conn_id] = _Session(loopback)

    def disconnect(self, conn_id: int) -> None:
        self.sessions.pop(conn_id, None)

    def _session(self, conn_id: int) -> _Session:
        session = self.sessions.get(conn_id)
        if session is None:
            session = self.sessions[conn_id] = _Session()
        return session

    def user(self, conn_id: int) -> UserKey | None:
        """The connection's user, if it is authenticated and the user still exists."""
        key = self._session(conn_id).user
        return key if key in self.users else None

    def localhost_exception(self, conn_id: int) -> bool:
        """Whether the connection may create the first user: loopback, unauthenticated, no user yet."""
        return not self.users and self._session(conn_id).loopback

    def _privileges(self, conn_id: int) -> list[Privilege]:
        key = self.user(conn_id)
        if key is None:
            return LOCALHOST_PRIVILEGES if self.localhost_exception(conn_id) else []
        roles = self.users[key]["roles"]
        cached = self._privilege_cache.get(key)
        if cached is None or cached[0] is not roles:
            cached = self._privilege_cache[key] = (roles, privileges_of((r["role"], r["db"]) for r in roles))
        return cached[1]

    # ---- authorization
    def authorize(self, conn_id: int, db: str, name: str, canonical: str, cmd: Doc) -> None:
        """Refuse (code 13) a command the connection may not run; do nothing without ``--auth``."""
        if not self.enforce or name in NO_AUTH:
            return
        authenticated = self.user(conn_id) is not None
        if not authenticated and not self.localhost_exception(conn_id):
            raise CommandError(13, f"Command {canonical} requires authentication")
        privileges = self._privileges(conn_id)
        if name in AUTH_ONLY and authenticated:
            return
        if name == "listdatabases" or (name == "usersinfo" and self._asks_only_self(conn_id, db, cmd)):
            return  # listDatabases answers what the user may see (visible_databases)
        needs: list[Requirement] = required(name, db, cmd) if name not in AUTH_ONLY else [(CLUSTER, name)]
        if name == "createuser":
            needs += [(("db", role_db, None), "grantRole") for _, role_db in _roles(db, cmd.get("roles") or [])]
        for resource, action in needs:
            if not is_allowed(privileges, resource, action):
                shown = bson_text({**cmd, "$db": db})
                raise CommandError(13, f"not authorized on {db} to execute command {shown}")

    def visible_databases(self, conn_id: int, names: list[str]) -> list[str]:
        """The databases listDatabases shows: all with the listDatabases action, else those the
        user has a privilege on (mongod's ``authorizedDatabases`` default)."""
        privileges = self._privileges(conn_id)
        if not self.enforce or is_allowed(privileges, CLUSTER, "listDatabases"):
            return names
        return [name for name in names if has_any_privilege_on(privileges, name)]

    def _asks_only_self(self, conn_id: int, db: str, cmd: Doc) -> bool:
        wanted = cmd.get("usersInfo")
        wanted = wanted if isinstance(wanted, list) else [wanted]
        own = self.user(conn_id)
        return own is not None and all(_user_key(db, w) == own for w in wanted)

    # ---- handshake
    def hello_fields(self, cmd: Doc, conn_id: int) -> Doc:
        """``saslSupportedMechs`` and the reply to ``speculativeAuthenticate``, when asked."""
        fields: Doc = {}
        if isinstance(cmd.get("saslSupportedMechs"), str):
            db, _, name = cmd["saslSupportedMechs"].partition(".")
            user = self.users.get((db, name))
            if user is not None:
                fields["saslSupportedMechs"] = sorted(user["credentials"])
        speculative = cmd.get("speculativeAuthenticate")
        if isinstance(speculative, dict) and "saslStart" in speculative:
            try:  # a failure is silent: the client then authenticates the usual way, and fails there
                reply = self.cmd_saslstart(str(speculative.get("db", "admin")), speculative, conn_id)
                fields["speculativeAuthenticate"] = {k: v for k, v in reply.items() if k != "ok"}
            except CommandError:
                pass
        return fields

    # ---- SCRAM
    def cmd_saslstart(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        mechanism, payload = cmd.get("mechanism"), bytes(cmd.get("payload") or b"")
        if mechanism not in MECHANISMS:
            raise CommandError(334, f"Received authentication for mechanism {mechanism} which is unknown or not "
                               "enabled")  # fmt: skip
        session = self._session(conn_id)
        session.conversation = None
        header, _, first_bare = payload.partition(b",,")
        attributes = _attributes(first_bare)
        if header not in (b"n", b"y") or "n" not in attributes or "r" not in attributes:
            raise CommandError(17, "Invalid SCRAM client-first message")
        key = (db, attributes["n"].replace("=2C", ",").replace("=3D", "="))
        credential = self.users.get(key, {}).get("credentials", {}).get(mechanism)
        if credential is None:
            raise CommandError(18, _FAILED)
        nonce = attributes["r"] + _b64(os.urandom(24))
        server_first = f"r={nonce},s={credential['salt']},i={credential['iterationCount']}"
        skip_empty = bool((cmd.get("options") or {}).get("skipEmptyExchange"))
        session.conversation = _Conversation(mechanism, key, first_bare.decode(), server_first, nonce, skip_empty)
        return {"conversationId": 1, "done": False, "payload": Binary(server_first.encode()), "ok": 1.0}

    def cmd_saslcontinue(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        session = self._session(conn_id)
        talk = session.conversation
        if talk is None or cmd.get("conversationId", 1) != 1:
            raise CommandError(17, "No SASL session state found")
        if talk.proven:  # the empty third message of a client that did not ask to skip it
            session.conversation = None
            return {"conversationId": 1, "done": True, "payload": Binary(b""), "ok": 1.0}
        session.conversation = None
        final = bytes(cmd.get("payload") or b"")
        attributes, (without_proof, _, _) = _attributes(final), final.decode(errors="replace").rpartition(",p=")
        credential = self.users.get(talk.user, {}).get("credentials", {}).get(talk.mechanism)
        if credential is None or attributes.get("r") != talk.nonce or "p" not in attributes:
            raise CommandError(18, _FAILED)
        digest = MECHANISMS[talk.mechanism][0]
        message = f"{talk.client_first_bare},{talk.server_first},{without_proof}".encode()
        stored_key = base64.standard_b64decode(credential["storedKey"])
        signature = hmac.digest(stored_key, message, digest)
        try:
            proof = base64.standard_b64decode(attributes["p"])
        except ValueError:
            raise CommandError(18, _FAILED) from None
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=False))
        proven = hmac.compare_digest(hashlib.new(digest, client_key).digest(), stored_key)
        if len(proof) != len(signature) or not proven:
            raise CommandError(18, _FAILED)
        self._one_user_per_connection(session, talk.user)
        session.user = talk.user
        verifier = _b64(hmac.digest(base64.standard_b64decode(credential["serverKey"]), message, digest))
        if not talk.skip_empty:
            talk.proven, session.conversation = True, talk
        return {"conversationId": 1, "done": talk.skip_empty, "payload": Binary(f"v={verifier}".encode()), "ok": 1.0}

    def _one_user_per_connection(self, session: _Session, key: UserKey) -> None:
        """mongod 5.0+: a connection authenticates again only as the same user."""
        previous = session.user if session.user in self.users else None
        if previous is None or previous == key:
            return
        shown = f"{previous[1]}@{previous[0]}"
        if previous[0] == key[0]:
            raise CommandError(5626701, f"Each client connection may only be authenticated once. Previously "
                               f"authenticated as: {shown}")  # fmt: skip
        raise CommandError(5626702, f"Client has attempted to authenticate on multiple databases.Already "
                           f"authenticated as: {shown}")  # fmt: skip

    # ---- user management
    def cmd_createuser(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        name = cmd["createUser"]
        if not isinstance(name, str) or not name:
            raise CommandError(2, "User name must be a non-empty string")
        if (db, name) in self.users:
            raise CommandError(51003, f'User "{name}@{db}" already exists')
        user: Doc = {"_id": f"{db}.{name}", "userId": Binary(uuid.uuid4().bytes, 4), "user": name, "db": db}
        self._set_password_and_roles(user, cmd, "createUser", new=True)
        self.users[db, name] = user
        return {"ok": 1.0}

    def cmd_updateuser(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        user = self.users.get((db, str(cmd["updateUser"])))
        if user is None:
            raise CommandError(11, f"User '{cmd['updateUser']}@{db}' not found")
        self._set_password_and_roles(user, cmd, "updateUser", new=False)
        return {"ok": 1.0}

    def _set_password_and_roles(self, user: Doc, cmd: Doc, command: str, new: bool) -> None:
        db = user["db"]
        if new and "roles" not in cmd:
            raise CommandError(40414, f"BSON field '{command}.roles' is missing but a required field")
        if new and not isinstance(cmd.get("pwd"), str):
            raise CommandError(2, "Must provide a 'pwd' field for all user documents, except those with "
                               "'$external' as the user's source db")  # fmt: skip
        if "roles" in cmd:
            roles = _roles(db, cmd["roles"])
            for role, role_db in roles:
                if not role_exists(role, role_db):
                    raise CommandError(31, f"Could not find role: {role}@{role_db}")
            user["roles"] = [{"role": role, "db": role_db} for role, role_db in roles]
        if "pwd" in cmd:
            mechanisms = cmd.get("mechanisms") or sorted(user.get("credentials") or MECHANISMS)
            unknown = [m for m in mechanisms if m not in MECHANISMS]
            if unknown or not isinstance(cmd["pwd"], str) or not cmd["pwd"]:
                raise CommandError(2, f"Unknown auth mechanism or empty password: {unknown or cmd['pwd']!r}")
            user["credentials"] = {m: scram_credential(m, user["user"], cmd["pwd"]) for m in mechanisms}
        if "customData" in cmd:
            user["customData"] = cmd["customData"]

    def cmd_dropuser(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        if self.users.pop((db, str(cmd["dropUser"])), None) is None:
            raise CommandError(11, f"User '{cmd['dropUser']}@{db}' not found")
        return {"ok": 1.0}

    def cmd_usersinfo(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        wanted = cmd.get("usersInfo")
        if isinstance(wanted, dict) and wanted.get("forAllDBs"):
            if db != "admin":
                raise CommandError(2, "User and role info for all databases may only be requested on admin")
            keys = list(self.users)
        elif wanted in (1, 1.0, True):
            keys = [key for key in self.users if key[0] == db]
        else:
            keys = [_user_key(db, item) for item in (wanted if isinstance(wanted, list) else [wanted])]
        users = []
        for key in keys:
            user = self.users.get(key)
            if user is not None:
                shown = {k: v for k, v in user.items() if k != "credentials" or cmd.get("showCredentials")}
                users.append({**shown, "mechanisms": sorted(user["credentials"])})
        return {"users": users, "ok": 1.0}

    def cmd_connectionstatus(self, db: str, cmd: Doc, conn_id: int) -> Doc:
        key = self.user(conn_id)
        users = [] if key is None else [{"user": key[1], "db": key[0]}]
        roles = [] if key is None else self.users[key]["roles"]
        return {"authInfo": {"authenticatedUsers": users, "authenticatedUserRoles": roles}, "ok": 1.0}


def _roles(db: str, roles: Any) -> list[tuple[str, str]]:
    """``roles`` of createUser/updateUser as ``(role, db)``: a name is a role of ``db``."""
    if not isinstance(roles, list):
        raise CommandError(14, "\"roles\" field must be an array")
    parsed = []
    for role in roles:
        if isinstance(role, str):
            parsed.append((role, db))
        elif isinstance(role, dict) and isinstance(role.get("role"), str) and isinstance(role.get("db"), str):
            parsed.append((role["role"], role["db"]))
        else:
            raise CommandError(2, f"A role must be a name or {{role, db}}: {role!r}")
    return parsed


def _user_key(db: str, wanted: Any) -> UserKey:
    if isinstance(wanted, dict):
        return str(wanted.get("db", db)), str(wanted.get("user"))
    return db, str(wanted)
