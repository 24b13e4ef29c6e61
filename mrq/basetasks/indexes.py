"""`mrq.basetasks.indexes.EnsureIndexes`: create the MongoDB indexes mrq needs (idempotent)."""

from __future__ import annotations

from typing import Any

from .. import current, maintenance
from ..task import Task


class EnsureIndexes(Task):
    def run(self, params: dict[str, Any]) -> dict[str, list[str]]:
        return {"created": maintenance.ensure_all_indexes(current.get_current_store())}
