"""Fault schedules generated from a seed: which faults strike when, and which jobs are queued when.

Guarantees:
- `generate(seed, faults, jobs)` is a pure function of its arguments: one `random.Random(seed)`,
  drawn in a fixed order. The same arguments give the same schedule on any machine, so a failing
  seed replays the same faults at the same times (seconds after the run starts) with the same
  jobs. The OS still decides the interleavings in between (which job a kill catches): a replay
  re-creates the conditions, not every instruction.
- Every schedule has at least `MIN_FAULTS` faults (unless fewer are asked for) and at least
  `jobs` jobs, all inside the run window; no two faults on one resource overlap (a frozen Redis
  is not also restarted; one proxy is in one mode at a time), while faults on different
  resources may, and about half of the schedules force an overlap of two faults.
- Faults on worker processes name a slot (`plain0`, `plain1`, the `--processes 2` parent
  `supervisor`, or its `child0`/`child1`, by age), never a pid: the runner resolves the slot
  when the fault strikes.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Seconds during which faults strike and jobs are queued; then everything is healed.
WINDOW = 7.0
#: Jobs are queued during the first part of the window, faults strike after FIRST_FAULT.
ENQUEUE_END = 0.8 * WINDOW
FIRST_FAULT = 0.4
MIN_FAULTS = 3
DEFAULT_JOBS = 250

QUEUE = "chaos"
RAW_QUEUE = "chaos_raw"
TASKS_MODULE = "tests.tasks.chaos"

WORKER_TARGETS = ("plain0", "plain1", "supervisor", "child0", "child1")
WORKER_FAULTS = ("kill9", "sigterm", "sigint")


@dataclass(frozen=True)
class FaultKind:
    name: str
    resource: str  # what it takes over while it lasts ("" for worker signals: the target is the resource)
    durations: tuple[float, float]  # (0, 0): instant
    weight: float
    help: str


FAULT_KINDS: dict[str, FaultKind] = {k.name: k for k in (
    FaultKind("kill9", "", (0, 0), 3, "SIGKILL a worker process (a crash)"),
    FaultKind("sigterm", "", (0, 0), 1.5, "SIGTERM a worker: interrupt its jobs, requeue them, exit"),
    FaultKind("sigint", "", (0, 0), 1.5, "SIGINT a worker: finish its jobs, take no new ones, exit"),
    FaultKind("redis_freeze", "redis-server", (1.0, 3.0), 1, "SIGSTOP redis-server, SIGCONT after the duration"),
    FaultKind("redis_restart", "redis-server", (0.3, 1.5), 1, "kill -9 redis-server, start it empty later"),
    FaultKind("redis_flushall", "redis-server", (0, 0), 1, "FLUSHALL: Redis loses every key at once"),
    FaultKind("redis_partition", "redis-proxy", (1.0, 3.0), 0.5, "workers' Redis connections blackholed"),
    FaultKind("redis_refuse", "redis-proxy", (0.5, 2.0), 0.5, "workers' Redis connections refused and reset"),
    FaultKind("mongo_freeze", "mongo-server", (1.0, 3.0), 1, "SIGSTOP the MongoDB server, SIGCONT after the duration"),
    FaultKind("mongo_partition", "mongo-proxy", (1.0, 3.0), 1.5, "workers' MongoDB connections blackholed"),
    FaultKind("mongo_refuse", "mongo-proxy", (0.5, 2.0), 1, "workers' MongoDB connections refused and reset"),
    FaultKind("latency", "", (1.0, 3.0), 1, "each chunk through a proxy (Redis or MongoDB) delayed"),
)}


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the start of the run
    kind: str
    duration: float = 0.0  # 0: instant (a signal, a FLUSHALL)
    target: str = ""  # worker slot of a signal; "redis" or "mongo" for latency
    amount: float = 0.0  # latency seconds

    @property
    def end(self) -> float:
        return self.at + self.duration

    @property
    def resource(self) -> str:
        if self.kind in WORKER_FAULTS:
            return f"worker:{self.target}"
        if self.kind == "latency":
            return f"{self.target}-proxy"
        return FAULT_KINDS[self.kind].resource

    def span(self) -> tuple[float, float]:
        """The time the fault holds its resource (an instant fault holds it for a moment)."""
        return self.at, self.at + max(self.duration, 0.3)

    def describe(self) -> str:
        when = f"t={self.at:.2f}s" if not self.duration else f"t={self.at:.2f}-{self.end:.2f}s"
        what = self.kind + (f" {self.target}" if self.target else "")
        if self.kind == "latency":
            what += f" +{self.amount * 1000:.0f}ms"
        return f"{when} {what}"


@dataclass(frozen=True)
class JobKind:
    name: str
    path: str  # "" for raw params
    expected: str  # the final status the job is designed to end in
    weight: float
    count: tuple[int, int]  # jobs per batch


JOB_KINDS: dict[str, JobKind] = {k.name: k for k in (
    JobKind("quick", f"{TASKS_MODULE}.Quick", "success", 55, (5, 15)),
    JobKind("raw", "", "success", 15, (5, 12)),
    JobKind("raw_long", "", "success", 4, (1, 2)),  # raw params made into Long jobs by the factory
    JobKind("retrying", f"{TASKS_MODULE}.Retrying", "success", 8, (1, 3)),
    JobKind("long", f"{TASKS_MODULE}.Long", "success", 7, (1, 2)),
    JobKind("cpu", f"{TASKS_MODULE}.Cpu", "success", 7, (1, 1)),
    JobKind("failing", f"{TASKS_MODULE}.Failing", "failed", 3, (1, 1)),
    JobKind("cpu_timeout", f"{TASKS_MODULE}.CpuOverTimeout", "timeout", 0, (1, 1)),  # added on its own below
)}
#: The TASKS timeout of CpuOverTimeout; its jobs spin CPU_TIMEOUT_SPIN seconds, never yielding.
CPU_TIMEOUT = 0.3
CPU_TIMEOUT_SPIN = 1.0
#: Share of schedules that include one CpuOverTimeout job.
CPU_TIMEOUT_SHARE = 0.3


@dataclass(frozen=True)
class Batch:
    at: float  # seconds after the start of the run
    kind: str
    params: tuple[Mapping[str, Any], ...] = ()  # regular jobs
    raw: tuple[str, ...] = ()  # raw params (unique in the schedule)

    @property
    def is_raw(self) -> bool:
        return self.kind.startswith("raw")

    @property
    def size(self) -> int:
        return len(self.raw) if self.is_raw else len(self.params)


@dataclass(frozen=True)
class Schedule:
    seed: int
    faults: tuple[Fault, ...]
    batches: tuple[Batch, ...]
    window: float = WINDOW
    requested: dict[str, int] = field(default_factory=dict)  # --faults/--jobs as given (for the replay)

    @property
    def jobs(self) -> int:
        return sum(b.size for b in self.batches)

    def jobs_by_kind(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for batch in self.batches:
            counts[batch.kind] += batch.size
        return counts

    def faults_by_kind(self) -> Counter[str]:
        return Counter(f.kind for f in self.faults)

    def overlaps(self) -> list[tuple[Fault, Fault]]:
        """Pairs of faults in effect at the same time."""
        pairs = []
        for i, first in enumerate(self.faults):
            for second in self.faults[i + 1:]:
                if second.at < first.span()[1] and first.at < second.span()[1]:
                    pairs.append((first, second))
        return pairs

    def replay_command(self) -> str:
        extra = "".join(f" --{name} {value}" for name, value in sorted(self.requested.items()))
        return f"python -m mrq.testing.chaos --seed {self.seed}{extra}"

    def describe(self) -> str:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.jobs_by_kind().items()))
        lines = [f"seed {self.seed}: {len(self.faults)} faults, {self.jobs} jobs ({kinds}), "
                 f"window {self.window:g}s, {len(self.overlaps())} overlapping pairs"]
        lines += [f"  {fault.describe()}" for fault in self.faults]
        return "\n".join(lines)


def _conflicts(fault: Fault, placed: list[Fault]) -> bool:
    start, end = fault.span()
    for other in placed:
        if other.resource == fault.resource:
            other_start, other_end = other.span()
            if start < other_end + 0.2 and other_start < end + 0.2:
                return True
    return False


def _draw_fault(rng: random.Random, window: float, overlap_with: Fault | None) -> Fault:
    names = list(FAULT_KINDS)
    kind = FAULT_KINDS[rng.choices(names, weights=[FAULT_KINDS[n].weight for n in names])[0]]
    duration = round(rng.uniform(*kind.durations), 2) if kind.durations[1] else 0.0
    target, amount = "", 0.0
    if kind.name in WORKER_FAULTS:
        target = rng.choice(WORKER_TARGETS)
    elif kind.name == "latency":
        target = rng.choice(("redis", "mongo"))
        amount = round(rng.uniform(0.02, 0.15), 3)
    latest = window - duration - 0.3
    if overlap_with is not None:
        low, high = overlap_with.at, min(overlap_with.span()[1] - 0.1, latest)
    else:
        low, high = FIRST_FAULT, latest
    at = round(rng.uniform(low, max(low, high)), 2)
    return Fault(at, kind.name, duration, target, amount)


def _draw_faults(rng: random.Random, count: int, window: float) -> list[Fault]:
    force_overlap = rng.random() < 0.5
    placed: list[Fault] = []
    for index in range(count):
        for _attempt in range(200):
            anchor = None
            if force_overlap and index == 1:
                anchor = max(placed, key=lambda f: f.duration)
            fault = _draw_fault(rng, window, anchor)
            if not _conflicts(fault, placed):
                placed.append(fault)
                break
        else:
            raise ValueError(f"cannot place {count} faults in a {window:g}s window without two on one resource "
                             "at once: ask for fewer faults")
    return sorted(placed, key=lambda f: (f.at, f.kind, f.target))


def _job_params(rng: random.Random, kind: str) -> dict[str, Any]:
    if kind == "quick":
        return {"seconds": round(rng.uniform(0, 0.05), 3)}
    if kind == "retrying":
        return {"retries": rng.randint(1, 3), "delay": round(rng.uniform(0.1, 0.5), 2)}
    if kind == "long":
        return {"seconds": round(rng.uniform(2.0, 4.0), 2)}
    if kind == "cpu":
        return {"seconds": round(rng.uniform(0.2, 0.6), 2)}
    if kind == "cpu_timeout":
        return {"seconds": CPU_TIMEOUT_SPIN}
    return {}


def _draw_batches(rng: random.Random, seed: int, jobs: int) -> list[Batch]:
    names = [name for name, kind in JOB_KINDS.items() if kind.weight]
    drafts: list[tuple[str, list[dict[str, Any]], list[str]]] = []
    total = 0
    if rng.random() < CPU_TIMEOUT_SHARE:
        drafts.append(("cpu_timeout", [_job_params(rng, "cpu_timeout")], []))
        total += 1
    while total < jobs:
        name = rng.choices(names, weights=[JOB_KINDS[n].weight for n in names])[0]
        count = min(rng.randint(*JOB_KINDS[name].count), max(1, jobs - total))
        if name == "raw":
            drafts.append((name, [], [f"s{seed}-b{len(drafts)}-{i}" for i in range(count)]))
        elif name == "raw_long":  # the factory reads the seconds after '~'
            drafts.append((name, [], [f"s{seed}-b{len(drafts)}-{i}~{rng.uniform(2.0, 4.0):.2f}"
                                      for i in range(count)]))
        else:
            drafts.append((name, [_job_params(rng, name) for _ in range(count)], []))
        total += count
    rng.shuffle(drafts)
    times = sorted(round(rng.uniform(0.0, ENQUEUE_END), 2) for _ in drafts)
    return [Batch(at, name, tuple(params), tuple(raw)) for at, (name, params, raw) in zip(times, drafts, strict=True)]


def generate(seed: int, faults: int | None = None, jobs: int | None = None, window: float = WINDOW) -> Schedule:
    """The schedule of a seed: `faults` faults (default: 3 to 5, from the seed) and at least `jobs`
    jobs (default DEFAULT_JOBS)."""
    if faults is not None and faults < 1:
        raise ValueError("a schedule needs at least one fault")
    if jobs is not None and jobs < 1:
        raise ValueError("a schedule needs at least one job")
    rng = random.Random(seed)
    count = faults if faults is not None else rng.randint(MIN_FAULTS, MIN_FAULTS + 2)
    drawn = _draw_faults(rng, count, window)
    batches = _draw_batches(rng, seed, jobs if jobs is not None else DEFAULT_JOBS)
    requested = {name: value for name, value in (("faults", faults), ("jobs", jobs)) if value is not None}
    return Schedule(seed, tuple(drawn), tuple(batches), window, requested)
