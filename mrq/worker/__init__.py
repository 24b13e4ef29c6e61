"""The gevent worker (see core.py)."""

from .core import Worker

__all__ = ["Worker"]
