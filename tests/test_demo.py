"""The README's first command: the demo stack starts, runs the example jobs, and stops cleanly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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
