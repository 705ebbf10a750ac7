"""The deadlock and hang watchdog: who waits for whom, and why nothing moves.

A daemon thread, ``conctools-watchdog``, wakes a few times per ``timeout_s`` (a timed wait
on a plain lock: no busy loop) and looks at the program from outside:

* **Deadlocks.** It builds the *wait-for graph* from the lock registry
  (:func:`conctools.registry.primitives`): one node per thread or asyncio task, an edge from
  each waiter to each holder of what it waits on (a semaphore with several holders gives
  several edges), plus an edge from a suspended task to the party that blocks its event
  loop thread in a synchronous wait. Threads and tasks share the graph, so a thread waiting
  on a lock held by a task, and the reverse, close cycles too. A cycle whose every wait has
  lasted ``timeout_s`` (and has no timeout of its own) is a deadlock; each one is reported
  once, as a :class:`~conctools.events.DeadlockEvent`, to the recorder and the callback.
* **Hangs without a cycle** (an Event nobody sets, a lost wake-up, a pool waiting on
  itself, a queue nobody feeds, a join of a thread that never ends): when every thread is
  blocked *forever* (a wait without a timeout on a primitive, a ``Thread.join``, an idle
  pool worker, an event loop with pending tasks and nothing that could wake it) and nothing
  progressed for ``timeout_s``, it reports every thread's and task's stack and what each
  waits on (:class:`~conctools.events.HangEvent`). A thread running Python code, sleeping,
  in ``select()``/``recv()`` or in any wait with a timeout is *not* blocked forever: healthy
  idle programs are never reported. Waits the registry cannot see are read from the
  threads' frames: stdlib waits (``Condition.wait``, ``Event.wait``, ``Queue.get``,
  ``Future.result``, ``Thread.join``) with their timeout, and ``with lock:`` /
  ``lock.acquire()`` on an untraced, locked ``threading.Lock``/``RLock`` from the bytecode.

The graph and the cycle search are pure functions of registry records
(:func:`build_wait_graph`, :func:`find_deadlocks`), apart from the thread that drives them,
in the spirit of asyncio's ``tools.py``. The watchdog reads only atomic copies and plain
``_thread`` locks, never a program lock, so it cannot deadlock itself, and it never raises
into the program.

Exit statuses used by ``conctools run`` when it stops a stuck program:

* :data:`EXIT_DEADLOCK` (86): a deadlock was found; the report is on stderr.
* :data:`EXIT_HANG` (87): a hang was found; the report is on stderr.

>>> import conctools
>>> with conctools.watch_deadlocks(timeout_s=5.0) as watchdog:
...     pass
>>> watchdog.deadlocks
[]
"""

from __future__ import annotations

import _thread
import dis
import functools
import inspect
import logging
import os
import re
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal

from conctools import registry, taskdump
from conctools._context import frames_of, internal_thread, user_frame
from conctools.events import DeadlockEvent, Frame, HangEvent, Participant, WaiterInfo
from conctools.recorder import Recorder, get_recorder
from conctools.registry import Party, PrimitiveState

__all__ = [
    "EXIT_DEADLOCK",
    "EXIT_HANG",
    "DeadlockError",
    "DeadlockWatchdog",
    "PartyKey",
    "ThreadState",
    "WaitEdge",
    "WaitGraph",
    "build_wait_graph",
    "classify_thread",
    "cycle_key",
    "find_deadlocks",
    "stuck_parties",
    "watch_deadlocks",
]

_log = logging.getLogger("conctools.deadlock")

#: Exit status of ``conctools run`` when it found a deadlock (and printed the report).
EXIT_DEADLOCK = 86
#: Exit status of ``conctools run`` when it found a hang without a cycle (and printed the report).
EXIT_HANG = 87

WATCHDOG_THREAD_NAME = "conctools-watchdog"
_MAX_KEPT = 1000  # events kept in ``deadlocks`` / ``hangs`` (the recorder keeps its own)

# A node of the wait-for graph: ("thread", thread_id) or ("task", id(task)).
PartyKey = tuple[str, int]

_get_ident = _thread.get_ident
_STDLIB_DIR = os.path.dirname(threading.__file__) + os.sep
_THREADING_PY = _STDLIB_DIR + "threading.py"
_QUEUE_PY = _STDLIB_DIR + "queue.py"
_FUTURES_DIR = _STDLIB_DIR + "concurrent" + os.sep + "futures" + os.sep
_SELECTORS_PY = _STDLIB_DIR + "selectors.py"
_ASYNCIO_DIR = _STDLIB_DIR + "asyncio" + os.sep
_PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# Frames that belong to the waiting machinery rather than to the program.
_MACHINERY = (_THREADING_PY, _QUEUE_PY, _FUTURES_DIR, _PKG_DIR)
# Machinery frames that start a thread or a job: where the program's own code begins.
_BOUNDARIES = frozenset({"run", "_bootstrap", "_bootstrap_inner", "_worker"})


class DeadlockError(RuntimeError):
    """A wait-for cycle: raised in the main thread by ``watch_deadlocks(raise_in="main")``.

    ``cycle`` holds the participants (each with what it waits for, who holds it and where),
    ``event`` the recorded :class:`~conctools.events.DeadlockEvent`.
    """

    def __init__(self, cycle: tuple[Participant, ...], event: DeadlockEvent) -> None:
        self.cycle = cycle
        self.event = event
        super().__init__(describe_cycle(cycle))


def _who_waits(threads: int, tasks: int) -> str:
    """The hang's reason in words: one waiter waits for what nobody will do; several wait on each other."""
    parts = [f"{n} {what}{'' if n == 1 else 's'}" for n, what in ((threads, "thread"), (tasks, "task")) if n]
    if threads + tasks == 1:
        return f"the only {'thread' if threads else 'task'} waits forever on something nothing left running will do"
    return f"all {' and '.join(parts)} wait forever on something only another waiting one could release"


def describe_cycle(cycle: Sequence[Participant]) -> str:
    """One line per participant: ``thread 'a' waits for Lock 'b' held by thread 'b'``."""
    parts = [f"{p.who} waits for {p.waits_for} held by {p.held_by} at {p.wait_site}" for p in cycle]
    return "deadlock: " + "; ".join(parts)


