"""Run a function over many items concurrently inside one job (gevent greenlets), MRQ style.

Every greenlet of the subpool belongs to the job that started it: `get_current_job()` works in
it, its logs are the job's logs, and a timeout or abort of the job kills it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent.pool
from greenlet import getcurrent

from . import current


class _Bound:
    """`func` bound to the job of the greenlet that made the subpool: called in each subpool
    greenlet, it attaches that greenlet to the job for as long as it runs."""

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func
        self.job = current.get_current_job()
        self.parent = getcurrent()

    def __call__(self, item: Any) -> Any:
        me = getcurrent()
        job = self.job
        if job is not None:
            current.set_current_job(job, me)
            register = getattr(job, "add_greenlet", None)
            if register is not None:
                register(me)
        try:
            return self.func(item)
        except BaseException as exc:
            exc.subpool_parent = self.parent  # type: ignore[attr-defined]
            raise
        finally:
            if job is not None:
                current.set_current_job(None, me)
                unregister = getattr(job, "remove_greenlet", None)
                if unregister is not None:
                    unregister(me)


def _bind(func: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return _Bound(func)


#: The code of a subpool greenlet's entry frame (`self.job` there is its job): how the worker's
#: watchdog, reading frames from another thread, knows which job a subpool greenlet works for.
ENTRY_CODE = _Bound.__call__.__code__


def subpool_map(pool_size: int, func: Callable[[Any], Any], iterable: Iterable[Any]) -> list[Any]:
    """`[func(item) for item in iterable]`, at most `pool_size` at a time, results in order. The
    first exception stops the others and is raised. A falsy pool_size runs them one by one."""
    if not pool_size:
        return [func(item) for item in iterable]
    pool = gevent.pool.Pool(pool_size)
    try:
        return list(pool.imap(_bind(func), iterable))
    finally:
        pool.kill()


def subpool_imap(pool_size: int, func: Callable[[Any], Any], iterable: Iterable[Any], flatten: bool = False,
                 unordered: bool = False, buffer_size: int | None = None) -> Iterator[Any]:
    """Like subpool_map but yields results as they come (in order unless `unordered`); with
    `flatten`, each result is an iterable whose items are yielded one by one."""
    if not pool_size:
        results: Iterable[Any] = (func(item) for item in iterable)
    else:
        pool = gevent.pool.Pool(pool_size)
        mapper = pool.imap_unordered if unordered else pool.imap
        kwargs = {"maxsize": buffer_size} if buffer_size else {}
        results = mapper(_bind(func), iterable, **kwargs)
    for result in results:
        if flatten:
            yield from result
        else:
            yield result
