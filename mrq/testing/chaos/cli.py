"""`python -m mrq.testing.chaos`: run one seeded fault schedule, or a soak of consecutive seeds.

    python -m mrq.testing.chaos --seed 7                 # one schedule; exit 1 if it failed
    python -m mrq.testing.chaos --seed 7 --print-only    # show the schedule, run nothing
    python -m mrq.testing.chaos --soak 600 --seed 100    # seeds 100, 101, ... for 10 minutes

Run it from the project root (the workers import `tests.tasks.chaos` from there). A failing
schedule prints its seed, the exact replay command and the evidence; its logs are kept.
Exit codes: 0 every schedule passed, 1 a schedule failed, 2 bad usage, 3 the harness itself
failed (a server or a worker that could not start).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .report import SoakFigures, failure_report, summary_line
from .runner import RECOVERY_BOUND, run_schedule
from .schedule import DEFAULT_JOBS, generate

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_HARNESS = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mrq.testing.chaos",
        description="Seeded fault schedules against real mrq workers, Redis and the Mongo test server: "
                    "kills, signals, frozen, emptied and partitioned stores, then checks that nothing was "
                    "lost, stuck, run twice uncounted, or moved back from a final status.")
    parser.add_argument("--seed", type=int, default=None,
                        help="the schedule's seed (with --soak: the first seed; default 1)")
    parser.add_argument("--faults", type=int, default=None, help="faults per schedule (default: 3 to 5, from the seed)")
    parser.add_argument("--jobs", type=int, default=None, help=f"jobs per schedule, at least (default {DEFAULT_JOBS})")
    parser.add_argument("--soak", type=float, default=None, metavar="SECONDS",
                        help="run consecutive seeds until this many seconds have passed, then print the figures")
    parser.add_argument("--keep", action="store_true", help="keep the logs of passing schedules too")
    parser.add_argument("--print-only", action="store_true", help="print the schedule and run nothing")
    parser.add_argument("--project-root", default=".", help="where `tests.tasks.chaos` is importable (default: .)")
    parser.add_argument("--bound", type=float, default=RECOVERY_BOUND,
                        help=f"recovery bound in seconds after the heal (default {RECOVERY_BOUND:g}, "
                             "see docs/fault-schedules.md)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.soak is None and args.seed is None:
        parser.print_usage(sys.stderr)
        print("error: give --seed N, or --soak SECONDS", file=sys.stderr)
        return EXIT_USAGE
    if not (Path(args.project_root) / "tests" / "tasks" / "chaos.py").is_file():
        print(f"error: {Path(args.project_root).resolve()} has no tests/tasks/chaos.py: run from mrq's project "
              "root or pass --project-root", file=sys.stderr)
        return EXIT_USAGE
    try:
        generate(args.seed or 1, args.faults, args.jobs)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.soak is not None:
        return soak(args)
    schedule = generate(args.seed, args.faults, args.jobs)
    print(schedule.describe(), flush=True)
    if args.print_only:
        return EXIT_OK
    try:
        result = run_schedule(schedule, args.project_root, keep=args.keep, bound=args.bound)
    except Exception as exc:
        print(f"seed {args.seed}: harness error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_HARNESS
    print(summary_line(result))
    if not result.ok:
        print(failure_report(result))
        return EXIT_FAILED
    if result.kept:
        print(f"logs: {result.rundir}")
    return EXIT_OK


def soak(args: argparse.Namespace) -> int:
    figures = SoakFigures()
    seed = args.seed if args.seed is not None else 1
    deadline = time.monotonic() + args.soak
    while time.monotonic() < deadline:
        schedule = generate(seed, args.faults, args.jobs)
        try:
            result = run_schedule(schedule, args.project_root, keep=args.keep, bound=args.bound)
        except Exception as exc:
            figures.errors.append((seed, f"{type(exc).__name__}: {exc}"))
            print(f"seed {seed}: harness error: {exc}", flush=True)
        else:
            figures.add(result)
            print(summary_line(result), flush=True)
            if not result.ok:
                print(failure_report(result), flush=True)
        seed += 1
    print()
    print(figures.describe())
    if figures.errors:
        return EXIT_HARNESS
    return EXIT_FAILED if figures.failures else EXIT_OK
