"""How stored values are shown: JSON for the API (ObjectIds, dates, bytes made plain) and the
Jinja filters of the pages (relative times, durations, pretty JSON). Nothing here escapes HTML:
Jinja's autoescape does, on every value a template prints."""

from __future__ import annotations

import datetime
import json
import math
import uuid
from collections.abc import Mapping
from typing import Any

from bson import ObjectId
from flask.json.provider import DefaultJSONProvider


def iso(value: datetime.datetime) -> str:
    """A stored (naive UTC) or aware datetime as ISO 8601 in UTC, with a Z."""
    if value.tzinfo is not None:
        value = value.astimezone(datetime.UTC).replace(tzinfo=None)
    return value.isoformat() + "Z"


def jsonable(value: Any) -> Any:
    """A MongoDB value as plain JSON types, recursively. Unknown types become their str()."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime.datetime):
        return iso(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, ObjectId | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON, knowing MongoDB's types."""

    sort_keys = False

    @staticmethod
    def default(o: Any) -> Any:
        return jsonable(o)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


def as_datetime(value: Any) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=None) if value.tzinfo is None else \
            value.astimezone(datetime.UTC).replace(tzinfo=None)
    if isinstance(value, ObjectId):
        return value.generation_time.replace(tzinfo=None)
    return None


# --- Jinja filters ----------------------------------------------------------------------------------


def duration(seconds: Any) -> str:
    """850 ms, 12.3 s, 4m 03s, 2h 01m, 3d 04h."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not math.isfinite(seconds):
        return ""
    seconds = max(float(seconds), 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def ago(value: Any, now: datetime.datetime | None = None) -> str:
    """'12 s ago' for a past date, 'in 5 s' for a future one."""
    when = as_datetime(value)
    if when is None:
        return ""
    delta = ((now or utcnow()) - when).total_seconds()
    if abs(delta) < 1:
        return "just now"
    return f"{duration(delta)} ago" if delta > 0 else f"in {duration(-delta)}"


def timestamp(value: Any) -> str:
    when = as_datetime(value)
    return "" if when is None else when.strftime("%Y-%m-%d %H:%M:%S")


def pretty(value: Any) -> str:
    """Indented JSON of any stored value (the full value: nothing is truncated)."""
    return json.dumps(jsonable(value), indent=2, ensure_ascii=False)


def short(value: Any, length: int = 120) -> str:
    """Compact one-line JSON (strings as they are), cut at `length` characters."""
    text = value if isinstance(value, str) else json.dumps(jsonable(value), ensure_ascii=False,
                                                           separators=(", ", ": "))
    text = " ".join(text.split())
    return text if len(text) <= length else text[:length - 1] + "\u2026"


def number(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"
    return ""


def rate(value: Any) -> str:
    """Jobs per second, two significant digits (0.013, 2.5, 340)."""
    if not isinstance(value, int | float) or value <= 0:
        return "0"
    return f"{value:.2g}" if value < 100 else f"{value:.0f}"


def percent(value: Any) -> str:
    if not isinstance(value, int | float):
        return ""
    return f"{value * 100:.1f} %"


def last_line(text: Any, length: int = 300) -> str:
    """The last non-empty line of a traceback: the exception and its message."""
    if not isinstance(text, str):
        return ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return short(lines[-1], length) if lines else ""


#: What the job page's log panel says once the job is final (app.js's ENDED says the same).
ENDED_WORDS = {
    "success": "The job has finished.", "failed": "The job failed.", "cancel": "The job was cancelled.",
    "abort": "The job was aborted.", "timeout": "The job timed out.", "maxretries": "The job failed: no retries left.",
    "interrupt": "The job was interrupted: its worker stopped.",
}


def ended_words(job: Mapping[str, Any]) -> str:
    return ENDED_WORDS.get(str(job.get("status")), "The job has ended.")


FILTERS = {
    "ended_words": ended_words,
    "duration": duration,
    "ago": ago,
    "timestamp": timestamp,
    "pretty": pretty,
    "short": short,
    "number": number,
    "rate": rate,
    "percent": percent,
    "last_line": last_line,
}
