"""mrq's web dashboard and HTTP/JSON API: `create_app(settings)` builds the Flask app;
`mrq-dashboard` (dashboard/cli.py) serves it. docs/dashboard.md describes the pages, the API and
the security model.

Importing this package imports nothing else: `mrq-dashboard` must monkey-patch gevent before
Flask, pymongo and redis are imported, so `create_app` is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'dashboard' has no attribute {name!r}")
