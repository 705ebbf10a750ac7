"""Text sections for the processes of a run: a child stuck and who waits on it (priority 6),
the table of processes with how each ended (priority 8), and each child's own findings (9).

A parent stuck on a child reads as one story, main process first::

    A child process is deadlocked, and the program waits on it
    process 4242 'MainProcess', thread 'MainThread':
      waits on multiprocessing.Pool.map() results from the pool's workers (pids 4243 ..., 4244 ...), at x.py:20
    process 4243 'ForkPoolWorker-1' is deadlocked:
      thread 'MainThread' waits for Lock 'x.py:3' held by thread 'MainThread' at x.py:9

followed by the waiting threads' stacks and the child's own deadlock report. Pure functions
of a :class:`~conctools.recorder.Snapshot`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from conctools._frames import hidden_note, hide_own_frames
from conctools._units import format_bytes, format_duration
from conctools.events import Frame, ProcessStuckEvent, frame_from_dict
from conctools.recorder import Snapshot
from conctools.reporting._table import table
from conctools.reporting.processes import ProcessView, label_of, processes_of

__all__ = [
    "child_findings_section",
    "format_process_stuck",
    "process_stuck_section",
    "processes_table_section",
]

_BRIEF_FRAMES = 12
_FULL_FRAMES = 64
# A child's own sections shown in the brief report: its problems (deadlocks, inversions, hangs, stalls).
_PROBLEMS = 45


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    _, sep, tail = filename.partition("/lib/python3")
    if sep and "/" in tail:
        return tail.split("/", 1)[1]
    return filename


def _stack_lines(stack: Sequence[Frame], limit: int, indent: str = "    ") -> list[str]:
    shown, hidden = hide_own_frames(stack)
    lines = []
    for f in shown[:limit]:
        lines.append(f"{indent}at {f.function} ({_short(f.filename)}:{f.lineno})")
        if f.line:
            lines.append(f"{indent}    {f.line}")
    if len(shown) > limit:
        lines.append(f"{indent}... {len(shown) - limit} more frames")
    if hidden:
        lines.append(f"{indent}{hidden_note(hidden)}")
    return lines


def _frames(raw: object) -> list[Frame]:
    out = []
    for f in raw if isinstance(raw, list) else []:
        try:
            out.append(frame_from_dict(f))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _names(snapshot: Snapshot) -> dict[int, str]:
    return {p.pid: p.name for p in processes_of(snapshot)}


def format_process_stuck(event: ProcessStuckEvent, snapshot: Snapshot, *, brief: bool = False) -> str:
    """A stuck child and the chain of waits that leads to it, with the waiting threads' stacks and
    the child's own report of why it is stuck."""
    names = {**_names(snapshot), event.pid: event.process_name or _names(snapshot).get(event.pid, "?")}
    state = {"deadlock": "deadlocked", "dead": "dead", "ended": "ended"}.get(event.verdict, "hung")
    if state == "dead":
        title = "A child process died, and the program waits on it forever"
    elif state == "ended":
        title = "A child process ended, and the program waits forever on what only it could have done"
    elif event.chain and any(link.pid == event.pid for link in event.chain):
        title = "Processes deadlocked on each other: a cycle of waits across processes"
    elif event.chain:
        title = f"A child process is {state}, and the program waits on it"
    else:
        title = f"A child process is {state}"
    lines = [title, "=" * len(title)]
    for link in event.chain:
        lines.append(
            f"process {link.pid} {link.process_name or names.get(link.pid, '?')!r}, thread {link.thread_name!r}:"
        )
        timeout = f" (with a timeout of {link.timeout_s:g}s)" if link.timeout_s is not None else ""
        lines.append(f"  waits on {link.waits_on}{timeout}, at {link.site}")
    verb = {"dead": "died", "ended": "ended"}.get(state, "is " + state)
    lines.append(f"process {event.pid} {names.get(event.pid, '?')!r} {verb}:")
    lines.append(f"  {event.reason}")
    if not event.chain:
        lines.append("  (no thread of the run's other processes was seen waiting on it)")
    limit = _BRIEF_FRAMES if brief else _FULL_FRAMES
    if event.chain:
        lines += ["", "Stacks of the waiting threads:"]
        for link in event.chain:
            lines.append(f"process {link.pid}, thread {link.thread_name!r}:")
            lines.append(f"    - waits on {link.waits_on}")
            lines += _stack_lines(link.stack, limit) or ["    (no stack)"]
    child = next((p for p in processes_of(snapshot) if p.pid == event.pid and p.snapshot is not None), None)
    if child is not None and child.snapshot is not None:
        from conctools.reporting.text import render_sections

        own = render_sections(child.snapshot, brief=brief, priorities=lambda p: p in (10, 30))
        if own:
            lines += ["", f"In {label_of(child.entry)}:", *own]
    return "\n".join(lines)


def process_stuck_section(snapshot: Snapshot, brief: bool) -> str | None:
    """Every child found stuck (priority 6: the first thing to read), each with the chain of waits."""
    events: list[ProcessStuckEvent] = snapshot.of_kind(ProcessStuckEvent)
    if not events:
        return None
    return "\n\n".join(format_process_stuck(e, snapshot, brief=brief) for e in events)


