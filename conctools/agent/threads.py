"""Every thread of the process: name, ids, state, what it waits on, and its stack.

Read from outside the threads, without stopping them: ``sys._current_frames()`` and a copy of
``threading``'s table of threads (a dict copied under the GIL, no lock taken). conctools' own
threads (``conctools-*``) are listed by name only: their stacks are conctools' and say
nothing about the program.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

from conctools import _context
from conctools.agent.waits import ThreadView
from conctools.events import Frame

__all__ = ["OWN_PREFIX", "current_frames", "frame_row", "known_threads", "thread_rows"]

OWN_PREFIX = "conctools-"


def current_frames() -> dict[int, FrameType]:
    """Every other thread's innermost frame (see :func:`conctools._context.current_frames`), or
    nothing if the interpreter refuses."""
    try:
        return _context.current_frames()
    except Exception:
        return {}


def known_threads() -> dict[int, threading.Thread]:
    """``threading``'s live threads by id: a copy of its table (no ``threading.enumerate()``,
    which takes a lock the program's threads take too)."""
    table: Any = getattr(threading, "_active", None)
    for _ in range(100):
        try:
            return dict(table) if isinstance(table, dict) else {t.ident or 0: t for t in threading.enumerate()}
        except RuntimeError:  # changed size while being copied
            continue
    return {}


def frame_row(frame: Frame) -> dict[str, Any]:
    """A stack frame as JSON."""
    return {"filename": frame.filename, "lineno": frame.lineno, "function": frame.function, "line": frame.line}


def thread_rows(
    frames: Mapping[int, FrameType],
    threads: Mapping[int, threading.Thread],
    views: Mapping[int, ThreadView],
) -> list[dict[str, Any]]:
    """One row per thread: the main thread first, then the program's by name, then conctools'."""
    main_id = threading.main_thread().ident
    rows = []
    for tid in set(frames) | set(threads):
        thread = threads.get(tid)
        name = thread.name if thread is not None else f"thread-{tid}"
        own = name.startswith(OWN_PREFIX)
        view = views.get(tid)
        stack: Sequence[Frame] = view.stack if view is not None else ()
        rows.append(
            {
                "id": tid,
                "native_id": getattr(thread, "native_id", None),
                "name": name,
                "daemon": bool(thread.daemon) if thread is not None else True,
                "main": tid == main_id,
                "own": own,
                "state": "conctools" if own else (view.state if view is not None else "unknown"),
                "waits_on": view.waits_on if view is not None else None,
                "blocked": bool(view.blocked) if view is not None else False,
                "stack": [frame_row(f) for f in stack],
            }
        )
    rows.sort(key=lambda r: (r["own"], not r["main"], r["name"], r["id"]))
    return rows
