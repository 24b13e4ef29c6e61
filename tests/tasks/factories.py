"""job_factory functions for raw queues in tests (referenced by dotted path in RAW_QUEUES)."""

from __future__ import annotations

import json


def record(raw):
    """Raw param = JSON params for RecordExecution... or a plain string recorded as `value`."""
    try:
        params = json.loads(raw)
    except ValueError:
        params = {"value": str(raw)}
    return {"path": "tests.tasks.general.RecordRaw", "params": params}


def mrq_style(rawparam):
    """Written for MRQ on Python 3, which passed bytes."""
    return {"path": "tests.tasks.general.RecordRaw", "params": {"value": rawparam.decode("utf-8")}}


def failing_on_bad(raw):
    if raw == "bad":
        raise ValueError("cannot make a job of 'bad'")
    return {"path": "tests.tasks.general.RecordRaw", "params": {"value": str(raw)}}


def retrying(raw):
    return {"path": "tests.tasks.general.RetryOnce", "params": {"value": str(raw)}}


def failing_task(raw):
    return {"path": "tests.tasks.general.Fail", "params": {"message": f"raw {raw}"}}
