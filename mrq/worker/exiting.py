"""What a stopping worker checks before it releases its lease."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import gevent

from ..backoff import STORE_ERRORS
from ..queue import RegularQueue

if TYPE_CHECKING:
    from ..storage.leases import Leases
    from .view import WorkerView

log = logging.getLogger("mrq.worker")

T = TypeVar("T")


def within(seconds: float, operation: Callable[[], T]) -> T | None:
    """Run a store operation at exit, at most `seconds` long; None when it failed or timed out."""
    try:
        with gevent.Timeout(seconds):
            return operation()
    except (gevent.Timeout, *STORE_ERRORS) as exc:
        log.warning("at exit: %s", exc or "timed out")
        return None


def jobs_left(worker: WorkerView, leases: Leases) -> str:
    """What keeps a worker from releasing its lease ("" when nothing does): jobs still running,
    writes not stored or not acknowledged, ids still in its running sets (an id its blocking
    pickup left in a landing list is moved there first)."""
    if worker.running:
        return f"{len(worker.running)} jobs still running"
    if not worker.writer.idle:
        return f"{len(worker.writer.pending())} final statuses not stored or not acknowledged"

    def held() -> int:
        count = 0
        for name in leases.queues_of(worker.id):
            queue = RegularQueue(name, worker.store)
            queue.claim_landing(worker.id)
            count += len(queue.running_ids(worker.id))
        return count

    count = within(5.0, held)
    if count is None:
        return "its running sets unreadable (Redis unreachable)"
    return f"{count} job ids still in its running sets" if count else ""
