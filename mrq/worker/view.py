"""What the worker's companions (report, metrics, admin server, housekeeping) may see of it: a
protocol, so that they depend on this small module and never import the worker loop (no import
circle, even a type-only one)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import gevent.event

    from ..config import Settings
    from ..joblogs import JobLogHandler
    from ..scheduler import Scheduler
    from ..store import Store
    from .execution import RunningJob
    from .lease import LeaseKeeper
    from .selection import QueueSelector
    from .watchdog import Watchdog
    from .writer import StatusWriter


class WorkerView(Protocol):
    settings: Settings
    store: Store
    id: str
    name: str
    status: str
    running: dict[str, RunningJob]
    writer: StatusWriter
    selector: QueueSelector
    lease: LeaseKeeper | None
    watchdog: Watchdog | None
    log_handler: JobLogHandler | None
    scheduler: Scheduler | None
    wake: gevent.event.Event
    paused: set[str]
    graceful_stop: bool
    done_jobs: int
    recovered_jobs: int
    datestarted: datetime
    last_empty_take: float
    metrics: Any

    def report(self, extra: dict[str, Any] | None = None) -> None: ...

    def stop(self, now: bool = False) -> None: ...

    def restore_running_sets(self) -> None: ...
