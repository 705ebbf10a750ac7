"""Lock-order checking: Python's lockdep.

Every traced lock belongs to a *class*: its ``name=`` when given, else its creation site, so
the thousand locks created on one line are one node. When a thread (or task) that holds A
acquires B, the graph gets an edge A -> B. A cycle in that graph means two code paths take
the same locks in opposite orders: a potential deadlock, even if this run was lucky. Each
distinct cycle is recorded once, as a :class:`~conctools.events.LockOrderEvent` whose edges
say where each lock was taken and by whom (ThreadSanitizer's shape; the text report adds
lockdep's CPU0/CPU1 scenario).

Two locks of the same class nested in each other (``a, b = Lock(), Lock()`` on one line, or
per-account locks) cannot be ordered by class, so those edges are kept per instance: taking
them in one global order (say, sorted by id) is fine, taking them both ways is reported.

Checking costs a thread-local lookup and a dict lookup per held lock on every acquisition,
so it is a mode: :func:`enable` (what ``trace_locks(lock_order=True)`` and ``conctools run``
do) makes locks created from then on check their order.
"""

from __future__ import annotations

import _thread
import logging
import os
import threading
import time
from types import FrameType
from typing import Any

from conctools._context import _SAMPLE_DIR, _SKIP_MAYBE, capture_stack, current_task_name
from conctools.events import LockOrderEdge, LockOrderEvent
from conctools.recorder import get_recorder

__all__ = [
    "Held",
    "check",
    "code_site",
    "disable",
    "enable",
    "forget_task",
    "graph_size",
    "held_stack",
    "is_enabled",
    "note_acquired",
    "note_released",
    "reported_cycles",
    "reset",
    "site_text",
    "task_held_stack",
]

_log = logging.getLogger("conctools.lockorder")

MAX_EDGES = 50_000  # bounded memory: past this, new edges are not tracked (logged once)

_mutex = _thread.allocate_lock()
_enabled = [0]  # nesting depth of enable()
# (from_key, to_key) -> the first edge seen; adjacency for cycle search.
_edges: dict[tuple[str, str], LockOrderEdge] = {}
_succ: dict[str, set[str]] = {}
_names: dict[str, str] = {}  # node key -> display name
_reported: set[tuple[str, ...]] = set()
_full = [False]
_generation = [0]  # bumped by reset(): caches of known edges (the C extension's) start over
_local = threading.local()


# A held lock: (weak reference to the primitive, class key, display name, serial, site): weak,
# so a lock dropped while held (acquired, never released, garbage) leaves the stack. The site is a
# "file.py:LINE" string or a (code, instruction offset) pair turned into one only when an
# edge is new (see :func:`site_text`): the hot path never computes a line number.
Held = tuple[Any, str, str, int, Any]

_site_texts: dict[tuple[Any, int], str] = {}


def code_site(frame: FrameType | None) -> Any:
    """The (code, offset) of the first frame outside conctools, asyncio, threading & co."""
    while frame is not None:
        filename = frame.f_code.co_filename
        # _SKIP_PREFIXES, in 8 prefixes instead of ~40: the package (but the sample server) and the stdlib's
        if not filename.startswith(_SKIP_MAYBE) or filename.startswith(_SAMPLE_DIR):
            break
        frame = frame.f_back
    if frame is None:
        return "?"
    return (frame.f_code, frame.f_lasti)


def site_text(site: Any) -> str:
    """``file.py:LINE`` of a site from :func:`code_site` (or a site already in text)."""
    if isinstance(site, str):
        return site
    text = _site_texts.get(site)
    if text is None:
        code, lasti = site
        line = code.co_firstlineno
        for start, end, lineno in code.co_lines():
            if start <= lasti < end and lineno is not None:
                line = lineno
                break
        base = os.path.basename(code.co_filename)
        if base in ("__init__.py", "__main__.py"):
            base = os.path.join(os.path.basename(os.path.dirname(code.co_filename)), base)
        text = f"{base}:{line}"
        if len(_site_texts) < 100_000:
            _site_texts[site] = text
    return text


def enable() -> None:
    """Switch lock-order checking on for locks created from now on (nests)."""
    with _mutex:
        _enabled[0] += 1


def disable() -> None:
    """Undo one :func:`enable`."""
    with _mutex:
        _enabled[0] = max(0, _enabled[0] - 1)


def is_enabled() -> bool:
    """True while at least one :func:`enable` is active."""
    return _enabled[0] > 0


def reset() -> None:
    """Forget every edge and reported cycle (tests, or a new run)."""
    with _mutex:
        _edges.clear()
        _succ.clear()
        _names.clear()
        _reported.clear()
        _full[0] = False
        _generation[0] += 1


def graph_size() -> int:
    """The number of distinct edges recorded."""
    return len(_edges)


def reported_cycles() -> list[tuple[str, ...]]:
    """The cycles reported so far, as tuples of node keys."""
    with _mutex:
        return sorted(_reported)


def held_stack() -> list[Held]:
    """The calling thread's held locks (a live list, innermost last)."""
    try:
        stack: list[Held] = _local.stack
    except AttributeError:
        stack = _local.stack = []
    return stack


