"""The worker's admin HTTP server (`--admin_port`, loopback by default).

- `GET /` and `GET /report`: the worker report (with MRQ's `_id`, the worker id, and `status`)
  plus each running job's current Python stack;
- `GET /metrics`: Prometheus metrics;
- `GET /wait_for_idle?timeout=30`: answers `idle` once the worker has no running job and its
  queues were empty at its last look (tests and scripts use it), or 504 after the timeout.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import time
import traceback
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import gevent
from gevent.pywsgi import WSGIServer

from ..exceptions import ConfigError
from ..utils import json_default
from .report import build_report

if TYPE_CHECKING:
    from .view import WorkerView

StartResponse = Callable[..., Any]

log = logging.getLogger("mrq.worker")


def is_loopback_address(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip.strip("[]")).is_loopback
    except ValueError:
        return ip == "localhost"


def job_stacks(worker: WorkerView) -> dict[str, list[str]]:
    """The current stack of each running job's greenlets (the job's own first)."""
    stacks: dict[str, list[str]] = {}
    for job_id, job in list(worker.running.items()):
        lines: list[str] = []
        for greenlet in list(job.greenlets):
            frame = getattr(greenlet, "gr_frame", None)
            if frame is not None:
                lines.extend(traceback.format_stack(frame))
        stacks[job_id] = lines
    return stacks


class AdminServer:
    def __init__(self, worker: WorkerView, ip: str, port: int, token: str = "") -> None:
        self.worker = worker
        self.address = (ip, port)
        self.token = token
        self._server: WSGIServer | None = None
        if not token and not is_loopback_address(ip):
            log.warning("the admin server listens on %s without --admin_token: anyone who reaches it sees the live "
                        "stacks of running jobs (their params in local variables). Set --admin_token, or bind it to "
                        "127.0.0.1", ip)

    def start(self) -> None:
        """Bind now: a port in use stops the worker before it takes any job."""
        try:
            listener = socket.socket(socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(self.address)
            listener.listen(64)
        except OSError as exc:
            raise ConfigError(f"--admin_port {self.address[1]}: cannot listen on {self.address[0]}:"
                              f"{self.address[1]} ({exc.strerror or exc})") from None
        self._server = WSGIServer(listener, self.app, log=None, error_log=None)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=1)

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if self.token:
            scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token.encode()):
                start_response("401 Unauthorized", [("Content-Type", "application/json"),
                                                    ("WWW-Authenticate", 'Bearer realm="mrq worker"')])
                return [b'{"error": "authentication required (Authorization: Bearer <admin_token>)"}']
        if path in ("/", "/report"):
            report = {"_id": self.worker.id, **build_report(self.worker)}  # `_id`: as MRQ's report
            stacks = job_stacks(self.worker)
            for job in report["jobs"]:
                job["stack"] = stacks.get(str(job["id"]), [])
            return self._json(start_response, report)
        if path == "/metrics":
            body = self.worker.metrics.render()
            start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")])
            return [body]
        if path == "/wait_for_idle":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            try:
                timeout = float(query.get("timeout", ["30"])[0])
            except ValueError:
                return self._json(start_response, {"error": "timeout must be a number"}, "400 Bad Request")
            if self._wait_idle(timeout):
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"idle"]
            return self._json(start_response, {"error": f"not idle after {timeout:g}s"}, "504 Gateway Timeout")
        return self._json(start_response, {"error": f"no such page {path}"}, "404 Not Found")

    def _wait_idle(self, timeout: float) -> bool:
        """Idle = nothing running or being written, and a look at the queues made after this
        request found nothing to take."""
        asked = time.monotonic()
        worker = self.worker
        worker.wake.set()  # make it look now rather than at its next idle re-check
        with gevent.Timeout(timeout, False):
            while True:
                if not worker.running and worker.writer.backlog == 0 and worker.last_empty_take > asked:
                    return True
                gevent.sleep(0.02)
        return False

    @staticmethod
    def _json(start_response: StartResponse, data: Any, status: str = "200 OK") -> list[bytes]:
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps(data, default=json_default).encode()]
