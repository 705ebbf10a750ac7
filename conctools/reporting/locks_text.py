"""Text sections for locks: lock-order inversions (priority 20) and the lock table (priority 45).

An inversion reads like ThreadSanitizer's lock-order-inversion report (the cycle, then each
edge: which lock was taken where, while holding which lock taken where, in which thread),
followed by Linux lockdep's "possible unsafe locking scenario" in CPU0/CPU1 columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from conctools._frames import hidden_note, hide_own_frames
from conctools._units import format_duration
from conctools.events import Frame, LockOrderEdge, LockOrderEvent
from conctools.recorder import Snapshot
from conctools.reporting._table import table

__all__ = ["format_lock_order", "lock_order_section", "lock_table_section", "unsafe_scenario"]


def _who(edge: LockOrderEdge) -> str:
    if edge.task_name is not None:
        return f"task {edge.task_name!r} (thread {edge.thread_name!r})"
    return f"thread {edge.thread_name!r}"


_PLUMBING = ("/asyncio/", "/threading.py", "/runpy.py", "/concurrent/futures/", "/contextlib.py", "<frozen ")


def _stack(stack: Sequence[Frame], limit: int) -> list[str]:
    # The event loop's and the threading module's own frames say nothing about the program.
    stack, own = hide_own_frames(stack)
    shown = [f for i, f in enumerate(stack) if i == 0 or not any(p in f.filename for p in _PLUMBING)]
    hidden = len(stack) - len(shown)
    stack = shown
    lines = []
    for f in stack[:limit]:
        lines.append(f"        {f.filename}:{f.lineno} in {f.function}")
        if f.line:
            lines.append(f"            {f.line}")
    if len(stack) > limit:
        lines.append(f"        ... {len(stack) - limit} more frames")
    if hidden:
        lines.append(f"        ({hidden} asyncio/threading frames not shown)")
    if own:
        lines.append(f"        {hidden_note(own)}")
    return lines


def unsafe_scenario(edges: Sequence[LockOrderEdge]) -> list[str]:
    """lockdep's scenario: each column takes its first lock, then each reaches for its second."""
    n = len(edges)
    width = 26
    heads = [f"CPU{i}" for i in range(n)]
    lines = ["  Possible unsafe locking scenario:", ""]
    lines.append("        " + "".join(h.ljust(width) for h in heads).rstrip())
    lines.append("        " + "".join("----".ljust(width) for _ in heads).rstrip())
    for i, e in enumerate(edges):
        lines.append("        " + " " * (width * i) + f"lock({e.from_lock});")
    for i, e in enumerate(edges):
        lines.append("        " + " " * (width * i) + f"lock({e.to_lock});")
    lines += ["", "   *** DEADLOCK ***"]
    return lines


def format_lock_order(event: LockOrderEvent, *, brief: bool = False) -> str:
    """One inversion: the cycle, each edge with sites and thread, stacks, then the scenario."""
    cycle = " => ".join(repr(name) for name in (*event.cycle, event.cycle[0]))
    lines = [
        "WARNING: potential deadlock: lock-order inversion (this run did not necessarily deadlock)",
        f"  Cycle in lock order graph: {cycle}",
        "",
    ]
    for e in event.edges:
        lines.append(
            f"  lock {e.to_lock!r} acquired at {e.to_site} while holding {e.from_lock!r}"
            f" (acquired at {e.from_site}) in {_who(e)}"
        )
        if e.stack:
            lines += _stack(e.stack, 3 if brief else 12)
    lines.append("")
    lines += unsafe_scenario(event.edges)
    return "\n".join(lines)


def lock_order_section(snapshot: Snapshot, brief: bool) -> str | None:
    """Every distinct lock-order cycle seen (each is reported once)."""
    events = snapshot.of_kind(LockOrderEvent)
    if not events:
        return None
    limit = 3 if brief else 50
    n = len(events)
    parts = [f"Lock-order inversions ({n} potential deadlock{'' if n == 1 else 's'})"]
    parts += [format_lock_order(e, brief=brief) for e in events[:limit]]
    if len(events) > limit:
        parts.append(f"  ... {len(events) - limit} more (see the full report)")
    return "\n\n".join(parts)


def _d(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    return format_duration(float(value)) if isinstance(value, (int, float)) else "-"


# Primitives whose "contention" is a wait for somebody else's notify / set / arrival: their waits
# are the program's design (a consumer waiting on an empty queue's condition), not lock contention,
# so they get a table of their own below the locks.
SIGNAL_KINDS = frozenset({"Condition", "Event", "Barrier", "aio.Condition", "aio.Event", "aio.Barrier"})


def _hottest(r: dict[str, Any]) -> str:
    sites = r.get("hottest_sites") or []
    return ", ".join(f"{s.get('site')} ({s.get('waits')})" for s in sites[:2] if isinstance(s, dict)) or "-"


def lock_table_section(snapshot: Snapshot, brief: bool) -> str | None:
    """The lock table (every traced lock class, most total wait first), then the waits for a signal."""
    rows_data = snapshot.sections.get("locks")
    if not isinstance(rows_data, list) or not rows_data:
        return None
    limit = 10 if brief else 100
    valid = [r for r in rows_data if isinstance(r, dict)]
    lock_rows = [r for r in valid if r.get("kind") not in SIGNAL_KINDS]
    signal_rows = [r for r in valid if r.get("kind") in SIGNAL_KINDS]
    parts = []
    if lock_rows:
        rows = [
            (
                str(r.get("name", "?"))[:64],
                str(r.get("kind", "?")),
                r.get("acquisitions", 0),
                r.get("contentions", 0),
                _d(r, "wait_total_s"),
                _d(r, "wait_p50_s"),
                _d(r, "wait_p99_s"),
                _d(r, "wait_max_s"),
                _d(r, "hold_p99_s") if r.get("hold_count") else "-",
                _d(r, "hold_max_s") if r.get("hold_count") else "-",
                _hottest(r),
            )
            for r in lock_rows[:limit]
        ]
        title = f"Locks ({len(lock_rows)} traced lock classes, most total wait first)"
        body = table(
            (
                "lock",
                "kind",
                "acquired",
                "contended",
                "waited",
                "wait p50",
                "p99",
                "max",
                "hold p99",
                "hold max",
                "hottest waits",
            ),
            rows,
            right=(2, 3, 4, 5, 6, 7, 8, 9),
        )
        more = f"\n  ... {len(lock_rows) - limit} more" if len(lock_rows) > limit else ""
        parts.append(f"{title}\n{body}{more}")
    if signal_rows:
        waits = [
            (
                str(r.get("name", "?"))[:64],
                str(r.get("kind", "?")),
                r.get("contentions", 0),
                r.get("timeouts", 0),
                _d(r, "wait_total_s"),
                _d(r, "wait_p50_s"),
                _d(r, "wait_p99_s"),
                _d(r, "wait_max_s"),
                _hottest(r),
            )
            for r in signal_rows[:limit]
        ]
        title = (
            f"Waits for a signal ({len(signal_rows)} condition/event/barrier classes; a wait for a notify,"
            " a set or a barrier's other parties, not lock contention)"
        )
        body = table(
            ("primitive", "kind", "waits", "timed out", "waited", "wait p50", "p99", "max", "hottest waits"),
            waits,
            right=(2, 3, 4, 5, 6, 7),
        )
        more = f"\n  ... {len(signal_rows) - limit} more" if len(signal_rows) > limit else ""
        parts.append(f"{title}\n{body}{more}")
    return "\n\n".join(parts) or None
