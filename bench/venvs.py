"""One virtualenv per peer under bench/.cache/venvs/<peer>, with pinned versions installed by
name with pip. A venv is reused while its requirement list is unchanged; a failed install is
reported with pip's last words, never retried in a loop."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .procs import Processes

STAMP = ".bench-requirements"
PIP_TIMEOUT = 600.0


class InstallFailed(Exception):
    pass


def python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path, requirements: Sequence[str], procs: Processes, log: Path) -> tuple[Path, float]:
    """The venv's python, creating or updating the venv first; and the seconds it took."""
    wanted = "\n".join(requirements) + "\n"
    stamp = venv / STAMP
    if stamp.exists() and stamp.read_text() == wanted and python_of(venv).exists():
        return python_of(venv), 0.0
    started = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    env = _pip_env()
    code, out = procs.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env=env, cwd=venv.parent,
                          log=log, timeout=120)
    if code != 0:
        raise InstallFailed(f"python -m venv failed: {_last_line(out)}")
    # pip of the project's venv installs into the peer's venv (pip >= 22.3): no pip bootstrap.
    code, out = procs.run([sys.executable, "-m", "pip", "--python", str(python_of(venv)), "install", "-q",
                           *requirements], env=env, cwd=venv.parent, log=log, timeout=PIP_TIMEOUT)
    if code != 0:
        shutil.rmtree(venv, ignore_errors=True)
        raise InstallFailed(f"pip install {' '.join(requirements)} failed: {_last_line(out)}")
    stamp.write_text(wanted)
    return python_of(venv), time.monotonic() - started


def freeze(venv: Path, procs: Processes, log: Path) -> list[str]:
    """What is installed in the venv (pip freeze)."""
    code, out = procs.run([sys.executable, "-m", "pip", "--python", str(python_of(venv)), "freeze"],
                          env=_pip_env(), cwd=venv,
                          log=log, timeout=120)
    return [line for line in out.splitlines() if "==" in line] if code == 0 else []


def _pip_env() -> dict[str, str]:
    """The caller's environment (pip's index settings may live there), minus a virtualenv's marks."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines()
             if line.strip() and not line.startswith("WARNING: Location")]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["(no output)"])[-1][:300]
