"""Seeded fault schedules (in the spirit of Jepsen and FoundationDB's simulation tests).

A seed gives a schedule (`schedule.generate`): faults at set times (workers killed or
signalled, Redis frozen, restarted empty or flushed, MongoDB frozen, partitioned or refused,
latency) and jobs of every kind queued meanwhile. `runner.run_schedule` plays it against fresh
servers and real `mrq-worker` processes reaching the stores through fault proxies, heals
everything, waits for the recovery bound, and `invariants.check` says whether anything was lost,
left stuck, run twice without being counted, or moved back from a final status. The CLI
(`python -m mrq.testing.chaos`) runs one seed or a soak; docs/fault-schedules.md tells how.

Same seed, same schedule: a failure is replayed with the command it prints.
"""

from .invariants import Evidence, Verdict, Violation, check
from .runner import RECOVERY_BOUND, RunResult, run_schedule
from .schedule import Fault, Schedule, generate

__all__ = [
    "RECOVERY_BOUND",
    "Evidence",
    "Fault",
    "RunResult",
    "Schedule",
    "Verdict",
    "Violation",
    "check",
    "generate",
    "run_schedule",
]
