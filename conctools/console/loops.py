"""Which event loop the console's task commands (``ps``, ``where``, ``cancel``, ``console``) look at.

A program may run no loop, one, several in several threads, or one after another
(``asyncio.run`` called twice). The console finds them without hooking anything: loops that
conctools' loop monitor registered, loops whose ``run_forever`` / ``run_until_complete`` or
``asyncio.Runner.run`` frame is on some thread's stack (which covers ``asyncio.run``,
``asyncio.Runner(loop_factory=...)`` and ``uvloop.run``), and, when those find nothing, the
loops of asyncio's live tasks (a uvloop loop run by ``run_until_complete()`` has no Python
frame). Each loop
gets a number the first time it is seen; the console follows the running one (the one it
already used while it runs, else the main thread's, else the newest) unless ``use N`` pins one.
conctools' own loops (the console's) are never listed.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from conctools import taskdump
from conctools._context import current_frames

__all__ = ["LoopChooser", "LoopInfo"]

_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep
_ENTRY_FRAMES = {
    (_ASYNCIO_DIR + "runners.py", "run"),  # asyncio.run, asyncio.Runner (any loop_factory), uvloop.run
    (_ASYNCIO_DIR + "base_events.py", "run_until_complete"),
    (_ASYNCIO_DIR + "base_events.py", "run_forever"),
}
_SCAN_EVERY_S = 2.0  # the task scan is the fallback: at most this often


@dataclass(frozen=True, slots=True)
class LoopInfo:
    """One loop as the ``loops`` command lists it."""

    number: int
    loop: asyncio.AbstractEventLoop
    thread_id: int | None
    thread_name: str | None
    running: bool
    closed: bool
    tasks: int
    selected: bool


def _running(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return bool(loop.is_running()) and not loop.is_closed()
    except Exception:
        return False


def _closed(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return bool(loop.is_closed())
    except Exception:
        return True


def _loop_of_frame(frame: FrameType) -> Any:
    try:
        owner = frame.f_locals.get("self")
    except Exception:
        return None
    if isinstance(owner, asyncio.AbstractEventLoop):
        return owner
    loop = getattr(owner, "_loop", None)  # asyncio.Runner
    return loop if isinstance(loop, asyncio.AbstractEventLoop) else None


def _loops_on_stacks() -> dict[int, tuple[asyncio.AbstractEventLoop, int]]:
    """``id(loop) -> (loop, thread id)`` for running loops whose entry frame is on a stack."""
    found: dict[int, tuple[asyncio.AbstractEventLoop, int]] = {}
    try:
        frames = current_frames()
    except Exception:
        return found
    for tid, top in frames.items():
        f: FrameType | None = top
        depth = 0
        while f is not None and depth < 400:
            code = f.f_code
            if (code.co_filename, code.co_name) in _ENTRY_FRAMES:
                loop = _loop_of_frame(f)
                if loop is not None and _running(loop):
                    found.setdefault(id(loop), (loop, tid))
            f = f.f_back
            depth += 1
    return found


def _loops_of_tasks() -> list[asyncio.AbstractEventLoop]:
    """Running loops that own a live task, from asyncio's registry of tasks (a uvloop loop run
    with ``run_until_complete()`` has no Python frame to be found by)."""
    found: dict[int, asyncio.AbstractEventLoop] = {}
    for name in ("_all_tasks", "_scheduled_tasks", "_eager_tasks"):  # 3.11; 3.12+
        pool = getattr(asyncio.tasks, name, None)
        if pool is None:
            continue
        for _ in range(3):  # another thread may add a task meanwhile
            try:
                tasks = list(pool)
                break
            except RuntimeError:
                tasks = []
        for task in tasks:
            try:
                loop = task.get_loop()
            except Exception:
                continue
            if id(loop) not in found and _running(loop):
                found[id(loop)] = loop
    return list(found.values())


def _thread_name(tid: int | None) -> str | None:
    if tid is None:
        return None
    for t in threading.enumerate():
        if t.ident == tid:
            return t.name
    return None


def _count_tasks(loop: asyncio.AbstractEventLoop) -> int:
    try:
        return len(asyncio.all_tasks(loop))
    except Exception:
        return 0


class LoopChooser:
    """Numbers the program's loops and picks the one the task commands use.

    ``pinned``: a loop given by the caller (``start(loop)``): used until ``use`` picks another,
    even once it is closed. Without it the chooser follows the running loop.
    """

    def __init__(
        self,
        is_own: Callable[[asyncio.AbstractEventLoop], bool],
        pinned: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._is_own = is_own
        self._numbers: dict[int, tuple[int, weakref.ref[asyncio.AbstractEventLoop]]] = {}
        self._threads: dict[int, int] = {}
        self._next_number = 1
        self._pinned: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._keep_pinned_when_closed = pinned is not None
        self._current: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._scanned_at = -_SCAN_EVERY_S
        if pinned is not None:
            self._number(pinned)
            self._pinned = self._current = weakref.ref(pinned)

    # -- reading -------------------------------------------------------------------------------
    @property
    def current(self) -> asyncio.AbstractEventLoop | None:
        """The loop chosen by the last :meth:`refresh` (no search)."""
        return self._current() if self._current is not None else None

    @property
    def following(self) -> bool:
        """True when no loop is pinned: the console follows the running loop."""
        return self._pinned is None

    def number_of(self, loop: asyncio.AbstractEventLoop) -> int:
        """The number ``loops`` shows for ``loop`` (given on first sight)."""
        return self._number(loop)

    def thread_of(self, loop: asyncio.AbstractEventLoop) -> int | None:
        """The id of the thread running (or that last ran) ``loop``, when known."""
        tid = getattr(loop, "_thread_id", None)
        if isinstance(tid, int):
            return tid
        tid = self._threads.get(id(loop))
        if tid is not None:
            return tid
        return taskdump.loop_thread_id(loop)

    # -- searching -----------------------------------------------------------------------------
    def _number(self, loop: asyncio.AbstractEventLoop) -> int:
        entry = self._numbers.get(id(loop))
        if entry is not None and entry[1]() is loop:
            return entry[0]
        number = self._next_number
        self._next_number += 1
        self._numbers[id(loop)] = (number, weakref.ref(loop))
        return number

    def _own(self, loop: asyncio.AbstractEventLoop, tid: int | None) -> bool:
        if self._is_own(loop):
            return True
        if tid is None:
            tid = getattr(loop, "_thread_id", None)
        name = _thread_name(tid)
        return name is not None and name.startswith("conctools-")

    def discover(self) -> list[asyncio.AbstractEventLoop]:
        """The program's running loops now, numbered (first seen first)."""
        found: dict[int, tuple[asyncio.AbstractEventLoop, int | None]] = {}
        for loop in taskdump.running_loops():
            found[id(loop)] = (loop, taskdump.loop_thread_id(loop))
        for key, (loop, stack_tid) in _loops_on_stacks().items():
            found[key] = (loop, stack_tid)
        program: dict[int, tuple[asyncio.AbstractEventLoop, int | None]] = {
            key: (loop, tid) for key, (loop, tid) in found.items() if not self._own(loop, tid)
        }
        if not program and time.monotonic() - self._scanned_at >= _SCAN_EVERY_S:
            self._scanned_at = time.monotonic()
            for loop in _loops_of_tasks():
                if not self._own(loop, None):
                    program[id(loop)] = (loop, None)
        for key, (loop, known_tid) in program.items():
            if known_tid is not None:
                self._threads[key] = known_tid
            self._number(loop)
        self._forget_dead()
        return sorted((loop for loop, _ in program.values()), key=self._number)

    def _forget_dead(self) -> None:
        for key, (_number, ref) in list(self._numbers.items()):
            if ref() is None:
                del self._numbers[key]
                self._threads.pop(key, None)

    def refresh(self) -> asyncio.AbstractEventLoop | None:
        """Search, then choose the loop the task commands use now."""
        running = self.discover()
        pinned = self._pinned() if self._pinned is not None else None
        if self._pinned is not None and (pinned is None or (_closed(pinned) and not self._keep_pinned_when_closed)):
            self._pinned = None  # the loop that `use N` chose is gone: follow again
            pinned = None
        if pinned is not None:
            chosen: asyncio.AbstractEventLoop | None = pinned
        else:
            chosen = self._follow(running)
        self._current = weakref.ref(chosen) if chosen is not None else None
        return chosen

    def _follow(self, running: list[asyncio.AbstractEventLoop]) -> asyncio.AbstractEventLoop | None:
        current = self.current
        if current is not None and current in running:
            return current
        main_id = threading.main_thread().ident
        for loop in running:
            if self.thread_of(loop) == main_id:
                return loop
        if running:
            return running[-1]
        if current is not None and not _closed(current):
            return current  # stopped for a moment (between run_until_complete calls): keep it
        return None

    # -- choosing --------------------------------------------------------------------------------
    def table(self) -> list[LoopInfo]:
        """Every known loop (running ones and the chosen one), by number."""
        self.refresh()
        current = self.current
        rows = []
        for number, ref in sorted(self._numbers.values(), key=lambda entry: entry[0]):
            loop = ref()
            if loop is None or (loop is not current and not _running(loop)):
                continue
            tid = self.thread_of(loop)
            rows.append(
                LoopInfo(
                    number=number,
                    loop=loop,
                    thread_id=tid,
                    thread_name=_thread_name(tid),
                    running=_running(loop),
                    closed=_closed(loop),
                    tasks=_count_tasks(loop),
                    selected=loop is current,
                )
            )
        return rows

    def use(self, number: int) -> asyncio.AbstractEventLoop:
        """Pin loop ``number``; :class:`LookupError` when no such loop runs."""
        self.discover()
        for n, ref in self._numbers.values():
            loop = ref()
            if n == number and loop is not None and not _closed(loop):
                self._pinned = self._current = weakref.ref(loop)
                self._keep_pinned_when_closed = False
                return loop
        raise LookupError(f"no loop #{number} (see `loops`)")

    def follow(self) -> asyncio.AbstractEventLoop | None:
        """Unpin: follow the running loop again."""
        self._pinned = None
        self._keep_pinned_when_closed = False
        return self.refresh()
