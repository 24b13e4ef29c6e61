"""Wake-ups: a greenlet subscribed to the notify channels of the worker's queues.

Producers publish on `<prefix>:notify:<queue>` after pushing ids, so an idle worker starts a new
job within milliseconds instead of after a poll interval. The listener only sets an event; the
worker's loop does the dequeueing. It subscribes before the worker's first dequeue attempt, so a
job queued at any moment is either seen by that attempt or wakes the worker afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import gevent
import gevent.event
import redis
import redis.client

from ..backoff import STORE_ERRORS, Backoff

log = logging.getLogger("mrq.worker")


def due_time(data: bytes | None) -> float | None:
    """The unix time of an `at:<time>` message (a delayed job due then), else None."""
    if not data or not data.startswith(b"at:"):
        return None
    try:
        return float(data[3:])
    except ValueError:
        return None


class NotificationListener:
    """Subscribes to `channels` and `patterns`; each message goes to `on_message(channel, data)`.
    After every (re)subscription `on_message(None, None)` is called: a message may have been
    missed meanwhile, so the worker should look at its queues."""

    def __init__(self, client: redis.Redis, channels: list[str], patterns: list[str],
                 on_message: Callable[[str | None, bytes | None], None]) -> None:
        self.client = client
        self.channels = channels
        self.patterns = patterns
        self.on_message = on_message
        self.messages = 0
        self._pubsub: redis.client.PubSub | None = None
        self._greenlet: gevent.Greenlet | None = None
        self._subscribed = gevent.event.Event()
        self._stopping = False

    def start(self, timeout: float = 10.0) -> None:
        self._greenlet = gevent.spawn(self._run)
        self._subscribed.wait(timeout)

    def _subscribe(self) -> redis.client.PubSub:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        if self.channels:
            pubsub.subscribe(*self.channels)
        if self.patterns:
            pubsub.psubscribe(*self.patterns)
        return pubsub

    def _run(self) -> None:
        backoff = Backoff(maximum=5.0)
        while not self._stopping:
            try:
                if self._pubsub is None:
                    self._pubsub = self._subscribe()
                    backoff.reset()
                    self._subscribed.set()
                    self.on_message(None, None)
                # A blocking read: a message is handed over as soon as it arrives (a read with a
                # timeout polls first, which cost a third of a millisecond of pickup latency).
                message = self._pubsub.get_message(timeout=None)  # type: ignore[arg-type]  # None: block
            except redis.exceptions.TimeoutError:
                # Nothing for `redis_timeout` seconds: the client dropped the connection; subscribe
                # again at once (on_message(None) then makes the worker look at its queues).
                self._close_pubsub()
                continue
            except STORE_ERRORS as exc:
                self._close_pubsub()
                log.debug("notification channel lost (%s); resubscribing", exc)
                gevent.sleep(backoff.next())
                continue
            if message is None or message.get("type") not in ("message", "pmessage"):
                continue
            self.messages += 1
            channel = message.get("channel")
            data = message.get("data")
            self.on_message(channel.decode() if isinstance(channel, bytes) else str(channel),
                            data if isinstance(data, bytes) else str(data).encode())

    def resubscribe(self, channels: list[str]) -> None:
        """Listen on `channels` from now on: the listening greenlet and its connection are
        replaced (the new one calls on_message(None, None) once subscribed)."""
        self.channels = channels
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=2)
        self._close_pubsub()
        self._subscribed.clear()
        self._greenlet = gevent.spawn(self._run)

    def _close_pubsub(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except Exception:
                pass
            self._pubsub = None

    def stop(self) -> None:
        self._stopping = True
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=2)
        self._close_pubsub()
