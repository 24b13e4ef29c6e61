"""Blocking pickup: an idle worker with one queue waits inside Redis for its next job.

Without it an idle worker waits for a pub/sub message, then runs the dequeue script: two round
trips after the producer's push, each a cold one on an idle machine. With it, the worker sends,
on a connection of its own, `BLMOVE <queue ids> <its landing list>` followed by
claim_landing.lua: the producer's push itself unblocks the BLMOVE, Redis runs the claim right
behind it (no round trip in between), and the reply carries the id, already in the worker's
running set. The no-prefetch rule holds: the worker blocks only with a free greenlet, and takes
one id. An id is never only in flight: it is in the queue, in the landing list (recovery and
reconciliation read it as part of the running set) or in the running set.

Raw queues block with `BLPOP` (a `_raw` list) or `BZPOPMIN` (a `_sorted_set`), which pop as their
non-blocking dequeue does. Other kinds (sets, timed sets), several queues, subqueue groups and
task filters keep the pub/sub wake-up.

The block ends after at most `timeout` seconds (the next delayed retry, the idle recheck); the
worker ends it earlier with `CLIENT UNBLOCK` (a stop, a pause, an earlier retry). A Redis user
not allowed `CLIENT ID`/`CLIENT UNBLOCK` gets blocks of at most UNBLOCKABLE_CAP seconds instead.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import gevent
import redis.exceptions

from .. import faultpoints
from ..connections import is_cluster
from ..queue import Queue, RegularQueue
from ..queue.raw import RawListQueue, RawParam, RawSortedSetQueue, RawTimedSetQueue
from ..store import strings

if TYPE_CHECKING:
    from redis.connection import Connection

    from ..store import Store
    from .selection import QueueSelector

log = logging.getLogger("mrq.worker")

#: The longest block when the worker cannot end one early (no `CLIENT UNBLOCK`): how late a stop
#: or a pause may be noticed by an idle worker.
UNBLOCKABLE_CAP = 1.0


class BlockingPickup:
    def __init__(self, store: Store, worker_id: str, socket_timeout: float) -> None:
        self.store = store
        self.worker_id = worker_id
        #: Blocks end this long before the connection's read timeout would fire.
        self.max_block = max(0.05, min(socket_timeout - 1.0, socket_timeout / 2)) if socket_timeout else 5.0
        self.enabled = not is_cluster(store.redis)
        self.blocking = False
        self.can_unblock = True
        self._conn: Connection | None = None
        self._client_id: int | None = None
        self._claim_sha: str | None = None
        self._dirty: set[str] = set()  # queues whose landing list may hold ids after a failed call

    def probe(self) -> bool:
        """Whether the server has BLMOVE (Redis 6.2+); turns the blocking pickup off if not."""
        try:
            info: Any = self.store.redis.info("server")
            version = tuple(int(part) for part in str(info.get("redis_version", "0")).split(".")[:2])
        except Exception as exc:
            log.info("blocking pickup off: the Redis version could not be read (%s)", exc)
            version = (0, 0)
        if version < (6, 2):
            self.enabled = False
        return self.enabled

    def queue_name(self, selector: QueueSelector) -> str | None:
        """The queue a worker waits on inside Redis when idle (its only one, of a kind that allows
        it, on a Redis that has BLMOVE); its pushes then need no notification."""
        queue = selector.sole_queue(set())
        if queue is None or not self.supports(queue) or not self.probe():
            return None
        return queue.name

    def supports(self, queue: Queue) -> bool:
        if not self.enabled:
            return False
        if isinstance(queue, RegularQueue):
            return True
        return isinstance(queue, RawListQueue) or (isinstance(queue, RawSortedSetQueue)
                                                   and not isinstance(queue, RawTimedSetQueue))

    # --- taking --------------------------------------------------------------------------------------

    def take(self, queue: Queue, timeout: float) -> list[Any]:
        """Wait up to `timeout` seconds for one job of `queue`; its id (in the worker's running set)
        or raw params, or [] when the wait ended without one. Raises the store's errors."""
        if queue.name in self._dirty:
            claimed = self.claim(queue)
            if claimed:
                return claimed
        timeout = max(0.01, min(timeout, self.max_block if self.can_unblock else UNBLOCKABLE_CAP))
        keys = self.store.keys
        commands: list[tuple[Any, ...]] = [("CLIENT", "ID")]
        if isinstance(queue, RegularQueue):
            landing = keys.queue_landing(queue.name, self.worker_id)
            source_end = "RIGHT" if queue.is_reverse else "LEFT"
            commands.append(("BLMOVE", keys.queue_ids(queue.name), landing, source_end, "RIGHT", repr(timeout)))
            commands.append(("EVALSHA", self._sha(), 3, landing, keys.queue_running(queue.name, self.worker_id),
                             keys.queue_cancelled(queue.name)))
            if faultpoints.armed("pickup_landed"):
                commands.pop()
            self._dirty.add(queue.name)
        elif isinstance(queue, RawListQueue):
            commands.append(("BLPOP", keys.raw_queue(queue.name), repr(timeout)))
        else:
            commands.append(("BZPOPMIN", keys.raw_queue(queue.name), repr(timeout)))
        replies = self._send(commands, timeout)
        if len(commands) == 2 and isinstance(queue, RegularQueue):  # a test's fault point
            if replies[1] is not None:
                faultpoints.reached("pickup_landed")
            return self.claim(queue)
        if not isinstance(queue, RegularQueue):
            reply = replies[1]
            return [] if not reply else [RawParam(strings([reply[1]])[0])]
        claimed = replies[2]
        if isinstance(claimed, redis.exceptions.NoScriptError):  # Redis restarted: load it again
            self._claim_sha = None
            return self.claim(queue)
        if isinstance(claimed, Exception):
            raise claimed
        self._dirty.discard(queue.name)
        return strings(claimed)

    def claim(self, queue: Queue) -> list[str]:
        """Move what the landing list holds into the running set (after a failed call)."""
        assert isinstance(queue, RegularQueue)
        ids = strings(queue.claim_landing(self.worker_id))
        self._dirty.discard(queue.name)
        return ids

    def _sha(self) -> str:
        if self._claim_sha is None:
            self._claim_sha = str(self.store.redis.script_load(self.store.scripts.claim_landing.source))
        return self._claim_sha

    def _send(self, commands: list[tuple[Any, ...]], timeout: float) -> list[Any]:
        """Send the commands in one write and read their replies; an error reply of the pickup
        command itself (BLMOVE unknown to a Redis older than 6.2...) turns the blocking pickup off."""
        if self._conn is None:
            self._conn = self.store.redis.connection_pool.get_connection()
        conn = self._conn
        replies: list[Any] = []
        self.blocking = True
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            for index in range(len(commands)):
                try:
                    reply = conn.read_response(**({"timeout": timeout + self.max_block} if index == 1 else {}))
                except redis.exceptions.ResponseError as exc:
                    reply = exc
                if index == 0:
                    self._note_client_id(reply)
                replies.append(reply)
        except BaseException:
            self.close()
            raise
        finally:
            self.blocking = False
            self._client_id = None
        if isinstance(replies[1], Exception):
            self.enabled = False
            log.warning("blocking pickup turned off (%s): this idle worker waits for notifications instead",
                        replies[1])
            return [None, None, []]
        return replies

    def _note_client_id(self, reply: Any) -> None:
        if isinstance(reply, int):
            self._client_id = reply
        elif self.can_unblock:
            self.can_unblock = False
            log.info("CLIENT ID refused (%s): an idle worker blocks at most %gs at a time", reply, UNBLOCKABLE_CAP)

    # --- ending a block early ------------------------------------------------------------------------

    def unblock(self) -> None:
        """End the current block now (a stop, a pause, an earlier due retry); nothing if none."""
        if self.blocking and self.can_unblock:
            gevent.spawn(self._unblock)

    def _unblock(self) -> None:
        # The block may not have reached Redis yet (the id not yet read): try a few times.
        for _ in range(50):
            if not self.blocking:
                return
            client_id = self._client_id
            if client_id is not None:
                try:
                    if self.store.redis.client_unblock(client_id):
                        return
                except redis.exceptions.ResponseError as exc:
                    self.can_unblock = False
                    log.info("CLIENT UNBLOCK refused (%s): an idle worker blocks at most %gs at a time", exc,
                             UNBLOCKABLE_CAP)
                    return
                except Exception as exc:
                    log.debug("CLIENT UNBLOCK failed: %s", exc)
                    return
            gevent.sleep(0.005)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:
                pass
