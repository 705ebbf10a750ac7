"""The text report: what a person needs first, short, ranked, with ``file:line``.

The report is a list of sections, each a pure function ``(snapshot, brief) -> str | None``
(``None`` when it has nothing to say). The whole report starts with the findings: everything
found, ranked, each with its evidence (:mod:`conctools.reporting.findings`, shared with the HTML
report); then the sections: the problems in detail (deadlocks, inversions, hangs, stalls), then
where the time went (locks, spans, profile), then resources.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from conctools._units import format_duration
from conctools.recorder import Snapshot
from conctools.reporting._safe import neutralise
from conctools.reporting._table import table
from conctools.reporting.deadlock_text import deadlock_section, hang_section
from conctools.reporting.findings import findings_section
from conctools.reporting.gil_text import gil_section, verdict_section
from conctools.reporting.locks_text import lock_order_section, lock_table_section
from conctools.reporting.loop_text import slow_callbacks_section
from conctools.reporting.pools_text import pools_section
from conctools.reporting.processes_text import (
    child_findings_section,
    process_stuck_section,
    processes_table_section,
)
from conctools.reporting.profile_text import profile_section
from conctools.reporting.resources_text import resources_section

__all__ = ["SECTIONS", "render_sections", "render_text"]

Section = Callable[[Snapshot, bool], "str | None"]

RULE = "=" * 78


def not_kept_words(snapshot: Snapshot) -> str:
    """What the recorder counted but did not keep as events, per kind, in words (the counts stay
    exact; the per-kind stores keep the first, latest and worst episodes and merge old samples)."""
    kept: dict[str, int] = {}
    for e in snapshot.events:
        kept[e.kind] = kept.get(e.kind, 0) + 1
    parts = [
        f"{kind} {n - kept.get(kind, 0):,}" for kind, n in sorted(snapshot.counts.items()) if n > kept.get(kind, 0)
    ]
    detail = f": {', '.join(parts)}" if parts else ""
    return f"{snapshot.dropped:,} more not kept as events{detail}; the counts are exact"


def _header(snapshot: Snapshot, brief: bool) -> str:
    meta = snapshot.meta
    lines = [RULE, "conctools report"]
    command = meta.get("command")
    if command:
        lines.append(f"  program:   {command}")
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snapshot.started_wall))
    lines.append(f"  started:   {started}   ran for {format_duration(snapshot.duration_s)}")
    if "exit_status" in meta:
        lines.append(f"  exit:      {meta['exit_status']}")
    counts = ", ".join(f"{k}={v}" for k, v in sorted(snapshot.counts.items())) or "none"
    lines.append(f"  events:    {counts}" + (f" ({not_kept_words(snapshot)})" if snapshot.dropped else ""))
    lines.append(RULE)
    return "\n".join(lines)


def spans_section(snapshot: Snapshot, brief: bool) -> str | None:
    """The ``@traced`` spans, slowest total first."""
    spans = snapshot.spans
    if not spans:
        return None
    limit = 10 if brief else 50
    rows = [
        (
            s.name,
            s.count,
            s.errors,
            s.cancelled,
            format_duration(s.total_s),
            format_duration(s.mean_s),
            format_duration(s.p50_s),
            format_duration(s.p99_s),
            format_duration(s.max_s),
        )
        for s in spans[:limit]
    ]
    title = f"Traced spans ({len(spans)} names, slowest total first)"
    body = table(
        ("span", "calls", "errors", "cancelled", "total", "mean", "p50", "p99", "max"),
        rows,
        right=(1, 2, 3, 4, 5, 6, 7, 8),
    )
    more = f"\n  ... {len(spans) - limit} more" if len(spans) > limit else ""
    return f"{title}\n{body}{more}"


# Problems first, then where time went, then resources. Other modules append theirs.
SECTIONS: list[tuple[int, Section]] = [(50, spans_section)]
SECTIONS += [(10, deadlock_section), (30, hang_section)]
SECTIONS += [(40, slow_callbacks_section)]
SECTIONS += [(20, lock_order_section), (45, lock_table_section)]
SECTIONS += [(60, profile_section), (70, resources_section)]
SECTIONS += [(42, pools_section)]
SECTIONS += [(5, verdict_section), (46, gil_section)]
SECTIONS += [(6, process_stuck_section), (8, processes_table_section), (9, child_findings_section)]


def render_sections(
    snapshot: Snapshot, *, brief: bool = False, priorities: Callable[[int], bool] | None = None
) -> list[str]:
    """The non-empty sections, in report order (only those whose priority ``priorities`` accepts)."""
    parts = []
    for priority, section in sorted(SECTIONS, key=lambda s: s[0]):
        if priorities is not None and not priorities(priority):
            continue
        try:
            text = section(snapshot, brief)
        except Exception as exc:  # one broken section must not hide the others
            text = f"[section {getattr(section, '__name__', section)!r} failed: {exc!r}]"
        if text:
            parts.append(neutralise(text))
    return parts


def render_text(snapshot: Snapshot, *, brief: bool = False) -> str:
    """The report as text, the ranked findings first; ``brief`` keeps every section short for a terminal."""
    try:
        findings = findings_section(snapshot, brief)
    except Exception as exc:  # the findings are a summary: never lose the report over them
        findings = f"[findings failed: {exc!r}]"
    parts = [_header(snapshot, brief), *([findings] if findings else []), *render_sections(snapshot, brief=brief)]
    if len(parts) == 1:
        parts.append("Nothing to report: no spans, lock waits, stalls or hangs were recorded.")
    return neutralise("\n\n".join(parts) + "\n")
