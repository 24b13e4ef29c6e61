"""Queues: one class per kind, chosen once from the name by `Queue(name, store)`.

- base.py: the factory, pause/resume.
- regular.py: job documents in MongoDB, ids in Redis (the safe default).
- raw.py: parameters in Redis only (`_raw`, `_set`, `_sorted_set`, `_timed_set`).
- introspection.py: sizes, paused flags, counts per status.
- registry.py: the known queues (paged, empty subqueues forgotten after a while).
"""

from .base import Queue, is_paused_in, pause_queue, paused_queues, queue_kind, restore_paused, resume_queue
from .introspection import QueueInfo, forget_empty_subqueues, queue_infos, status_counts
from .raw import (
    RawListQueue,
    RawParam,
    RawQueue,
    RawQueueConfig,
    RawSetQueue,
    RawSortedSetQueue,
    RawTimedSetQueue,
    raw_queue_config,
)
from .registry import (
    count_known,
    known_queue_names,
    queue_names_page,
    subqueue_names,
)
from .regular import RegularQueue

__all__ = [
    "Queue",
    "QueueInfo",
    "RawListQueue",
    "RawParam",
    "RawQueue",
    "RawQueueConfig",
    "RawSetQueue",
    "RawSortedSetQueue",
    "RawTimedSetQueue",
    "RegularQueue",
    "count_known",
    "forget_empty_subqueues",
    "is_paused_in",
    "known_queue_names",
    "pause_queue",
    "paused_queues",
    "queue_infos",
    "queue_kind",
    "queue_names_page",
    "raw_queue_config",
    "restore_paused",
    "resume_queue",
    "status_counts",
    "subqueue_names",
]
