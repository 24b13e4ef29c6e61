"""Seeded fault schedules (mrq.testing.chaos): seeds 1 to 20 (CI plays the first 10, to stay within
its time budget; MRQ_FAULT_SEEDS=20 plays all), each with at least 3 faults and 200 jobs,
against real workers, redis-server and the Mongo test server. Each must lose nothing, leave
nothing stuck, run nothing twice without counting it, and never move a job back from a final
status. A failure prints the seed, the schedule, the replay command and the evidence.

The generator and the invariant checks are tested first, on their own (no servers): a harness
that cannot see a violation would make every schedule pass.
"""

from __future__ import annotations

import os

import pytest
from bson import ObjectId

from mrq.testing.chaos import Evidence, check, generate, run_schedule
from mrq.testing.chaos.report import failure_report, summary_line
from mrq.testing.chaos.schedule import FAULT_KINDS, MIN_FAULTS
from mrq.testing.pytest_plugin import PROJECT_ROOT

SEEDS = list(range(1, 21))  # the generator's checks look at all of them (cheap: no servers)
#: The seeds played against real servers (about 13 s each).
PLAYED = SEEDS[:int(os.environ.get("MRQ_FAULT_SEEDS", "10"))]


# --- the generator ---------------------------------------------------------------------------------


def test_a_seed_gives_one_schedule() -> None:
    assert generate(7) == generate(7)
    assert generate(7) != generate(8)
    assert generate(7, faults=4, jobs=300) == generate(7, faults=4, jobs=300)
    assert generate(7, faults=4).replay_command() == "python -m mrq.testing.chaos --seed 7 --faults 4"


def test_schedules_have_enough_faults_and_jobs_and_sometimes_overlap() -> None:
    schedules = [generate(seed) for seed in SEEDS]
    for schedule in schedules:
        assert len(schedule.faults) >= MIN_FAULTS and schedule.jobs >= 200
        assert all(f.at > 0 and f.end < schedule.window for f in schedule.faults)
        for i, first in enumerate(schedule.faults):  # never two faults on one resource at once
            for second in schedule.faults[i + 1:]:
                if first.resource == second.resource:
                    assert first.span()[1] <= second.at or second.span()[1] <= first.at
    assert sum(bool(s.overlaps()) for s in schedules) >= 5
    kinds = {f.kind for s in schedules for f in s.faults}
    assert kinds == set(FAULT_KINDS), set(FAULT_KINDS) - kinds


# --- the checks ---------------------------------------------------------------------------------


def _job(ev: Evidence, status: str, runs: int = 1, kind: str = "quick", expected: str = "success",
         **fields: object) -> str:
    job_id = str(ObjectId())
    ev.accepted[job_id] = (kind, expected, 1.0)
    ev.docs[job_id] = {"_id": job_id, "status": status, "queue": "chaos", **fields}
    ev.executions[job_id] = runs
    return job_id


def test_the_checks_see_each_kind_of_violation() -> None:
    ev = Evidence()
    _job(ev, "success")
    _job(ev, "success", runs=3, recoveries=1, retry_count=1)  # every run counted
    _job(ev, "success", runs=2, traceback_history=[{"status": "interrupt"}])  # SIGTERM requeue
    _job(ev, "failed", kind="failing", expected="failed")
    _job(ev, "failed", exceptiontype="PoisonJob", recoveries=4, runs=4)  # documented outcome
    lost = str(ObjectId())
    ev.accepted[lost] = ("quick", "success", 2.0)
    stuck = _job(ev, "started", worker="w1")
    waiting = _job(ev, "queued", runs=0)
    ev.in_redis[waiting] = ["chaos:ids"]  # late, but not stuck
    orphan = _job(ev, "queued", runs=0)
    ev.in_redis[orphan] = ["running set of dead worker w2"]
    twice = _job(ev, "success", runs=2)
    wrong = _job(ev, "success", kind="cpu_timeout", expected="timeout")
    back = _job(ev, "queued", runs=1)
    ev.in_redis[back] = ["chaos:ids"]
    ev.regressions.append((back, "success", "queued", 3.0))
    ev.raw_accepted.update({"ran": 0.5, "flushed": 1.0, "vanished": 6.0, "waiting": 6.0})
    ev.raw_executions["ran"] = 1
    ev.raw_waiting.add("waiting")
    ev.data_losses.append(2.0)

    verdict = check(ev)
    found = {(v.invariant, v.what, v.subject) for v in verdict.violations}
    assert found == {
        ("a", "lost", lost), ("a", "not final", stuck), ("b", "stuck", stuck), ("a", "not final", waiting),
        ("a", "not final", orphan), ("b", "stuck", orphan), ("c", "uncounted duplicate", twice),
        ("a", "wrong status", wrong), ("a", "not final", back), ("d", "final->non-final", back),
        ("e", "raw not taken", "waiting"), ("e", "raw lost", "vanished"),
    }
    assert verdict.figures["raw lost, allowed (Redis lost its data)"] == 1
    assert verdict.figures["uncounted duplicates"] == 1
    assert verdict.figures["poisoned (documented: died > max_recoveries times)"] == 1
    assert "NO DOCUMENT" in next(v.detail for v in verdict.violations if v.subject == lost)


def test_a_clean_run_passes_the_checks() -> None:
    ev = Evidence()
    for _ in range(5):
        _job(ev, "success")
    ev.raw_accepted["p"] = 0.1
    ev.raw_executions["p"] = 1
    assert check(ev).ok


# --- the schedules --------------------------------------------------------------------------------


@pytest.mark.fault_schedules
@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", PLAYED, ids=[f"seed{seed}" for seed in PLAYED])
def test_fault_schedule(seed: int) -> None:
    schedule = generate(seed)
    assert len(schedule.faults) >= 3 and schedule.jobs >= 200
    result = run_schedule(schedule, PROJECT_ROOT)
    print(summary_line(result))
    assert result.ok, failure_report(result)
