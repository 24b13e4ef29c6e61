"""The README's first command: the demo stack starts, runs the example jobs, and stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_the_examples_and_stops() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRQ_")}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), "--exit-when-done"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "Fast=success, Slow=success, Fails=failed, Flaky=success, Crawl=success" in out
    assert "demo: stopped" in out
    assert re.search(r"demo: dashboard http://127\.0\.0\.1:\d+/", out)
    assert "could not process order #42" in out  # the failing job's reason reaches the worker log


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "closed-terminal"])
def test_a_signal_stops_everything_the_demo_started(signum: int) -> None:
    """Ctrl-C or SIGHUP (a closed terminal) reaches the demo alone (its children run in sessions
    of their own): it must stop the worker, the dashboard, Redis and the Mongo test server itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRQ_")}
    demo = subprocess.Popen([sys.executable, str(ROOT / "examples" / "demo.py")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert demo.stdout is not None
        for line in demo.stdout:
            if line.startswith("demo: queued"):
                break
        started = psutil.Process(demo.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in started)
        assert "redis-server" in names and "mongo_server" in names and "mrq.cli.worker" in names \
            and "mrq_dashboard.cli" in names, names
        reader = threading.Thread(target=demo.stdout.read, daemon=True)  # keeps the pipe drained
        reader.start()
        demo.send_signal(signum)
        assert demo.wait(30) == 0
        deadline = time.monotonic() + 10
        while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in started):
            assert time.monotonic() < deadline, [p.cmdline() for p in started if p.is_running()]
            time.sleep(0.1)
        reader.join(10)  # end of file: nothing the demo started still holds its output
        assert not reader.is_alive()
    finally:
        if demo.poll() is None:
            demo.kill()
        if demo.stdout is not None:
            demo.stdout.close()
