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
import threading
import time

from conctools._context import capture_stack, current_task_name
from conctools.events import LockOrderEdge, LockOrderEvent
from conctools.recorder import get_recorder

__all__ = [
    "Held",
    "check",
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
_local = threading.local()


class Held:
    """One lock a thread holds, with where it was taken."""

    __slots__ = ("key", "name", "prim", "serial", "site")

    def __init__(self, prim: object, key: str, name: str, serial: int, site: str) -> None:
        self.prim = prim
        self.key = key
        self.name = name
        self.serial = serial
        self.site = site


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
    """Add the edges ``held -> entry`` (before a blocking wait, so a real deadlock is reported too)."""
    try:
        for h in held:
            if h.prim is entry.prim:
                continue  # re-entry is not an edge
            if h.key == entry.key:
                # Same class: order them per instance, and say which instance in the report.
                a, b = f"{h.key}#{h.serial}", f"{entry.key}#{entry.serial}"
                if (a, b) not in _edges:
                    _new_edge(a, b, h, entry, f"{h.name} #{h.serial}", f"{entry.name} #{entry.serial}")
            elif (h.key, entry.key) not in _edges:
                _new_edge(h.key, entry.key, h, entry, h.name, entry.name)
    except Exception:  # observation must never break the program
        _log.exception("conctools: lock-order check failed")


_task_stacks: dict[int, list[Held]] = {}


def task_held_stack(task: object) -> list[Held]:
    """The held locks of an asyncio task (a live list, innermost last)."""
    stack = _task_stacks.get(id(task))
    if stack is None:
        stack = _task_stacks[id(task)] = []
    return stack


def forget_task(task: object) -> None:
    """Drop a task's (empty) held stack, keeping the table bounded by tasks holding locks."""
    stack = _task_stacks.get(id(task))
    if stack is not None and not stack:
        _task_stacks.pop(id(task), None)


def note_acquired(held: list[Held], entry: Held) -> None:
    """``entry`` was just acquired by the owner of ``held``: add edges, then push it."""
    if held:
        check(held, entry)
    held.append(entry)


def note_released(held: list[Held], prim: object) -> None:
    """``prim`` was released: drop its newest entry from ``held``."""
    for i in range(len(held) - 1, -1, -1):
        if held[i].prim is prim:
            del held[i]
            return


def _new_edge(a: str, b: str, held: Held, entry: Held, a_name: str, b_name: str) -> None:
    stack = capture_stack(1, limit=32)
    edge = LockOrderEdge(
        from_lock=a_name,
        to_lock=b_name,
        from_site=held.site,
        to_site=entry.site,
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
