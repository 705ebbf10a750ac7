"""``conctools dump PID`` as text: a pure function of the agent's JSON document.

What a person reads, in the order they need it: who the process is; any deadlock found now (in
the watchdog's own words, :func:`~conctools.reporting.deadlock_text.format_deadlock`) and a
hang; every thread with its state, what it waits on and its stack; every task of every loop
with what it awaits, who awaits it and its await chain; the locks held and awaited, by whom,
since when and where; the wait-for graph; what conctools found so far (the report's own
sections); resources. Threads or tasks with the same state and stack are shown once, with how
many share it and their names (1,000 idle workers are one block, not 1,000). Names from the
program are neutralised (no terminal escapes, no bidirectional overrides).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from conctools._units import format_bytes, format_duration
from conctools.events import DeadlockEvent, Frame, HangEvent, event_from_dict, frame_from_dict
from conctools.recorder import Snapshot
from conctools.reporting._safe import neutralise
from conctools.reporting.deadlock_text import _stack_lines, format_deadlock, format_hang

__all__ = ["render_dump"]

_STACK_LIMIT = 64
_NAMES_SHOWN = 8
_PARTIES_SHOWN = 8  # holders and waiters listed per lock, the longest waits first


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _title(text: str) -> list[str]:
    return [text, "=" * min(len(text), 78)]


def _clock(wall: float | None) -> str:
    if not wall:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall))


def _stack(rows: Iterable[dict[str, Any]]) -> tuple[Frame, ...]:
    return tuple(frame_from_dict(f) for f in rows)


def _group(rows: Sequence[dict[str, Any]], key_fields: Sequence[str]) -> list[list[dict[str, Any]]]:
    """Rows that read the same (same fields, same stack), together, in first-seen order."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        stack = tuple((f.get("filename"), f.get("lineno"), f.get("function")) for f in row.get("stack", ()))
        key = (tuple(str(row.get(k)) for k in key_fields), stack)
        groups.setdefault(key, []).append(row)
    return list(groups.values())


def _names(rows: Sequence[dict[str, Any]]) -> str:
    shown = ", ".join(repr(r.get("name")) for r in rows[:_NAMES_SHOWN])
    return shown + (f" and {len(rows) - _NAMES_SHOWN} more" if len(rows) > _NAMES_SHOWN else "")


def _header(doc: dict[str, Any]) -> list[str]:
    process = doc.get("process") or {}
    pid = process.get("pid", "?")
    lines = [f"conctools dump of process {pid}: {process.get('command') or '?'}"]
    run_command = str(process.get("run_command") or "")
    if run_command and run_command not in str(process.get("command")):
        lines.append(f"  program:  {process['run_command']}")
    python = f"{process.get('implementation', 'python')} {process.get('python', '?')}"
    lines.append(f"  python:   {python}, conctools {process.get('conctools', '?')}")
    uptime = process.get("uptime_s")
    up = f" (up {format_duration(uptime)})" if isinstance(uptime, (int, float)) else ""
    lines.append(f"  started:  {_clock(process.get('started_wall'))}{up}")
    built = doc.get("build_s")
    took = f" in {format_duration(built)}" if isinstance(built, (int, float)) else ""
    lines.append(f"  taken:    {_clock(doc.get('taken_wall'))}{took}")
    threads = [t for t in doc.get("threads", []) if not t.get("own")]
    states: dict[str, int] = {}
    for t in threads:
        states[t.get("state", "?")] = states.get(t.get("state", "?"), 0) + 1
    by_state = ", ".join(f"{n} {s}" for s, n in sorted(states.items(), key=lambda kv: (-kv[1], kv[0])))
    loops = doc.get("loops", [])
    held = len(doc.get("locks", []))
    lines.append(
        f"  now:      {_count(len(threads), 'thread')} ({by_state or 'none'}), "
        f"{_count(doc.get('tasks_total', 0), 'task')} in {_count(len(loops), 'event loop')}, "
        f"{_count(held, 'traced lock')} held or awaited (of {doc.get('traced_primitives', 0)} traced)"
    )
    return lines