# -- the wait-for graph (pure) -------------------------------------------------------------


def party_key(party: Party) -> PartyKey:
    """The graph node of ``party``: its task when it is a task, else its thread."""
    if party.task_id is not None:
        return ("task", party.task_id)
    return ("thread", party.thread_id)


def prim_label(prim: PrimitiveState) -> str:
    """``Lock 'name'``: how reports name a primitive."""
    return f"{prim.kind} {prim.name!r}"


def _is_sync_kind(kind: str) -> bool:
    """A threading primitive: waiting on it blocks the whole thread (and its event loop)."""
    return not kind.startswith("aio.")


def _reentrant(kind: str) -> bool:
    return kind in ("RLock",) or kind.endswith(".RLock")


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitEdge:
    """``waiter`` waits for ``holder``: on ``prim``, or (``prim is None``) for its event loop
    thread, which ``holder`` blocks in a synchronous wait."""

    waiter: Party
    holder: Party
    prim: PrimitiveState | None
    waiter_key: PartyKey
    holder_key: PartyKey


@dataclass(frozen=True, slots=True)
class WaitGraph:
    """The wait-for graph at one instant.

    ``edges`` maps each waiting party to its out-edges; ``waits`` maps it to the primitive
    it waits on (its own registry record); ``holds`` maps every party to what it holds.
    """

    edges: Mapping[PartyKey, tuple[WaitEdge, ...]]
    waits: Mapping[PartyKey, tuple[Party, PrimitiveState]]
    holds: Mapping[PartyKey, tuple[tuple[PrimitiveState, Party], ...]]


def build_wait_graph(prims: Iterable[PrimitiveState]) -> WaitGraph:
    """The wait-for graph of ``prims`` (registry records): pure, never touches the program.

    A wait on a threading primitive blocks the whole thread, so its node is the thread even
    when a task waits; a wait on an asyncio primitive is the task's own. An RLock's owner
    waiting on its own RLock is re-entry in progress, not an edge.
    """
    prims = tuple(prims)
    # Per thread: the party blocking it synchronously (a thread, or a task in a sync wait).
    sync_blockers: dict[int, Party] = {}
    for prim in prims:
        if _is_sync_kind(prim.kind):
            for waiter in prim.waiters:
                sync_blockers.setdefault(waiter.thread_id, waiter)

    def waiter_key(party: Party, prim: PrimitiveState) -> PartyKey:
        if _is_sync_kind(prim.kind):
            return ("thread", party.thread_id)
        return party_key(party)

    def holder_key(party: Party) -> PartyKey:
        blocker = sync_blockers.get(party.thread_id)
        if party.task_id is not None and blocker is not None and blocker.task_id == party.task_id:
            return ("thread", party.thread_id)  # the task blocks its own thread: one node
        return party_key(party)

    edges: dict[PartyKey, list[WaitEdge]] = {}
    waits: dict[PartyKey, tuple[Party, PrimitiveState]] = {}
    holds: dict[PartyKey, list[tuple[PrimitiveState, Party]]] = {}
    for prim in prims:
        for holder in prim.holders:
            holds.setdefault(holder_key(holder), []).append((prim, holder))
        for waiter in prim.waiters:
            key = waiter_key(waiter, prim)
            waits.setdefault(key, (waiter, prim))
            for holder in prim.holders:
                if _reentrant(prim.kind) and holder.thread_id == waiter.thread_id:
                    continue
                if len(prim.holders) > 1 and holder_key(holder) == key:
                    continue  # its own permit cannot come back while it waits: only the others can
                edge = WaitEdge(waiter=waiter, holder=holder, prim=prim, waiter_key=key, holder_key=holder_key(holder))
                edges.setdefault(key, []).append(edge)
    # A suspended task that holds something but waits on nothing in the registry still cannot
    # run while a synchronous wait blocks its event loop thread: it waits for that thread.
    for key, held in holds.items():
        if key[0] != "task" or key in waits:
            continue
        holder = held[0][1]
        blocker = sync_blockers.get(holder.thread_id)
        if blocker is not None:
            edge = WaitEdge(
                waiter=holder, holder=blocker, prim=None, waiter_key=key, holder_key=("thread", holder.thread_id)
            )
            edges.setdefault(key, []).append(edge)
    return WaitGraph(
        edges={k: tuple(v) for k, v in edges.items()},
        waits=waits,
        holds={k: tuple(v) for k, v in holds.items()},
    )


def stuck_parties(graph: WaitGraph, *, now_ns: int | None = None, min_wait_s: float = 0.0) -> frozenset[PartyKey]:
    """The parties that can never proceed: each waits, without a timeout, for ``min_wait_s``
    at least, and every holder of what it waits on is itself stuck.

    A waiter is released when ANY holder releases (a semaphore with several holders), so a
    party stays in the set only while all of its edges lead back into the set (the greatest
    fixpoint): cycles whose exits are all blocked, and the parties queued behind them.
    """
    now = time.monotonic_ns() if now_ns is None else now_ns
    min_wait_ns = int(min_wait_s * 1e9)

    def blocked(key: PartyKey) -> bool:
        wait = graph.waits.get(key)
        if wait is None:  # a task waiting for its loop thread: as stuck as that thread's waiter
            return True
        party = wait[0]
        return party.timeout_s is None and now - party.since_ns >= min_wait_ns

    stuck = {key for key, out in graph.edges.items() if out and blocked(key)}
    changed = True
    while changed:
        changed = False
        for key in list(stuck):
            if any(edge.holder_key not in stuck for edge in graph.edges[key]):
                stuck.discard(key)
                changed = True
    return frozenset(stuck)


