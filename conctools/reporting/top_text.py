"""``conctools top PID`` as text: one screen, a pure function of two consecutive answers.

The agent answers ``top`` with counts and the hottest facts (schema ``conctools.top/1``); rates
(CPU, GIL wait) come from the difference between this answer and the previous one, so the view
needs no state in the process. Lines are cut to the terminal's width when one is given. Names
from the program are neutralised.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from conctools._units import format_bytes, format_duration
from conctools.reporting._safe import neutralise
from conctools.reporting._summary import SIGNAL_KINDS
from conctools.reporting._table import table

__all__ = ["cpu_percent", "render_top"]

_HOTTEST = 8


def _ranked(counts: Mapping[str, int] | None) -> str:
    if not counts:
        return ""
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _cpu_s(doc: Mapping[str, Any]) -> float:
    r = doc.get("resources") or {}
    return float(r.get("cpu_user_s") or 0.0) + float(r.get("cpu_system_s") or 0.0)


def cpu_percent(doc: Mapping[str, Any], previous: Mapping[str, Any] | None) -> tuple[float | None, str]:
    """CPU use in percent of one core: between two answers, else the average since the start."""
    if previous is not None:
        wall = float(doc.get("taken_wall") or 0.0) - float(previous.get("taken_wall") or 0.0)
        if wall > 0:
            return 100.0 * max(0.0, _cpu_s(doc) - _cpu_s(previous)) / wall, ""
    uptime = (doc.get("process") or {}).get("uptime_s")
    if isinstance(uptime, (int, float)) and uptime > 0:
        return 100.0 * _cpu_s(doc) / uptime, " (average since start)"
    return None, ""


def _gil_line(doc: Mapping[str, Any], previous: Mapping[str, Any] | None) -> str | None:
    gil = doc.get("gil")
    if not isinstance(gil, dict):
        return None
    wait = float(gil.get("gil_wait_s") or 0.0)
    wall = float(gil.get("wall_s") or 0.0)
    before = previous.get("gil") if previous is not None else None
    if isinstance(before, dict) and wall > float(before.get("wall_s") or 0.0):
        rate = (wait - float(before.get("gil_wait_s") or 0.0)) / (wall - float(before.get("wall_s") or 0.0))
        how = "now"
    else:
        rate = wait / wall if wall > 0 else 0.0
        how = "on average"
    waiting = ", ".join(
        f"{t.get('name')!r} {format_duration(float(t.get('gil_wait_s') or 0.0))}"
        for t in gil.get("threads", [])
        if t.get("gil_wait_s")
    )
    parallelism = float(gil.get("parallelism") or 0)
    line = f"GIL:      threads wait {rate:.2f} s per second for it ({how}); parallelism {parallelism:.2f}"
    return line + (f"; most waited: {waiting}" if waiting else "")


def _loop_line(loop: Mapping[str, Any]) -> str:
    where = f"{loop.get('thread_name')!r}" if loop.get("thread_name") else "?"
    text = f"  loop in {where}: {loop.get('tasks', 0)} tasks"
    if loop.get("stalled_s") is not None:
        at = loop.get("stall_at") or {}
        culprit = f" at {at.get('filename')}:{at.get('lineno')} in {at.get('function')}" if at else ""
        return text + f", BLOCKED for {format_duration(loop['stalled_s'])}{culprit}"
    if isinstance(loop.get("lag_now_s"), (int, float)):
        return text + f", lag now {format_duration(loop['lag_now_s'])}"
    return text + ", lag unknown (no loop monitor)"


def render_top(
    doc: Mapping[str, Any], previous: Mapping[str, Any] | None = None, *, width: int | None = None, hint: str = ""
) -> str:
    """One screen of ``conctools top``; ``width`` cuts long lines; ``hint`` ends the first line."""
    process = doc.get("process") or {}
    uptime = process.get("uptime_s")
    up = f"up {format_duration(uptime)}" if isinstance(uptime, (int, float)) else ""
    clock = time.strftime("%H:%M:%S", time.localtime(float(doc.get("taken_wall") or 0.0)))
    lines = [f"conctools top - pid {process.get('pid', '?')}   {up}   {clock}{hint}"]
    lines.append(f"Program:  {process.get('command', '?')}")
    r = doc.get("resources") or {}
    cpu, how = cpu_percent(doc, previous)
    usage = [f"CPU {cpu:.1f}%{how}" if cpu is not None else "CPU ?"]
    if r.get("rss_bytes") is not None:
        usage.append(f"RSS {format_bytes(r['rss_bytes'])}")
    if r.get("num_fds") is not None:
        usage.append(f"fds {r['num_fds']}")
    lines.append("Process:  " + "   ".join(usage))
    gil = _gil_line(doc, previous)
    if gil:
        lines.append(gil)
    threads = doc.get("threads") or {}
    lines.append(
        f"Threads:  {threads.get('total', 0)} of the program ({_ranked(threads.get('by_state')) or 'none'})"
        f" + {threads.get('own', 0)} of conctools"
    )
    tasks = doc.get("tasks") or {}
    described = tasks.get("by_awaits")
    what = _ranked(described) if described is not None else _ranked(tasks.get("by_state")) + " (too many to describe)"
    lines.append(f"Tasks:    {tasks.get('total', 0)}" + (f" ({what})" if tasks.get("total") else ""))
    for loop in doc.get("loops") or []:
        lines.append(_loop_line(loop))
    waits = doc.get("waits_now") or []
    lines.append("")
    lines.append("Waits on traced locks now (most waiters first):" if waits else "Waits on traced locks now: none")
    if waits:
        rows: list[tuple[Any, ...]] = []
        for w in waits:
            held = ", ".join(w.get("holders") or []) or "nobody (a signal not given yet)"
            if w.get("held_for_s") is not None:
                held += f" for {format_duration(w['held_for_s'])} at {w.get('held_at')}"
            rows.append((w.get("waiters"), format_duration(float(w.get("longest_s") or 0.0)), w.get("lock"), held))
        lines.append(table(("waiters", "longest", "lock", "held by"), rows, right=(0, 1)))
    hottest = [row for row in doc.get("lock_table") or [] if row.get("kind") not in SIGNAL_KINDS][:_HOTTEST]
    if hottest:
        lines.append("")
        lines.append("Hottest locks so far (most total wait first):")
        rows = [
            (
                row.get("name"),
                row.get("kind"),
                row.get("contentions"),
                format_duration(float(row.get("wait_total_s") or 0.0)),
                format_duration(float(row.get("wait_p99_s") or 0.0)),
                format_duration(float(row.get("wait_max_s") or 0.0)),
            )
            for row in hottest
        ]
        lines.append(table(("lock", "kind", "contended", "waited", "p99", "max"), rows, right=(2, 3, 4, 5)))
    stalls = doc.get("stalls")
    if isinstance(stalls, dict):
        lag = stalls.get("loop_lag") or {}
        lag_text = ""
        if lag.get("count"):
            p50, p99, most = (format_duration(float(lag.get(k) or 0)) for k in ("p50_s", "p99_s", "max_s"))
            lag_text = f"; loop lag p50 {p50}, p99 {p99}, max {most}"
        lines.append("")
        lines.append(
            f"Stalls so far: {stalls.get('count', 0)} ({format_duration(float(stalls.get('total_s') or 0))}){lag_text}"
        )
        for s in stalls.get("sites") or []:
            where = f"{s.get('site')} in {s.get('function')}" if s.get("function") else str(s.get("site"))
            count = int(s.get("count") or 0)
            most = format_duration(float(s.get("max_s") or 0))
            lines.append(f"  {where}: {count} stall{'' if count == 1 else 's'}, max {most}")
    for error in doc.get("errors") or []:
        lines.append(f"(could not read {error})")
    text = neutralise("\n".join(lines))
    if width is not None and width > 0:
        text = "\n".join(line[:width] for line in text.split("\n"))
    return text + "\n"
