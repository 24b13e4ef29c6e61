"""One error policy for every write a transition makes.

- **An outage** (a connection error, a timeout, a failover, no primary) and **a missing
  privilege** (Unauthorized: a deployment being fixed, never the job's fault): wait and retry
  with backoff, logging once when it starts and once when it ends.
- **A refusal** (the server answered no: a document grown past 16 MiB, a validator, a value it
  cannot store): `Refused` is raised; the transition then stores a minimal final status and
  acknowledges the id, so that a job is never left `started` with its id held forever.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import bson.errors
import pymongo.errors

from ..backoff import retry_through_outage

T = TypeVar("T")

log = logging.getLogger("mrq.lifecycle")

#: MongoDB error codes that mean "this client may not do that (yet)": waited for like an outage.
WAIT_CODES = frozenset({13, 18})  # Unauthorized, AuthenticationFailed
#: Error labels the driver or the server put on errors that go away by themselves.
WAIT_LABELS = ("RetryableWriteError", "RetryableError", "SystemOverloadedError", "TransientTransactionError")


class Refused(Exception):
    """MongoDB refused a write (not an outage): the message says why."""


def waits_for(exc: BaseException) -> bool:
    if not isinstance(exc, pymongo.errors.OperationFailure):
        return False
    if exc.code in WAIT_CODES or any(exc.has_error_label(label) for label in WAIT_LABELS):
        return True
    # pymongo 4.20 retries a write refused a connection (its "overload" retry) with a transaction
    # number, which a standalone server refuses: an artefact of the outage, gone with it.
    return exc.code == 20 and "Transaction numbers" in str(exc)


def is_refusal(exc: BaseException) -> bool:
    """A write error the server (or the driver, for a document it cannot encode) will give again."""
    if isinstance(exc, pymongo.errors.OperationFailure):
        timeouts = pymongo.errors.ExecutionTimeout | pymongo.errors.WTimeoutError
        return not waits_for(exc) and not isinstance(exc, timeouts)
    return isinstance(exc, bson.errors.InvalidDocument)


def reason_of(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    if isinstance(details, dict) and details.get("errmsg"):
        return f"{details['errmsg']} (code {details.get('code')})"
    return str(exc) or type(exc).__name__


_last_privilege_error = 0.0


def _unauthorized(exc: BaseException) -> bool:
    global _last_privilege_error
    if isinstance(exc, pymongo.errors.OperationFailure) and exc.code in WAIT_CODES:
        if time.monotonic() - _last_privilege_error < 60:
            return True
        _last_privilege_error = time.monotonic()
        log.error("MongoDB refused %s: %s. mrq's user needs readWrite on its jobs and logs databases "
                  "(docs/deployment.md, Least privilege); waiting for the privilege to be granted", what_of(exc),
                  reason_of(exc))
        return True
    return waits_for(exc)


def what_of(exc: BaseException) -> str:
    return "access (wrong credentials)" if getattr(exc, "code", None) == 18 else "a command (missing privilege)"


def write(operation: Callable[[], T], what: str, *, maximum: float = 5.0,
          give_up: Callable[[], bool] = lambda: False) -> T:
    """Run a MongoDB (or Redis) write through outages; raise `Refused` when the server refuses it.
    A missing privilege is waited for too (an operator fixes roles; the job is not at fault), with
    an error line that names the refused command."""
    try:
        return retry_through_outage(operation, what, log, maximum=maximum, give_up=give_up,
                                    waits_for=_unauthorized)
    except Exception as exc:
        if is_refusal(exc):
            raise Refused(reason_of(exc)) from exc
        raise
