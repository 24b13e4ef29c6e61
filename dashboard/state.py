"""The objects one dashboard app works with, kept on the app (`app.extensions["mrq"]`) by the
factory and reached from the blueprints through `state()`."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, g

from mrq.config import Settings
from mrq.store import Store

from .actions import Actions, Actor
from .queries import Reader
from .security import Security


@dataclass
class DashboardState:
    settings: Settings
    store: Store
    reader: Reader
    actions: Actions
    security: Security


def state() -> DashboardState:
    found: DashboardState = current_app.extensions["mrq"]
    return found


def actor() -> Actor:
    found = g.get("actor")
    return found if isinstance(found, Actor) else Actor("anonymous", None)
