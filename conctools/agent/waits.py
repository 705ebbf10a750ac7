"""Who holds and who waits now, the wait-for graph and its cycles, in the watchdog's own words.

The locks come from the lock registry (:func:`conctools.registry.primitives`: atomic copies,
never a program lock). The graph, the cycles, the thread states and the hang verdict come from
the deadlock watchdog's own functions, all called from :func:`watchdog_view` and from nowhere
else: ``conctools.deadlock`` is being split into a package, and this one adapter is what its
new shape has to be wired into.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from conctools._records import compared
from conctools.events import DeadlockEvent, Frame, HangEvent, Participant
from conctools.recorder import Recorder
from conctools.registry import Party, PrimitiveState
from conctools.taskdump import TaskInfo

__all__ = ["ThreadView", "WatchdogView", "lock_rows", "party_row", "watchdog_view"]

_LOOK_AGAIN_S = 0.05  # between the watchdog's two looks: did anything move?


@compared
@dataclass(frozen=True, slots=True, repr=False, eq=False)
class ThreadView:
    """One thread as the hang detector classifies it: state, what it waits on, its stack."""

    state: str
    waits_on: str | None
    blocked: bool
    stack: tuple[Frame, ...]


@compared
@dataclass(frozen=True, slots=True, repr=False, eq=False)
class WatchdogView:
    """What the watchdog sees now: thread states, every wait-for edge (as a
    :class:`~conctools.events.Participant`), the deadlock cycles, and a hang if every thread
    and task waits forever and nothing moved between two looks."""

    threads: Mapping[int, ThreadView]
    edges: tuple[Participant, ...]
    deadlocks: tuple[DeadlockEvent, ...]
    hang: HangEvent | None


def watchdog_view(
    frames: Mapping[int, FrameType],
    program_threads: Iterable[int],
    prims: Sequence[PrimitiveState],
    *,
    full: bool = True,
    tasks: Sequence[TaskInfo] | None = None,
) -> WatchdogView:
    """The deadlock watchdog's view of the program now: the ONE place that calls
    ``conctools.deadlock``.

    ``frames`` are the threads' current frames (``sys._current_frames()``), ``program_threads``
    the ids of the program's own threads (conctools' are left out, as the watchdog leaves them
    out), ``prims`` the lock registry's records. With ``full``, each thread's stack, and the
    cycles and the hang from a throwaway :class:`DeadlockWatchdog` that looks twice,
    ``_LOOK_AGAIN_S`` apart, with a timeout short enough to report what it sees at once (it
    records into a recorder of its own: the program's report is untouched). The second look is
    only taken when something waits: a busy program is not held up. ``tasks``: every loop's
    tasks, when the caller has just read them (they are not walked again).
    """
    from conctools import deadlock

    watchdog = deadlock.DeadlockWatchdog
    graph = deadlock.build_wait_graph(prims)
    edges = [edge for out in graph.edges.values() for edge in out]
    participants = deadlock.participants_of(edges, graph, {}) if edges else ()
    loops: dict[int, tuple[bool, str]] = {}
    if any(f.f_code.co_filename.endswith("selectors.py") for f in frames.values()):
        dumped: dict[int, list[TaskInfo]] | None = None
        if tasks is not None:
            dumped = {}
            for info in tasks:
                dumped.setdefault(info.loop_id, []).append(info)
        loops = watchdog._loop_states(dumped)[0]
    # What each thread waits on in the registry: the watchdog's ``_RegistryWaits``, computed once
    # for all threads (asking it per thread re-reads every waiter of a shared primitive: n squared).
    sync_waits: dict[int, tuple[Party, PrimitiveState]] = {}
    for prim in prims:
        if not prim.kind.startswith("aio."):
            for party in prim.waiters:
                sync_waits.setdefault(party.thread_id, (party, prim))
    threads: dict[int, ThreadView] = {}
    for tid in program_threads:
        frame = frames.get(tid)
        state = deadlock.classify_thread(tid, frame, sync_waits.get(tid), loops, with_stack=full)
        threads[tid] = ThreadView(state.state, state.waits_on, state.blocked, state.stack)
    deadlocks: list[DeadlockEvent] = []
    hangs: list[HangEvent] = []
    if full and (edges or (threads and all(t.blocked for t in threads.values()))):
        probe = watchdog(1e-6, on_deadlock=deadlocks.append, on_hang=hangs.append, recorder=Recorder(capacity=16))
        probe.scan()
        time.sleep(_LOOK_AGAIN_S)
        probe.scan()
    return WatchdogView(threads, tuple(participants), tuple(deadlocks), hangs[-1] if hangs else None)


def party_row(party: Party, now_ns: int, now_wall: float) -> dict[str, Any]:
    """A holder or waiter as JSON: who, where, and since when (seconds ago and wall clock; both
    ``None`` when not recorded: an uncontended acquisition does not read the clock)."""
    ago_s = max(0.0, (now_ns - party.since_ns) / 1e9) if party.since_ns > 0 else None
    return {
        "who": party.who,
        "thread_id": party.thread_id,
        "thread_name": party.thread_name,
        "task_name": party.task_name,
        "task_id": party.task_id,
        "site": party.site,
        "for_s": ago_s,
        "since_wall": now_wall - ago_s if ago_s is not None else None,
        "timeout_s": party.timeout_s,
    }


def lock_rows(prims: Iterable[PrimitiveState], now_ns: int, now_wall: float) -> list[dict[str, Any]]:
    """Every traced primitive that someone holds or waits on now, longest wait first."""
    rows: list[dict[str, Any]] = []
    for prim in prims:
        if not prim.holders and not prim.waiters:
            continue
        rows.append(
            {
                "id": prim.prim_id,
                "name": prim.name,
                "kind": prim.kind,
                "created_at": prim.created_at,
                "holders": [party_row(p, now_ns, now_wall) for p in prim.holders],
                "waiters": sorted(
                    (party_row(p, now_ns, now_wall) for p in prim.waiters), key=lambda w: -(w["for_s"] or 0.0)
                ),
            }
        )
    rows.sort(
        key=lambda r: (-max((w["for_s"] or 0.0 for w in r["waiters"]), default=-1.0), -len(r["holders"]), r["name"])
    )
    return rows
