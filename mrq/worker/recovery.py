"""Taking back the jobs of dead workers.

Every live worker looks every few seconds for workers whose lease has expired. For each, it
reads the ids in that worker's running sets (a window at a time; first moving there what its
landing lists hold, see pickup.py), and gives them back through
the lifecycle (`operations.recover_running`: MongoDB first, guarded; then one atomic move per
batch that moves only ids still in the dead worker's set). Running it twice, or in two workers
at once, neither duplicates nor loses an id. The dead worker's entry goes only once its running
sets are empty.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bson import ObjectId

from ..lifecycle.operations import recover_running
from ..queue import RegularQueue
from ..storage.leases import Leases

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("mrq.worker")

BATCH = 300


def leases(store: Store) -> Leases:
    return Leases(store.redis, store.keys)


def recover_worker(store: Store, dead_id: str, max_recoveries: int) -> dict[str, int]:
    """Give back every job a dead worker held. Returns counts by action."""
    registry = leases(store)
    counts = {"requeued": 0, "poisoned": 0, "restored": 0, "dropped": 0}
    leftover = False
    for name in registry.queues_of(dead_id):
        queue = RegularQueue(name, store)
        queue.claim_landing(dead_id)  # an id its blocking pickup moved, not yet in its running set
        ids = sorted(queue.running_ids(dead_id))
        corrupt = [job_id for job_id in ids if not ObjectId.is_valid(job_id)]
        if corrupt:
            log.error("dead worker %s: %d entries of its running set on %s are not job ids (%s): dropped", dead_id,
                      len(corrupt), name, ", ".join(repr(c[:40]) for c in corrupt[:3]))
        for start in range(0, len(ids), BATCH):
            recover_running(store, name, dead_id, ids[start:start + BATCH], max_recoveries, counts)
        leftover = leftover or bool(queue.running_ids(dead_id))
    if not leftover:
        registry.forget(dead_id)
    if any(counts.values()):
        log.warning("recovered the jobs of dead worker %s: %s", dead_id,
                    ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    return counts


def recover_expired(store: Store, my_id: str, max_recoveries: int) -> int:
    """Recover every expired worker (never this one). Returns the number of jobs given back."""
    total = 0
    for dead_id in leases(store).expired():
        if dead_id == my_id:
            continue
        counts = recover_worker(store, dead_id, max_recoveries)
        total += counts["requeued"] + counts["restored"]
    return total