def _found_now(doc: dict[str, Any]) -> list[str]:
    """Deadlocks and a hang the watchdog sees now, in its words."""
    wait_for = doc.get("wait_for") or {}
    parts: list[str] = []
    deadlocks = [event_from_dict(e) for e in wait_for.get("deadlocks", [])]
    for event in deadlocks:
        if isinstance(event, DeadlockEvent):
            parts.append(format_deadlock(event))
    if deadlocks:
        n = len(deadlocks)
        parts.append(f"Found {n} deadlock{'s' if n != 1 else ''} now.")
    hang = wait_for.get("hang")
    if hang:
        event = event_from_dict(hang)
        if isinstance(event, HangEvent):
            parts.append(format_hang(event))
    cycles = wait_for.get("await_cycles") or []
    if cycles:
        lines = _title("Await cycles: tasks awaiting each other (a deadlock without locks)")
        lines += [f"  await cycle: {' -> '.join(repr(n) for n in [*cycle, cycle[0]])}" for cycle in cycles if cycle]
        parts.append("\n".join(lines))
    return parts


def _threads(doc: dict[str, Any]) -> str:
    rows = doc.get("threads", [])
    program = [t for t in rows if not t.get("own")]
    own = [t for t in rows if t.get("own")]
    lines = _title(f"Threads ({len(program)} of the program)")
    for group in _group(program, ("state", "waits_on", "daemon")):
        first = group[0]
        flags = " (daemon)" if first.get("daemon") else ""
        if len(group) == 1:
            native = f", native {first['native_id']}" if first.get("native_id") else ""
            lines.append(f"thread {first.get('name')!r} (id {first.get('id')}{native}){flags} [{first.get('state')}]:")
        else:
            lines.append(f"{len(group)} threads with this stack: {_names(group)}{flags} [{first.get('state')}]:")
        if first.get("waits_on"):
            lines.append(f"    - waits on {first['waits_on']}")
        lines += _stack_lines(_stack(first.get("stack", ())), _STACK_LIMIT) or ["    (no Python frame)"]
    if own:
        lines.append("")
        lines.append("conctools' own threads (not shown): " + ", ".join(str(t.get("name")) for t in own))
    return "\n".join(lines)


def _loop_line(loop: dict[str, Any]) -> str:
    thread = loop.get("thread_name")
    where = f"thread {thread!r}" if thread else "an unknown thread"
    parts = [f"event loop {loop.get('kind', '?')} in {where}: {loop.get('tasks', 0)} tasks"]
    if loop.get("current_task"):
        parts.append(f"running {loop['current_task']!r}")
    if loop.get("monitored"):
        lag = loop.get("lag_now_s")
        if loop.get("stalled_s") is not None:
            stalled = f"BLOCKED for {format_duration(loop['stalled_s'])}"
            at = loop.get("stall_at")
            if at:
                stalled += f" at {at.get('filename')}:{at.get('lineno')} in {at.get('function')}"
            parts.append(stalled)
        elif isinstance(lag, (int, float)):
            parts.append(f"lag now {format_duration(lag)}")
    else:
        parts.append("no loop monitor (lag unknown)")
    return "; ".join(parts)


def _tasks(doc: dict[str, Any]) -> str | None:
    rows = doc.get("tasks", [])
    loops = doc.get("loops", [])
    if not rows and not loops:
        return None
    total = doc.get("tasks_total", len(rows))
    lines = _title(f"Tasks ({total} in {_count(len(loops), 'event loop')})")
    lines += [_loop_line(loop) for loop in loops]
    by_id = {r.get("id"): r for r in rows}
    for group in _group(rows, ("state", "coro", "awaits", "created_at")):
        first = group[0]
        created = f"  created at {first['created_at']}" if first.get("created_at") else ""
        if len(group) == 1:
            lines.append(f"task {first.get('name')!r} [{first.get('state')}] {first.get('coro')}{created}:")
        else:
            lines.append(
                f"{len(group)} tasks with this await chain: {_names(group)} [{first.get('state')}] "
                f"{first.get('coro')}{created}:"
            )
        if first.get("awaits"):
            lines.append(f"    - awaits {first['awaits']}")
        parents = [by_id[p]["name"] for p in first.get("awaited_by", []) if p in by_id]
        if parents and len(group) == 1:
            lines.append(f"    - awaited by {', '.join(repr(p) for p in parents[:_NAMES_SHOWN])}")
        lines += _stack_lines(_stack(first.get("stack", ())), _STACK_LIMIT) or ["    (no frame: not started yet)"]
    if len(rows) < total:
        lines.append(f"... {total - len(rows)} more tasks not listed")
    return "\n".join(lines)


