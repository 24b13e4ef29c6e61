"""The systems under test and the configuration each one runs in.

Each peer runs from its own virtualenv in its idiomatic best configuration for one worker
process; mrq runs from the project's virtualenv. A system's app module in bench/peers defines
its tasks (all timed the same way, see peers/_timing.py) and its enqueue calls (peers/producer.py).
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parent / "peers"
QUEUE = "bench"


@dataclass(frozen=True)
class Mode:
    name: str
    concurrency: int  # jobs at once in workloads A, B (E, F); C always runs 50 where it can
    summary: str  # the configuration in one line, for the report
    #: Most jobs per run, by workload letter, for modes too slow for the full count (documented).
    caps: dict[str, int] = field(default_factory=dict)
    c_concurrency: int = 50
    results: str = ""  # where the no-op's return value goes, when it differs from the system's


class System:
    name = ""
    app = ""  # module in bench/peers
    requirements: tuple[str, ...] = ()  # pip requirements of the peer's venv (none: the project's venv)
    uses_mongo = False
    results = ""  # where the no-op's return value goes
    bulk = ""  # the bulk enqueue call
    stop_signal = signal.SIGINT  # graceful stop once every job ran
    modes: tuple[Mode, ...] = ()

    def __init__(self) -> None:
        self.python = Path(sys.executable)
        self.bin = self.python.parent

    def use_venv(self, python: Path) -> None:
        self.python = python
        self.bin = python.parent

    def mode(self, name: str) -> Mode:
        return next(m for m in self.modes if m.name == name)

    def not_run(self, mode: Mode) -> str | None:
        """Why this mode cannot run at all in this checkout (None: it can)."""
        return None

    def worker_argv(self, mode: Mode, concurrency: int, redis_url: str, processes: int = 0) -> list[str]:
        raise NotImplementedError

    def env(self, redis_url: str, mongodb_uri: str, times: Path, concurrency: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MRQ_", "BENCH_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        env.update({"PYTHONPATH": str(PEERS_DIR), "PYTHONUNBUFFERED": "1", "BENCH_REDIS_URL": redis_url,
                    "BENCH_TIMES": str(times), "BENCH_CONCURRENCY": str(concurrency)})
        return env

    def producer_argv(self, mode: Mode) -> list[str]:
        return [str(self.python), str(PEERS_DIR / "producer.py"), self.app, "--mode", mode.name]


class Mrq(System):
    name = "mrq"
    app = "mrq_app"
    uses_mongo = True
    results = "stored in MongoDB"
    bulk = "queue_jobs / queue_raw_jobs (1,000 per call)"
    modes = (
        Mode("regular", 50, "mrq-worker --greenlets 50, regular queue: job documents, statuses and results in MongoDB"),
        Mode("raw", 50, "mrq-worker --greenlets 50, raw queue `bench_raw` with statuses_no_storage (started, success)",
             results="not stored (statuses_no_storage)"),
    )

    def not_run(self, mode: Mode) -> str | None:
        if mode.name == "raw":
            import mrq.job

            if getattr(mrq.job, "queue_raw_jobs", None) is None:
                return "raw queues not implemented yet (mrq.job.queue_raw_jobs is missing)"
        return None

    def worker_argv(self, mode: Mode, concurrency: int, redis_url: str, processes: int = 0) -> list[str]:
        queue = "bench_raw" if mode.name == "raw" else QUEUE
        argv = [str(self.python), "-m", "mrq.cli.worker", "--greenlets", str(concurrency),
                "--config", str(PEERS_DIR / "mrq_config.py")]
        if processes:
            argv += ["--processes", str(processes)]
        return [*argv, queue]

    def env(self, redis_url: str, mongodb_uri: str, times: Path, concurrency: int) -> dict[str, str]:
        env = super().env(redis_url, mongodb_uri, times, concurrency)
        env.update({"MRQ_REDIS": redis_url, "MRQ_MONGODB_JOBS": mongodb_uri,
                    "MRQ_CONFIG": str(PEERS_DIR / "mrq_config.py")})
        return env


class Rq(System):
    name = "rq"
    app = "rq_app"
    requirements = ("rq==2.12.0", "hiredis==3.5.0")
    results = "stored in Redis (RQ default, result_ttl 500 s)"
    bulk = "Queue.enqueue_many (one pipeline per 1,000)"
    modes = (
        Mode("simple", 1, "rq worker -w rq.worker.SimpleWorker -q: runs each job in the worker process",
             caps={"C": 100}, c_concurrency=1),
        Mode("fork", 1, "rq worker -q (default Worker: forks a work horse per job)",
             caps={"A": 1_000, "C": 100}, c_concurrency=1),
    )

    def worker_argv(self, mode: Mode, concurrency: int, redis_url: str, processes: int = 0) -> list[str]:
        argv = [str(self.bin / "rq"), "worker", "-u", redis_url, "-q"]
        if mode.name == "simple":
            argv += ["-w", "rq.worker.SimpleWorker"]
        return [*argv, QUEUE]


class Celery(System):
    name = "celery"
    app = "celery_app"
    requirements = ("celery[redis]==5.7.0", "gevent==26.9.0", "hiredis==3.5.0")
    results = "not stored (Celery default: no result backend)"
    bulk = "group(...).apply_async()"
    stop_signal = signal.SIGTERM  # warm shutdown
    modes = (
        Mode("gevent", 50, "celery worker -P gevent -c 50 --without-gossip --without-mingle --without-heartbeat"),
        Mode("threads", 8, "celery worker -P threads -c 8 (C: -c 50), same flags"),
    )

    def worker_argv(self, mode: Mode, concurrency: int, redis_url: str, processes: int = 0) -> list[str]:
        return [str(self.bin / "celery"), "-A", "celery_app", "worker", "-P", mode.name, "-c", str(concurrency),
                "-Q", QUEUE, "-l", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]


class Dramatiq(System):
    name = "dramatiq"
    app = "dramatiq_app"
    requirements = ("dramatiq[redis]==2.2.1", "hiredis==3.5.0")
    results = "not stored (Dramatiq default: no Results middleware)"
    bulk = "group(...).run()"
    stop_signal = signal.SIGTERM
    modes = (Mode("threads", 8, "dramatiq --processes 1 --threads 8 (C: --threads 50), RedisBroker"),)

    def worker_argv(self, mode: Mode, concurrency: int, redis_url: str, processes: int = 0) -> list[str]:
        return [str(self.bin / "dramatiq"), "dramatiq_app", "--processes", "1", "--threads", str(concurrency),
                "--queues", QUEUE]


class Huey(System):
    name = "huey"
    app = "huey_app"
    requirements = ("huey==3.5.4", "redis==8.1.0", "gevent==26.9.0", "hiredis==3.5.0")
    results = "stored in Redis (Huey default)"
    bulk = "none: a loop of single calls"
    modes = (
        Mode("greenlet", 50, "huey_consumer -k greenlet -w 50 -q (gevent patched first), RedisHuey (blocking pop)"),
        Mode("thread", 8, "huey_consumer -k thread -w 8 (C: -w 50) -q, RedisHuey (blocking pop)"),
    )

    def worker_argv(self, mode: Mode, concurrency: int, redis_url: str, processes: int = 0) -> list[str]:
        if mode.name == "greenlet":
            start = [str(self.python), str(PEERS_DIR / "huey_gevent_consumer.py")]
        else:
            start = [str(self.bin / "huey_consumer")]
        return [*start, "huey_app.huey", "-k", mode.name, "-w", str(concurrency), "-q"]


class Arq(System):
    name = "arq"
    app = "arq_app"
    requirements = ("arq==0.28.0", "hiredis==3.5.0")
    results = "stored in Redis (arq default, 1 h)"
    bulk = "none: asyncio.gather of enqueue_job per 1,000"
    modes = (Mode("asyncio", 50, "arq worker, max_jobs 50, poll_delay 10 ms (default 0.5 s), logging at WARNING"),)

    def worker_argv(self, mode: Mode, concurrency: int, redis_url: str, processes: int = 0) -> list[str]:
        return [str(self.bin / "arq"), "arq_app.WorkerSettings", "--custom-log-dict", "arq_app.LOG_CONFIG"]


SYSTEMS: dict[str, type[System]] = {cls.name: cls for cls in (Mrq, Rq, Celery, Dramatiq, Huey, Arq)}
#: The peer of --quick: the fastest to install (no C extension to build, few dependencies).
QUICK_PEER = "huey"
