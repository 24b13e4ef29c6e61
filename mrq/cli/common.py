"""Shared pieces of the command lines: exit codes and printing one-line errors."""

from __future__ import annotations

import datetime
import sys
import uuid
from typing import Any

from bson import ObjectId

EXIT_OK = 0
EXIT_FAILED = 1  # the task raised, or the worker stopped on an error
EXIT_USAGE = 2  # bad command line, bad config, bad params
EXIT_UNAVAILABLE = 3  # Redis or MongoDB unreachable
EXIT_NOT_FOUND = 4  # unknown task path


def fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return code


def json_default(value: Any) -> Any:
    """JSON for what MongoDB documents hold: dates, ObjectIds, bytes, sets."""
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, ObjectId | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
