"""Who is running, and where: cheap identity and stack helpers shared by every producer.

The costs measured on this project's machines shaped these helpers:
``threading.get_ident()`` and ``asyncio._get_running_loop()`` are cheap, while
``asyncio.current_task()`` off-loop raises internally and costs ~20x more, so the task is
only looked up when a loop runs in this thread.
"""

from __future__ import annotations

import _thread
import gc
import operator
import os
import sys
import threading
from collections.abc import Callable, Iterable
from types import CodeType, FrameType, ModuleType

from conctools._imports import NO_RUNNING_LOOP, no_current_task, when_imported
from conctools._typing import Any
from conctools.events import Frame, frame_at

__all__ = [
    "capture_stack",
    "current_frames",
    "current_task_name",
    "frames_of",
    "internal_thread",
    "is_conctools_frame",
    "line_of",
    "raw_stack",
    "resolve_stack",
    "thread_name_of",
    "user_frame",
    "who_am_i",
]

# asyncio's, once the program imports it (conctools run does not import asyncio for a program
# that never uses it): until then no loop runs and no task is current.
_get_running_loop: Callable[[], Any] = NO_RUNNING_LOOP
_current_task: Callable[..., Any] = no_current_task


def _bind_asyncio(asyncio: ModuleType) -> None:
    global _get_running_loop, _current_task
    _get_running_loop, _current_task = asyncio._get_running_loop, asyncio.current_task


when_imported("asyncio", _bind_asyncio)
# Captured before trace_locks() can replace them in the threading module.
_PlainEvent = threading.Event
_PlainCondition = threading.Condition
_allocate_lock = _thread.allocate_lock


_call = operator.call


def current_frames(own_from: int | None = None) -> dict[int, FrameType]:
    """``sys._current_frames()`` without the calling thread's own frame, and without the deadlock it
    can cause on Python 3.11.

    The calling thread's entry would be this call's own frame. Kept in the dict, it links (once this
    call returns) to the caller's frame, whose locals hold the dict: a reference cycle that keeps every
    sampled frame, and all their locals, alive until a garbage collection collects them together.
    CPython 3.12 and 3.13 crash or complain when one such collection holds a ``BytesIO`` and the
    ``memoryview`` of its ``getbuffer()`` (multiprocessing's pickler makes one for every message:
    "deallocated BytesIO object has exported buffers", then SIGSEGV; CPython gh-111049). So the entry
    is left out; ``own_from=N`` puts in its place the frame ``N`` levels above the caller, which the
    caller's locals cannot reach once it returns (``own_from=1``: the caller's caller).

    On 3.11 ``sys._current_frames()`` holds the runtime's thread-list lock while it creates frame
    objects; an allocation there can start a garbage collection, and a collected ``threading.local``
    takes the same lock in its ``__del__``: the process hangs for good, holding the GIL (CPython
    gh-106883, not fixed in 3.11; 3.12 collects only between bytecodes). Here the collector is paused
    around the call when it was on, and the program cannot see the pause: the calls are made from
    C (``map`` over them, unpacked at once), and nothing between them and ``gc.enable()`` lets
    another thread run (no call and no backward jump, where Python hands the GIL over).
    """
    frames: dict[int, FrameType]
    if sys.version_info >= (3, 12):
        frames = sys._current_frames()
    else:
        was_enabled, _, frames = map(_call, (gc.isenabled, gc.disable, sys._current_frames))  # type: ignore[assignment]
        if was_enabled:
            gc.enable()
    me = _thread.get_ident()
    frames.pop(me, None)
    if own_from is not None:
        try:
            frames[me] = sys._getframe(own_from + 1)
        except ValueError:  # not that deep
            pass
    return frames


def _plain_event() -> threading.Event:
    """A ``threading.Event`` built from plain parts even while ``trace_locks()`` has replaced
    ``threading.Condition`` and ``threading.Lock`` (which ``Event.__init__`` looks up)."""
    event = _PlainEvent.__new__(_PlainEvent)
    event._cond = _PlainCondition(_allocate_lock())  # type: ignore[attr-defined]
    event._flag = False  # type: ignore[attr-defined]
    return event


def internal_thread(target: Callable[[], object], name: str) -> threading.Thread:
    """A daemon thread for conctools' own work: its internals stay plain primitives even when it
    is made under ``trace_locks()`` (``Thread.__init__`` makes an ``Event``), so conctools never
    waits on a traced primitive of its own."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    started = getattr(thread, "_started", None)
    if started is not None and not started.is_set():
        thread._started = _plain_event()  # type: ignore[attr-defined]
    return thread


_wait_lock_type: list[Any] = []  # [WaitLock or _thread.allocate_lock], once known
_yielding: list[Any] = []  # [_speedups.handover_yielding], once WaitLock is in use


def wait_lock() -> Any:
    """A lock for a conctools thread to sleep on between its looks (its stop or wake lock), as
    ``_thread.allocate_lock()`` makes: the C extension's ``WaitLock``, whose ``acquire()`` takes the GIL
    back by the hand-over (see _speedups.c: ho_restore). A busy event loop in the main thread releases the
    GIL at every ``select(0)`` and takes it back before a woken waiter runs: each wake-up of a conctools
    thread cost the program's thread hundreds of futex wake-ups (issue 12). A plain lock without the
    extension, or with ``CONCTOOLS_PURE_PYTHON=1``."""
    if not _wait_lock_type:
        from conctools import locks

        made: Any = _allocate_lock
        c_ext: Any = locks._speedups  # None without the extension, with a stale build, or CONCTOOLS_PURE_PYTHON=1
        if c_ext is not None and hasattr(c_ext, "WaitLock"):
            made = c_ext.WaitLock
            _yielding.append(c_ext.handover_yielding)
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=c_ext.handover_after_fork)
        _wait_lock_type.append(made)
    return _wait_lock_type[0]()


def main_yields_gil() -> bool:
    """True while the main thread has let go of the GIL for one of conctools' threads (the hand-over of
    :func:`wait_lock`) and waits, for a few hundred microseconds at most, until that thread has it: it
    wants the GIL back, though it sleeps on another futex than the GIL's."""
    return bool(_yielding) and bool(_yielding[0]())


_PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# The sample server ships inside the package but is a user program: its lines are the ones
# people must see in stacks and culprits, so it never counts as conctools' own code.
_SAMPLE_DIR = _PKG_DIR + "server" + os.sep


def _own_prefixes() -> tuple[str, ...]:
    """Path prefixes of conctools' own code: every entry of the package but the sample server."""
    try:
        entries = sorted(os.listdir(_PKG_DIR))
    except OSError:
        return (_PKG_DIR,)
    return tuple(_PKG_DIR + e + (os.sep if os.path.isdir(_PKG_DIR + e) else "") for e in entries if e != "server")


# The stdlib modules a lock or wait site walks out of (to the user code that called them).
_STDLIB_SKIP = (
    os.path.dirname(threading.__file__) + os.sep + "asyncio" + os.sep,
    os.path.dirname(threading.__file__) + os.sep + "threading.py",
    os.path.dirname(threading.__file__) + os.sep + "concurrent" + os.sep,
    os.path.dirname(threading.__file__) + os.sep + "selectors.py",
    os.path.dirname(threading.__file__) + os.sep + "runpy.py",
    os.path.dirname(threading.__file__) + os.sep + "contextlib.py",
    os.path.dirname(threading.__file__) + os.sep + "queue.py",
)
_SKIP_PREFIXES = (*_own_prefixes(), *_STDLIB_SKIP)
# A cheap pre-check for hot paths: everything _SKIP_PREFIXES matches, in 8 prefixes instead of ~40
# (it also matches the bundled sample server, which a full check then tells apart).
_SKIP_MAYBE = (_PKG_DIR, *_STDLIB_SKIP)


def current_task_name() -> str | None:
    """The running asyncio task's name, or ``None`` outside a task (cheap off-loop)."""
    loop = _get_running_loop()
    if loop is None:
        return None
    try:
        task = _current_task(loop)
    except RuntimeError:
        return None
    return task.get_name() if task is not None else None


def who_am_i() -> tuple[int, str, str | None]:
    """``(thread_id, thread_name, task_name)`` of the caller."""
    t = threading.current_thread()
    return t.ident or threading.get_ident(), t.name, current_task_name()


def thread_name_of(ident: int) -> str:
    """The name of the live thread ``ident``, or ``thread-<ident>`` if it is unknown."""
    for t in threading.enumerate():
        if t.ident == ident:
            return t.name
    return f"thread-{ident}"


def is_conctools_frame(filename: str) -> bool:
    """True for frames inside conctools itself (the bundled sample server is user code)."""
    return filename.startswith(_PKG_DIR) and not filename.startswith(_SAMPLE_DIR)


def frames_of(frame: FrameType | None, limit: int = 64) -> tuple[Frame, ...]:
    """The stack from ``frame`` outwards as :class:`Frame` records, innermost first,
    leaving out conctools' own frames."""
    out: list[Frame] = []
    while frame is not None and len(out) < limit:
        code = frame.f_code
        filename = code.co_filename
        if not filename.startswith(_PKG_DIR) or filename.startswith(_SAMPLE_DIR):
            out.append(frame_at(filename, frame.f_lineno or 0, code.co_name))
        frame = frame.f_back
    return tuple(out)


def line_of(code: CodeType, lasti: int) -> int:
    """The line of instruction offset ``lasti`` in ``code`` (``frame.f_lineno`` for a frame stopped there)."""
    for start, end, lineno in code.co_lines():
        if start <= lasti < end and lineno is not None:
            return lineno
    return code.co_firstlineno


def raw_stack(frame: FrameType | None, limit: int = 64) -> tuple[Any, ...]:
    """``(code, offset, code, offset, ...)`` from ``frame`` outwards: a stack kept as code objects and
    offsets, cheap to take; :func:`resolve_stack` turns it into frames with file, line and source
    text when a report needs it (the C extension has the same, without frame objects)."""
    out: list[Any] = []
    while frame is not None and len(out) < 2 * limit:
        out.append(frame.f_code)
        out.append(frame.f_lasti)
        frame = frame.f_back
    return tuple(out)


def resolve_stack(raw: tuple[Any, ...], limit: int = 64) -> tuple[Frame, ...]:
    """The frames of a :func:`raw_stack`, innermost first, leaving out conctools' own."""
    out: list[Frame] = []
    for i in range(0, len(raw) - 1, 2):
        if len(out) >= limit:
            break
        code, lasti = raw[i], raw[i + 1]
        filename = code.co_filename
        if filename.startswith(_PKG_DIR) and not filename.startswith(_SAMPLE_DIR):
            continue
        out.append(frame_at(filename, line_of(code, lasti), code.co_name))
    return tuple(out)


def capture_stack(skip: int = 1, limit: int = 64) -> tuple[Frame, ...]:
    """The caller's stack (innermost first), skipping ``skip`` frames and conctools' own."""
    try:
        frame: FrameType | None = sys._getframe(skip)
    except ValueError:
        return ()
    return frames_of(frame, limit)


def user_frame(frames: Iterable[Frame]) -> Frame | None:
    """The innermost frame in user code (not conctools, asyncio, threading or runpy)."""
    first = None
    for f in frames:
        if first is None:
            first = f
        if not f.filename.startswith(_SKIP_PREFIXES) or f.filename.startswith(_SAMPLE_DIR):
            return f
    return first
