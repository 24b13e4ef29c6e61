"""A task module that imports a dangerous callable: only what it defines are tasks."""

from __future__ import annotations

import os
from subprocess import run  # noqa: F401 - imported, so never a task (an attacker would like it to be one)

from mrq.task import Task

helper = os.path.join  # assigned, not defined here: not a task either


def _private(**params):
    return "private"


class Daily(Task):
    def run(self, params):
        return {"report": "daily", **params}


def weekly(day="monday"):
    return f"weekly on {day}"