def check(held: list[Held], entry: Held) -> None:
    """Add the edges ``held -> entry``.

    Called BEFORE the lock in ``entry`` is taken (the stack is the same as after it, and nothing
    that allocates may run between an acquire and the caller's next statement); a real deadlock is
    therefore reported as an inversion too. A new edge captures its stack and records an event:
    if that work runs a finalizer which takes traced locks in turn, their checks are skipped
    (never re-entered), so the check can neither recurse nor wait for itself.
    """
    if getattr(_local, "checking", False):
        return
    _local.checking = True
    try:
        me = entry[0]()
        dead = False
        for h in held:
            other = h[0]()
            if other is None:  # dropped without a release: it can never be waited for again
                dead = True
                continue
            if other is me:
                continue  # re-entry is not an edge
            if h[1] == entry[1]:
                # Same class: order them per instance, and say which instance in the report.
                a, b = f"{h[1]}#{h[3]}", f"{entry[1]}#{entry[3]}"
                if (a, b) not in _edges:
                    from conctools._lockname import instance_ordinal  # #1, #2 as the deadlock report says

                    _new_edge(
                        a, b, h, entry, f"{h[2]} #{instance_ordinal(other)}", f"{entry[2]} #{instance_ordinal(me)}"
                    )
            elif (h[1], entry[1]) not in _edges:
                _new_edge(h[1], entry[1], h, entry, h[2], entry[2])
        if dead:
            held[:] = [h for h in held if h[0]() is not None]
    except Exception:  # observation must never break the program
        _log.exception("conctools: lock-order check failed")
    finally:
        _local.checking = False


_task_stacks: dict[int, list[Held]] = {}
# Empty stacks given back by forget_task(), reused by the next tasks: a program running thousands of
# short tasks that each take a lock once makes no list per task (less work for the garbage collector).
_spare_stacks: list[list[Held]] = []


def task_held_stack(task: object) -> list[Held]:
    """The held locks of an asyncio task (a live list, innermost last)."""
    stack = _task_stacks.get(id(task))
    if stack is None:
        stack = _spare_stacks.pop() if _spare_stacks else []
        _task_stacks[id(task)] = stack
    return stack


def forget_task(task: object) -> None:
    """Drop a task's (empty) held stack, keeping the table bounded by tasks holding locks."""
    stack = _task_stacks.get(id(task))
    if stack is not None and not stack:
        _task_stacks.pop(id(task), None)
        if len(_spare_stacks) < 64:
            _spare_stacks.append(stack)


def note_acquired(held: list[Held], entry: Held) -> None:
    """``entry`` was just acquired by the owner of ``held``: add edges, then push it."""
    if held:
        check(held, entry)
    held.append(entry)


def note_released(held: list[Held], prim: object) -> None:
    """``prim`` was released: drop its newest entry from ``held``."""
    if held and held[-1][0]() is prim:
        del held[-1]
        return
    for i in range(len(held) - 1, -1, -1):
        if held[i][0]() is prim:
            del held[i]
            return


def _new_edge(a: str, b: str, held: Held, entry: Held, a_name: str, b_name: str) -> None:
    stack = capture_stack(1, limit=32)
    edge = LockOrderEdge(
        from_lock=a_name,
        to_lock=b_name,
        from_site=site_text(held[4]),
        to_site=site_text(entry[4]),
        thread_name=threading.current_thread().name,
        task_name=current_task_name(),
        stack=stack,
    )
    with _mutex:
        if (a, b) in _edges:
            return
        if len(_edges) >= MAX_EDGES:
            if not _full[0]:
                _full[0] = True
                _log.warning("conctools: lock-order graph is full (%d edges); new edges are ignored", MAX_EDGES)
            return
        _edges[(a, b)] = edge
        _succ.setdefault(a, set()).add(b)
        _names[a] = a_name
        _names[b] = b_name
        path = _path(b, a)
        if path is None:
            return
        cycle = _canonical(path)  # b ... a, closing with the new edge a -> b
        if cycle in _reported:
            return
        _reported.add(cycle)
        edges = tuple(_edges[(cycle[i], cycle[(i + 1) % len(cycle)])] for i in range(len(cycle)))
    names = tuple(_names.get(k, k) for k in cycle)
    ident = threading.get_ident()
    get_recorder().record(
        LockOrderEvent(
            ts_ns=time.monotonic_ns(),
            thread_id=ident,
            thread_name=threading.current_thread().name,
            task_name=current_task_name(),
            cycle=names,
            edges=edges,
        )
    )


def _path(start: str, goal: str) -> list[str] | None:
    """A path start ->* goal in the graph (caller holds ``_mutex``), by depth-first search."""
    parent: dict[str, str | None] = {start: None}
    todo = [start]
    while todo:
        node = todo.pop()
        if node == goal:
            out = [node]
            prev = parent[node]
            while prev is not None:
                out.append(prev)
                prev = parent[prev]
            out.reverse()
            return out
        for nxt in _succ.get(node, ()):
            if nxt not in parent:
                parent[nxt] = node
                todo.append(nxt)
    return None


def _canonical(path: list[str]) -> tuple[str, ...]:
    """The cycle ``path`` (first != last; the last links back to the first) rotated to start at its least key."""
    i = path.index(min(path))
    return tuple(path[i:] + path[:i])