def _elementary_cycles(
    edges: Mapping[PartyKey, Sequence[PartyKey]], limit: int, max_steps: int = 100_000
) -> list[list[PartyKey]]:
    """Elementary cycles, each found once from its lowest node; at most ``limit`` of them.

    Bounded in work too (``max_steps``): a stuck semaphore shared by many threads makes a
    dense graph whose cycles are countless, and the watchdog must stay cheap.
    """
    order = {node: i for i, node in enumerate(edges)}
    cycles: list[list[PartyKey]] = []
    steps = 0
    for start in order:
        rank = order[start]
        path = [start]
        on_path = {start}
        stack: list[tuple[PartyKey, int]] = [(start, 0)]
        while stack:
            steps += 1
            if steps > max_steps or len(cycles) >= limit:
                return cycles
            node, i = stack[-1]
            targets = edges.get(node, ())
            if i >= len(targets):
                stack.pop()
                on_path.discard(path.pop())
                continue
            stack[-1] = (node, i + 1)
            nxt = targets[i]
            if nxt == start:
                cycles.append(list(path))
            elif nxt not in on_path and order.get(nxt, -1) > rank:
                stack.append((nxt, 0))
                path.append(nxt)
                on_path.add(nxt)
    return cycles


def find_deadlocks(
    graph: WaitGraph, *, now_ns: int | None = None, min_wait_s: float = 0.0, limit: int = 16
) -> list[tuple[WaitEdge, ...]]:
    """The deadlock cycles of ``graph``: each a tuple of edges, waiter of one = holder of the
    previous, among parties that are :func:`stuck <stuck_parties>`. Pure.

    >>> find_deadlocks(build_wait_graph([]))
    []
    """
    stuck = stuck_parties(graph, now_ns=now_ns, min_wait_s=min_wait_s)
    if not stuck:
        return []
    adjacency: dict[PartyKey, list[PartyKey]] = {}
    for key in sorted(stuck):
        targets: list[PartyKey] = []
        for edge in graph.edges[key]:
            if edge.holder_key in stuck and edge.holder_key not in targets:
                targets.append(edge.holder_key)
        adjacency[key] = targets
    cycles = []
    for nodes in _elementary_cycles(adjacency, limit):
        chain = []
        for i, node in enumerate(nodes):
            nxt = nodes[(i + 1) % len(nodes)]
            edge = next(e for e in graph.edges[node] if e.holder_key == nxt)
            chain.append(edge)
        cycles.append(tuple(chain))
    return cycles


def cycle_key(cycle: Sequence[WaitEdge]) -> frozenset[tuple[PartyKey, int]]:
    """The identity of a cycle (who waits on what), to report each one once."""
    return frozenset((e.waiter_key, e.prim.prim_id if e.prim is not None else 0) for e in cycle)


def participants_of(
    cycle: Sequence[WaitEdge],
    graph: WaitGraph,
    stacks: Mapping[PartyKey, tuple[Frame, ...]],
    *,
    now_ns: int | None = None,
) -> tuple[Participant, ...]:
    """The cycle as :class:`~conctools.events.Participant` records, in cycle order."""
    now = time.monotonic_ns() if now_ns is None else now_ns
    # Two locks created on one line share a name: tell them apart by id, as jstack does.
    ids_by_label: dict[str, set[int]] = {}
    for edge in cycle:
        for prim, _ in [*graph.holds.get(edge.waiter_key, ()), *([(edge.prim, None)] if edge.prim else [])]:
            ids_by_label.setdefault(prim_label(prim), set()).add(prim.prim_id)

    def label(prim: PrimitiveState) -> str:
        text = prim_label(prim)
        if len(ids_by_label.get(text, ())) <= 1:
            return text
        from conctools._lockname import ordinal_by_id  # which one, as every report says it: #1, #2

        ordinal = ordinal_by_id(prim.prim_id)
        return f"{prim.kind} {f'{prim.name} #{ordinal}'!r}" if ordinal is not None else text

    # A lock taken by a thread (task unknown) whose thread a task of the cycle now blocks.
    blocking_task = {e.waiter_key: e.waiter.task_name for e in cycle if e.waiter_key[0] == "thread"}

    def holder_words(edge: WaitEdge) -> str:
        task = blocking_task.get(edge.holder_key)
        if edge.holder.task_name is None and task is not None:
            return f"{edge.holder.who}, now blocked in task {task!r}"
        return edge.holder.who

    out = []
    for edge in cycle:
        key = edge.waiter_key
        stack = stacks.get(key, ())
        held = graph.holds.get(key, ())
        if edge.prim is not None:
            waits_for = label(edge.prim)
            waits_for_id = edge.prim.prim_id
            wait_site = edge.waiter.site
            since = edge.waiter.since_ns
        else:
            waits_for = f"its event loop thread {edge.holder.thread_name!r}"
            waits_for_id = 0
            frame = user_frame(stack)
            wait_site = frame.site if frame is not None else "?"
            since = edge.holder.since_ns
        out.append(
            Participant(
                thread_id=edge.waiter.thread_id,
                thread_name=edge.waiter.thread_name,
                task_name=edge.waiter.task_name,
                waits_for=waits_for,
                waits_for_id=waits_for_id,
                wait_site=wait_site,
                held_by=holder_words(edge),
                holds=tuple(label(p) for p, _ in held),
                holds_sites=tuple(h.site for _, h in held),
                stack=stack,
                wait_s=max(0.0, (now - since) / 1e9),
            )
        )
    return tuple(out)


# -- what a thread is doing (frames) ------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreadState:
    """One thread as the hang detector sees it.

    ``blocked`` means it waits, without a timeout, on something only another thread or task
    could release; ``join_target`` is the thread it joins, if it joins one.
    """

    thread_id: int
    state: str  # "waiting", "joining", "idle", "loop idle forever", "running", "event loop"
    waits_on: str | None
    blocked: bool
    join_target: int | None = None
    stack: tuple[Frame, ...] = field(default=())


def _local(frame: FrameType, name: str) -> Any:
    """A local of another thread's frame, read-only; ``None`` if it cannot be read."""
    try:
        return frame.f_locals.get(name)
    except Exception:
        return None


