"""Named points at which a test freezes a real worker process (SIGSTOP), to kill it exactly there
(`MRQ_TEST_STOP_AT=<name>[,<name>...]` in the worker's environment). Unset, a point costs one set
lookup. tests/test_dependencies.py uses `before_settle`: a job's final status is stored, its
dependents are not settled yet and its id is still in the worker's running set. tests/test_pickup.py
uses `pickup_landed`: an idle worker's blocking move took an id into its landing list, and the
claim that moves it into the running set is not sent. tests/test_queue_one.py uses `start_missed`:
a worker's start of one job found no startable document, and it has not looked why yet."""

from __future__ import annotations

import os
import signal

_ARMED = frozenset(name for name in os.environ.get("MRQ_TEST_STOP_AT", "").split(",") if name)


def reached(name: str) -> None:
    if name in _ARMED:
        os.kill(os.getpid(), signal.SIGSTOP)


def armed(name: str) -> bool:
    return name in _ARMED
