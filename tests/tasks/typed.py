"""Tasks declared with the typed decorator (tests/test_typed_tasks.py, tests/test_aio.py)."""

from __future__ import annotations

import time
from typing import Any

from mrq.task import task


@task(queue="typed_high", timeout=30, max_retries=2)
def add(a: int, b: int = 2) -> int:
    return a + b


@task
def greet(name: str, *, punctuation: str = "!", **extra: Any) -> str:
    suffix = "".join(f" {key}={value}" for key, value in sorted(extra.items()))
    return f"hello {name}{punctuation}{suffix}"


@task(timeout=0.5)
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


def plain(a: int) -> int:
    return a


#: The same task under a second name: a worker would run it, but the decorator's path names `add`.
alias = add
