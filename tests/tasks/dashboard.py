"""Tasks for the dashboard tests."""

from __future__ import annotations

import time

from mrq.context import log
from mrq.task import Task


class SlowLogs(Task):
    """Logs one line every `interval` seconds, then returns how many it logged."""

    def run(self, params):
        lines = params.get("lines", ["one", "two", "three"])
        for line in lines:
            log.info(line)
            time.sleep(params.get("interval", 0.5))
        return len(lines)


class FailWith(Task):
    """Raises the exception class named in params (from builtins) with the given message."""

    def run(self, params):
        import builtins

        raise getattr(builtins, params.get("type", "ValueError"))(params.get("message", "failed"))
