"""Enqueue jobs for one system and time it: `python producer.py APP [options]`, run with the
system's own interpreter (its virtualenv; mrq: the project's), `bench/peers` on the path.

APP is a module of this folder (`huey_app`...) that defines:
- `setup(mode)`: connect (the connection is made before the clock starts);
- `enqueue_one(task, kwargs)`: enqueue one job with the system's single-job call;
- `enqueue_many(task, kwargs_list)`: its bulk call, or `enqueue_many = None` when it has none;
- `ASYNC = True` for asyncio systems, whose three functions are coroutines.
The task is "noop" or "sleep" (see _timing.py). Prints one JSON line: {"n", "seconds",
"cpu_seconds", "method"}; `cpu_seconds` is the producer process's own CPU time over the same
window (`time.process_time()`: the client's cost of the calls).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
from typing import Any

BULK_CHUNK = 1000


def job_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"seconds": args.seconds} if args.task == "sleep" else {}


def run_sync(app: Any, args: argparse.Namespace) -> tuple[float, float, str]:
    app.setup(args.mode)
    kwargs = job_kwargs(args)
    if args.bulk and app.enqueue_many is not None:
        t0, c0 = time.perf_counter(), time.process_time()
        for start in range(0, args.n, BULK_CHUNK):
            app.enqueue_many(args.task, [kwargs] * min(BULK_CHUNK, args.n - start))
        return time.perf_counter() - t0, time.process_time() - c0, "bulk"
    t0, c0 = time.perf_counter(), time.process_time()
    begin = time.time()
    for i in range(args.n):
        if args.interval:
            delay = begin + i * args.interval - time.time()
            if delay > 0:
                time.sleep(delay)
        app.enqueue_one(args.task, {**kwargs, "enq": time.time()} if args.stamp else kwargs)
    return time.perf_counter() - t0, time.process_time() - c0, "single"


async def run_async(app: Any, args: argparse.Namespace) -> tuple[float, float, str]:
    await app.setup(args.mode)
    kwargs = job_kwargs(args)
    if args.bulk and app.enqueue_many is not None:
        t0, c0 = time.perf_counter(), time.process_time()
        for start in range(0, args.n, BULK_CHUNK):
            await app.enqueue_many(args.task, [kwargs] * min(BULK_CHUNK, args.n - start))
        return time.perf_counter() - t0, time.process_time() - c0, "bulk"
    t0, c0 = time.perf_counter(), time.process_time()
    begin = time.time()
    for i in range(args.n):
        if args.interval:
            delay = begin + i * args.interval - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
        await app.enqueue_one(args.task, {**kwargs, "enq": time.time()} if args.stamp else kwargs)
    return time.perf_counter() - t0, time.process_time() - c0, "single"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="producer.py")
    parser.add_argument("app")
    parser.add_argument("--mode", default="")
    parser.add_argument("--task", choices=("noop", "sleep"), default="noop")
    parser.add_argument("--seconds", type=float, default=0.05, help="sleep task: seconds")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--bulk", action="store_true", help="use the bulk call when the system has one")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between two single enqueues")
    parser.add_argument("--stamp", action="store_true", help="pass enq=time.time() to each job")
    args = parser.parse_args(argv)
    app = importlib.import_module(args.app)
    if getattr(app, "ASYNC", False):
        seconds, cpu, method = asyncio.run(run_async(app, args))
    else:
        seconds, cpu, method = run_sync(app, args)
    print(json.dumps({"n": args.n, "seconds": seconds, "cpu_seconds": cpu, "method": method}))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