def _api_name(frame: FrameType) -> str:
    """The outermost frame of the waiting machinery (``Event.wait``, ``Queue.get``, ...)."""
    api = frame
    f: FrameType | None = frame
    depth = 0
    while f is not None and depth < 16:
        if not f.f_code.co_filename.startswith(_MACHINERY) or f.f_code.co_name in _BOUNDARIES:
            break
        if not f.f_code.co_filename.startswith(_PKG_DIR):
            api = f
        f = f.f_back
        depth += 1
    code = api.f_code
    qualname = getattr(code, "co_qualname", code.co_name)
    if api.f_code.co_filename.startswith(_FUTURES_DIR) and qualname == "wait":
        return "concurrent.futures.wait()"
    module = "queue" if api.f_code.co_filename == _QUEUE_PY else "threading"
    if api.f_code.co_filename.startswith(_FUTURES_DIR):
        module = "concurrent.futures"
    return f"{module}.{qualname}()" + _api_detail(api, qualname)


def _api_detail(frame: FrameType, qualname: str) -> str:
    """What the waited-on object says about itself: a job not started, an empty queue."""
    owner = _local(frame, "self")
    try:
        if qualname == "Future.result":
            state = getattr(owner, "_state", None)
            if state == "PENDING":
                return " of a job that has not started (still queued)"
            if state == "RUNNING":
                return " of a running job"
        elif qualname == "Queue.get":
            return f" (the queue is empty; {owner.maxsize or 'no'} max size)"
        elif qualname == "Queue.put":
            return f" (the queue is full: {owner.maxsize} items)"
    except Exception:
        pass
    return ""


def _first_foreign(frame: FrameType | None) -> FrameType | None:
    """The innermost frame outside conctools."""
    depth = 0
    while frame is not None and depth < 32 and frame.f_code.co_filename.startswith(_PKG_DIR):
        frame = frame.f_back
        depth += 1
    return frame


def _stack(frame: FrameType | None) -> tuple[Frame, ...]:
    """The thread's stack, innermost first, without conctools' frames nor runpy's below the program."""
    stack = frames_of(frame)
    end = len(stack)
    while end > 0 and (stack[end - 1].filename == "<frozen runpy>" or stack[end - 1].filename.endswith("runpy.py")):
        end -= 1
    return stack[:end]


def _on_stack(frame: FrameType | None, filename: str, function: str) -> bool:
    depth = 0
    while frame is not None and depth < 200:
        if frame.f_code.co_name == function and frame.f_code.co_filename == filename:
            return True
        frame = frame.f_back
        depth += 1
    return False


def _describe_prim_wait(party: Party, prim: PrimitiveState) -> str:
    label = prim_label(prim)
    if prim.holders:
        alive = {t.ident for t in threading.enumerate()}

        def holder(h: Party) -> str:
            where = f" since {h.site}" if h.site and h.site != "?" else ""
            gone = ", which has finished without releasing it" if h.thread_id not in alive else ""
            return f"{h.who}{where}{gone}"

        return f"{label} held by " + ", ".join(holder(h) for h in prim.holders)
    if prim.kind.endswith("Event"):
        return f"{label} (not set)"
    if prim.kind.endswith("Condition"):
        return f"{label} (waiting for a notify)"
    return label


def classify_thread(
    thread_id: int,
    frame: FrameType | None,
    registry_wait: tuple[Party, PrimitiveState] | None = None,
    loops: Mapping[int, tuple[bool, str]] | None = None,
    *,
    with_stack: bool = True,
    read_bytecode: bool = True,
) -> ThreadState:
    """What thread ``thread_id`` does, from its innermost frame and its registry wait.

    ``loops`` maps a thread id to ``(idle_forever, description)`` of the event loop it
    runs. Only recognised waits without a timeout count as blocked; anything else (running
    code, ``time.sleep``, ``recv()``, ``select()`` with timers or sockets, unknown C calls)
    does not, so a healthy idle program is never called hung. ``with_stack=False`` skips
    the (costly) stack capture; ``read_bytecode=False`` skips looking for an untraced lock
    at the current instruction (pointless while the thread is seen moving).
    """
    stack = _stack(frame) if with_stack else ()
    if registry_wait is not None:
        party, prim = registry_wait
        blocked = party.timeout_s is None
        what = _describe_prim_wait(party, prim) + f", at {party.site}"
        # A traced primitive inside the stdlib (Queue.get's Condition): name the stdlib call too.
        outer = _first_foreign(frame)
        if outer is not None and outer.f_code.co_filename.startswith(_MACHINERY):
            what = f"{_api_name(outer)}: {what}"
        return ThreadState(
            thread_id=thread_id,
            state="waiting" if blocked else f"waiting (timeout {party.timeout_s}s)",
            waits_on=what,
            blocked=blocked,
            stack=stack,
        )
    if frame is None:
        return ThreadState(thread_id=thread_id, state="unknown", waits_on=None, blocked=False, stack=stack)
    code = frame.f_code
    filename, function = code.co_filename, code.co_name
    if filename == _THREADING_PY and function == "wait":  # Condition.wait, under every threading wait
        timeout = _local(frame, "timeout")
        what = _api_name(frame)
        if timeout is None:
            return ThreadState(thread_id=thread_id, state="waiting", waits_on=what, blocked=True, stack=stack)
        return ThreadState(
            thread_id=thread_id, state=f"waiting (timeout {timeout}s)", waits_on=what, blocked=False, stack=stack
        )
    if filename == _THREADING_PY and function in ("_wait_for_tstate_lock", "join"):
        target = _local(frame, "self")
        if function == "_wait_for_tstate_lock":
            forever = _local(frame, "block") is not False and _local(frame, "timeout") in (-1, None)
        else:
            forever = _local(frame, "timeout") is None
        target_id = getattr(target, "ident", None)
        name = getattr(target, "name", "?")
        return ThreadState(
            thread_id=thread_id,
            state="joining" if forever else "joining (with a timeout)",
            waits_on=f"threading.Thread.join() of thread {name!r}",
            blocked=forever,
            join_target=target_id if isinstance(target_id, int) else None,
            stack=stack,
        )
    if filename.startswith(_FUTURES_DIR) and function == "_worker":
        return ThreadState(
            thread_id=thread_id,
            state="idle",
            waits_on="work from its ThreadPoolExecutor (an idle pool worker)",
            blocked=True,
            stack=stack,
        )
    if loops is not None and thread_id in loops and _on_stack(frame, _ASYNCIO_DIR + "base_events.py", "_run_once"):
        idle_forever, description = loops[thread_id]
        if filename == _SELECTORS_PY and idle_forever:
            return ThreadState(
                thread_id=thread_id, state="loop idle forever", waits_on=description, blocked=True, stack=stack
            )
        state = "event loop" if filename == _SELECTORS_PY else "running"
        return ThreadState(thread_id=thread_id, state=state, waits_on=description, blocked=False, stack=stack)
    raw = _raw_lock_wait(frame, thread_id) if read_bytecode and not filename.startswith(_PKG_DIR) else None
    if raw is not None:
        return ThreadState(thread_id=thread_id, state="waiting", waits_on=raw, blocked=True, stack=stack)
    return ThreadState(thread_id=thread_id, state="running", waits_on=None, blocked=False, stack=stack)


