"""The worker's lease, renewed from a real OS thread.

A worker is alive while its entry in `<p>:workers` has a deadline in the future (Redis server
time). The renewal runs in a native thread with its own Redis connection, so greenlets that
hog the CPU (or block in C code) cannot starve it: a long job is never recovered while its
worker lives, however long it runs. When the renewal finds the entry gone (the worker was
declared dead, or Redis lost its data) it registers again and flags it, so the worker can put
its running ids back and say that its jobs may have run twice.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..config import Settings
from ..connections import make_redis
from ..storage.keys import Keys
from ..storage.leases import Leases

log = logging.getLogger("mrq.worker")


def _original(module: str, name: str) -> Any:
    """The unpatched stdlib object, also when gevent monkey-patched the process."""
    try:
        from gevent import monkey

        if monkey.is_module_patched(module):
            return monkey.get_original(module, name)
    except ImportError:
        pass
    return getattr(__import__(module), name)


def renew_interval(lease: float) -> float:
    return max(0.2, min(lease / 5.0, 3.0))


class LeaseKeeper:
    def __init__(self, settings: Settings, worker_id: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.lease = settings.worker_lease
        self.interval = renew_interval(self.lease)
        self.keys = Keys(settings.redis_prefix)
        self.renewals = 0
        self.lost = 0  # times the entry was found gone
        self.reregistered = False  # set by the thread, cleared by the worker once handled
        self.last_renewal = time.monotonic()
        self._stop_lock = _original("_thread", "allocate_lock")()
        self._stop_lock.acquire()
        self._done_lock = _original("_thread", "allocate_lock")()
        self._running = False

    def start(self) -> None:
        self._running = True
        self._done_lock.acquire()
        _original("_thread", "start_new_thread")(self._run, ())

    def stop(self, release: bool) -> None:
        """Stop renewing; with release, remove the entry (a clean exit with nothing running)."""
        if not self._running:
            return
        self._release = release
        self._stop_lock.release()
        self._done_lock.acquire(timeout=10)
        self._running = False

    def _run(self) -> None:
        client = make_redis(self.settings.redis, max_connections=2, timeout=max(0.5, min(self.lease / 3.0, 5.0)),
                            count_io=True)
        leases = Leases(client, self.keys)
        failing_since: float | None = None
        self._release = False
        try:
            while True:
                try:
                    if not leases.renew(self.worker_id, self.lease):
                        leases.register(self.worker_id, self.lease)
                        self.lost += 1
                        self.reregistered = True
                    self.renewals += 1
                    self.last_renewal = time.monotonic()
                    if failing_since is not None:
                        log.warning("worker lease renewed again after %.1fs without Redis",
                                    time.monotonic() - failing_since)
                        failing_since = None
                except Exception as exc:
                    if failing_since is None:
                        failing_since = time.monotonic()
                        log.warning("renewing the worker lease failed (%s); retrying", exc)
                if self._stop_lock.acquire(timeout=self.interval):
                    break
            if self._release:
                try:
                    leases.release(self.worker_id)
                except Exception as exc:
                    log.warning("releasing the worker lease failed (%s); it will expire", exc)
        finally:
            try:
                client.close()
            except Exception:
                pass
            _thread_release(self._done_lock)


def _thread_release(lock: Any) -> None:
    try:
        lock.release()
    except RuntimeError:
        pass

