"""What a run found, ranked: the first thing the text and the HTML reports show.

:func:`find` is a pure function from a :class:`~conctools.recorder.Snapshot` to a list of
:class:`Finding`, worst first: deadlocks and hangs, then the problems that cost the program time
(lock-order inversions, stalls of the event loop by culprit site, lock contention, blocking calls
on a loop's thread, failing calls), ranked by how much time they cost, then notices (a CPU-bound
process, memory that kept growing). Each finding carries its evidence (names, ``file:line``,
counts, durations) and says where the detail is (``section``: the text report's section title;
``anchor``: the HTML report's element id).

Other modules add their own kinds by appending a finder to :data:`FINDERS`::

    FINDERS.append(my_finder)   # (snapshot) -> list[Finding]

>>> from conctools.recorder import Recorder
>>> find(Recorder().snapshot())
[]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from conctools._log import get_logger
from conctools._units import format_bytes, format_duration
from conctools.events import BlockingCallEvent, DeadlockEvent, HangEvent, LockOrderEvent, ResourceSampleEvent
from conctools.recorder import Snapshot
from conctools.reporting._summary import UNKNOWN_SITE, group_of_tasks, lock_rows, short_site, stall_sites

__all__ = ["FINDERS", "SEVERITIES", "Finder", "Finding", "find", "findings_section"]

_log = get_logger("conctools.reporting")

# Worst first. The word is printed with each finding: its meaning never rests on a colour.
SEVERITIES = ("critical", "high", "medium", "low")


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One thing the run found, with its evidence and where its detail is."""

    kind: str  # "deadlock", "hang", "lock_order", "stall", "lock_contention", "blocking_call", ...
    severity: str  # one of SEVERITIES
    title: str
    evidence: tuple[str, ...] = ()
    where: str | None = None  # the file:line to look at first
    impact_s: float = 0.0  # time it cost the program (ranks findings of one severity)
    section: str = ""  # the text report's section with the detail
    anchor: str = ""  # the HTML report's element id with the detail


Finder = Callable[[Snapshot], list[Finding]]
_FIRST = {"deadlock": 0, "hang": 1, "lock_order": 2}  # within a severity: what stops a program


def _severity_of_cost(cost_s: float, run_s: float) -> str:
    """``high`` when a problem cost at least 5% of the run (or a second), else ``medium``."""
    return "high" if cost_s >= min(1.0, 0.05 * max(run_s, 1e-9)) else "medium"


def deadlocks(snapshot: Snapshot) -> list[Finding]:
    """A wait-for cycle: each participant, what it waits for, who holds it."""
    out = []
    for e in snapshot.of_kind(DeadlockEvent):
        parts = e.participants
        evidence = tuple(
            f"{p.who} waits for {p.waits_for} at {p.wait_site}, held by {p.held_by}"
            + (f"; it holds {', '.join(p.holds)}" if p.holds else "")
            for p in parts
        )
        out.append(
            Finding(
                kind="deadlock",
                severity="critical",
                title=f"Deadlock: {len(parts)} threads/tasks wait for each other forever"
                if len(parts) != 1
                else f"Deadlock: {parts[0].who} waits forever for {parts[0].waits_for}, which it holds itself",
                evidence=evidence,
                where=parts[0].wait_site if parts else None,
                impact_s=sum(p.wait_s for p in parts),
                section="Found one Python-level deadlock",
                anchor="deadlocks",
            )
        )
    return out


def hangs(snapshot: Snapshot) -> list[Finding]:
    """No progress without a cycle: what each blocked thread or task waits on."""
    out = []
    for e in snapshot.of_kind(HangEvent):
        blocked = [w for w in e.waiters if w.waits_on]
        evidence = [f"{e.reason}"]
        for w in blocked[:4]:
            who = f"task {w.task_name!r} (thread {w.thread_name!r})" if w.task_name else f"thread {w.thread_name!r}"
            evidence.append(f"{who} waits on {w.waits_on}")
        if len(blocked) > 4:
            evidence.append(f"... and {len(blocked) - 4} more")
        out.append(
            Finding(
                kind="hang",
                severity="critical",
                title=f"Hang: no progress for {format_duration(e.stalled_s)}, and nothing left that could wake "
                f"{_count(len(e.waiters), 'waiting thread or task', 'waiting threads and tasks')}",
                evidence=tuple(evidence),
                impact_s=e.stalled_s,
                section="Hang",
                anchor="hangs",
            )
        )
    return out


