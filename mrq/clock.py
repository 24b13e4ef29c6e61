"""Time, in one place: naive UTC datetimes for MongoDB documents, unix seconds for Redis scores."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

EPOCH = datetime(1970, 1, 1)


def utcnow() -> datetime:
    """Now as a naive UTC datetime, millisecond precision (what MongoDB stores)."""
    return EPOCH + timedelta(milliseconds=time.time_ns() // 1_000_000)


def unix_time_of(value: datetime) -> float:
    """A naive UTC datetime (as stored in MongoDB) as unix seconds (as used in Redis scores)."""
    return (value - EPOCH).total_seconds()
