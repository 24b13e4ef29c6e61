"""Job statuses (MRQ's names) and the sets the lifecycle reasons with."""

from __future__ import annotations

QUEUED = "queued"
STARTED = "started"
SUCCESS = "success"
FAILED = "failed"
RETRY = "retry"
MAXRETRIES = "maxretries"
TIMEOUT = "timeout"
ABORT = "abort"
CANCEL = "cancel"
INTERRUPT = "interrupt"
DELAYED = "delayed"
#: Queued with `depends_on`: waits for its dependencies to end (its id is in no Redis structure).
WAITING = "waiting"

ALL_STATUSES = (WAITING, QUEUED, DELAYED, STARTED, SUCCESS, FAILED, RETRY, MAXRETRIES, TIMEOUT, ABORT, CANCEL,
                INTERRUPT)
#: A worker may start a job only from these (its id is, or will be, in a queue).
STARTABLE_STATUSES = frozenset({QUEUED, RETRY, DELAYED})
#: Waiting for a worker: the id is in the queue's list (queued) or its delayed set (retry, delayed).
WAITING_STATUSES = STARTABLE_STATUSES
#: Statuses a job ends in: it runs again only if someone requeues it.
FINAL_STATUSES = frozenset({SUCCESS, FAILED, MAXRETRIES, TIMEOUT, ABORT, CANCEL, INTERRUPT})
#: MRQ's name for the statuses that are not final.
TRANSIENT_STATUSES = frozenset({WAITING, QUEUED, DELAYED, STARTED, RETRY})
#: Statuses that store a traceback.
ERROR_STATUSES = frozenset({FAILED, MAXRETRIES, TIMEOUT, ABORT, INTERRUPT, RETRY})
#: A cancel applies to a job in these: it has not started.
CANCELLABLE_STATUSES = STARTABLE_STATUSES | {WAITING}
#: A requeue applies to a job in any status but these (it is queued, running, or waits for its
#: dependencies).
NOT_REQUEUABLE = (QUEUED, STARTED, WAITING)

DEFAULT_QUEUE = "default"
