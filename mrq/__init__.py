"""mrq: a distributed task queue for Python on Redis and MongoDB, with gevent workers."""

from .version import __version__

__all__ = ["__version__"]