def lock_orders(snapshot: Snapshot) -> list[Finding]:
    """A cycle in the lock-order graph: a deadlock waiting to happen."""
    out = []
    for e in snapshot.of_kind(LockOrderEvent):
        evidence = tuple(
            f"{g.to_lock!r} taken at {g.to_site} while holding {g.from_lock!r} (taken at {g.from_site})"
            f" in thread {g.thread_name!r}" + (f", task {g.task_name!r}" if g.task_name else "")
            for g in e.edges
        )
        out.append(
            Finding(
                kind="lock_order",
                severity="high",
                title="Potential deadlock: lock-order inversion "
                + " -> ".join(repr(n) for n in (*e.cycle, e.cycle[0])),
                evidence=(*evidence, "this run did not necessarily deadlock; another interleaving will"),
                where=e.edges[0].to_site if e.edges else None,
                section="Lock-order inversions",
                anchor="lock-orders",
            )
        )
    return out


def stalls(snapshot: Snapshot) -> list[Finding]:
    """The event loop was blocked: one finding per culprit site (the top five)."""
    sites = stall_sites(snapshot)
    out = []
    section = snapshot.sections.get("slow_callbacks")
    lag = section.get("loop_lag") if isinstance(section, dict) else None
    for rank, s in enumerate(sites[:5]):
        count, total, worst = int(s.get("count") or 0), float(s.get("total_s") or 0.0), float(s.get("max_s") or 0.0)
        site = str(s.get("site", "?"))
        if site == UNKNOWN_SITE:
            title = f"Event loop blocked {count} time{'s' if count != 1 else ''} ({format_duration(total)}) by a " \
                "callback that ended before it could be sampled"  # fmt: skip
            where = None
        else:
            fn = f" in {s['function']}" if s.get("function") else ""
            title = (
                f"Event loop blocked {count} time{'s' if count != 1 else ''}, {format_duration(total)} in total, "
                f"at {short_site(site)}{fn}"
            )
            where = short_site(site)
        evidence = []
        if s.get("line"):
            evidence.append(f"blocking line: {s['line']}")
        tasks = [repr(t) for t in s.get("tasks") or []]
        evidence.append(
            f"longest {format_duration(worst)}"
            + (f"; while running {s.get('callback')}" if s.get("callback") and site != UNKNOWN_SITE else "")
            + (f" (tasks {', '.join(tasks[:3])}{' ...' if len(tasks) > 3 else ''})" if tasks else "")
        )
        if rank == 0 and isinstance(lag, dict) and lag.get("count"):
            evidence.append(
                f"loop lag over the run: p50 {format_duration(float(lag.get('p50_s') or 0))}, "
                f"p99 {format_duration(float(lag.get('p99_s') or 0))}, "
                f"max {format_duration(float(lag.get('max_s') or 0))}"
            )
        out.append(
            Finding(
                kind="stall",
                severity=_severity_of_cost(total, snapshot.duration_s),
                title=title,
                evidence=tuple(evidence),
                where=where,
                impact_s=total,
                section="Slow callbacks",
                anchor="slow-callbacks",
            )
        )
    if len(sites) > 5:
        rest = sites[5:]
        total = sum(float(s.get("total_s") or 0.0) for s in rest)
        out.append(
            Finding(
                kind="stall",
                severity="medium",
                title=f"Event loop blocked at {len(rest)} more sites, {format_duration(total)} in total",
                impact_s=total,
                section="Slow callbacks",
                anchor="slow-callbacks",
            )
        )
    return out


