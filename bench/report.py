"""Turn the raw runs into figures (median, min, max over repetitions), check the issue's targets
against the best peer of the same run, and write report.md, raw.json, PNG charts and latest.json."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: (run kind, figure) -> (workload, metric) of latest.json. E and F come from the A runs.
ROWS: list[tuple[str, str, str, str]] = [
    ("A", "jobs_per_s", "A", "jobs_per_s"),
    ("B", "p50_ms", "B", "p50_ms"),
    ("B", "p99_ms", "B", "p99_ms"),
    ("C", "jobs_per_s", "C", "jobs_per_s"),
    ("D", "single_jobs_per_s", "D-single", "enqueue_jobs_per_s"),
    ("D", "bulk_jobs_per_s", "D-bulk", "enqueue_jobs_per_s"),
    ("D", "single_cpu_us", "D-single", "client_cpu_us_per_call"),
    ("A", "enqueue_redis_cmds_per_job", "E-enqueue", "redis_cmds_per_job"),
    ("A", "enqueue_mongo_cmds_per_job", "E-enqueue", "mongo_cmds_per_job"),
    ("A", "execute_redis_cmds_per_job", "E-execute", "redis_cmds_per_job"),
    ("A", "execute_mongo_cmds_per_job", "E-execute", "mongo_cmds_per_job"),
    ("A", "rss_mb", "F", "rss_mb"),
    ("A", "redis_bytes_per_job", "F", "redis_bytes_per_job"),
    ("A", "mongo_bytes_per_job", "F", "mongo_bytes_per_job"),
    ("G2", "jobs_per_s", "G-2proc", "jobs_per_s"),
    ("G100k", "jobs_per_s", "G-100k", "jobs_per_s"),
]
#: Figures shown in the report and kept in raw.json, not in latest.json.
EXTRA: list[tuple[str, str, str, str]] = [
    ("A", "enqueue_redis_roundtrips_per_job", "E-enqueue", "redis_roundtrips_per_job"),
    ("A", "execute_redis_roundtrips_per_job", "E-execute", "redis_roundtrips_per_job"),
    ("A", "worker_cpu_s_per_1000", "A", "worker_cpu_s_per_1000_jobs"),
    ("A", "redis_cpu_s_per_1000", "A", "redis_cpu_s_per_1000_jobs"),
    ("A", "mongo_cpu_s_per_1000", "A", "mongo_cpu_s_per_1000_jobs"),
    ("B", "max_ms", "B", "max_ms"),
]
WORKLOAD_OF_ROW = {"E-enqueue": "E", "E-execute": "E", "D-single": "D", "D-bulk": "D", "G-2proc": "G",
                   "G-100k": "G"}
LOWER_IS_BETTER = {"p50_ms", "p99_ms", "max_ms", "redis_cmds_per_job", "mongo_cmds_per_job", "rss_mb",
                   "client_cpu_us_per_call", "redis_bytes_per_job", "mongo_bytes_per_job", "redis_roundtrips_per_job"}
UNITS = {"jobs_per_s": "jobs/s", "p50_ms": "p50 ms", "p99_ms": "p99 ms", "max_ms": "max ms",
         "enqueue_jobs_per_s": "jobs/s", "client_cpu_us_per_call": "client CPU µs/call",
         "redis_cmds_per_job": "Redis cmds/job",
         "redis_roundtrips_per_job": "Redis round trips/job", "mongo_cmds_per_job": "MongoDB cmds/job",
         "rss_mb": "worker RSS MB", "redis_bytes_per_job": "Redis bytes/queued job",
         "mongo_bytes_per_job": "MongoDB bytes/finished job", "worker_cpu_s_per_1000_jobs": "worker CPU s/1000 jobs",
         "redis_cpu_s_per_1000_jobs": "redis-server CPU s/1000 jobs",
         "mongo_cpu_s_per_1000_jobs": "MongoDB server CPU s/1000 jobs"}


@dataclass
class Figure:
    system: str
    mode: str
    workload: str
    metric: str
    values: list[float]

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    def row(self) -> dict[str, Any]:
        return {"system": self.system, "mode": self.mode, "workload": self.workload, "metric": self.metric,
                "median": round(self.median, 4), "min": round(min(self.values), 4),
                "max": round(max(self.values), 4), "runs": len(self.values)}


def aggregate(runs: list[dict[str, Any]], workloads: set[str], table: list[tuple[str, str, str, str]] = ROWS,
              ) -> list[Figure]:
    values: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    for run in runs:
        if not run.get("ok"):
            continue
        for kind, figure, workload, metric in table:
            if run["kind"] != kind or WORKLOAD_OF_ROW.get(workload, workload) not in workloads:
                continue
            value = run["figures"].get(figure)
            if isinstance(value, (int, float)) and not math.isnan(value):
                values[run["system"], run["mode"], workload, metric].append(float(value))
    return [Figure(s, m, w, metric, v) for (s, m, w, metric), v in values.items()]


def lookup(figures: list[Figure], system: str, mode: str, workload: str, metric: str) -> Figure | None:
    for figure in figures:
        if (figure.system, figure.mode, figure.workload, figure.metric) == (system, mode, workload, metric):
            return figure
    return None


def best_peer(figures: list[Figure], workload: str, metric: str) -> Figure | None:
    peers = [f for f in figures if f.system != "mrq" and f.workload == workload and f.metric == metric]
    if not peers:
        return None
    return (min if metric in LOWER_IS_BETTER else max)(peers, key=lambda f: f.median)


# --- targets ----------------------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    mode: str
    value: float | None
    reference: str  # what the value is compared with
    ratio: float | None  # value / reference value
    required: str
    passed: bool | None  # None: not measured
    note: str = ""

    @property
    def status(self) -> str:
        return "NOT RUN" if self.passed is None else ("PASS" if self.passed else "MISS")


class Judge:
    """Checks mrq's figures of one run against limits, peers, or its own other figures."""

    def __init__(self, figures: list[Figure], not_run: dict[tuple[str, str, str], str]) -> None:
        self.figures = figures
        self.not_run = not_run
        self.targets: list[Target] = []

    def mrq(self, workload: str, metric: str, mode: str) -> Figure | None:
        return lookup(self.figures, "mrq", mode, workload, metric)

    def missing(self, name: str, mode: str, required: str, workload: str) -> None:
        reason = self.not_run.get(("mrq", mode, WORKLOAD_OF_ROW.get(workload, workload))) or "no figure"
        self.targets.append(Target(name, mode, None, "", None, required, None, reason))

    def versus_peer(self, name: str, mode: str, workload: str, metric: str, factor: float,
                    peer: str | None = None) -> None:
        """`factor` times the best peer's figure (of `peer` only, when given: any of its modes)."""
        who = peer or "best peer"
        required = f">= {factor:g}x {who}" if metric not in LOWER_IS_BETTER else f"<= {factor:g}x {who}"
        own = self.mrq(workload, metric, mode)
        pool = [f for f in self.figures if peer is None or f.system == peer]
        best = best_peer(pool, workload, metric)
        if own is None:
            self.missing(name, mode, required, workload)
            return
        if best is None:
            self.targets.append(Target(name, mode, own.median, f"no {who} ran", None, required, None,
                                       f"no {who} figure"))
            return
        ratio = own.median / best.median if best.median else math.inf
        passed = ratio <= factor if metric in LOWER_IS_BETTER else ratio >= factor
        note = "" if passed else shortfall(ratio, factor, metric in LOWER_IS_BETTER)
        self.targets.append(Target(name, mode, own.median, f"{best.system}/{best.mode} {fmt(best.median)}", ratio,
                                   required, passed, note))

    def versus_value(self, name: str, mode: str, workload: str, metric: str, limit: float, below: bool,
                     strict: bool = False) -> None:
        required = f"{'<' if strict else '<='} {limit:g}" if below else f">= {limit:g}"
        own = self.mrq(workload, metric, mode)
        if own is None:
            self.missing(name, mode, required, workload)
            return
        ratio = own.median / limit
        passed = (own.median < limit if strict else own.median <= limit) if below else own.median >= limit
        note = ""
        if not passed:
            note = (f"{(ratio - 1) * 100:.0f}% over the limit of {limit:g}" if below else
                    f"{(1 - ratio) * 100:.0f}% short of {limit:g} (+{(1 / ratio - 1) * 100:.0f}% to go)")
        self.targets.append(Target(name, mode, own.median, fmt(limit), ratio, required, passed, note))

    def versus_own(self, name: str, mode: str, workload: str, base_workload: str, factor: float) -> None:
        required = f">= {factor:g}x mrq {base_workload}"
        own, base = self.mrq(workload, "jobs_per_s", mode), self.mrq(base_workload, "jobs_per_s", mode)
        if own is None:
            self.missing(name, mode, required, workload)
            return
        if base is None:
            self.targets.append(Target(name, mode, own.median, f"no {base_workload} figure", None, required, None,
                                       f"needs {base_workload} too"))
            return
        ratio = own.median / base.median
        passed = ratio >= factor
        self.targets.append(Target(name, mode, own.median, f"mrq/{mode} {base_workload} {fmt(base.median)}", ratio,
                                   required, passed, "" if passed else shortfall(ratio, factor, False)))


