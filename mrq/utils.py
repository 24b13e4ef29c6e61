"""Small helpers shared by several layers."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from bson import ObjectId


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
