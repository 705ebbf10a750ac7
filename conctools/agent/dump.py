"""The agent's answers, built from what conctools already knows about the process.

:func:`build_dump` answers ``dump`` (schema ``conctools.dump/1``, ``docs/dump-schema.md``):
every thread, every task of every loop, the locks held and awaited, the wait-for graph with its
cycles and the hang verdict in the watchdog's words, what the recorder found so far, resources.
:func:`build_top` answers ``top`` (``conctools.top/1``): counts and the hottest facts, cheap
enough to ask every second. :func:`build_hello` answers ``hello``.

Each part is built on its own: a part that fails says so in ``errors`` and the others still come
out. Nothing here runs the program's code or takes its locks (see :mod:`conctools.agent`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from types import FrameType
from typing import Any

from conctools import registry, taskdump
from conctools.agent.process import resources_now, who_am_i
from conctools.agent.protocol import DUMP_SCHEMA, HELLO_SCHEMA, TOP_SCHEMA
from conctools.agent.sofar import so_far
from conctools.agent.tasks import loop_rows, task_infos, task_rows, tasks_by_loop
from conctools.agent.threads import OWN_PREFIX, current_frames, known_threads, thread_rows
from conctools.agent.waits import WatchdogView, lock_rows, watchdog_view
from conctools.events import Participant
from conctools.recorder import Recorder

__all__ = ["TOP_TASKS_DESCRIBED", "build_dump", "build_hello", "build_top"]

# ``top`` says what each task awaits up to this many tasks; past it, it counts them by state only
# (describing 10,000 tasks every second would cost the program a quarter of a core).
TOP_TASKS_DESCRIBED = 2000
_TOP_WAITS = 10
_TOP_LOCKS = 30  # rows of the lock table sent; the view picks the locks among them


def _part(errors: list[str], what: str, build: Callable[[], Any], fallback: Any) -> Any:
    try:
        return build()
    except Exception as exc:  # one part must never cost the others
        errors.append(f"{what}: {type(exc).__name__}: {exc}")
        return fallback


def _look() -> tuple[dict[int, FrameType], dict[int, threading.Thread], dict[int, str], list[int]]:
    """Every thread's frame, ``threading``'s threads and their names, and the program's own threads."""
    frames = current_frames()
    threads = known_threads()
    names = {tid: t.name for tid, t in threads.items()}
    return frames, threads, names, [tid for tid in frames if not names.get(tid, "").startswith(OWN_PREFIX)]


def build_hello(recorder: Recorder) -> dict[str, Any]:
    """``hello``: who the process is."""
    return {"schema": HELLO_SCHEMA, "process": who_am_i(recorder)}


def _edge_row(p: Participant) -> dict[str, Any]:
    return {
        "who": p.who,
        "thread_name": p.thread_name,
        "task_name": p.task_name,
        "waits_for": p.waits_for,
        "held_by": p.held_by,
        "wait_site": p.wait_site,
        "wait_s": p.wait_s,
        "holds": list(p.holds),
        "holds_sites": list(p.holds_sites),
    }


def build_dump(recorder: Recorder) -> dict[str, Any]:
    """``dump``: everything, see the module docstring."""
    started = time.perf_counter()
    now_ns, now_wall = time.monotonic_ns(), time.time()
    errors: list[str] = []
    frames, threads, names, program = _look()
    infos, awaited_by = _part(errors, "tasks", task_infos, ([], {}))
    prims = _part(errors, "locks", registry.primitives, ())
    empty = WatchdogView({}, (), (), None)
    view = _part(errors, "wait-for graph", lambda: watchdog_view(frames, program, prims, tasks=infos), empty)
    # Every task of a cycle awaits another one: the others cannot be in any (10,000 tasks, few edges).
    cycles = _part(errors, "await cycles", lambda: taskdump.task_cycles([t for t in infos if t.awaits_task_ids]), [])
    document: dict[str, Any] = {
        "schema": DUMP_SCHEMA,
        "process": _part(errors, "process", lambda: who_am_i(recorder), {}),
        "taken_wall": now_wall,
        "threads": _part(errors, "threads", lambda: thread_rows(frames, threads, view.threads), []),
        "loops": _part(errors, "loops", lambda: loop_rows(tasks_by_loop(infos), names, now_ns), []),
        "tasks_total": len(infos),
        "tasks": _part(errors, "tasks", lambda: task_rows(infos, awaited_by), []),
        "traced_primitives": len(prims),
        "locks": _part(errors, "locks", lambda: lock_rows(prims, now_ns, now_wall), []),
        "wait_for": {
            "edges": [_edge_row(p) for p in view.edges],
            "deadlocks": [e.to_dict() for e in view.deadlocks],
            "hang": view.hang.to_dict() if view.hang is not None else None,
            "await_cycles": [[t.name for t in cycle] for cycle in cycles],
        },
        "so_far": _part(errors, "recorder", lambda: so_far(recorder), None),
        "resources": _part(errors, "resources", resources_now, {}),
        "errors": errors,
    }
    document["build_s"] = time.perf_counter() - started
    return document


