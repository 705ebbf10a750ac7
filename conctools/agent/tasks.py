"""Every asyncio task of every loop, with its await chain, in one format on every Python.

The tasks, their state and what each awaits come from :func:`conctools.taskdump.dump_tasks`
(safe from another thread). The await chain comes from ``asyncio.capture_call_graph`` where it
exists (CPython 3.14+: the interpreter's own view, which also knows who awaits each task), and
from ``taskdump``'s walker of ``cr_await`` elsewhere; either way each task is the same row: its
stack innermost first, the tasks it awaits and the tasks awaiting it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from conctools import taskdump
from conctools._context import is_conctools_frame
from conctools._imports import later, when_imported
from conctools.agent.threads import frame_row
from conctools.events import Frame, frame_at
from conctools.taskdump import TaskInfo

if TYPE_CHECKING:
    import asyncio
else:  # asyncio itself once the program imports it; imported by the first use before (never at start-up)
    asyncio = later("asyncio", globals())

__all__ = ["MAX_TASKS", "loop_rows", "task_infos", "task_rows", "tasks_by_loop"]

MAX_TASKS = 100_000  # rows in one dump; the count stays exact

# asyncio.capture_call_graph (3.14+), once the program imports asyncio (no task exists before).
_capture_call_graph: Any = None


def _bind_asyncio(asyncio: ModuleType) -> None:
    global _capture_call_graph
    _capture_call_graph = getattr(asyncio, "capture_call_graph", None)


when_imported("asyncio", _bind_asyncio)


def _frame_record(frame: Any) -> Frame | None:
    code = getattr(frame, "f_code", None)
    if code is None or is_conctools_frame(code.co_filename):
        return None
    return frame_at(code.co_filename, frame.f_lineno or code.co_firstlineno, code.co_name)


def _call_graphs(infos: Sequence[TaskInfo]) -> dict[int, tuple[tuple[Frame, ...], tuple[int, ...]]]:
    """``task id -> (stack, ids of the tasks awaiting it)`` from ``asyncio.capture_call_graph``
    (3.14+); empty where it does not exist or refuses (then the walker's view stands)."""
    if _capture_call_graph is None:
        return {}
    wanted = {t.task_id for t in infos}
    out: dict[int, tuple[tuple[Frame, ...], tuple[int, ...]]] = {}
    for task in taskdump.pending_tasks():
        if id(task) not in wanted:
            continue
        try:
            graph = _capture_call_graph(task)
            if graph is None:
                continue
            stack = tuple(f for f in (_frame_record(e.frame) for e in graph.call_stack) if f is not None)
            parents = tuple(id(p.future) for p in graph.awaited_by)
        except Exception:  # a task that finished meanwhile, a future without a coroutine
            continue
        out[id(task)] = (stack, parents)
    return out


def task_infos() -> tuple[list[TaskInfo], dict[int, tuple[int, ...]]]:
    """Every pending task of every running loop, with the await chain of this Python's best
    source; and who awaits each task, where the interpreter says it (3.14+)."""
    infos = taskdump.dump_tasks()
    graphs = _call_graphs(infos)
    if graphs:
        infos = [dataclasses.replace(t, stack=graphs[t.task_id][0]) if t.task_id in graphs else t for t in infos]
    return infos, {task_id: parents for task_id, (_, parents) in graphs.items()}


def task_rows(
    infos: Sequence[TaskInfo], awaited_by: Mapping[int, tuple[int, ...]], limit: int = MAX_TASKS
) -> list[dict[str, Any]]:
    """The tasks as JSON rows (at most ``limit``), each with its awaiters: the interpreter's
    word on 3.14+ (``awaited_by``), else the reverse of what each task awaits."""
    reverse: dict[int, list[int]] = {}
    for t in infos:
        for target in t.awaits_task_ids:
            reverse.setdefault(target, []).append(t.task_id)
    rows = []
    for t in infos[:limit]:
        parents = awaited_by.get(t.task_id)
        rows.append(
            {
                "id": t.task_id,
                "name": t.name,
                "coro": t.coro,
                "state": t.state,
                "loop_id": t.loop_id,
                "thread_id": t.thread_id,
                "created_at": t.created_at,
                "awaits": t.awaits,
                "awaits_kind": t.awaits_kind,
                "awaits_task_ids": list(t.awaits_task_ids),
                "awaited_by": list(parents) if parents is not None else reverse.get(t.task_id, []),
                "stack": [frame_row(f) for f in t.stack],
            }
        )
    return rows


def loop_rows(task_counts: Mapping[int, int], thread_names: Mapping[int, str], now_ns: int) -> list[dict[str, Any]]:
    """Every running loop: its thread, its pending tasks (``task_counts`` by loop id), and its
    health as the loop monitor sees it now."""
    from conctools.agent.loops import loop_health

    rows = []
    for loop in taskdump.running_loops():
        tid = taskdump.loop_thread_id(loop)
        current = None
        try:
            task = asyncio.current_task(loop)
            current = task.get_name() if task is not None else None
        except Exception:
            pass
        row: dict[str, Any] = {
            "id": id(loop),
            "kind": f"{type(loop).__module__}.{type(loop).__qualname__}",
            "thread_id": tid,
            "thread_name": thread_names.get(tid, f"thread-{tid}") if tid is not None else None,
            "tasks": task_counts.get(id(loop), 0),
            "current_task": current,
        }
        row.update(loop_health(loop, tid, now_ns))
        rows.append(row)
    return rows


def tasks_by_loop(infos: Sequence[TaskInfo]) -> dict[int, int]:
    """How many pending tasks each loop has, from a dump."""
    return dict(Counter(t.loop_id for t in infos))
