"""docs/getting-started.md runs as written.

Every fenced code block of the page is preceded by a marker comment (invisible once rendered):

    <!-- test: file NAME -->         the block is the content of NAME in the reader's project directory
    <!-- test: worker -->            `mrq-worker ...`: started in the background (a real worker process)
    <!-- test: dashboard -->         `mrq-dashboard ...`: started in the background, on a free port
    <!-- test: run[, expect: TEXT | expect-re: REGEX] -->     shell commands, must exit 0
    <!-- test: python[, expect: TEXT | expect-re: REGEX] -->  a Python script, must exit 0
    <!-- test: skip (REASON) -->     not run (installing, starting servers the test provides)

The blocks run in order, in a fresh project directory, with the test servers in MRQ_REDIS /
MRQ_MONGODB_JOBS (the `mrq_settings` fixture) and this virtualenv's commands first on PATH.
`127.0.0.1:5555` in a command becomes the dashboard's actual port.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mrq.config import Settings
from mrq.testing.stack import free_port
from mrq.testing.workers import CommandProcess, WorkerProcess, command_env

DOCS = Path(__file__).resolve().parent.parent / "docs"
MARKER = re.compile(r"<!--\s*test:\s*(?P<spec>.*?)\s*-->\s*\n```(?P<lang>[\w-]*)\n(?P<code>.*?)\n```", re.DOTALL)
FENCE = re.compile(r"^```[\w-]*$", re.MULTILINE)
DASHBOARD_ADDRESS = "127.0.0.1:5555"


@dataclass
class Block:
    kind: str
    argument: str
    expect: str | None
    expect_re: str | None
    lang: str
    code: str
    line: int


def parse_blocks(text: str) -> list[Block]:
    blocks = []
    for match in MARKER.finditer(text):
        head, _, expectation = match["spec"].partition(",")
        kind, _, argument = head.strip().partition(" ")
        expectation = expectation.strip()
        expect = expectation[len("expect:"):].strip() if expectation.startswith("expect:") else None
        expect_re = expectation[len("expect-re:"):].strip() if expectation.startswith("expect-re:") else None
        assert expectation == "" or expect or expect_re, f"unknown marker option {expectation!r}"
        assert kind in ("file", "worker", "dashboard", "run", "python", "skip"), f"unknown marker kind {kind!r}"
        blocks.append(Block(kind, argument.strip(), expect, expect_re, match["lang"], match["code"],
                            text[:match.start()].count("\n") + 1))
    return blocks


def test_every_code_block_of_getting_started_is_marked() -> None:
    text = (DOCS / "getting-started.md").read_text()
    fences = len(FENCE.findall(text)) // 2
    blocks = parse_blocks(text)
    assert len(blocks) == fences, "every code block needs a <!-- test: ... --> marker (see tests/test_docs.py)"
    assert [b.kind for b in blocks if b.kind != "skip"] == ["file", "worker", "run", "python", "python", "python",
                                                            "run", "run", "run", "run", "dashboard", "run"]
    assert all(b.argument.startswith("(") and b.argument.endswith(")") for b in blocks if b.kind == "skip")


class DashboardProcess(CommandProcess):
    module = "mrq_dashboard.cli"


def check_output(block: Block, output: str) -> None:
    where = f"docs/getting-started.md line {block.line}"
    if block.expect is not None:
        assert block.expect in output, f"{where}: expected {block.expect!r} in the output:\n{output[-2000:]}"
    if block.expect_re is not None:
        assert re.search(block.expect_re, output, re.MULTILINE), \
            f"{where}: expected /{block.expect_re}/ in the output:\n{output[-2000:]}"


def test_getting_started_runs_as_written(mrq_settings: Settings, tmp_path: Path) -> None:
    run_getting_started(mrq_settings, tmp_path / "project", sys.executable)


def run_getting_started(mrq_settings: Settings, project: Path, python: str) -> str:
    """Every step of docs/getting-started.md, with `python`'s virtualenv first on PATH; returns the
    worker's output."""
    project.mkdir()
    env = command_env(mrq_settings, {"PATH": os.path.dirname(python) + os.pathsep + os.environ["PATH"]})
    background: list[CommandProcess] = []
    dashboard_address = DASHBOARD_ADDRESS
    ran: list[str] = []
    try:
        for block in parse_blocks((DOCS / "getting-started.md").read_text()):
            where = f"docs/getting-started.md line {block.line}"
            code = block.code.replace(DASHBOARD_ADDRESS, dashboard_address)
            if block.kind == "skip":
                continue
            if block.kind == "file":
                (project / block.argument).write_text(code + "\n")
            elif block.kind == "worker":
                args = shlex.split(code)
                assert args[0] == "mrq-worker", where
                worker = WorkerProcess(mrq_settings, args[1:], env={"PATH": env["PATH"]}, cwd=project, python=python)
                background.append(worker)
                worker.start()
            elif block.kind == "dashboard":
                args = shlex.split(code)
                assert args[0] == "mrq-dashboard", where
                port = free_port()
                dashboard = DashboardProcess(mrq_settings, args[1:], env={"MRQ_DASHBOARD_PORT": str(port)},
                                             cwd=project, python=python)
                background.append(dashboard)
                dashboard.start(ready_text="listening on")
                dashboard_address = f"127.0.0.1:{port}"
            else:
                command = ["bash", "-euo", "pipefail", "-c", code] if block.kind == "run" else [python, "-c", code]
                done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=60)
                assert done.returncode == 0, f"{where}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
                check_output(block, done.stdout)
            ran.append(f"{block.kind}@{block.line}")
        assert ran[-1].startswith("run"), "the last step checks the dashboard's answer"
        worker_output = background[0].output()
        assert "adding 40 and 2" in worker_output, worker_output[-2000:]  # the job ran in the worker
        # What the reader is told to look at: the Jobs page lists both jobs, successful.
        with urllib.request.urlopen(f"http://{dashboard_address}/jobs", timeout=10) as response:
            page = response.read().decode()
        assert page.count("tasks.Add") >= 2 and "success" in page, page[:2000]
        return worker_output
    finally:
        for process in background:
            process.close()


def test_relative_links_of_the_docs_resolve() -> None:
    root = DOCS.parent
    broken = []
    for page in [root / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(root)}: {target}")
    assert not broken, broken