def contention(snapshot: Snapshot) -> list[Finding]:
    """Locks that made threads or tasks wait: one finding per lock whose waits add up to at least
    10 ms or 0.5% of the run, most waited first (the top five)."""
    floor = max(0.01, 0.005 * snapshot.duration_s)
    rows = [r for r in lock_rows(snapshot, group_of_tasks(snapshot)) if float(r.get("wait_total_s") or 0) >= floor]
    out = []
    for r in rows[:5]:
        waited = float(r.get("wait_total_s") or 0.0)
        n = int(r.get("contentions") or 0)
        name = str(r.get("name", "?"))
        kind = str(r.get("kind", ""))
        title = f"Lock contention: {name!r}{f' ({kind})' if kind else ''} waited on {n} time{'s' if n != 1 else ''}, " \
            f"{format_duration(waited)} in total"  # fmt: skip
        evidence = []
        stats = []
        for key, label in (("wait_p50_s", "p50"), ("wait_p99_s", "p99"), ("wait_max_s", "max")):
            if isinstance(r.get(key), (int, float)):
                stats.append(f"{label} {format_duration(float(r[key]))}")
        if stats:
            evidence.append("waits: " + ", ".join(stats))
        if r.get("hold_count") and isinstance(r.get("hold_p99_s"), (int, float)):
            evidence.append(
                f"held for p99 {format_duration(float(r['hold_p99_s']))}, "
                f"max {format_duration(float(r.get('hold_max_s') or 0))}"
                " (everyone waits while one holds it: hold it for less, e.g. not across an await or I/O)"
            )
        sites = [s for s in r.get("hottest_sites") or [] if isinstance(s, dict)]
        if sites:
            evidence.append(
                "hottest waiting sites: "
                + "; ".join(
                    f"{s.get('site')}{' in ' + str(s['function']) if s.get('function') else ''}"
                    f" ({s.get('waits')} waits)"
                    for s in sites[:3]
                )
            )
        if r.get("holders"):
            evidence.append("held by " + ", ".join(f"{who} ({n})" for who, n in r["holders"]))
        if r.get("created_at"):
            evidence.append(f"created at {r['created_at']}")
        out.append(
            Finding(
                kind="lock_contention",
                severity=_severity_of_cost(waited, snapshot.duration_s),
                title=title,
                evidence=tuple(evidence),
                where=str(sites[0].get("site")) if sites else None,
                impact_s=waited,
                section="Locks",
                anchor="locks",
            )
        )
    return out


def blocking_calls(snapshot: Snapshot) -> list[Finding]:
    """Known blocking calls made on an event loop's thread (``--detect-blocking``)."""
    section = snapshot.sections.get("slow_callbacks")
    rows = section.get("blocking_calls") if isinstance(section, dict) else None
    calls: list[dict[str, object]] = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
    if not calls:
        groups: dict[tuple[str, str], dict[str, object]] = {}
        for e in snapshot.of_kind(BlockingCallEvent):
            g = groups.setdefault((e.call, e.site), {"call": e.call, "site": e.site, "count": 0, "total_s": 0.0})
            g["count"] = int(str(g["count"])) + 1
            g["total_s"] = float(str(g["total_s"])) + e.duration_s
        calls = sorted(groups.values(), key=lambda g: -float(str(g["total_s"])))
    out = []
    for c in calls[:3]:
        total = float(str(c.get("total_s") or 0.0))
        count = int(str(c.get("count") or 0))
        out.append(
            Finding(
                kind="blocking_call",
                severity=_severity_of_cost(total, snapshot.duration_s),
                title=f"Blocking call on an event loop's thread: {c.get('call')} at {short_site(str(c.get('site')))}, "
                f"{count} call{'s' if count != 1 else ''}, {format_duration(total)}",
                where=short_site(str(c.get("site"))),
                impact_s=total,
                section="Blocking calls on an event loop's thread",
                anchor="slow-callbacks",
            )
        )
    return out


def failing_calls(snapshot: Snapshot) -> list[Finding]:
    """Traced calls that raised."""
    out = []
    for s in snapshot.spans:
        if s.errors:
            out.append(
                Finding(
                    kind="errors",
                    severity="medium",
                    title=f"{s.name!r} raised {s.errors} time{'s' if s.errors != 1 else ''} in {s.count} calls",
                    impact_s=s.errors * s.mean_s,
                    section="Traced spans",
                    anchor="spans",
                )
            )
    return sorted(out, key=lambda f: -f.impact_s)[:5]


def _resource_points(snapshot: Snapshot) -> list[dict[str, float]]:
    section = snapshot.sections.get("resources")
    raw = section.get("series") if isinstance(section, dict) else None
    points = [p for p in raw if isinstance(p, dict)] if isinstance(raw, list) else []
    if not points:
        points = [e.point() for e in snapshot.of_kind(ResourceSampleEvent)]
    out = []
    for p in points:
        try:
            out.append({"t": float(p["ts_ns"]), "cpu": float(p["cpu_percent"]), "rss": float(p["rss_bytes"])})
        except (KeyError, TypeError, ValueError):
            continue
    return out


