"""A new user's first hour, scripted: the built wheel installed in a fresh virtualenv (no checkout
on the import path), docs/getting-started.md followed with its commands, and a first run that
prints no warning. (The demo's SIGINT and SIGHUP stops: tests/test_demo.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from mrq.config import Settings
from tests.test_docs import run_getting_started

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={k: v for k, v in os.environ.items() if not k.startswith(("MRQ_", "PYTHONPATH"))})
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_the_wheel_in_a_fresh_virtualenv_follows_getting_started(mrq_settings: Settings, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)], tmp_path)
    assert "Deprecat" not in built.stderr and "!!" not in built.stderr, built.stderr  # no setuptools warnings
    [wheel] = wheels.glob("mrq-*.whl")
    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"mrq", "mrq_dashboard"}

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp_path)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "-q", f"{wheel}[testserver]"], tmp_path, timeout=600)
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip()
    assert not (Path(site) / "dashboard").exists()  # no top-level name that users' code could collide with
    assert Path(site) != Path(sysconfig.get_paths()["purelib"])
    for command in ("mrq-worker", "mrq-run", "mrq-queue", "mrq-dashboard"):
        assert run([str(venv / "bin" / command), "--version"], tmp_path).stdout.strip()

    output = run_getting_started(mrq_settings, tmp_path / "project", python)
    assert "site-packages/mrq/" in run([python, "-c", "import mrq; print(mrq.__file__)"], tmp_path).stdout
    warnings = [line for line in output.splitlines() if " WARNING " in line or " ERROR " in line]
    assert warnings == [], warnings  # a first run is quiet: indexes created, nothing to put back
