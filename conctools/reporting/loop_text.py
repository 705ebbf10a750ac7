"""The text section for a blocked event loop: slow callbacks ranked by culprit site.

Reads the ``"slow_callbacks"`` section that :mod:`conctools.loopmon` publishes; a report that
only has the events (older JSON, a trimmed snapshot) is grouped from the
:class:`~conctools.events.SlowCallbackEvent` records instead. Pure: snapshot in, text out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from conctools._frames import hidden_note, hide_own_frames
from conctools._units import format_duration
from conctools.events import BlockingCallEvent, Frame, SlowCallbackEvent, frame_from_dict
from conctools.recorder import Snapshot
from conctools.reporting._table import table

__all__ = ["PRIORITY", "slow_callbacks_section"]

PRIORITY = 40


def _short_path(filename: str) -> str:
    parts = filename.replace("\\", "/").rsplit("/", 2)
    return "/".join(parts[-2:]) if len(parts) > 2 else filename


def _short_site(site: str) -> str:
    path, _, line = site.rpartition(":")
    return f"{_short_path(path)}:{line}" if path and line.isdigit() else site


def _sites_from_events(events: Sequence[SlowCallbackEvent]) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for e in events:
        c = e.culprit
        key = f"{c.site} in {c.function}" if c is not None else e.callback
        g = groups.get(key)
        if g is None:
            stack = next((s for s in e.samples if c is None or any(f.site == c.site for f in s)), ())
            g = groups[key] = {
                "key": key,
                "site": c.site if c is not None else key,
                "function": c.function if c is not None else "",
                "line": c.line if c is not None else "",
                "count": 0,
                "total_s": 0.0,
                "max_s": 0.0,
                "durations": [],
                "tasks": [],
                "callback": e.callback,
                "stack": [
                    {"filename": f.filename, "lineno": f.lineno, "function": f.function, "line": f.line} for f in stack
                ],
            }
        g["count"] += 1
        g["total_s"] += e.duration_s
        g["max_s"] = max(g["max_s"], e.duration_s)
        g["durations"].append(e.duration_s)
        if e.task_name and e.task_name not in g["tasks"] and len(g["tasks"]) < 5:
            g["tasks"].append(e.task_name)
    out = []
    for g in groups.values():
        durations = sorted(g.pop("durations"))
        g["p99_s"] = durations[min(len(durations) - 1, int(0.99 * len(durations)))]
        out.append(g)
    out.sort(key=lambda g: (-g["total_s"], g["key"]))
    return out


def _stack_lines(frames: Sequence[Frame], limit: int) -> list[str]:
    frames, hidden = hide_own_frames(frames)
    lines = []
    for f in frames[:limit]:
        lines.append(f"      {_short_path(f.filename)}:{f.lineno} in {f.function}")
        if f.line:
            lines.append(f"        {f.line}")
    if len(frames) > limit:
        lines.append(f"      ... {len(frames) - limit} more frames")
    if hidden:
        lines.append(f"      {hidden_note(hidden)}")
    return lines


def slow_callbacks_section(snapshot: Snapshot, brief: bool) -> str | None:
    """Slow callbacks ranked by total blocked time per culprit site, with the top stacks,
    then the loop lag and the blocking calls seen on loop threads."""
    data = snapshot.sections.get("slow_callbacks")
    events = snapshot.of_kind(SlowCallbackEvent)
    if isinstance(data, dict):
        sites: list[dict[str, Any]] = list(data.get("sites") or [])
        stalls = int(data.get("stalls") or 0)
        segments = int(data.get("segments") or stalls)
        threshold = data.get("threshold_s")
        lag = data.get("loop_lag") or {}
        blocking: list[dict[str, Any]] = list(data.get("blocking_calls") or [])
    else:
        sites = _sites_from_events(events)
        stalls = len({_stall_key(e) for e in events})
        segments = len(events)
        threshold = min((e.threshold_s for e in events), default=None)
        lag, blocking = {}, []
    if not blocking:
        blocking = _blocking_from_events(snapshot.of_kind(BlockingCallEvent))
    if not sites and not blocking and not lag.get("count"):
        return None
    parts = []
    if sites:
        total = sum(float(s["total_s"]) for s in sites)
        limit = 5 if brief else 25
        when = f" (threshold {format_duration(float(threshold))})" if threshold else ""
        by = f", by {segments} callbacks" if segments > stalls else ""
        parts.append(
            f"Slow callbacks: the event loop was blocked {stalls} time{'s' if stalls != 1 else ''}{when}, "
            f"{format_duration(total)} in total{by}, at {len(sites)} site{'s' if len(sites) != 1 else ''}"
        )
        rows = []
        for s in sites[:limit]:
            tasks = ", ".join(repr(t) for t in s.get("tasks") or []) or str(s.get("callback", ""))[:40]
            rows.append(
                (
                    _short_site(str(s["site"])),
                    s.get("function") or "",
                    s["count"],
                    format_duration(float(s["total_s"])),
                    format_duration(float(s["max_s"])),
                    format_duration(float(s.get("p99_s", s["max_s"]))),
                    tasks,
                )
            )
        parts.append(table(("culprit", "function", "times", "total", "max", "p99", "task"), rows, right=(2, 3, 4, 5)))
        if len(sites) > limit:
            parts.append(f"  ... {len(sites) - limit} more sites")
        for s in sites[: 3 if brief else 10]:
            stack = [frame_from_dict(f) for f in s.get("stack") or []]
            who = ", ".join(repr(t) for t in s.get("tasks") or [])
            head = f"  Blocked at {_short_site(str(s['site']))}"
            if s.get("line"):
                head += f": {s['line']}"
            parts.append(head)
            parts.append(f"    while running {s.get('callback') or who}; longest {format_duration(float(s['max_s']))}")
            parts.append("    stack captured during the stall (innermost first):")
            parts.extend(_stack_lines(stack, 4 if brief else 15))
        parts.extend(_shared_stalls(events, brief))
    if lag.get("count"):
        parts.append(
            f"Loop lag (how late a heartbeat timer ran, {lag['count']} heartbeat{'' if lag['count'] == 1 else 's'}): "
            f"p50 {format_duration(float(lag['p50_s']))}, p99 {format_duration(float(lag['p99_s']))}, "
            f"max {format_duration(float(lag['max_s']))}"
        )
    if blocking:
        limit = 5 if brief else 25
        calls = sum(int(b["count"]) for b in blocking)
        parts.append(f"Blocking calls on an event loop's thread ({calls} call{'s' if calls != 1 else ''})")
        blocking_rows: list[tuple[object, ...]] = [
            (
                b["call"],
                _short_site(str(b["site"])),
                b["count"],
                format_duration(float(b["total_s"])),
                format_duration(float(b["max_s"])),
            )
            for b in blocking[:limit]
        ]
        parts.append(table(("call", "site", "calls", "total", "max"), blocking_rows, right=(2, 3, 4)))
    return "\n".join(parts)


def _blocking_from_events(events: Sequence[BlockingCallEvent]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for e in events:
        g = groups.setdefault(
            (e.call, e.site), {"call": e.call, "site": e.site, "count": 0, "total_s": 0.0, "max_s": 0.0}
        )
        g["count"] += 1
        g["total_s"] += e.duration_s
        g["max_s"] = max(g["max_s"], e.duration_s)
    return sorted(groups.values(), key=lambda g: (-g["total_s"], g["site"]))


def _stall_key(e: SlowCallbackEvent) -> tuple[int, int]:
    return (e.loop_id, e.stall_id or e.ts_ns)


def _shared_stalls(events: Sequence[SlowCallbackEvent], brief: bool) -> list[str]:
    """The stalls that several tasks or callbacks caused one after the other: each with its own
    name, duration and line, longest stalls first."""
    by_stall: dict[tuple[int, int], list[SlowCallbackEvent]] = {}
    for e in events:
        if e.segments > 1:
            by_stall.setdefault(_stall_key(e), []).append(e)
    if not by_stall:
        return []
    stalls = sorted(by_stall.values(), key=lambda group: -max(e.stall_s for e in group))
    limit = 3 if brief else 10
    lines = [f"Stalls caused by several callbacks, one after the other ({len(stalls)}):"]
    for group in stalls[:limit]:
        group.sort(key=lambda e: e.segment)
        first = group[0]
        seen = f" ({len(group)} of them recorded)" if len(group) < first.segments else ""
        lines.append(
            f"  {format_duration(first.stall_s)} on thread {first.thread_name!r}, by {first.segments} callbacks{seen}:"
        )
        for e in group[: 5 if brief else 20]:
            where = ""
            if e.culprit is not None:
                where = f" at {_short_site(e.culprit.site)}" + (f": {e.culprit.line}" if e.culprit.line else "")
            lines.append(f"    {format_duration(e.duration_s):>8}  {e.callback}{where}")
            if e.head_unsampled_s > 0:
                lines.append(
                    f"              (includes {format_duration(e.head_unsampled_s)} before its first sample, when other"
                    " callbacks of the same loop iteration may have run)"
                )
        if len(group) > (5 if brief else 20):
            lines.append(f"    ... {len(group) - (5 if brief else 20)} more")
    if len(stalls) > limit:
        lines.append(f"  ... {len(stalls) - limit} more")
    return lines