def _task_counts() -> tuple[dict[str, Any], dict[int, int]]:
    """Tasks by state and by what they await (by state only past ``TOP_TASKS_DESCRIBED``), and
    how many each loop has."""
    pending = taskdump.pending_tasks()
    if len(pending) > TOP_TASKS_DESCRIBED:
        per_loop: Counter[int] = Counter()
        for task in pending:
            try:
                per_loop[id(task.get_loop())] += 1
            except Exception:
                continue
        return {"total": len(pending), "by_state": {"pending": len(pending)}, "by_awaits": None}, dict(per_loop)
    infos = taskdump.dump_tasks()
    by_awaits = Counter(t.awaits_kind or ("running" if t.state == "running" else "other") for t in infos)
    counts = {"total": len(infos), "by_state": dict(Counter(t.state for t in infos)), "by_awaits": dict(by_awaits)}
    return counts, tasks_by_loop(infos)


def _waits_now(prims: Any, now_ns: int, now_wall: float) -> list[dict[str, Any]]:
    rows = []
    for row in lock_rows(prims, now_ns, now_wall):
        if not row["waiters"]:
            continue
        longest = max(row["waiters"], key=lambda w: w["for_s"] or 0.0)
        rows.append(
            {
                "lock": f"{row['kind']} {row['name']!r}",
                "waiters": len(row["waiters"]),
                "longest_s": longest["for_s"] or 0.0,
                "longest_at": longest["site"],
                "holders": [h["who"] for h in row["holders"]],
                "held_for_s": max((h["for_s"] for h in row["holders"] if h["for_s"] is not None), default=None),
                "held_at": row["holders"][0]["site"] if row["holders"] else None,
            }
        )
    rows.sort(key=lambda r: (-r["waiters"], -r["longest_s"], r["lock"]))
    return rows[:_TOP_WAITS]


def _section_tops(recorder: Recorder) -> dict[str, Any]:
    """The few rows of the recorder's tables that ``top`` shows: the hottest locks, the stalls
    and the loop lag, the GIL (when its monitor runs)."""
    out: dict[str, Any] = {"lock_table": [], "stalls": None, "gil": None}
    locks = recorder.read_section("locks")
    if isinstance(locks, list):
        keys = ("name", "kind", "contentions", "wait_total_s", "wait_p99_s", "wait_max_s")
        out["lock_table"] = [{k: row.get(k) for k in keys} for row in locks[:_TOP_LOCKS] if row.get("contentions")]
    stalls = recorder.read_section("slow_callbacks")
    if isinstance(stalls, dict):
        sites = [
            {k: s.get(k) for k in ("site", "function", "count", "total_s", "max_s")}
            for s in stalls.get("sites", [])[:3]
        ]
        lag = stalls.get("loop_lag") or {}
        out["stalls"] = {
            "count": stalls.get("stalls", 0),
            "total_s": stalls.get("total_s", 0.0),
            "sites": sites,
            "loop_lag": {k: lag.get(k) for k in ("count", "p50_s", "p99_s", "max_s")},
        }
    gil = recorder.read_section("gil")
    if isinstance(gil, dict):
        threads = sorted(gil.get("threads") or [], key=lambda t: -float(t.get("gil_wait_s") or 0.0))
        out["gil"] = {
            "wall_s": gil.get("wall_s"),
            "gil_wait_s": gil.get("gil_wait_s"),
            "parallelism": gil.get("parallelism"),
            "threads": [{"name": t.get("name"), "gil_wait_s": t.get("gil_wait_s")} for t in threads[:5]],
        }
    return out


def build_top(recorder: Recorder) -> dict[str, Any]:
    """``top``: counts by state, the hottest waits now, stalls and lag, CPU and GIL."""
    now_ns, now_wall = time.monotonic_ns(), time.time()
    errors: list[str] = []
    frames, _, names, program = _look()
    prims = _part(errors, "locks", registry.primitives, ())
    empty = WatchdogView({}, (), (), None)
    view = _part(errors, "threads", lambda: watchdog_view(frames, program, prims, full=False), empty)
    states = Counter(v.state.split(" (")[0] for v in view.threads.values())
    no_tasks: tuple[dict[str, Any], dict[int, int]] = ({"total": 0, "by_state": {}, "by_awaits": None}, {})
    tasks, per_loop = _part(errors, "tasks", _task_counts, no_tasks)
    document: dict[str, Any] = {
        "schema": TOP_SCHEMA,
        "process": _part(errors, "process", lambda: who_am_i(recorder), {}),
        "taken_wall": now_wall,
        "taken_ns": now_ns,
        "resources": _part(errors, "resources", resources_now, {}),
        "threads": {"total": len(program), "own": len(frames) - len(program), "by_state": dict(states)},
        "tasks": tasks,
        "loops": _part(errors, "loops", lambda: loop_rows(per_loop, names, now_ns), []),
        "waits_now": _part(errors, "locks", lambda: _waits_now(prims, now_ns, now_wall), []),
        "edges": len(view.edges),
        "errors": errors,
    }
    document.update(_part(errors, "recorder", lambda: _section_tops(recorder), {}))
    return document
