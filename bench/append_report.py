"""The append benchmark's results: one :class:`Result` per run, the median
run per row, and the tables and verdicts printed at the end."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .common import fmt, markdown_table, ratio

TARGET_RATIO = 0.5
TARGET_P99_MS = 50.0


@dataclass
class Result:
    config: str
    label: str
    load: str  # "saturation" | "paced"
    client_procs: int
    client: str
    seconds: float
    paced_fraction: float | None  # of the direct throughput; None: saturation
    offered_entries_s: float | None
    entries_s: float
    batches_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    server_p50_ms: float | None = None
    server_p99_ms: float | None = None
    round: int = 1
    # Busy cores of the machine just before the run (other tenants of the box).
    background_cores: float = 0.0
    cpu_cores: dict[str, float] = field(default_factory=dict)
    cpu_us_per_entry: dict[str, float] = field(default_factory=dict)
    verify: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def medians(results: Sequence[Result]) -> list[Result]:
    """Per (configuration, load): the run with the median entries/s (the
    lower one for an even count), so each row's figures stay one run's."""
    groups: dict[tuple[str, str, float | None], list[Result]] = {}
    for r in results:
        groups.setdefault((r.label, r.load, r.paced_fraction), []).append(r)
    out = []
    for runs in groups.values():
        ranked = sorted(runs, key=lambda r: r.entries_s)
        out.append(ranked[(len(ranked) - 1) // 2])
    return out


def direct_rate(rows: Sequence[Result]) -> float:
    for r in rows:
        if r.config == "direct" and r.load == "saturation":
            return r.entries_s
    return 0.0


def load_name(r: Result) -> str:
    if r.paced_fraction is None or r.offered_entries_s is None:
        return r.load
    return f"paced {r.paced_fraction:.0%} = {r.offered_entries_s:,.0f}/s"


def figures_table(rows: Sequence[Result], runs: int) -> str:
    base = direct_rate(rows)
    headers = ["configuration", "load", "entries/s", "batches/s", "p50 ms", "p95 ms"]
    headers += ["p99 ms", "server p99 ms", "vs direct"]
    body = [
        [
            r.label,
            load_name(r),
            fmt(r.entries_s),
            fmt(r.batches_s),
            fmt(r.p50_ms),
            fmt(r.p95_ms),
            fmt(r.p99_ms),
            fmt(r.server_p99_ms),
            ratio(r.entries_s, base),
        ]
        for r in rows
    ]
    note = f"(median of {runs} runs each)" if runs > 1 else ""
    return markdown_table(headers, body) + (f"\n\n{note}" if note else "")


def service_us(r: Result) -> float:
    """CPU per entry on the service side: what would still run on this box
    if the callers ran elsewhere (sessiond: server + PostgreSQL; direct:
    the asyncpg caller + PostgreSQL, since it does the server's part)."""
    c = r.cpu_us_per_entry
    if r.config == "process":
        return c.get("server", 0.0) + c.get("postgres", 0.0)
    return c.get("client", 0.0) + c.get("postgres", 0.0)


def cpu_table(rows: Sequence[Result]) -> str:
    ncpu = os.cpu_count() or 1
    saturated = [r for r in rows if r.load == "saturation"]
    base = next((r for r in saturated if r.config == "direct"), None)
    base_est = ncpu * 1e6 / service_us(base) if base and service_us(base) else 0.0
    headers = ["configuration", "cores: client", "server", "PG", "other", "box"]
    headers += ["µs/entry: client", "server", "PG", "est. entries/s, clients off-box"]
    body = []
    for r in saturated:
        c, u = r.cpu_cores, r.cpu_us_per_entry
        svc = service_us(r)
        est = ncpu * 1e6 / svc if svc and r.config != "inprocess" else float("nan")
        body.append(
            [
                r.label,
                fmt(c.get("client"), 2),
                fmt(c.get("server"), 2),
                fmt(c.get("postgres"), 2),
                fmt(c.get("other"), 2),
                fmt(c.get("machine"), 2),
                fmt(u.get("client")),
                fmt(u.get("server")),
                fmt(u.get("postgres")),
                f"{fmt(est)} ({ratio(est, base_est)})" if est == est else "–",
            ]
        )
    return markdown_table(headers, body)


def verdicts(rows: Sequence[Result]) -> list[str]:
    base = direct_rate(rows)
    out = []
    for r in rows:
        if r.config != "process":
            continue
        if r.load == "saturation":
            if not base:
                continue
            share = r.entries_s / base
            out.append(
                f"{r.label}: throughput {share:.0%} of direct (target ≥ {TARGET_RATIO:.0%}):"
                f" {'PASS' if share >= TARGET_RATIO else 'MISS'}; p99 at saturation"
                f" {fmt(r.p99_ms)} ms"
            )
        else:
            overloaded = any(n.startswith("overloaded") for n in r.notes)
            met = r.p99_ms <= TARGET_P99_MS and not overloaded
            if r.paced_fraction == TARGET_RATIO:
                verdict = f" (target ≤ {TARGET_P99_MS:.0f} ms): {'PASS' if met else 'MISS'}"
            else:
                verdict = " (overloaded)" if overloaded else ""
            out.append(
                f"{r.label}: p99 {fmt(r.p99_ms)} ms at {fmt(r.offered_entries_s)} entries/s"
                f" offered ({r.paced_fraction:.0%} of direct)" + verdict
            )
    return out