def evaluate_targets(figures: list[Figure], workloads: set[str], not_run: dict[tuple[str, str, str], str],
                     c_ceiling: float) -> list[Target]:
    """The first benchmark issue's targets."""
    judge = Judge(figures, not_run)
    if "A" in workloads:
        judge.versus_peer("A throughput, raw queue without storage", "raw", "A", "jobs_per_s", 2.0)
        judge.versus_peer("A throughput, regular queue, results in MongoDB", "regular", "A", "jobs_per_s", 1.0)
    for mode in ("regular", "raw"):
        if "B" in workloads:
            judge.versus_peer("B pickup latency p50", mode, "B", "p50_ms", 1.0)
            judge.versus_value("B pickup latency p99", mode, "B", "p99_ms", 2.0, below=True, strict=True)
        if "C" in workloads:
            judge.versus_value("C IO-bound, share of the 1,000 jobs/s ceiling", mode, "C", "jobs_per_s",
                               0.9 * c_ceiling, below=False)
    if "D" in workloads:
        judge.versus_peer("D bulk enqueue, raw queue", "raw", "D-bulk", "enqueue_jobs_per_s", 2.0)
        judge.versus_value("D bulk enqueue, regular queue", "regular", "D-bulk", "enqueue_jobs_per_s", 10_000,
                           below=False)
    if "E" in workloads:
        for mode in ("regular", "raw"):
            for phase in ("execute", "enqueue"):
                judge.versus_value(f"E Redis commands per job ({phase})", mode, f"E-{phase}", "redis_cmds_per_job",
                                   2.0, below=True)
                judge.versus_value(f"E MongoDB commands per job ({phase})", mode, f"E-{phase}",
                                   "mongo_cmds_per_job", 1.0, below=True)
    if "G" in workloads:
        for mode in ("regular", "raw"):
            judge.versus_own("G 2 processes vs 1 (same jobs queued)", mode, "G-2proc", "G-100k", 1.7)
            judge.versus_own("G rate with 10x more jobs queued vs A", mode, "G-100k", "A", 0.9)
    return judge.targets