# Handlers of tools watching the program, not of the program: a deadline is not a wake-up.
_TOOL_HANDLER_MODULES = ("conctools", "pytest_timeout", "_pytest", "pytest")
_TIMER_SIGNALS = {
    getattr(signal, name): getattr(signal, timer)
    for name, timer in (("SIGALRM", "ITIMER_REAL"), ("SIGVTALRM", "ITIMER_VIRTUAL"), ("SIGPROF", "ITIMER_PROF"))
    if hasattr(signal, name) and hasattr(signal, timer)
}


def _program_signal_handlers() -> list[int]:
    """Signals the program handles in Python and that may still arrive.

    Such a handler runs in the main thread and may release what everyone waits for, so a
    program waiting for one (a server parked until SIGTERM) is idle, not hung. SIGINT (Ctrl-C
    is how a person stops a hung program, whoever handles it: asyncio.run does), the
    handlers of conctools and test tools, and timer signals whose timer is not armed do not
    count.
    """
    out = []
    for signum in signal.valid_signals():
        if signum == signal.SIGINT:
            continue
        try:
            handler = signal.getsignal(signum)
        except (ValueError, OSError):
            continue
        if not callable(handler) or handler is signal.default_int_handler:
            continue
        if str(getattr(handler, "__module__", "") or "").startswith(_TOOL_HANDLER_MODULES):
            continue
        timer = _TIMER_SIGNALS.get(signum)
        if timer is not None:
            try:
                if signal.getitimer(timer) == (0.0, 0.0):
                    continue  # nothing will send it
            except (OSError, AttributeError):
                pass
        out.append(int(signum))
    return out


# -- untraced locks, recognised from the bytecode -----------------------------------------

_RAW_LOCK = type(_thread.allocate_lock())
_RAW_RLOCK = type(_thread.RLock())
_LOADS_LOCAL = frozenset({"LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_BORROW", "LOAD_DEREF", "LOAD_NAME"})
_LOADS_GLOBAL = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_RAW_OWNER = re.compile(r"owner=(\d+)")


def _static_attr(obj: Any, name: str) -> Any:
    """``obj.name`` without running any of the program's code (no properties, no __getattr__)."""
    try:
        value = inspect.getattr_static(obj, name)
    except AttributeError:
        return None
    if isinstance(value, types.MemberDescriptorType):  # a __slots__ attribute
        try:
            return value.__get__(obj, type(obj))
        except AttributeError:
            return None
    return value


def _resolve(frame: FrameType, chain: Sequence[dis.Instruction]) -> tuple[Any, str] | None:
    """The object a ``LOAD_* name`` + ``LOAD_ATTR``s chain loads in ``frame``, and its source text."""
    if not chain:
        return None
    base, attrs = chain[0], chain[1:]
    name = str(base.argval)
    if base.opname in ("LOAD_GLOBAL", "LOAD_NAME") and base.opname not in _LOADS_LOCAL:
        obj = frame.f_globals.get(name, frame.f_builtins.get(name))
    else:
        obj = _local(frame, name)
        if obj is None and base.opname == "LOAD_NAME":
            obj = frame.f_globals.get(name)
    for attr in attrs:
        if obj is None:
            return None
        obj = _static_attr(obj, str(attr.argval))
    return obj, ".".join([name, *(str(a.argval) for a in attrs)])


@functools.lru_cache(maxsize=256)
def _instructions(code: types.CodeType) -> tuple[list[dis.Instruction], dict[int, int]]:
    """A code object's instructions and an offset -> position index (cached: dis is slow)."""
    instructions = list(dis.get_instructions(code))
    return instructions, {ins.offset: i for i, ins in enumerate(instructions)}


def _raw_lock_wait(frame: FrameType, thread_id: int) -> str | None:
    """``with lock:`` / ``lock.acquire()`` on an untraced, locked ``threading.Lock``/``RLock``,
    recognised from the instruction the frame is executing; ``None`` if it is anything else.

    Only blocking acquires without a timeout count; the stall window of the caller (the
    frame must not move for the whole timeout) rules out a passing moment.
    """
    try:
        instructions, index = _instructions(frame.f_code)
        at = index[frame.f_lasti]
    except Exception:  # no instruction at f_lasti (a CACHE entry, an odd frame): not recognised
        return None
    current = instructions[at]
    end = at
    if current.opname == "BEFORE_WITH":
        pass
    elif current.opname == "CALL":
        # <load chain> LOAD_METHOD/LOAD_ATTR acquire [LOAD_CONST True] [PRECALL] CALL
        args = [ins for ins in instructions[:at] if ins.opname not in ("PRECALL", "CACHE")][-(current.arg or 0) - 1 :]
        method, given = args[0], args[1:]
        if method.opname not in ("LOAD_METHOD", "LOAD_ATTR") or method.argval not in ("acquire", "__enter__"):
            return None
        if any(not (a.opname == "LOAD_CONST" and a.argval is True) for a in given) or len(given) > 1:
            return None  # a timeout or non-blocking acquire: not forever
        end = index[method.offset]
    else:
        return None
    chain: list[dis.Instruction] = []
    k = end - 1
    while k >= 0 and instructions[k].opname == "LOAD_ATTR":
        chain.insert(0, instructions[k])
        k -= 1
    if k < 0 or instructions[k].opname not in _LOADS_LOCAL | _LOADS_GLOBAL:
        return None
    chain.insert(0, instructions[k])
    resolved = _resolve(frame, chain)
    if resolved is None:
        return None
    obj, text = resolved
    if isinstance(obj, _RAW_LOCK):
        if not obj.locked():
            return None
        return f"threading.Lock {text!r} (untraced, locked)"
    if isinstance(obj, _RAW_RLOCK):
        match = _RAW_OWNER.search(repr(obj))
        owner = int(match.group(1)) if match else 0
        if owner in (0, thread_id):  # free, or re-entry: it does not block
            return None
        names = {t.ident: t.name for t in threading.enumerate()}
        return f"threading.RLock {text!r} (untraced) held by thread {names.get(owner, owner)!r}"
    return None


