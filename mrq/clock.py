"""Time, in one place: naive UTC datetimes for MongoDB documents, unix seconds for Redis scores."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now as a naive UTC datetime, millisecond precision (what MongoDB stores)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def unix_time_of(value: datetime) -> float:
    """A naive UTC datetime (as stored in MongoDB) as unix seconds (as used in Redis scores)."""
    return (value - datetime(1970, 1, 1)).total_seconds()