def evaluate_round2_targets(figures: list[Figure], workloads: set[str], not_run: dict[tuple[str, str, str], str],
                            c_ceiling: float) -> list[Target]:
    """Issue #12's targets (performance, round 2), as ratios inside the same run."""
    judge = Judge(figures, not_run)
    if "A" in workloads:
        judge.versus_peer("A throughput, regular queue", "regular", "A", "jobs_per_s", 1.5)
        judge.versus_peer("A throughput, raw queue", "raw", "A", "jobs_per_s", 6.0)
    if "B" in workloads:
        judge.versus_peer("B pickup latency p50, regular queue", "regular", "B", "p50_ms", 1.2)
        judge.versus_peer("B pickup latency p99, regular queue", "regular", "B", "p99_ms", 1.5)
        judge.versus_peer("B pickup latency p50, raw queue", "raw", "B", "p50_ms", 1.0)
    if "C" in workloads:
        for mode in ("regular", "raw"):
            judge.versus_value("C IO-bound, share of the ceiling", mode, "C", "jobs_per_s", 0.95 * c_ceiling,
                               below=False)
    if "D" in workloads:
        judge.versus_peer("D single queue_job calls", "regular", "D-single", "enqueue_jobs_per_s", 1.0, peer="rq")
        judge.versus_value("D client CPU per single call (µs)", "regular", "D-single", "client_cpu_us_per_call",
                           150, below=True)
    if "G" in workloads:
        judge.versus_own("G 2 processes vs 1, raw queue", "raw", "G-2proc", "G-100k", 1.7)
    return judge.targets


def shortfall(ratio: float, wanted: float, lower_is_better: bool) -> str:
    if lower_is_better:
        return f"{(ratio / wanted - 1) * 100:.0f}% too high (ratio {ratio:.2f}, needs <= {wanted:g})"
    to_go = (wanted / ratio - 1) * 100 if ratio else math.inf
    return f"{(1 - ratio / wanted) * 100:.0f}% short (ratio {ratio:.2f}, needs >= {wanted:g}; +{to_go:.0f}% to go)"


def fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def cell(figure: Figure | None) -> str:
    if figure is None:
        return "-"
    if len(figure.values) == 1:
        return fmt(figure.median)
    return f"{fmt(figure.median)} [{fmt(min(figure.values))}-{fmt(max(figure.values))}]"


# --- charts -------------------------------------------------------------------------------------------

CHARTS = [
    ("A", "throughput.png", "A. No-op throughput, one worker process", [("A", "jobs_per_s")]),
    ("B", "latency.png", "B. Pickup latency on an idle worker (ms)", [("B", "p50_ms"), ("B", "p99_ms")]),
    ("C", "io_bound.png", "C. IO-bound jobs (50 ms sleeps), jobs/s", [("C", "jobs_per_s")]),
    ("D", "enqueue.png", "D. Enqueue rate, jobs/s", [("D-single", "enqueue_jobs_per_s"),
                                                      ("D-bulk", "enqueue_jobs_per_s")]),
    ("E", "overhead.png", "E. Commands per job while the worker runs",
     [("E-execute", "redis_cmds_per_job"), ("E-execute", "mongo_cmds_per_job")]),
    ("F", "memory.png", "F. Worker RSS (MB) after the A run", [("F", "rss_mb")]),
    ("G", "scale.png", "G. mrq scale, jobs/s", [("A", "jobs_per_s"), ("G-100k", "jobs_per_s"),
                                                 ("G-2proc", "jobs_per_s")]),
]


