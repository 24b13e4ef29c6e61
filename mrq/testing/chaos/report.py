"""What a fault-schedule run prints: one line per schedule, the full report of a failure (seed,
schedule, replay command, what happened, violations with their evidence), and the figures of a
soak. Pure formatting: nothing here runs or checks anything.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .runner import RunResult

PYTEST_REPLAY = "pytest 'tests/test_fault_schedules.py::test_fault_schedule[seed{seed}]'"


def summary_line(result: RunResult) -> str:
    schedule, verdict = result.schedule, result.verdict
    recovery = result.timings.get("recovery")
    recovered = f"{recovery:.1f}s" if recovery is not None else "NONE"
    state = "ok" if result.ok else "FAILED " + ", ".join(
        f"{what} x{n}" for what, n in sorted(verdict.by_invariant().items()))
    return (f"seed {schedule.seed}: {state}; {schedule.jobs} jobs, {len(schedule.faults)} faults, "
            f"recovery {recovered} (bound {result.bound:g}s), "
            f"{result.timings.get('total', 0):.1f}s")


def failure_report(result: RunResult) -> str:
    schedule, verdict, ev = result.schedule, result.verdict, result.evidence
    lines = [
        f"fault schedule seed {schedule.seed} FAILED: "
        + ", ".join(f"{what} x{n}" for what, n in sorted(verdict.by_invariant().items())),
        f"replay: {schedule.replay_command()}   (from the project root; or {PYTEST_REPLAY.format(seed=schedule.seed)})",
        "schedule:",
        *("  " + line for line in schedule.describe().splitlines()),
        "what happened (seconds after the workers were ready):",
        *(f"  {at:6.2f} {text}" for at, text in ev.actions),
        "figures: " + ", ".join(f"{k} {v}" for k, v in sorted(result.verdict.figures.items())),
        "violations (with each job's document, executions, sampled statuses and where Redis holds it):",
        *("  " + line for line in verdict.describe().splitlines()),
    ]
    if verdict.notes:
        lines.append("notes (not failures):")
        lines += ["  " + note for note in verdict.notes[:10]]
    lines.append(f"worker and server logs: {result.rundir}" if result.kept else "logs removed")
    return "\n".join(lines)


@dataclass
class SoakFigures:
    """Totals over consecutive schedules."""

    schedules: int = 0
    jobs: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    figures: Counter[str] = field(default_factory=Counter)
    failures: list[RunResult] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)  # harness errors: (seed, message)
    seconds: float = 0.0

    def add(self, result: RunResult) -> None:
        self.schedules += 1
        self.jobs += result.schedule.jobs
        self.faults.update(result.schedule.faults_by_kind())
        self.figures.update(result.verdict.figures)
        self.seconds += result.timings.get("total", 0.0)
        if not result.ok:
            self.failures.append(result)

    def describe(self) -> str:
        outcomes = {k[len("outcome "):]: v for k, v in self.figures.items() if k.startswith("outcome ")}
        other = {k: v for k, v in self.figures.items() if not k.startswith("outcome ")}
        lines = [
            f"schedules: {self.schedules} ({self.seconds:.0f}s), failed: {len(self.failures)}, "
            f"harness errors: {len(self.errors)}",
            "faults by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())),
            f"jobs: {self.jobs}",
            "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())),
            "duplicates: " + ", ".join(f"{k} {v}" for k, v in sorted(other.items())
                                       if "execution" in k or "duplicate" in k),
            "raw and enqueue: " + ", ".join(f"{k} {v}" for k, v in sorted(other.items())
                                            if k.startswith(("raw", "enqueue", "orphan", "poisoned"))),
        ]
        if self.failures:
            lines.append("failures:")
            for result in self.failures:
                lines.append(f"  {summary_line(result)}")
                lines.append(f"    replay: {result.schedule.replay_command()}")
        for seed, message in self.errors:
            lines.append(f"  seed {seed}: harness error: {message}")
        return "\n".join(lines)
