"""The local demo stack: Redis, the Mongo test server (unless MRQ_REDIS / MRQ_MONGODB_JOBS point
elsewhere), a worker with 10 greenlets, the dashboard (http://127.0.0.1:5555/, or another free port
when 5555 is taken; MRQ_DASHBOARD_PORT picks one) and a few example jobs. Ctrl-C, SIGTERM or
closing the terminal (SIGHUP) stops everything it started.

    ./scripts/demo                  # keeps running until Ctrl-C
    ./scripts/demo --exit-when-done # stops once the example jobs are finished (used by the tests)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mrq import current  # noqa: E402
from mrq.job import FINAL_STATUSES, queue_job  # noqa: E402
from mrq.testing.stack import MongoTestServer, RedisServer, free_port, port_open, wait_for_port  # noqa: E402

EXAMPLES = [
    ("examples.tasks.Fast", {"a": 2, "b": 3}),
    ("examples.tasks.Slow", {"seconds": 4}),
    ("examples.tasks.Fails", {"item": "order #42"}),
    ("examples.tasks.Flaky", {"failures": 2}),
    ("examples.tasks.Crawl", {"urls": ["https://a.example", "https://b.example", "https://c.example"]}),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exit-when-done", action="store_true", help="stop once the example jobs are finished")
    args = parser.parse_args()

    servers: list = []
    worker: subprocess.Popen | None = None
    dashboard: subprocess.Popen | None = None
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if signum == signal.SIGHUP:  # the terminal is gone: stop everything, printing nowhere
            devnull = open(os.devnull, "w")  # noqa: SIM115 (lives as long as the process)
            os.dup2(devnull.fileno(), sys.stdout.fileno())
            os.dup2(devnull.fileno(), sys.stderr.fileno())

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # Ctrl-C, kill, a closed terminal
        signal.signal(signum, on_signal)
    try:
        env = dict(os.environ)
        if not env.get("MRQ_REDIS"):
            redis = RedisServer()
            redis.start()
            servers.append(redis)
            env["MRQ_REDIS"] = redis.url
        if not env.get("MRQ_MONGODB_JOBS"):
            mongo = MongoTestServer()
            mongo.start()
            servers.append(mongo)
            env["MRQ_MONGODB_JOBS"] = mongo.uri + "/mrq_demo"
        os.environ.update({k: env[k] for k in ("MRQ_REDIS", "MRQ_MONGODB_JOBS")})
        print(f"demo: Redis   {env['MRQ_REDIS']}")
        print(f"demo: MongoDB {env['MRQ_MONGODB_JOBS']}" + ("  (in-memory test server)" if servers else ""))

        worker = subprocess.Popen([sys.executable, "-m", "mrq.cli.worker", "--greenlets", "10", "default"],
                                  cwd=ROOT, env=env, start_new_session=True)
        port = int(env.get("MRQ_DASHBOARD_PORT") or 0) or (free_port() if port_open(5555) else 5555)
        dashboard = subprocess.Popen([sys.executable, "-m", "mrq_dashboard.cli", "--port", str(port)], cwd=ROOT,
                                     env=env, start_new_session=True, stdout=subprocess.DEVNULL)
        wait_for_port(port, timeout=30, proc=dashboard)
        print(f"demo: dashboard http://127.0.0.1:{port}/", flush=True)
        store = current.setup_from_environment()
        ids = {queue_job(path, params): path.rsplit(".", 1)[1] for path, params in EXAMPLES}
        print(f"demo: queued {len(ids)} example jobs; the worker's log lines follow (Ctrl-C to stop)")
        print("demo: inspect them with Python:  Job(<id>).fetch().data, or in MongoDB collection mrq_jobs")

        last: dict = {}
        while not stopping:
            if worker.poll() is not None:
                print(f"demo: the worker exited with code {worker.returncode}")
                return 1
            statuses = {doc["_id"]: doc["status"] for doc in store.jobs.find({"_id": {"$in": list(ids)}})}
            if statuses != last:
                summary = ", ".join(f"{ids[i]}={statuses.get(i, '?')}" for i in ids)
                print(f"demo: jobs: {summary}", flush=True)
                last = statuses
            if args.exit_when_done and all(s in FINAL_STATUSES for s in statuses.values()) \
                    and len(statuses) == len(ids):
                print("demo: all example jobs finished")
                break
            time.sleep(0.5)
        return 0
    finally:
        if dashboard is not None and dashboard.poll() is None:
            dashboard.terminate()
            try:
                dashboard.wait(10)
            except subprocess.TimeoutExpired:
                dashboard.kill()
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGINT)  # finish running jobs
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
        current.reset()
        for server in reversed(servers):
            server.close()
        print("demo: stopped")


if __name__ == "__main__":
    sys.exit(main())