def _party(p: dict[str, Any], holder: bool) -> str:
    verb, where = ("held by", "taken at") if holder else ("awaited by", "waiting at")
    timeout = f", timeout {p['timeout_s']}s" if p.get("timeout_s") is not None else ""
    if p.get("for_s") is None or not p.get("since_wall"):
        when = " (since when is not recorded: it was taken uncontended)" if holder else ""
        return f"    {verb} {p.get('who')}, {where} {p.get('site')}{when}{timeout}"
    since = time.strftime("%H:%M:%S", time.localtime(p["since_wall"]))
    return (
        f"    {verb} {p.get('who')} for {format_duration(p['for_s'])} (since {since}), {where} {p.get('site')}{timeout}"
    )


def _locks(doc: dict[str, Any]) -> str:
    rows = doc.get("locks", [])
    lines = _title(f"Locks held or awaited now ({len(rows)} of {doc.get('traced_primitives', 0)} traced)")
    if not rows:
        lines.append("  nothing traced is held or awaited")
    for row in rows:
        lines.append(f"{row.get('kind')} {row.get('name')!r} (created at {row.get('created_at')}):")
        for parties, holder in ((row.get("holders", []), True), (row.get("waiters", []), False)):
            lines += [_party(p, holder) for p in parties[:_PARTIES_SHOWN]]
            if len(parties) > _PARTIES_SHOWN:
                more = len(parties) - _PARTIES_SHOWN
                lines.append(f"    ... and {more} more {'holders' if holder else 'waiters'} (--json lists them all)")
    return "\n".join(lines)


def _graph(doc: dict[str, Any]) -> str:
    edges = (doc.get("wait_for") or {}).get("edges", [])
    lines = _title("Wait-for graph (who waits for whom now)")
    if not edges:
        lines.append("  nobody waits for anybody on a traced lock")
    for e in edges:
        waited = f", for {format_duration(e['wait_s'])}" if e.get("wait_s") else ""
        edge = f"{e.get('who')} waits for {e.get('waits_for')} held by {e.get('held_by')} at {e.get('wait_site')}"
        lines.append(f"  {edge}{waited}")
    return "\n".join(lines)


def _so_far(doc: dict[str, Any]) -> str | None:
    data = doc.get("so_far")
    if not data:
        return None
    from conctools.reporting.findings import findings_section
    from conctools.reporting.text import render_sections

    try:
        snapshot = Snapshot.from_dict(data)
    except ValueError as exc:
        return f"[what conctools found so far could not be read: {exc}]"
    parts = [*_title(f"Found so far (conctools' recorder, since {_clock(snapshot.started_wall)})")]
    try:
        findings = findings_section(snapshot, False)
    except Exception as exc:  # a summary: never lose the dump over it
        findings = f"[findings failed: {exc!r}]"
    sections = [findings] if findings else []
    sections += render_sections(snapshot)
    if not sections:
        parts.append("  nothing: no deadlock, hang, lock-order inversion, stall, contended lock or pool shortage")
        return "\n".join(parts)
    return "\n".join(parts) + "\n\n" + "\n\n".join(sections)


def _resources(doc: dict[str, Any]) -> str:
    r = doc.get("resources") or {}
    parts = [f"cpu {r.get('cpu_user_s', 0.0):.2f} s user + {r.get('cpu_system_s', 0.0):.2f} s system"]
    if r.get("rss_bytes") is not None:
        parts.append(f"rss {format_bytes(r['rss_bytes'])}")
    if r.get("num_threads") is not None:
        parts.append(f"{r['num_threads']} OS threads")
    if r.get("num_fds") is not None:
        parts.append(f"{r['num_fds']} fds")
    if r.get("ctx_switches_voluntary") is not None:
        parts.append(
            f"ctx switches {r['ctx_switches_voluntary']} voluntary / {r['ctx_switches_involuntary']} involuntary"
        )
    return "Resources now: " + ", ".join(parts)


def render_dump(doc: dict[str, Any]) -> str:
    """The dump document (schema ``conctools.dump/1``) as the text a person reads."""
    parts = ["\n".join(_header(doc))]
    parts += _found_now(doc)
    parts.append(_threads(doc))
    tasks = _tasks(doc)
    if tasks:
        parts.append(tasks)
    parts.append(_locks(doc))
    parts.append(_graph(doc))
    so_far = _so_far(doc)
    if so_far:
        parts.append(so_far)
    parts.append(_resources(doc))
    errors = doc.get("errors") or []
    if errors:
        parts.append("Parts the agent could not read:\n" + "\n".join(f"  {e}" for e in errors))
    return neutralise("\n\n".join(parts) + "\n")
