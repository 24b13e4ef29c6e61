"""`--task_whitelist` / `--task_blacklist` (MRQ 0.9): a worker that runs only, or never, the jobs of
some task paths, on regular queues.

The jobs this worker must not run are never taken: it reads the first waiting ids of the queue
(`PEEK` at a time, up to `MAX_PEEK`), looks up their task paths in MongoDB (cached: a job's path
never changes), and atomically takes only the ids it may run (take_ids.lua); every other id stays
where it was, in its order, for the other workers. Nothing is taken and put back, so no job is
ever counted as started, moved to the back, or lost in between. Jobs deeper than `MAX_PEEK` ids
wait until the jobs ahead of them are taken. Raw queues are not filtered (as in MRQ: their jobs
only have a path once the worker made them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bson import ObjectId

from ..exceptions import ConfigError, InvalidJob, TaskNotFound
from ..task import load_task, validate_task_path

if TYPE_CHECKING:
    from ..config import Settings
    from ..queue import RegularQueue

#: Waiting ids read per look, and at most per take.
PEEK = 500
MAX_PEEK = 5000
#: Paths remembered per process (a job's path never changes); the cache is emptied past it.
CACHE_SIZE = 100_000


class TaskFilter:
    def __init__(self, whitelist: Sequence[str], blacklist: Sequence[str]) -> None:
        self.whitelist = frozenset(whitelist)
        self.blacklist = frozenset(blacklist)
        self._paths: dict[str, str | None] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> TaskFilter | None:
        """The worker's filter (None without one). Every path must name a task that can be
        imported: a typo would otherwise leave jobs waiting forever (whitelist) or let them run
        (blacklist). Raises ConfigError naming the flag and the path."""
        if not settings.task_whitelist and not settings.task_blacklist:
            return None
        for flag in ("task_whitelist", "task_blacklist"):
            for path in settings[flag]:
                try:
                    load_task(validate_task_path(path))
                except (InvalidJob, TaskNotFound) as exc:
                    raise ConfigError(f"--{flag}: {path!r} is not a task: {exc}") from None
        return cls(settings.task_whitelist, settings.task_blacklist)

    def allows(self, path: str | None) -> bool:
        if path is None:  # no document (expired, deleted): leave the id to the other workers
            return False
        if self.whitelist and path not in self.whitelist:
            return False
        return path not in self.blacklist

    def take(self, queue: RegularQueue, count: int, worker_id: str) -> tuple[list[str], float | None]:
        """Take up to `count` ids of allowed jobs from the front of the queue (its take order)."""
        chosen: dict[str, None] = {}  # ordered, without the duplicates a list may hold
        start = 0
        while len(chosen) < count and start < MAX_PEEK:
            window = queue.list_job_ids(start, PEEK)
            self._learn(queue, window)
            chosen.update((job_id, None) for job_id in window if self.allows(self._paths.get(job_id)))
            if len(window) < PEEK:
                break
            start += PEEK
        return queue.take_ids(list(chosen)[:count], worker_id)

    def _learn(self, queue: RegularQueue, ids: list[str]) -> None:
        unknown = [job_id for job_id in ids if job_id not in self._paths and ObjectId.is_valid(job_id)]
        if not unknown:
            return
        if len(self._paths) + len(unknown) > CACHE_SIZE:
            self._paths.clear()
        found = {str(doc["_id"]): doc.get("path") for doc in
                 queue.store.jobs.find({"_id": {"$in": [ObjectId(i) for i in unknown]}}, {"path": 1})}
        for job_id in unknown:
            self._paths[job_id] = found.get(job_id)