def _program(entry: dict[str, object]) -> str:
    target = entry.get("target")
    if target:
        return str(target).replace("multiprocessing.pool.", "pool.").replace("concurrent.futures.process.", "")
    argv = entry.get("argv")
    if isinstance(argv, list) and argv:
        text = " ".join(str(a) for a in argv)
        return text if len(text) <= 48 else text[:45] + "..."
    return ""


def _cpu(entry: dict[str, object]) -> str:
    """CPU time: exact at the end, "≥" as of a process's last record, "-" when unknown."""
    cpu = entry.get("cpu_s")
    if not isinstance(cpu, (int, float)):
        return "-"
    return ("≥ " if entry.get("cpu_partial") else "") + format_duration(float(cpu))


def processes_table_section(snapshot: Snapshot, brief: bool) -> str | None:
    """The run's processes (priority 8): who started each, how it ended, CPU and peak RSS; then
    how the children that died, were killed or vanished ended, with their last stacks."""
    processes = processes_of(snapshot)
    if not processes:
        return None
    total_cpu = sum(float(p.entry.get("cpu_s") or 0.0) for p in processes)
    partial = any(p.entry.get("cpu_partial") for p in processes)
    children = len(processes) - 1
    title = f"Processes: the program and {children} child process{'es' if children != 1 else ''}"
    title += f" ({'at least ' if partial else ''}{format_duration(total_cpu)} CPU in all)"
    merged = snapshot.meta.get("merged_from")
    if isinstance(merged, list) and len(merged) > 1:
        title = f"{title}, merged from {len(merged)} reports: " + ", ".join(str(m) for m in merged)
    rows = []
    for p in processes:
        e = p.entry
        rows.append(
            (
                e.get("pid"),
                e.get("ppid") if e.get("ppid") is not None else "-",
                p.name,
                e.get("start_method") or "?",
                e.get("exit_text") or ("running" if p.is_main else "?"),
                _cpu(e),
                format_bytes(float(e.get("peak_rss_bytes") or 0)) if e.get("peak_rss_bytes") else "-",
                _program(e),
            )
        )
    body = table(
        ("pid", "parent", "name", "started by", "ended", "CPU", "peak RSS", "program"), rows, right=(0, 1, 5, 6)
    )
    parts = [f"{title}\n{body}"]
    limit = _BRIEF_FRAMES if brief else _FULL_FRAMES
    for p in processes:
        e = p.entry
        if p.is_main or not e.get("last_stack"):
            continue
        if e.get("stuck"):
            continue  # its report says why, in full, with the chain
        lines = [f"{label_of(e)} ended: {e.get('exit_text')}"]
        if e.get("ended_by") == "os._exit":
            lines[0] += " (it called os._exit)"
        seen, end = e.get("last_seen_wall"), e.get("reaped_wall")
        when = ""
        if isinstance(seen, (int, float)) and isinstance(end, (int, float)) and end >= seen:
            when = f", recorded {format_duration(end - seen)} before its parent saw it end"
        elif isinstance(seen, (int, float)):
            when = f", recorded at {time.strftime('%H:%M:%S', time.localtime(seen))}"
        lines.append(f"  its last stack (thread {str(e.get('last_stack_thread') or '?')!r}{when}):")
        lines += _stack_lines(_frames(e.get("last_stack")), limit) or ["    (no stack)"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def child_findings_section(snapshot: Snapshot, brief: bool) -> str | None:
    """Each child's own report (priority 9): its problems in the brief report, everything in the full one."""
    parts = []
    events = snapshot.of_kind(ProcessStuckEvent)
    stuck = {e.pid for e in events}
    told = {e.reason: e.pid for e in events}  # a finding already printed, by the process that had it
    for p in processes_of(snapshot):
        if p.is_main or p.snapshot is None:
            continue
        finding = p.entry.get("stuck")
        reason = finding.get("reason") if isinstance(finding, dict) else None
        if brief and isinstance(finding, dict) and reason and p.pid not in stuck:
            if reason in told:  # pool workers running the same job deadlock the same way
                state = "deadlocked" if finding.get("verdict") == "deadlock" else "hung"
                parts.append(f"In {label_of(p.entry)}: {state} the same way as process {told[reason]}: {reason}")
                stuck.add(p.pid)
            else:
                told[reason] = p.pid
        if brief:

            def wanted(priority: int, pid: int = p.pid) -> bool:
                # A stuck child's deadlock or hang is printed with its chain of waits.
                return priority < _PROBLEMS and not (pid in stuck and priority in (10, 30))

        else:

            def wanted(priority: int, pid: int = p.pid) -> bool:
                return not (pid in stuck and priority in (10, 30))

        own = _child_sections(p, p.snapshot, brief, wanted)
        if own:
            parts.append(own)
    return "\n\n".join(parts) or None


def _child_sections(p: ProcessView, child: Snapshot, brief: bool, wanted: Callable[[int], bool]) -> str | None:
    from conctools.reporting.text import render_sections

    sections = render_sections(child, brief=brief, priorities=wanted)
    if not sections:
        return None
    title = f"In {label_of(p.entry)}:"
    return "\n\n".join([f"{title}\n{'-' * len(title)}", *sections])
