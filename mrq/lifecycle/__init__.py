"""The job lifecycle: every status a job goes through, and every transition between them, in one
place. The worker, the maintenance sweeps, `mrq.job.Job` and the dashboard's actions call these
functions; nothing else writes a job's status or moves its id between Redis structures.

- statuses.py: the statuses and the sets the transitions reason with.
- documents.py: the fields each transition writes (built here only).
- policy.py: the one error policy (outage: wait; refusal: a minimal final status, then ack).
- held.py: transitions of the jobs a worker holds (start, finish, retry, interrupt, drop).
- operations.py: transitions from outside (requeue, cancel, a dead worker's jobs taken back).

Every transition is one guarded MongoDB update (the filter names the statuses it may leave, and
for a held job, the worker) plus its Redis move, MongoDB first. docs/guarantees.md says what this
buys through each failure.
"""

from .held import FinalWrite, HeldJob, HeldJobs
from .policy import Refused

__all__ = ["FinalWrite", "HeldJob", "HeldJobs", "Refused"]
