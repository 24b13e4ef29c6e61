"""Queues: one class per kind, chosen once from the name by `Queue(name, store)`.

- base.py: the factory, pause/resume.
- regular.py: job documents in MongoDB, ids in Redis (the safe default).
- raw.py: parameters in Redis only (`_raw`, `_set`, `_sorted_set`, `_timed_set`).
- introspection.py: sizes, paused flags, counts per status.
- producer.py: queueing jobs (`queue_job(s)`, `queue_raw_jobs`, MRQ's `send_task(s)`, `send_raw_tasks`).
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
from .regular import RegularQueue, worker_queue

# isort: split
# Last: the producer uses mrq.lifecycle, which imports the queue classes above from this package.
from .producer import queue_job, queue_jobs, queue_raw_jobs, send_raw_tasks, send_task, send_tasks

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
    "queue_job",
    "queue_jobs",
    "queue_kind",
    "queue_names_page",
    "queue_raw_jobs",
    "raw_queue_config",
    "restore_paused",
    "resume_queue",
    "send_raw_tasks",
    "send_task",
    "send_tasks",
    "status_counts",
    "subqueue_names",
    "worker_queue",
]
