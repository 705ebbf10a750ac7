"""Text sections for deadlocks (priority 10) and hangs (priority 30).

A deadlock reads like jstack's "Found one Java-level deadlock": each thread or task of the
cycle, the lock it waits for and who holds it, where it waits and where it took what it
holds; then the stacks. A hang lists every thread and task, what each waits on, and its
stack. Pure functions of a :class:`~conctools.recorder.Snapshot`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from conctools._frames import hidden_note, hide_own_frames
from conctools._units import format_duration
from conctools.events import DeadlockEvent, FailureEvent, Frame, HangEvent, Participant, WaiterInfo
from conctools.recorder import Snapshot

__all__ = ["deadlock_section", "format_deadlock", "format_hang", "hang_section"]

_BRIEF_FRAMES = 12
_FULL_FRAMES = 64


def _short(filename: str) -> str:
    """Standard library and installed packages by their import path; the program's files in full."""
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    _, sep, tail = filename.partition("/lib/python3")
    if sep and "/" in tail:
        return tail.split("/", 1)[1]
    return filename


def _stack_lines(stack: Sequence[Frame], limit: int, indent: str = "    ") -> list[str]:
    stack, hidden = hide_own_frames(stack)
    lines = []
    for f in stack[:limit]:
        lines.append(f"{indent}at {f.function} ({_short(f.filename)}:{f.lineno})")
        if f.line:
            lines.append(f"{indent}    {f.line}")
    if len(stack) > limit:
        lines.append(f"{indent}... {len(stack) - limit} more frames")
    if hidden:
        lines.append(f"{indent}{hidden_note(hidden)}")
    return lines


def _who(p: Participant | WaiterInfo | FailureEvent) -> str:
    if p.task_name is not None:
        return f"task {p.task_name!r} (thread {p.thread_name!r})"
    return f"thread {p.thread_name!r}"


def format_deadlock(event: DeadlockEvent, *, brief: bool = False) -> str:
    """One deadlock in jstack's shape: the cycle, then every participant's stack."""
    title = "Found one Python-level deadlock:"
    lines = [title, "=" * len(title)]
    if event.summary:
        lines += _wrap(event.summary, "")
        lines.append("")
    for p in event.participants:
        lines.append(f"{_who(p)}:")
        lines.append(f"  waiting for {p.waits_for},")
        lines.append(f"  {_which(p)}")
        waited = f", for {format_duration(p.wait_s)}" if p.wait_s else ""
        lines.append(f"  waits at {p.wait_site}{waited}")
        if p.suspended_at and p.suspended_at.split(":")[:2] != p.wait_site.split(":")[:2]:
            lines.append(f"  suspended at {p.suspended_at}")
        for name, site in zip(p.holds, p.holds_sites, strict=False):
            where = site if site and site != "?" else "an unrecorded site"
            lines.append(f"  holds {name}, acquired at {where}")
        for name, site in zip(p.thread_holds, p.thread_holds_sites, strict=False):
            where = site if site and site != "?" else "an unrecorded site"
            lines.append(
                f"  its thread holds {name}, acquired at {where} by a task of its loop that was not recorded"
                " (this one or another)"
            )
    if len(event.participants) == 1 and not event.summary:
        lines.append(
            "  (it waits for itself: a non-reentrant lock taken twice, or a lock left locked by a"
            " finished thread whose id this thread now reuses)"
        )
    for advice in event.advice:
        lines += _wrap(advice, "  ", "Advice: ")
    lines.append("")
    title = "Stacks of the threads and tasks listed above:"
    lines += [title, "=" * len(title)]
    limit = _BRIEF_FRAMES if brief else _FULL_FRAMES
    for p in event.participants:
        lines.append(f"{_who(p)}:")
        lines.append(f"    - waiting for {p.waits_for} ({_which(p).removeprefix('which ').removeprefix('is ')})")
        for name in p.holds:
            lines.append(f"    - holds {name}")
        lines += _stack_lines(p.stack, limit) or ["    (no stack)"]
    return "\n".join(lines)


def _which(p: Participant) -> str:
    """The second line of a participant: who can end its wait, worded for the kind of wait."""
    if p.waits_kind == "loop":
        return f"which is blocked by {p.held_by}"
    if p.waits_kind in ("future", "loop-tasks", "await"):
        return f"which depends on {p.held_by}"
    if p.waits_kind == "join":
        return f"which is {p.held_by}, still running"
    return f"which is held by {p.held_by}"


def _wrap(text: str, indent: str, first: str = "") -> list[str]:
    """``text`` as lines of at most ~100 characters (reports are read in terminals)."""
    return textwrap.wrap(
        first + text,
        width=100,
        initial_indent=indent,
        subsequent_indent=indent + " " * len(first),
        break_long_words=False,
        break_on_hyphens=False,
    )


def deadlock_section(snapshot: Snapshot, brief: bool) -> str | None:
    """Every deadlock found (priority 10: the first thing to read)."""
    events: list[DeadlockEvent] = snapshot.of_kind(DeadlockEvent)
    if not events:
        return None
    parts = [format_deadlock(e, brief=brief) for e in events]
    n = len(events)
    parts.append(f"Found {n} deadlock{'s' if n != 1 else ''}.")
    return "\n\n".join(parts)


def format_hang(event: HangEvent, *, brief: bool = False) -> str:
    """One hang: why, then every thread and task with what it waits on and its stack."""
    title = "Hang: the program stopped making progress"
    lines = [title, "=" * len(title), event.reason, ""]
    limit = _BRIEF_FRAMES if brief else _FULL_FRAMES
    for w in event.waiters:
        flags = " (daemon)" if w.daemon and w.task_name is None else ""
        lines.append(f"{_who(w)}{flags} [{w.state}]:")
        if w.waits_on:
            lines.append(f"    - waits on {w.waits_on}")
        lines += _stack_lines(w.stack, limit) or ["    (no stack)"]
    if event.failures:
        lines.append("")
        title = "Ended with an exception before the hang:"
        lines += [title, "-" * len(title)]
        for f in event.failures:
            message = f": {f.message}" if f.message else ""
            lines.append(f"{f.who} ended with {f.exc_type}{message}")
            lines.append(f"    at {f.site}")
            if f.objects:
                lines.append(f"    it was using {', '.join(f.objects[:5])}")
            lines += _stack_lines(f.stack, 4 if brief else 12)
    return "\n".join(lines)


def hang_section(snapshot: Snapshot, brief: bool) -> str | None:
    """Every hang found (priority 30): all threads' and tasks' stacks and waits."""
    events: list[HangEvent] = snapshot.of_kind(HangEvent)
    if not events:
        return None
    shown = events[-1:] if brief else events
    parts = [format_hang(e, brief=brief) for e in shown]
    if len(shown) < len(events):
        parts.append(f"... {len(events) - len(shown)} earlier hang(s) in the full report")
    return "\n\n".join(parts)
