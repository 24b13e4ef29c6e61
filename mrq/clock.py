"""Time, in one place: naive UTC datetimes for MongoDB documents, unix seconds for Redis scores."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now as a naive UTC datetime, millisecond precision (what MongoDB stores)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def unix_time() -> float:
    return time.time()
