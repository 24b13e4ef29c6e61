"""Which queues a worker takes jobs from, in which order, and how many from each.

The worker's queue list (highest priority first) may hold plain queues and subqueue groups
(`crawl/` = every `crawl/<anything>` queue, discovered from the root's subqueue set and from
notifications as they appear). Strategies:

- sequential: fill the free greenlets from the first queue that has jobs, then the next...
- parallel: share the free greenlets between the queues, round-robin (the first queue served
  rotates each pass).
- burst: sequential, and the worker exits once nothing is left.

Inside a subqueue group the free greenlets are always shared round-robin between the subqueues
that have work, so one busy subqueue cannot starve the others.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from ..backoff import STORE_ERRORS, retry_through_outage
from ..queue import Queue, RegularQueue, is_paused_in, subqueue_names, worker_queue
from .taskfilter import TaskFilter

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("mrq.worker")

#: Seconds between full re-reads of a subqueue group's members (new subqueues are also learnt at
#: once from their notifications).
SUBQUEUE_REFRESH = 5.0

Taken = list[tuple[Queue, list[Any]]]


class SubqueueGroup:
    """All the subqueues of one root, discovered as they appear."""

    def __init__(self, store: Store, root: str) -> None:
        self.store = store
        self.root = root
        self.name = root + "/"
        self.members: dict[str, Queue] = {}
        self.active: set[str] = set()  # members that may have work
        self._offset = 0
        self._refreshed = 0.0
        self._notified: set[str] = set()  # names added since the last re-read

    def refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._refreshed < SUBQUEUE_REFRESH:
            return
        self._refreshed = time.monotonic()
        known = subqueue_names(self.store, self.root)
        # Subqueues the registry forgot (empty and unused for a while) are dropped, unless a job was
        # pushed to one since the last re-read (its notification added it back).
        current = set(known)
        for name in [n for n in self.members if n not in current and n not in self._notified]:
            del self.members[name]
        for name in known:
            self.add(name)
        self._notified.clear()
        self.active = set(self.members)  # look at every member now and then (lost notifications)

    def add(self, name: str) -> None:
        self._notified.add(name)
        if name not in self.members and name.startswith(self.name):
            self.members[name] = Queue(name, self.store)
        if name in self.members:
            self.active.add(name)

    def rotation(self) -> list[Queue]:
        """Active members, starting one further each pass."""
        names = sorted(self.active)
        if not names:
            return []
        self._offset = (self._offset + 1) % len(names)
        return [self.members[n] for n in names[self._offset:] + names[:self._offset]]


class SelectorHost(Protocol):
    """What the selector needs of its worker."""

    id: str
    graceful_stop: bool

    def register_queue(self, queue: Queue) -> None:
        """Called before the first dequeue from a queue (a crash after it must find our running set)."""

    def known_ids(self) -> set[str]:
        """Ids of our running sets that the worker knows about (running or finishing)."""


class QueueSelector:
    def __init__(self, store: Store, names: list[str], strategy: str, host: SelectorHost,
                 task_filter: TaskFilter | None = None) -> None:
        self.store = store
        self.strategy = strategy
        self.host = host
        self.task_filter = task_filter  # --task_whitelist / --task_blacklist (regular queues)
        self.entries: list[Queue | SubqueueGroup] = [
            SubqueueGroup(store, name[:-1]) if name.endswith("/") else worker_queue(name, store) for name in names
        ]
        self._seen: set[str] = set()
        self._offset = 0
        self.next_due: float | None = None

    # --- notifications ---------------------------------------------------------------------------

    def channels(self, blocking: str | None = None) -> list[str]:
        """The channels to subscribe to: each queue's due channel, and its notify channel unless
        it is `blocking` (an idle worker waits for its jobs inside Redis: pickup.py)."""
        keys = self.store.keys
        queues = [e.name for e in self.entries if isinstance(e, Queue)]
        return [keys.due_channel(name) for name in queues] + \
            [keys.notify_channel(name) for name in queues if name != blocking]

    def patterns(self) -> list[str]:
        keys = self.store.keys
        groups = [e.name for e in self.entries if isinstance(e, SubqueueGroup)]
        return [keys.notify_pattern(name) for name in groups] + [keys.due_pattern(name) for name in groups]

    def notified(self, queue_name: str) -> None:
        """A notification arrived for `queue_name`: a subqueue may be new, or have work again."""
        for entry in self.entries:
            if isinstance(entry, SubqueueGroup) and queue_name.startswith(entry.name):
                entry.add(queue_name)

    def note_due(self, due: float) -> None:
        if self.next_due is None or due < self.next_due:
            self.next_due = due

    def all_queues(self) -> list[Queue]:
        """Every concrete queue: the plain ones and the subqueues discovered so far."""
        queues: list[Queue] = []
        for entry in self.entries:
            queues.extend(entry.members.values() if isinstance(entry, SubqueueGroup) else [entry])
        return queues

    @property
    def names(self) -> list[str]:
        return [entry.name for entry in self.entries]

    def sole_queue(self, paused: set[str]) -> Queue | None:
        """The queue of a worker given exactly one, not paused, without a task filter (an idle
        worker may then wait for its next job inside Redis), else None."""
        if len(self.entries) != 1 or self.strategy == "burst":
            return None
        entry = self.entries[0]
        if isinstance(entry, SubqueueGroup) or is_paused_in(entry.name, paused):
            return None
        if self.task_filter is not None and isinstance(entry, RegularQueue):
            return None
        return entry

    # --- taking ------------------------------------------------------------------------------------

    def take(self, free: int, paused: set[str]) -> Taken:
        """Take up to `free` jobs (a few more only when a Redis timeout left some in our running
        sets, which must run). Sets `next_due` when the queues ran dry."""
        taken: Taken = []
        self.next_due = None
        entries = [e for e in self.entries if not is_paused_in(e.name.rstrip("/"), paused)]
        if self.strategy == "parallel" and len(entries) > 1:
            self._offset = (self._offset + 1) % len(entries)
            entries = entries[self._offset:] + entries[:self._offset]
            share = max(1, free // len(entries))
        else:
            share = free
        for entry in entries:
            if free <= 0 or self.host.graceful_stop:
                break
            if isinstance(entry, SubqueueGroup):
                got = self._take_group(entry, min(share, free), paused)
            else:
                got = self._take_one(entry, min(share, free))
            for queue, items in got:
                taken.append((queue, items))
                free -= len(items)
        return taken

    def _take_group(self, group: SubqueueGroup, free: int, paused: set[str]) -> Taken:
        try:
            group.refresh()
        except STORE_ERRORS as exc:
            log.debug("refreshing subqueues of %s failed: %s", group.root, exc)
        taken: Taken = []
        members = [q for q in group.rotation() if not is_paused_in(q.name, paused)]
        if not members:
            return taken
        share = max(1, free // len(members))
        for queue in members:
            if free <= 0:
                break
            got = self._take_one(queue, min(share, free))
            if got:
                taken.extend(got)
                free -= sum(len(items) for _, items in got)
            else:
                group.active.discard(queue.name)
        return taken

    def _take_one(self, queue: Queue, count: int) -> Taken:
        if queue.name not in self._seen:
            self.host.register_queue(queue)
            self._seen.add(queue.name)
        failures = 0

        def attempt() -> tuple[list[Any], float | None]:
            nonlocal failures
            try:
                if self.task_filter is not None and isinstance(queue, RegularQueue):
                    return self.task_filter.take(queue, count, self.host.id)
                return queue.dequeue(count, self.host.id)
            except STORE_ERRORS:
                failures += 1
                raise

        items, due = retry_through_outage(attempt, "Redis dequeue", log, give_up=lambda: self.host.graceful_stop)
        if due is not None:
            self.note_due(due)
        if failures and not queue.is_raw:
            # A call that timed out on our side may still have run on the server: its ids would sit
            # in our running set, unknown to us: take them too.
            items = items + self.orphans(queue, items)
        return [(queue, items)] if items else []

    def orphans(self, queue: Queue, just_taken: list[str]) -> list[str]:
        assert isinstance(queue, RegularQueue)
        members = queue.running_ids(self.host.id)
        known = self.host.known_ids() | set(just_taken)
        unknown = [job_id for job_id in members if job_id not in known]
        if unknown:
            log.warning("taking %d job ids found in this worker's running set after a Redis timeout", len(unknown))
        return unknown
