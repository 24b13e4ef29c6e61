"""Small helpers shared by several layers."""

from __future__ import annotations

import datetime
import importlib
import json
import time
import uuid
from collections.abc import Iterable, Iterator
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


class MovingAverage:
    """MRQ's `mrq.utils.MovingAverage`: `next(value)` returns the mean of the last `size` values."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.values: list[float] = []

    def next(self, value: float) -> float:
        self.values = [*self.values, value][-self.size:]
        return sum(self.values) / len(self.values)


class MovingETA:
    """MRQ's `mrq.utils.MovingETA`: feed it how much work is left (a queue size...) with
    `next(remaining, t=None)`; it returns the seconds until that reaches 0 at the rate seen over
    the last `size` values, or None while it cannot tell (fewer than two values, or no progress)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.points: list[tuple[float, float]] = []  # (time, remaining)

    def next(self, remaining: float, t: float | None = None) -> float | None:
        now = time.time() if t is None else t
        self.points = [*self.points, (now, remaining)][-self.size:]
        (first_time, first_left), (last_time, last_left) = self.points[0], self.points[-1]
        done = first_left - last_left
        if len(self.points) < 2 or done <= 0 or last_time <= first_time:
            return None
        return (last_time - first_time) / done * last_left


class MongoJSONEncoder(json.JSONEncoder):
    """MRQ's `mrq.utils.MongoJSONEncoder`: `json.dumps(doc, cls=MongoJSONEncoder)` for documents
    holding dates, ObjectIds, UUIDs, bytes, sets."""

    def default(self, o: Any) -> Any:
        return json_default(o)


def load_class_by_path(path: str) -> Any:
    """MRQ's `mrq.utils.load_class_by_path`: the object at a dotted path (`module.Name`)."""
    module_name, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def group_iter(iterator: Iterable[Any], n: int = 2) -> Iterator[list[Any]]:
    """MRQ's `mrq.utils.group_iter`: the items in lists of `n` (the last one shorter)."""
    group: list[Any] = []
    for item in iterator:
        group.append(item)
        if len(group) == n:
            yield group
            group = []
    if group:
        yield group