# -- the watchdog -------------------------------------------------------------------------

DeadlockCallback = Callable[[DeadlockEvent], object]
HangCallback = Callable[[HangEvent], object]


def _frame_signature(frame: FrameType | None) -> tuple[int, int, int]:
    """Where a thread is, precisely enough to notice that it moved between two scans."""
    if frame is None:
        return (0, 0, 0)
    return (id(frame.f_code), frame.f_lasti, id(frame))


def _pick_signal() -> int | None:
    """A signal to wake the main thread with (a spare real-time one, else SIGUSR2)."""
    rtmin = getattr(signal, "SIGRTMIN", None)
    if rtmin is not None:
        return int(rtmin) + 3
    usr2 = getattr(signal, "SIGUSR2", None)
    return int(usr2) if usr2 is not None else None


class DeadlockWatchdog:
    """A daemon thread that finds deadlocks and hangs; see the module docstring.

    ``deadlocks`` and ``hangs`` list what it found (each deadlock once). ``on_deadlock`` and
    ``on_hang`` are called from the watchdog thread (an exception there is logged, never
    raised). With ``raise_in="main"`` (started from the main thread, POSIX) a deadlock also
    raises :class:`DeadlockError` in the main thread, even when it is blocked in a wait.

    >>> watchdog = DeadlockWatchdog(timeout_s=5.0)
    >>> watchdog.start(); watchdog.stop()
    >>> watchdog.hangs
    []
    """

    def __init__(
        self,
        timeout_s: float = 10.0,
        *,
        on_deadlock: DeadlockCallback | None = None,
        on_hang: HangCallback | None = None,
        raise_in: Literal["main"] | None = None,
        recorder: Recorder | None = None,
        detect_hangs: bool = True,
        interval_s: float | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        if raise_in not in (None, "main"):
            raise ValueError(f"raise_in must be None or 'main', got {raise_in!r}")
        self.timeout_s = float(timeout_s)
        self.interval_s = interval_s if interval_s is not None else min(1.0, max(0.05, self.timeout_s / 4))
        self.on_deadlock = on_deadlock
        self.on_hang = on_hang
        self.raise_in = raise_in
        self.detect_hangs = detect_hangs
        self.deadlocks: list[DeadlockEvent] = []
        self.hangs: list[HangEvent] = []
        self._recorder = recorder
        self._stop_lock = _thread.allocate_lock()
        self._thread: threading.Thread | None = None
        self._seen: set[frozenset[tuple[PartyKey, int]]] = set()
        self._live_cycles: set[frozenset[tuple[PartyKey, int]]] = set()
        self._signatures: dict[int, Hashable] = {}
        self._wait_seen: dict[tuple[int, int | None], int] = {}
        self._frame_seen: dict[int, Hashable] = {}
        self._all_blocked_since_ns: int | None = None
        self._hang_reported = False
        self._pending_raise: DeadlockError | None = None
        self._signal: int | None = None
        self._previous_handler: Any = None

    # ---- control ----
    def start(self) -> None:
        """Start the watchdog thread (idempotent)."""
        if self._thread is not None:
            return
        if self._recorder is None:
            self._recorder = get_recorder()
        if self.raise_in == "main":
            self._install_raiser()
        self._stop_lock.acquire()
        thread = internal_thread(self._run, WATCHDOG_THREAD_NAME)
        self._thread = thread
        thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the watchdog thread and wait for it (promptly: it sleeps on a lock we release)."""
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        try:
            self._stop_lock.release()
        except RuntimeError:
            pass
        if thread is not threading.current_thread():
            thread.join(timeout_s)
        self._uninstall_raiser()

    def __enter__(self) -> DeadlockWatchdog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop_lock.acquire(timeout=self.interval_s):
            try:
                self.scan()
            except Exception:  # the watchdog must survive anything the program does
                _log.exception("conctools: watchdog scan failed")
        self._stop_lock.release()

    # ---- one scan ----
    def scan(self) -> tuple[list[DeadlockEvent], HangEvent | None]:
        """Look once: new deadlocks (each reported once) and a new hang, if any.

        The watchdog thread calls this every ``interval_s``; tests and tools may call it too.
        """
        now = time.monotonic_ns()
        frames = sys._current_frames()
        new_deadlocks: list[DeadlockEvent] = []
        if self._long_waits(now):  # the full graph only when some wait has lasted the timeout
            new_deadlocks = self._check_deadlocks(build_wait_graph(registry.primitives()), frames, now)
        else:
            self._live_cycles = set()
        hang = None
        if self.detect_hangs:
            hang = self._check_hang(frames, now)
        return new_deadlocks, hang

    def _long_waits(self, now: int) -> bool:
        """True when some party has been waiting on a traced primitive for ``timeout_s``.

        Reads the registry's table of current waits (keys only, O(waiters)), so a scan of a
        program with thousands of locks and no long wait stays cheap.
        """
        waiting = getattr(registry, "_waiting", None)
        if not isinstance(waiting, dict):
            return True  # no cheap view: build the graph every time
        for _ in range(10):
            try:
                keys = list(waiting)
                break
            except RuntimeError:  # changed size during the copy
                continue
        else:
            return True
        first_seen = {k: self._wait_seen.get(k, now) for k in keys}
        self._wait_seen = first_seen
        limit = self.timeout_s * 1e9
        return any(now - t >= limit for t in first_seen.values())

    @staticmethod
    def _registry_wait(thread_id: int) -> tuple[Party, PrimitiveState] | None:
        """The threading primitive ``thread_id`` waits on now (any task of it), if it is traced."""
        waiting = getattr(registry, "_waiting", None)
        keys: list[tuple[int, int | None]] = []
        if isinstance(waiting, dict):
            try:
                keys = [k for k in list(waiting) if k[0] == thread_id]
            except RuntimeError:
                keys = []
        for key in keys or [(thread_id, None)]:
            state = registry.waiting_on(key[0], key[1])
            if state is None or not _is_sync_kind(state.kind):
                continue
            for party in state.waiters:
                if party.thread_id == thread_id:
                    return party, state
        return None

    def _check_deadlocks(self, graph: WaitGraph, frames: Mapping[int, FrameType], now: int) -> list[DeadlockEvent]:
        if not graph.edges:
            self._live_cycles = set()
            return []
        cycles = find_deadlocks(graph, now_ns=now, min_wait_s=self.timeout_s)
        self._live_cycles = {cycle_key(c) for c in cycles}
        fresh = [c for c in cycles if cycle_key(c) not in self._seen]
        if not fresh:
            return []
        tasks = {t.task_id: t for t in taskdump.dump_tasks()}
        out = []
        for cycle in fresh:
            if len(self._seen) >= _MAX_KEPT * 10:  # bounded memory in a program that deadlocks for days
                self._seen.clear()
            self._seen.add(cycle_key(cycle))
            stacks = {}
            for edge in cycle:
                stacks[edge.waiter_key] = self._stack_of(edge.waiter, edge.prim, frames, tasks)
            participants = participants_of(cycle, graph, stacks, now_ns=now)
            first = participants[0]
            event = DeadlockEvent(
                ts_ns=now,
                thread_id=first.thread_id,
                thread_name=first.thread_name,
                task_name=first.task_name,
                participants=participants,
            )
            out.append(event)
            self._report_deadlock(event)
        return out

    @staticmethod
    def _stack_of(
        party: Party, prim: PrimitiveState | None, frames: Mapping[int, FrameType], tasks: Mapping[int, Any]
    ) -> tuple[Frame, ...]:
        """A thread's stack; a suspended task's await stack; a task in a sync wait: its thread's."""
        if party.task_id is not None and (prim is None or not _is_sync_kind(prim.kind)):
            info = tasks.get(party.task_id)
            if info is not None:
                stack: tuple[Frame, ...] = info.stack
                return stack
        return _stack(frames.get(party.thread_id))

    def _report_deadlock(self, event: DeadlockEvent) -> None:
        self.deadlocks.append(event)
        del self.deadlocks[:-_MAX_KEPT]
        if self._recorder is not None:
            self._recorder.record(event)
        # Logged loudly only when nobody else is told (a callback prints its own report).
        level = logging.WARNING if self.on_deadlock is None else logging.DEBUG
        _log.log(level, "conctools: %s", describe_cycle(event.participants))
        if self.on_deadlock is not None:
            try:
                self.on_deadlock(event)
            except Exception:
                _log.exception("conctools: on_deadlock callback failed")
        if self.raise_in == "main" and self._signal is not None:
            self._pending_raise = DeadlockError(event.participants, event)
            try:
                signal.pthread_kill(threading.main_thread().ident or 0, self._signal)
            except Exception:
                _log.exception("conctools: could not interrupt the main thread")

    def _check_hang(self, frames: Mapping[int, FrameType], now: int) -> HangEvent | None:
        threads = {t.ident: t for t in threading.enumerate() if t.ident is not None}
        watched = {
            tid: frame
            for tid, frame in frames.items()
            if not getattr(threads.get(tid), "name", "").startswith("conctools-")
        }
        loops: dict[int, tuple[bool, str]] = {}
        loop_signatures: dict[int, Hashable] = {}
        if any(f.f_code.co_filename == _SELECTORS_PY for f in watched.values()):
            loops, loop_signatures = self._loop_states()
        # Stop at the first thread that is not blocked: a healthy program costs little.
        previous, self._frame_seen = self._frame_seen, {tid: _frame_signature(f) for tid, f in watched.items()}
        states: dict[int, ThreadState] = {}
        for tid, frame in watched.items():
            still = previous.get(tid) == self._frame_seen[tid]
            state = classify_thread(tid, frame, self._registry_wait(tid), loops, with_stack=False, read_bytecode=still)
            if not state.blocked:
                self._all_blocked_since_ns = None
                self._hang_reported = False
                return None
            states[tid] = state
        if not states:
            return None
        if _program_signal_handlers():  # a handler (say, SIGTERM's) may set what main waits for
            self._all_blocked_since_ns = None
            return None
        # Where everyone is, to notice movement between scans. An idle loop's thread leaves
        # select() whenever something pokes its self-pipe (a loop monitor's probe): its tasks'
        # positions say whether it progressed, not its frames.
        signatures: dict[int, Hashable] = {}
        for tid, frame in watched.items():
            if states[tid].state == "loop idle forever" and tid in loop_signatures:
                signatures[tid] = loop_signatures[tid]
            else:
                signatures[tid] = _frame_signature(frame)
        moved = signatures != self._signatures
        self._signatures = signatures
        if moved:
            self._all_blocked_since_ns = now
            return None
        if self._all_blocked_since_ns is None:
            self._all_blocked_since_ns = now
        stalled_since = max(self._all_blocked_since_ns, registry.last_progress_ns())
        if now - stalled_since < self.timeout_s * 1e9 or self._hang_reported:
            return None
        if self._live_cycles:  # a deadlock explains it, and was reported as one
            return None
        self._hang_reported = True
        # Now the stacks (left out of the cheap pass above).
        states = {tid: classify_thread(tid, frame, self._registry_wait(tid), loops) for tid, frame in watched.items()}
        event = self._hang_event(states, threads, now, (now - stalled_since) / 1e9)
        self.hangs.append(event)
        del self.hangs[:-_MAX_KEPT]
        if self._recorder is not None:
            self._recorder.record(event)
        _log.log(logging.WARNING if self.on_hang is None else logging.DEBUG, "conctools: %s", event.reason)
        if self.on_hang is not None:
            try:
                self.on_hang(event)
            except Exception:
                _log.exception("conctools: on_hang callback failed")
        return event

    @staticmethod
    def _loop_states() -> tuple[dict[int, tuple[bool, str]], dict[int, Hashable]]:
        """Per loop thread: (idle forever?, in words), and where its tasks are when idle."""
        out: dict[int, tuple[bool, str]] = {}
        signatures: dict[int, Hashable] = {}
        for loop in taskdump.running_loops():
            tid = taskdump.loop_thread_id(loop)
            if tid is None:
                continue
            idle = taskdump.loop_idle_forever(loop)
            if idle:
                tasks = taskdump.dump_tasks(loop)
                signatures[tid] = tuple((t.task_id, t.state, t.stack[:1]) for t in tasks)
                text = f"its event loop: {len(tasks)} pending task(s), and no timer, I/O or ready callback to wake them"
            else:
                text = "its event loop: waiting for I/O or timers"
            out[tid] = (idle, text)
        return out, signatures

    @staticmethod
    def _hang_event(
        states: Mapping[int, ThreadState], threads: Mapping[int, threading.Thread], now: int, stalled_s: float
    ) -> HangEvent:
        def name_of(tid: int) -> str:
            t = threads.get(tid)
            return t.name if t is not None else f"thread-{tid}"

        waiters = []
        main_id = threading.main_thread().ident
        for tid in sorted(states, key=lambda t: (t != main_id, name_of(t))):
            s = states[tid]
            waits_on = s.waits_on
            if s.join_target is not None:
                target = states.get(s.join_target)
                if target is not None and target.waits_on:
                    waits_on = f"{waits_on}, which waits on {target.waits_on}"
                elif target is None and s.join_target not in threads:
                    waits_on = f"{waits_on} (already finished)"
            t = threads.get(tid)
            waiters.append(
                WaiterInfo(
                    thread_id=tid,
                    thread_name=name_of(tid),
                    task_name=None,
                    state=s.state,
                    waits_on=waits_on,
                    stack=s.stack,
                    daemon=bool(t.daemon) if t is not None else True,
                )
            )
        tasks = taskdump.dump_tasks()
        waiters.extend(t.as_waiter_info() for t in tasks)
        reason = f"nothing progressed for {stalled_s:.1f}s: " + _who_waits(len(states), len(tasks))
        for cycle in taskdump.task_cycles(tasks):  # tasks awaiting each other: a deadlock without locks
            names = " -> ".join(repr(t.name) for t in [*cycle, cycle[0]])
            reason += f"; await cycle: {names}"
        main = threading.main_thread()
        return HangEvent(
            ts_ns=now,
            thread_id=main.ident or 0,
            thread_name=main.name,
            stalled_s=stalled_s,
            reason=reason,
            waiters=tuple(waiters),
        )

    # ---- raising in the main thread ----
    def _install_raiser(self) -> None:
        """Install a handler that raises the pending DeadlockError in the main thread.

        A signal interrupts the main thread's blocking wait (lock acquires, joins and
        select() are interruptible), and Python runs the handler there: its exception
        propagates out of that wait.
        """
        if threading.current_thread() is not threading.main_thread():
            _log.warning("conctools: raise_in='main' needs the watchdog started in the main thread; ignored")
            return
        signum = _pick_signal()
        if signum is None or not hasattr(signal, "pthread_kill"):
            _log.warning("conctools: raise_in='main' is not supported on this platform; ignored")
            return
        try:
            previous = signal.getsignal(signum)
            if previous not in (signal.SIG_DFL, None):
                _log.warning("conctools: signal %d is in use; raise_in='main' ignored", signum)
                return
            signal.signal(signum, self._raise_pending)
        except (ValueError, OSError):
            _log.warning("conctools: could not install the raise_in='main' handler", exc_info=True)
            return
        self._signal = signum
        self._previous_handler = previous

    def _raise_pending(self, signum: int, frame: FrameType | None) -> None:
        error, self._pending_raise = self._pending_raise, None
        if error is not None:
            raise error

    def _uninstall_raiser(self) -> None:
        if self._signal is None:
            return
        try:
            if threading.current_thread() is threading.main_thread():
                signal.signal(self._signal, self._previous_handler or signal.SIG_DFL)
                self._signal = None
        except (ValueError, OSError):
            _log.debug("conctools: could not restore signal %s", self._signal, exc_info=True)


@contextmanager
def watch_deadlocks(
    timeout_s: float = 10.0,
    *,
    on_deadlock: DeadlockCallback | None = None,
    on_hang: HangCallback | None = None,
    raise_in: Literal["main"] | None = None,
    recorder: Recorder | None = None,
    detect_hangs: bool = True,
) -> Iterator[DeadlockWatchdog]:
    """Watch the block for deadlocks and hangs (a :class:`DeadlockWatchdog` thread).

    Waits are seen on traced primitives (``conctools.Lock`` & co, or everything created
    under :func:`conctools.trace_locks`); joins, pool workers and stdlib waits are also
    recognised from the threads' frames for hang detection. Enter it before
    ``trace_locks()`` so that its own thread's internals stay plain stdlib primitives.

    >>> import conctools
    >>> with conctools.watch_deadlocks(timeout_s=2.0, on_deadlock=print) as wd, conctools.trace_locks():
    ...     pass
    >>> wd.deadlocks, wd.hangs
    ([], [])
    """
    watchdog = DeadlockWatchdog(
        timeout_s,
        on_deadlock=on_deadlock,
        on_hang=on_hang,
        raise_in=raise_in,
        recorder=recorder,
        detect_hangs=detect_hangs,
    )
    watchdog.start()
    try:
        yield watchdog
    finally:
        watchdog.stop()
