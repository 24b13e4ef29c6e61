"""The test server's error replies: mongod's code names, and the fields of a failed command or
write (``{errmsg, code, codeName}``, with a duplicate key's ``keyPattern``/``keyValue``)."""

from __future__ import annotations

import sys
from typing import Any

import bson
from mongomock_ng import helpers
from pymongo.errors import DuplicateKeyError, PyMongoError

from .mongo_collection import bson_text
from .mongo_query import CommandError

Doc = dict[str, Any]

#: Codes of the refusals the server logs: unauthorized, authentication failed, no indexed plan.
_LOGGED_CODES = (13, 18, 291)
# fmt: off
_CODE_NAMES = {
    1: "InternalError", 2: "BadValue", 9: "FailedToParse", 11: "UserNotFound", 13: "Unauthorized",
    14: "TypeMismatch", 15: "Overflow", 16: "InvalidLength", 17: "ProtocolError", 18: "AuthenticationFailed",
    20: "IllegalOperation",
    26: "NamespaceNotFound", 27: "IndexNotFound", 31: "RoleNotFound", 43: "CursorNotFound", 48: "NamespaceExists",
    59: "CommandNotFound", 72: "InvalidOptions", 73: "InvalidNamespace", 85: "IndexOptionsConflict",
    238: "NotImplemented", 291: "NoQueryExecutionPlans", 334: "MechanismUnavailable", 10334: "BSONObjectTooLarge",
    11000: "DuplicateKey", 17419: "Location17419", 17420: "Location17420", 40414: "Location40414",
    51003: "Location51003", 5626701: "Location5626701", 5626702: "Location5626702",
}
# fmt: on


class _TooLarge:
    """Stands for a document of a document sequence that exceeds ``MAX_BSON_SIZE``."""

    def __init__(self, size: int) -> None:
        self.size = size


def _error_fields(exc: BaseException) -> Doc:
    if isinstance(exc, CommandError):
        code = exc.code
    elif isinstance(exc, PyMongoError):
        code = getattr(exc, "code", None) or 2
    elif isinstance(exc, NotImplementedError):
        code = 238
    else:
        code = 2 if isinstance(exc, (ValueError, TypeError, bson.InvalidDocument)) else 1
    message = getattr(exc, "_message", None) or str(exc) or type(exc).__name__
    fields: Doc = {"errmsg": message, "code": code, "codeName": _CODE_NAMES.get(code, "UnknownError")}
    details = getattr(exc, "details", None)
    if isinstance(exc, DuplicateKeyError) and isinstance(details, dict):
        fields.update({k: details[k] for k in ("keyPattern", "keyValue") if k in details})
        pattern = list(fields.get("keyPattern", {"_id": 1}).items())
        index = "_id_" if pattern == [("_id", 1)] else helpers.gen_index_name(pattern)
        fields["errmsg"] = f"E11000 duplicate key error index: {index} dup key: {fields.get('keyValue')}"
    return fields


def _log_refusal(exc: BaseException, db: str, cmd: Any) -> None:
    """One line on stderr for each refusal an operator would look for (codes 13, 18, 291)."""
    code = getattr(exc, "code", None)
    if code in _LOGGED_CODES:
        shown = bson_text(cmd) if isinstance(cmd, dict) else repr(cmd)
        print(f"mongo_server: refused (code {code}) on {db}: {shown[:2000]} :: {exc}", file=sys.stderr, flush=True)
