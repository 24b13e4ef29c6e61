#!/usr/bin/env python3
"""Health check of an mrq container (the image installs it as `mrq-healthcheck`).

    mrq-healthcheck worker [--port P]     # GET /report on the worker's admin server (--admin_port)
    mrq-healthcheck dashboard [--port P]  # GET /api/health on mrq-dashboard (with its credentials)
    mrq-healthcheck stores                # ping Redis and MongoDB as an mrq command would
    mrq-healthcheck                       # worker when MRQ_ADMIN_PORT is set, else stores

Ports, addresses and credentials come from the same places as for the checked command: `MRQ_*`
environment variables, then `./mrq-config.py` (or MRQ_CONFIG), then the defaults. Exit status 0 =
healthy, 1 = unhealthy (what Docker and Kubernetes expect), with one line saying why.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request
from typing import Any

TIMEOUT = 5.0
WILDCARDS = ("", "0.0.0.0", "::", "[::]")


def _host(bind: str) -> str:
    """Where to reach a server bound to `bind` from inside its own container or pod."""
    if bind in WILDCARDS:
        return "127.0.0.1"
    return f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def check_worker(settings: Any, port: int | None) -> str:
    port = port or settings.admin_port
    if not port:
        raise RuntimeError("no admin port: start the worker with --admin_port (or MRQ_ADMIN_PORT)")
    headers = {"Authorization": f"Bearer {settings.admin_token}"} if settings.admin_token else {}
    status, body = _get(f"http://{_host(settings.admin_ip)}:{port}/report", headers)
    if status != 200:
        raise RuntimeError(f"worker admin server answered HTTP {status}")
    report = json.loads(body)
    if report.get("status") == "stop":
        raise RuntimeError("the worker is stopping")
    return f"worker {report.get('name')} {report.get('status')}, {len(report.get('jobs') or [])} running jobs"


def check_dashboard(settings: Any, port: int | None) -> str:
    headers = {}
    if settings.dashboard_token:
        headers["Authorization"] = f"Bearer {settings.dashboard_token}"
    elif settings.dashboard_auth:
        headers["Authorization"] = "Basic " + base64.b64encode(settings.dashboard_auth.encode()).decode()
    status, body = _get(f"http://{_host(settings.dashboard_bind)}:{port or settings.dashboard_port}/api/health",
                        headers)
    try:
        health = json.loads(body)
    except ValueError:
        health = {}
    if status != 200 or not health.get("ok"):
        reasons = ", ".join(f"{k}: {v}" for k, v in health.items() if k != "ok" and v != "ok")
        raise RuntimeError(f"dashboard answered HTTP {status}" + (f" ({reasons})" if reasons else ""))
    return "dashboard ok (Redis and MongoDB reachable)"


def check_stores(settings: Any) -> str:
    from mrq.connections import Connections

    connections = Connections(settings)
    try:
        connections.check()
    finally:
        connections.close()
    return "Redis and MongoDB reachable"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mrq-healthcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", choices=("worker", "dashboard", "stores"), help="what to check")
    parser.add_argument("--port", type=int, help="port of the worker admin server or of the dashboard")
    args = parser.parse_args(argv)
    try:
        from mrq.config import load_settings

        settings, _ = load_settings()
        what = args.what or ("worker" if settings.admin_port else "stores")
        if what == "worker":
            message = check_worker(settings, args.port)
        elif what == "dashboard":
            message = check_dashboard(settings, args.port)
        else:
            message = check_stores(settings)
    except Exception as exc:
        print(f"mrq-healthcheck: unhealthy: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
              flush=True)
        return 1
    print(f"mrq-healthcheck: {message}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