def resources(snapshot: Snapshot) -> list[Finding]:
    """A process that kept a CPU core busy, or whose memory kept growing."""
    points = _resource_points(snapshot)
    if len(points) < 6:
        return []
    out = []
    busy = [p for p in points if p["cpu"] >= 90.0]
    if len(busy) >= 0.5 * len(points):
        mean = sum(p["cpu"] for p in points) / len(points)
        out.append(
            Finding(
                kind="cpu_bound",
                severity="low",
                title=f"CPU-bound: the process used at least 90% of a core in {len(busy)} of {len(points)} samples "
                f"(mean {mean:.0f}%)",
                evidence=("threads that compute hold the GIL: other threads and the event loop wait for it",),
                section="Resources",
                anchor="charts",
            )
        )
    third = len(points) // 3
    early = min(p["rss"] for p in points[third : 2 * third])  # after the start-up
    last = points[-1]["rss"]
    rising = all(points[i]["rss"] <= points[i + third]["rss"] for i in range(len(points) - third))
    if rising and last - early >= max(50 * 2**20, 0.5 * early):
        out.append(
            Finding(
                kind="memory_growth",
                severity="low",
                title=f"Memory kept growing: RSS {format_bytes(early)} -> {format_bytes(last)} over the run",
                evidence=("a leak, or a cache without a bound: compare heap snapshots (tracemalloc) at two moments",),
                section="Resources",
                anchor="charts",
            )
        )
    return out


def gil_threads(snapshot: Snapshot) -> list[Finding]:
    """Threads that wanted the GIL at the same time long enough to matter (the GIL monitor's data)."""
    from conctools.reporting import gil_text

    data = gil_text.gil_data(snapshot)
    if data is None or not gil_text.matters(data):
        return []
    wall = gil_text._f(data, "wall_s")
    gain = gil_text.speedup(data)
    impact = max(0.0, wall - wall / gain) if gain > 0 else 0.0
    headline = gil_text.headline(data)
    return [
        Finding(
            kind="cpu_bound_threads",
            severity=_severity_of_cost(impact, wall) if impact > 0 else "medium",
            title="CPU-bound threads: " + headline,
            evidence=(gil_text.advice(data),),
            impact_s=impact,
            section="CPU-bound threads",
            anchor="gil",
        )
    ]


# In rank order of kinds for equal severity and cost; other modules append theirs.
FINDERS: list[Finder] = [
    deadlocks,
    hangs,
    lock_orders,
    stalls,
    contention,
    gil_threads,
    blocking_calls,
    failing_calls,
    resources,
]


def find(snapshot: Snapshot) -> list[Finding]:
    """Every finding of ``snapshot``, worst first: by severity, deadlocks (real or potential) first
    within one, then by the time each cost."""
    found: list[Finding] = []
    for finder in FINDERS:
        try:
            found += finder(snapshot)
        except Exception:  # one broken finder must not hide the others
            _log.exception("conctools: finder %r failed", getattr(finder, "__name__", finder))
    order = {s: i for i, s in enumerate(SEVERITIES)}
    # Within a severity, the deadlocks that happened or can happen come before what cost time.
    return sorted(found, key=lambda f: (order.get(f.severity, len(order)), _FIRST.get(f.kind, 3), -f.impact_s))


def _printable(text: str) -> str:
    """Names come from the program: control, escape and bidirectional-override characters are
    written as escapes so that they cannot drive the terminal or reorder the line."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def findings_section(snapshot: Snapshot, brief: bool) -> str | None:
    """The text report's first section: what was found, worst first, each with its evidence."""
    found = find(snapshot)
    if not found:
        return None
    limit = 6 if brief else 20
    lines = [f"Findings ({len(found)}, worst first)"]
    for n, f in enumerate(found[:limit], 1):
        lines.append(f"  {n}. [{f.severity.upper()}] {_printable(f.title)}")
        for ev in f.evidence[: 3 if brief else 8]:
            lines.append(f"       {_printable(ev)}")
        if f.section:
            lines.append(f"       -> see {f.section!r} below")
    if len(found) > limit:
        lines.append(f"  ... {len(found) - limit} more")
    return "\n".join(lines)


def _count(n: int, one: str, many: str) -> str:
    """``1 waiting thread or task`` / ``3 waiting threads and tasks``."""
    return f"{n} {one if n == 1 else many}"