def draw_charts(folder: Path, figures: list[Figure], workloads: set[str]) -> tuple[list[str], str]:
    """PNG bar charts (median, min-max error bars). Returns the file names and a note."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "charts not drawn: matplotlib is not installed (pip install -e '.[bench]')"
    drawn = []
    for workload, name, title, series in CHARTS:
        if workload not in workloads:
            continue
        labels = sorted({(f.system, f.mode) for f in figures if (f.workload, f.metric) in series},
                        key=lambda sm: (sm[0] != "mrq", sm))
        if workload == "G":
            labels = [sm for sm in labels if sm[0] == "mrq"]
        if not labels:
            continue
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(labels) + 2), 4.2))
        width = 0.8 / len(series)
        for index, (wl, metric) in enumerate(series):
            medians, low, high = [], [], []
            for system, mode in labels:
                figure = lookup(figures, system, mode, wl, metric)
                value = figure.median if figure else 0.0
                medians.append(value)
                low.append(value - min(figure.values) if figure else 0.0)
                high.append(max(figure.values) - value if figure else 0.0)
            xs = [i + (index - (len(series) - 1) / 2) * width for i in range(len(labels))]
            bars = ax.bar(xs, medians, width, yerr=[low, high], capsize=3, label=f"{wl} {UNITS.get(metric, metric)}")
            for bar, (system, _) in zip(bars, labels, strict=True):
                if system == "mrq":
                    bar.set_edgecolor("black")
                    bar.set_linewidth(1.2)
        values = [f.median for f in figures if (f.workload, f.metric) in series and f.median > 0]
        if values and max(values) / min(values) > 50:
            ax.set_yscale("log")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels([f"{s}\n{m}" for s, m in labels], fontsize=8)
        ax.set_title(title)
        if len(series) > 1:
            ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
        plt.close(fig)
        drawn.append(name)
    return drawn, ""


# --- writing ------------------------------------------------------------------------------------------

def latest_json(machine: dict[str, Any], figures: list[Figure]) -> dict[str, Any]:
    order = {(kind, workload, metric): i for i, (kind, _, workload, metric) in enumerate(ROWS)}
    rows = sorted((f.row() for f in figures),
                  key=lambda r: (min(v for (k, w, m), v in order.items() if w == r["workload"] and m == r["metric"]),
                                 r["system"] != "mrq", r["system"], r["mode"]))
    return {"machine": machine, "results": rows}


def write_all(out: Path, day_folder: Path, machine: dict[str, Any], runs: list[dict[str, Any]],
              not_run: dict[tuple[str, str, str], str], configs: list[dict[str, Any]], workloads: set[str],
              c_ceiling: float, profile: list[dict[str, Any]] | dict[str, Any] | None) -> dict[str, Any]:
    day_folder.mkdir(parents=True, exist_ok=True)
    figures = aggregate(runs, workloads)
    extra = aggregate(runs, workloads, EXTRA)
    targets = evaluate_targets(figures, workloads, not_run, c_ceiling)
    round2 = evaluate_round2_targets(figures, workloads, not_run, c_ceiling)
    charts, chart_note = draw_charts(day_folder, figures, workloads)
    latest = latest_json(machine, figures)
    raw = {"machine": machine, "runs": runs, "configurations": configs,
           "not_run": [{"system": s, "mode": m, "workload": w, "reason": r} for (s, m, w), r in not_run.items()],
           "figures": [f.row() | {"values": f.values} for f in figures + extra],
           "targets": [t.__dict__ | {"status": t.status} for t in targets],
           "round2_targets": [t.__dict__ | {"status": t.status} for t in round2], "profile": profile}
    (day_folder / "raw.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
    (day_folder / "report.md").write_text(markdown(machine, figures, extra, targets, not_run, configs, workloads,
                                                   charts, chart_note, profile, round2))
    text = json.dumps(latest, indent=1) + "\n"
    (day_folder / "latest.json").write_text(text)
    (out / "latest.json").write_text(text)
    return {"targets": targets, "round2_targets": round2, "figures": figures}


def target_table(targets: list[Target]) -> list[str]:
    lines = ["| target | mrq mode | mrq | compared with | ratio | required | result |",
             "|---|---|---|---|---|---|---|"]
    for t in targets:
        result = t.status + (f": {t.note}" if t.note else "")
        ratio = "-" if t.ratio is None else f"{t.ratio:.2f}"
        lines.append(f"| {t.name} | {t.mode} | {fmt(t.value)} | {t.reference or '-'} | {ratio} | {t.required} | "
                     f"{result} |")
    return [*lines, ""]


def markdown(machine: dict[str, Any], figures: list[Figure], extra: list[Figure], targets: list[Target],
             not_run: dict[tuple[str, str, str], str], configs: list[dict[str, Any]], workloads: set[str],
             charts: list[str], chart_note: str, profile: list[dict[str, Any]] | dict[str, Any] | None,
             round2: list[Target] | None = None) -> str:
    from .workloads import WORKLOAD_TITLES

    lines = [f"# mrq benchmark, {machine['date']}", ""]
    source = machine.get("mrq_source") or {}
    lines += [f"Command: `{machine['command']}` ({machine['repeat']} repetition(s) of every workload, systems "
              f"alternating within each repetition; {machine['runtime_s'] / 60:.1f} min in all).", ""]
    lines += [f"Machine: {machine['cpu']} ({machine['cores']} cores), {machine['memory_gb']:.0f} GB, "
              f"{machine['os']}, Python {machine['python']}; Redis {machine['redis']} (private, no persistence, "
              f"loopback); {machine['mongodb']}. mrq {machine['mrq_version']} at {machine['git']}"
              f"{', sources ' + source['end'] if source else ''}.", ""]
    if source and source.get("start") != source.get("end"):
        lines += [f"**mrq's sources changed during this run** (digest {source.get('start')} at the start, "
                  f"{source.get('end')} at the end): figures of different repetitions may measure different code.",
                  ""]
    lines += ["Every figure is the median of the repetitions, with [min-max] when there were several. Read the "
              "ratios, not the absolute numbers: the machine is shared and has 2 cores for the worker, the "
              "producer, redis-server and the MongoDB server together (docs/performance.md).", ""]

    lines += ["## Targets: mrq against the best peer of this run", ""]
    lines += target_table(targets)
    if round2:
        lines += ["## Performance round 2 (issue #12): its targets in this run", ""]
        lines += target_table(round2)

    systems = sorted({(f.system, f.mode) for f in figures + extra}, key=lambda sm: (sm[0] != "mrq", sm))
    sections = [
        ("A", [("A", "jobs_per_s"), ("A", "worker_cpu_s_per_1000_jobs"), ("A", "redis_cpu_s_per_1000_jobs"),
               ("A", "mongo_cpu_s_per_1000_jobs")]),
        ("B", [("B", "p50_ms"), ("B", "p99_ms"), ("B", "max_ms")]),
        ("C", [("C", "jobs_per_s")]),
        ("D", [("D-single", "enqueue_jobs_per_s"), ("D-single", "client_cpu_us_per_call"),
               ("D-bulk", "enqueue_jobs_per_s")]),
        ("E", [("E-enqueue", "redis_cmds_per_job"), ("E-enqueue", "redis_roundtrips_per_job"),
               ("E-enqueue", "mongo_cmds_per_job"), ("E-execute", "redis_cmds_per_job"),
               ("E-execute", "redis_roundtrips_per_job"), ("E-execute", "mongo_cmds_per_job")]),
        ("F", [("F", "rss_mb"), ("F", "redis_bytes_per_job"), ("F", "mongo_bytes_per_job")]),
        ("G", [("A", "jobs_per_s"), ("G-100k", "jobs_per_s"), ("G-2proc", "jobs_per_s")]),
    ]
    lines += ["## Results", ""]
    chart_of = {workload: name for workload, name, _, _ in CHARTS}
    for workload, columns in sections:
        if workload not in workloads:
            continue
        lines += [f"### {workload}. {WORKLOAD_TITLES[workload]}", ""]
        header = [f"{w} {UNITS.get(m, m)}" if w != workload else UNITS.get(m, m) for w, m in columns]
        lines += ["| system | mode | " + " | ".join(header) + " |", "|---|---|" + "---|" * len(columns)]
        for system, mode in systems:
            if workload == "G" and system != "mrq":
                continue
            cells = [cell(lookup(figures + extra, system, mode, w, m)) for w, m in columns]
            reason = next((r for (s, m, w), r in not_run.items() if (s, m, w) == (system, mode, workload)), None)
            if all(c == "-" for c in cells):
                if reason is None:
                    continue
                cells = [f"not run: {reason}"] + [""] * (len(cells) - 1)
            lines.append(f"| {system} | {mode} | " + " | ".join(cells) + " |")
        for (system, mode, wl), reason in sorted(not_run.items()):
            if wl == workload and (system, mode) not in systems:
                lines.append(f"| {system} | {mode} | not run: {reason} |" + " |" * (len(columns) - 1))
        lines.append("")
        if chart_of.get(workload) in charts:
            lines += [f"![{workload}]({chart_of[workload]})", ""]
    if chart_note:
        lines += [f"_{chart_note}_", ""]

    lines += ["## Configurations", "", "Each peer in its idiomatic best configuration for one worker process, from "
              "its own virtualenv (pinned versions below); mrq from the project's virtualenv.", "",
              "| system | mode | worker (A, B, E, F) | C | results | bulk enqueue | jobs per run |",
              "|---|---|---|---|---|---|---|"]
    for c in configs:
        lines.append(f"| {c['system']} | {c['mode']} | {c['summary']} | {c['c_concurrency']} at once | {c['results']} "
                     f"| {c['bulk']} | {c['sizes']} |")
    lines.append("")
    listed = set()
    for c in configs:
        if c.get("packages") and c["system"] not in listed:
            listed.add(c["system"])
            lines.append(f"- {c['system']}: {', '.join(c['packages'])}")
    lines += ["", "Timing: every task writes `start end enq` (time.time()) with one O_APPEND write to a file "
              "(no Redis or MongoDB command); A, C, G = jobs / (last end - first start); B = start - the "
              "producer's clock just before its enqueue call. E: Redis `INFO commandstats` (every command "
              "executed, those run inside Lua scripts included) and `total_reads_processed` (about one per "
              "round trip); MongoDB `serverStatus().metrics.commands` (all but serverStatus and the drivers' "
              "hello heartbeats), before and after the enqueue, and after the worker stopped. F: RSS of the "
              "worker's process tree when the last job ended; Redis `MEMORY USAGE` of every key after the enqueue "
              "/ N; MongoDB collStats size / count of mrq_jobs.", ""]

    if not_run:
        lines += ["## Not run", ""]
        for (system, mode, workload), reason in sorted(not_run.items()):
            lines.append(f"- {system}/{mode}, {workload}: {reason}")
        lines.append("")

    misses = [t for t in targets + (round2 or []) if t.passed is False]
    lines += ["## Missed targets", ""]
    if not misses:
        lines += ["None." if targets else "No target was evaluated.", ""]
    for t in misses:
        lines.append(f"- **{t.name}** ({t.mode}): {fmt(t.value)} against {t.reference} — {t.note}.")
    lines.append("")
    for one in [profile] if isinstance(profile, dict) else profile or []:
        lines += [f"## Where the mrq worker's time goes (workload A, {one['mode']} queue, "
                  f"{one['tool']}, {one['jobs']:,} jobs)", ""]
        if one.get("error"):
            lines += [f"Profile not taken: {one['error']}", ""]
        else:
            lines += [one.get("note", ""), "", "| % of samples (self) | % (incl. callees) | function |",
                      "|---|---|---|"]
            for entry in one["top"]:
                lines.append(f"| {entry['self_pct']:.1f} | {entry['total_pct']:.1f} | `{entry['function']}` |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
