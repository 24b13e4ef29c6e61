"""The process-wide "current" state: the settings and Store in use, the worker, and which job
each greenlet is running. Library code receives a Store explicitly; only the MRQ-compatible
functions (mrq.context, mrq.job.queue_job...) fall back to the current one.

If nothing set it up, the first use builds it from the config file and MRQ_* environment
(what `setup_context()` does), so a script can call `queue_job()` straight away.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from greenlet import getcurrent

from .config import Settings, load_settings
from .store import Store

_lock = threading.RLock()
_settings: Settings | None = None
_store: Store | None = None
_worker: Any = None
# greenlet -> the job it runs (subpool greenlets map to their parent's job)
_jobs: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def set_current_config(settings: Settings, store: Store | None = None) -> Store:
    global _settings, _store
    with _lock:
        if _store is not None and _store is not store:
            _store.close()
        _settings = settings
        _store = store or Store(settings)
        return _store


def get_current_config() -> Settings:
    if _settings is None:
        setup_from_environment()
    assert _settings is not None
    return _settings


def get_current_store() -> Store:
    if _store is None:
        setup_from_environment()
    assert _store is not None
    return _store


def setup_from_environment(**overrides: Any) -> Store:
    """Settings from the config file and MRQ_* environment (no command line), plus overrides."""
    settings, _ = load_settings(None, overrides=overrides)
    return set_current_config(settings)


def reset() -> None:
    """Forget the current settings and close the current Store (tests, forks)."""
    global _settings, _store, _worker
    with _lock:
        if _store is not None:
            _store.close()
        _settings = _store = _worker = None
        _jobs.clear()


def set_current_worker(worker: Any) -> None:
    global _worker
    _worker = worker


def get_current_worker() -> Any:
    return _worker


def set_current_job(job: Any, greenlet: Any = None) -> None:
    """Attach a job to a greenlet (the current one by default); None detaches."""
    greenlet = greenlet or getcurrent()
    if job is None:
        _jobs.pop(greenlet, None)
    else:
        _jobs[greenlet] = job


def get_current_job(greenlet: Any = None) -> Any:
    return _jobs.get(greenlet or getcurrent())
