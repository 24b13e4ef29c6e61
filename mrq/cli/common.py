"""Shared pieces of the command lines: exit codes and printing one-line errors."""

from __future__ import annotations

import sys

from ..utils import json_default

__all__ = ["EXIT_FAILED", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_UNAVAILABLE", "EXIT_USAGE", "fail", "json_default"]

EXIT_OK = 0
EXIT_FAILED = 1  # the task raised, or the worker stopped on an error
EXIT_USAGE = 2  # bad command line, bad config, bad params
EXIT_UNAVAILABLE = 3  # Redis or MongoDB unreachable
EXIT_NOT_FOUND = 4  # unknown task path


def fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: {message}", file=sys.stderr)
    return code
