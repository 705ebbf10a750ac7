"""Who waits on a stuck process, across processes: pure functions of the processes' records.

Each process's record lists what its threads wait for in other processes (a child they join,
a pool's workers, the writers of a pipe). :func:`build_chain` walks those waits backwards
from the stuck process: the threads that wait on it, then the threads that wait on *their*
processes, up to the program's main process, and returns them main process first, the way
a person reads the story: "MainThread waits on child 12, which waits on Lock 'x.py:3'".
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence

from conctools._records import replace
from conctools._typing import Any
from conctools.events import Frame, ProcessWaitLink, frame_from_dict

__all__ = ["build_chain", "describe_targets", "program_site", "unresolved_links"]

_STDLIB = os.path.dirname(threading.__file__) + os.sep
_NOT_PROGRAM = (
    _STDLIB + "multiprocessing" + os.sep,
    _STDLIB + "concurrent" + os.sep,
    _STDLIB + "threading.py",
    _STDLIB + "subprocess.py",
    _STDLIB + "selectors.py",
    _STDLIB + "queue.py",
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
)


def program_site(stack: Sequence[Frame]) -> str:
    """``file:line`` of the innermost frame of the program (not the waiting machinery)."""
    for f in stack:
        if not f.filename.startswith(_NOT_PROGRAM):
            return f.site
    return stack[0].site if stack else "?"


def describe_targets(kind: str, pids: Sequence[int], names: Mapping[int, str]) -> str:
    """The processes a wait of ``kind`` waits on, in words to append to what it waits on:
    `` of child pid 12 'Process-1'``, `` (pids 12 'ForkPoolWorker-1', 13 'ForkPoolWorker-2')``."""
    if not pids or kind == "mpsync":  # a shared lock's wait names its holder in its own words
        return ""
    parts = [f"{pid} {names[pid]!r}" if names.get(pid) else str(pid) for pid in pids]
    listed = f"pid {parts[0]}" if len(parts) == 1 else "pids " + ", ".join(parts)
    if kind in ("join", "popen"):
        return f" of child {listed}"
    if kind in ("queue", "pipe"):
        return f", which {listed} could send"
    return f" ({listed})"


def build_chain(
    stuck_pid: int,
    waits_by_pid: Mapping[int, Sequence[Mapping[str, Any]]],
    names: Mapping[int, str],
) -> tuple[ProcessWaitLink, ...]:
    """The waits that lead to ``stuck_pid``, outermost process first.

    ``waits_by_pid`` maps a pid to its threads' cross-process waits (dicts as a process record
    holds them: ``thread_id``, ``thread_name``, ``waits_on``, ``target_pids``, ``timeout_s``,
    ``stack``); ``names`` maps pids to process names.
    """
    level = {stuck_pid}
    seen = {stuck_pid}
    levels: list[list[ProcessWaitLink]] = []
    while level:
        found: list[ProcessWaitLink] = []
        reached: set[int] = set()
        for pid in sorted(waits_by_pid):
            if pid in seen:
                continue
            for wait in waits_by_pid[pid]:
                targets = [int(t) for t in wait.get("target_pids") or ()]
                if not level.intersection(targets):
                    continue
                found.append(_link(pid, wait, targets, names))
                reached.add(pid)
        if not found:
            break
        levels.append(found)
        seen |= reached
        level = reached
    return tuple(link for found in reversed(levels) for link in found)


def unresolved_links(
    pid: int, waits: Sequence[Mapping[str, Any]], names: Mapping[int, str]
) -> tuple[ProcessWaitLink, ...]:
    """Waits of ``pid`` on other processes that cannot be named (the other end of a pipe that
    ``/proc`` does not show), as links that say so."""
    out = []
    for wait in waits:
        link = _link(pid, wait, [], names)
        out.append(replace(link, waits_on=link.waits_on + " (conctools cannot tell which process sends it)"))
    return tuple(out)


def _link(pid: int, wait: Mapping[str, Any], targets: list[int], names: Mapping[int, str]) -> ProcessWaitLink:
    stack = tuple(frame_from_dict(f) for f in wait.get("stack") or ())
    timeout = wait.get("timeout_s")
    words = str(wait.get("waits_on") or "another process")
    return ProcessWaitLink(
        pid=pid,
        process_name=names.get(pid, ""),
        thread_id=int(wait.get("thread_id") or 0),
        thread_name=str(wait.get("thread_name") or "?"),
        waits_on=words + describe_targets(str(wait.get("kind") or ""), targets, names),
        site=program_site(stack),
        target_pids=tuple(targets),
        timeout_s=float(timeout) if isinstance(timeout, (int, float)) else None,
        stack=stack,
    )
