"""Regular queues: job documents in MongoDB, their ids in Redis.

This class owns the queue's Redis keys: what moves an id in (push, delayed retries, give back)
and what moves it out (dequeue into a worker's running set, acknowledgement, cancel). An id
leaves a worker's running set only through `ack` (its final status is stored) or `give_back`
(atomically back to the list or the delayed set), so it is never only in a worker's memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..connections import Commands
from ..exceptions import InvalidQueueName
from ..storage.keys import REVERSE_SUFFIX, validate_queue_name
from ..store import strings
from .base import Queue, queue_kind

if TYPE_CHECKING:
    from ..store import Store

MAX_DEQUEUE = 500  # ids taken per Lua call at most
#: Ids read per command when a whole structure must be read (reconciliation): Redis stays
#: responsive between windows, whatever the queue's length.
WINDOW = 10_000


class RegularQueue(Queue):
    """Job ids in a Redis LIST `{p:q:<name>}:ids`; due retries in the ZSET `{p:q:<name>}:delayed`;
    ids of cancelled jobs still in the list in the ZSET `{p:q:<name>}:cancelled`. With
    `reverse=True` (a worker given `<name>_reverse`, as in MRQ) the queue is taken newest first
    (LIFO); producers push the same way whatever the readers do."""

    kind = "regular"

    def __init__(self, name: str, store: Store | None = None, *, reverse: bool = False) -> None:
        super().__init__(name, store)
        self.is_reverse = reverse

    # --- in -----------------------------------------------------------------------------------------

    def push(self, ids: Sequence[str], *, front: bool = False, requeued: bool = False) -> None:
        """Put job ids on the queue (their documents must already say `queued`) and wake workers.
        `requeued`: the ids may sit in the delayed set from an earlier life of the job: cleared
        in the same round trip. (A cancel mark is left alone: it drops the old copy of the id.)"""
        if not ids:
            return
        commands = Commands()
        messages = self.add_push(commands, ids, front=front, requeued=requeued)
        self._send_push(commands, messages)

    def add_push(self, pipe: Any, ids: Sequence[str], *, front: bool = False,
                 requeued: bool = False) -> list[tuple[str, str]]:
        """The writes of `push` added to `pipe` (anything with `execute_command`: Commands, or a
        redis-py pipeline, sync or asyncio: mrq.aio executes its own); returns the wake-up
        messages to publish after them."""
        keys = self.store.keys
        if requeued:
            pipe.execute_command("ZREM", keys.queue_delayed(self.name), *ids)
        pipe.execute_command("LPUSH" if front else "RPUSH", keys.queue_ids(self.name), *ids)
        return self.add_push_bookkeeping(pipe, len(ids))

    def push_delayed(self, ids_and_times: dict[str, float]) -> None:
        """Schedule job ids to go back on the queue at the given unix times."""
        if not ids_and_times:
            return
        store = self.store
        commands = Commands()
        commands.execute_command("ZADD", store.keys.queue_delayed(self.name),
                                 *(item for job_id, due in ids_and_times.items() for item in (due, job_id)))
        self._note_known(commands)
        self._send_push(commands, [(store.keys.due_channel(self.name), f"at:{min(ids_and_times.values()):f}")])

    # --- out ----------------------------------------------------------------------------------------

    def dequeue(self, count: int, worker_id: str, now: float | None = None) -> tuple[list[str], float | None]:
        """Atomically move up to `count` ids into the worker's running set, dropping the ids of
        cancelled jobs. Returns the ids and, when the queue ran dry, the unix time at which to look
        again (its next delayed job; None if none)."""
        keys = self.store.keys
        ids, next_due = self.store.scripts.dequeue(
            keys=[keys.queue_ids(self.name), keys.queue_running(self.name, worker_id),
                  keys.queue_delayed(self.name), keys.queue_cancelled(self.name)],
            args=[repr(time.time() if now is None else now), min(count, MAX_DEQUEUE),
                  "R" if self.is_reverse else "L"],
        )
        return strings(ids), (float(next_due) if next_due else None)

    def take_ids(self, ids: Sequence[str], worker_id: str, now: float | None = None) -> tuple[list[str], float | None]:
        """Atomically move the given ids (read with `list_job_ids` a moment ago) into the worker's
        running set, leaving every other id in place (take_ids.lua). Returns the ids taken (those
        still listed, not cancelled) and the due time of the earliest delayed id (or None)."""
        keys = self.store.keys
        taken, next_due = self.store.scripts.take_ids(
            keys=[keys.queue_ids(self.name), keys.queue_running(self.name, worker_id),
                  keys.queue_delayed(self.name), keys.queue_cancelled(self.name)],
            args=[repr(time.time() if now is None else now), "R" if self.is_reverse else "L", *ids],
        )
        return strings(taken), (float(next_due) if next_due else None)

    def ack(self, worker_id: str, ids: Sequence[str], pipe: Any = None, *, not_started: bool = False) -> None:
        """The ids' final statuses are stored: out of the running set. `not_started`: ids taken but
        not run (cancelled meanwhile...): their cancel marks go too (no copy of them is left in the
        list to drop)."""
        if not ids:
            return
        keys = self.store.keys
        own = pipe is None
        pipe = self.store.redis.pipeline(transaction=False) if own else pipe
        pipe.srem(keys.queue_running(self.name, worker_id), *ids)
        if not_started:
            pipe.zrem(keys.queue_cancelled(self.name), *ids)
        if own:
            pipe.execute()

    def claim_landing(self, worker_id: str) -> list[str]:
        """Move the ids a worker's blocking pickup left in its landing list into its running set
        (claim_landing.lua; cancelled ones are dropped). Returns them."""
        keys = self.store.keys
        return strings(self.store.scripts.claim_landing(
            keys=[keys.queue_landing(self.name, worker_id), keys.queue_running(self.name, worker_id),
                  keys.queue_cancelled(self.name)]))

    def hold(self, worker_id: str, ids: Sequence[str]) -> None:
        """Put ids back in a worker's running set (a worker whose lease was lost re-registers the
        jobs it still runs)."""
        if ids:
            self.store.redis.sadd(self.store.keys.queue_running(self.name, worker_id), *ids)

    def give_back(self, worker_id: str, moves: Sequence[tuple[str, str, float]], *, own: bool = False) -> int:
        """Atomically move ids from a worker's running set: action "q" to the front of the queue,
        "d" to the delayed set at the given unix time, "x" nowhere. Only ids still in the set
        move, so giving back twice (two workers recovering one dead worker) never duplicates an
        id; with `own` (a worker moving its own jobs, whose documents it has just changed) they
        move even if the set lost them (Redis lost data). Wakes the workers; returns how many ids
        went back."""
        if not moves:
            return 0
        keys = self.store.keys
        args: list[Any] = []
        for job_id, action, score in moves:
            args.extend([job_id, action.upper() if own else action, repr(score)])
        moved = int(self.store.scripts.requeue_running(
            keys=[keys.queue_ids(self.name), keys.queue_running(self.name, worker_id), keys.queue_delayed(self.name)],
            args=args,
        ))
        due = [score for _, action, score in moves if action == "d"]
        if moved:
            if due and not any(a == "q" for _, a, _ in moves):
                self.store.redis.publish(keys.due_channel(self.name), f"at:{min(due):f}")
            else:
                self.store.redis.publish(keys.notify_channel(self.name), str(moved))
        return moved

    def cancel(self, ids: Sequence[str]) -> None:
        """The jobs were cancelled while waiting: out of the delayed set, or marked so that the
        dequeue drops their ids from the list (no scan of the list; cancel.lua)."""
        if ids:
            keys = self.store.keys
            self.store.scripts.cancel(keys=[keys.queue_delayed(self.name), keys.queue_cancelled(self.name)],
                                      args=[repr(time.time()), *ids])

    def move_to_back(self, job_id: str, *, stays: bool = True) -> int:
        """A queued job was requeued (its document says so already): every copy of its id leaves
        the list and, when it `stays` on this queue, one goes to the back (move_to_back.lua, one
        atomic call). Returns the copies removed."""
        keys = self.store.keys
        removed = int(self.store.scripts.move_to_back(
            keys=[keys.queue_ids(self.name), keys.queue_delayed(self.name), keys.queue_cancelled(self.name)],
            args=[job_id, "push" if stays else ""]))
        if stays:
            self.store.redis.publish(keys.notify_channel(self.name), "1")
        return removed

    # --- reading --------------------------------------------------------------------------------------

    def size(self) -> int:
        """Ids waiting in the queue (not counting delayed retries nor cancelled jobs)."""
        keys = self.store.keys
        pipe = self.store.redis.pipeline(transaction=False)
        pipe.llen(keys.queue_ids(self.name))
        pipe.zcard(keys.queue_cancelled(self.name))
        length, cancelled = pipe.execute()
        return max(0, int(length) - int(cancelled))

    def delayed_size(self) -> int:
        return int(self.store.redis.zcard(self.store.keys.queue_delayed(self.name)))

    def list_job_ids(self, skip: int = 0, limit: int = 20) -> list[str]:
        """Queued ids in the order workers will take them."""
        key = self.store.keys.queue_ids(self.name)
        if self.is_reverse:
            return list(reversed(strings(self.store.redis.lrange(key, -(skip + limit), -(skip + 1)))))
        return strings(self.store.redis.lrange(key, skip, skip + limit - 1))

    def running_ids(self, worker_id: str) -> list[str]:
        """The ids a worker holds from this queue (read with SSCAN, a window at a time)."""
        key = self.store.keys.queue_running(self.name, worker_id)
        return strings(self.store.redis.sscan_iter(key, count=1000))

    def held_ids(self, worker_ids: Sequence[str]) -> Iterator[bytes | str]:
        """Every id Redis holds for this queue: listed, delayed, in the running set or the landing
        list of any of `worker_ids`. Read a window at a time (no command reads more than WINDOW
        ids; a landing list holds an id or two)."""
        redis, keys = self.store.redis, self.store.keys
        start = 0
        while True:
            window = redis.lrange(keys.queue_ids(self.name), start, start + WINDOW - 1)
            yield from window
            if len(window) < WINDOW:
                break
            start += WINDOW
        for member, _score in redis.zscan_iter(keys.queue_delayed(self.name), count=WINDOW):
            yield member
        for worker_id in worker_ids:
            yield from redis.lrange(keys.queue_landing(self.name, worker_id), 0, WINDOW - 1)
            yield from redis.sscan_iter(keys.queue_running(self.name, worker_id), count=1000)


def worker_queue(name: str, store: Store | None = None) -> Queue:
    """The queue a worker argument names (not a `root/` group): as in MRQ, `<name>_reverse` is the
    regular queue `<name>` taken newest first; any other name is that queue."""
    if name.endswith(REVERSE_SUFFIX):
        base = name[:-len(REVERSE_SUFFIX)]
        if not base or base.endswith("/"):
            raise InvalidQueueName(f"worker queue {name!r}: give the queue to take newest first before "
                                   f"{REVERSE_SUFFIX} (e.g. default{REVERSE_SUFFIX})")
        if queue_kind(validate_queue_name(base)) != "regular":
            raise InvalidQueueName(f"worker queue {name!r}: {REVERSE_SUFFIX} (newest first) applies to regular "
                                   f"queues only, and {base!r} is a raw queue")
        return RegularQueue(base, store, reverse=True)
    return Queue(name, store)
