"""Who holds a pool's item and what it is doing now: user frames, await chains, thread stacks.

Pure inspection of live objects (tasks, threads, frames); called only on the slow path, when
someone has to wait for an item.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from types import CodeType, FrameType, ModuleType

from conctools import registry
from conctools._context import _SAMPLE_DIR, _SKIP_PREFIXES, current_frames
from conctools._imports import NO_RUNNING_LOOP, imported, later, no_current_task, when_imported
from conctools._typing import TYPE_CHECKING, Any
from conctools.events import Frame, PoolHolder, frame_at

if TYPE_CHECKING:
    import asyncio
else:
    asyncio = later("asyncio", globals())

TAKE_FRAMES = 4  # user frames remembered per take (to find the frame that still holds the item)
MAX_DESCRIBED = 64  # holders described per look

_mono = time.monotonic_ns
# asyncio's once the program imports it (_bind_asyncio): until then no loop runs, no task exists.
_get_running_loop: Any = NO_RUNNING_LOOP
_current_task: Any = no_current_task
_Task: Any = ()  # asyncio.Task (isinstance() of an empty tuple is False)

# Installed packages (asyncpg's pool code) are not where a person looks; the sample server, even
# when conctools itself is installed, is.
_SITE_MARKERS = (os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep)
_lib_codes: dict[int, tuple[CodeType, bool]] = {}  # id(code) -> (code, is library): the code keeps its id


def is_library(code: CodeType) -> bool:
    """conctools, the stdlib's asyncio/queue/threading plumbing, or an installed package
    (asyncpg's pool): not the line a person should look at. The sample server is user code."""
    entry = _lib_codes.get(id(code))
    if entry is not None and entry[0] is code:
        return entry[1]
    filename = code.co_filename
    lib = filename.startswith("<frozen") or (
        (filename.startswith(_SKIP_PREFIXES) or any(m in filename for m in _SITE_MARKERS))
        and not filename.startswith(_SAMPLE_DIR)
    )
    if len(_lib_codes) < 20_000:
        _lib_codes[id(code)] = (code, lib)
    return lib


def _short(filename: str) -> str:
    base = os.path.basename(filename)
    if base in ("__init__.py", "__main__.py"):
        return os.path.join(os.path.basename(os.path.dirname(filename)), base)
    return base


def site_of(code: CodeType, lineno: int | None) -> str:
    return f"{_short(code.co_filename)}:{lineno or 0}"


TakeFrame = tuple[int, CodeType, int]  # (id(frame), code, instruction offset) of a user frame at a take

# Past this frame (an event loop running a task's step) lie only the loop's own frames.
_HANDLE_RUN: CodeType | None = None  # asyncio.events.Handle._run's code, where a task's step begins


def _bind_asyncio(asyncio: ModuleType) -> None:
    global _get_running_loop, _current_task, _Task, _HANDLE_RUN
    _get_running_loop, _current_task, _Task = asyncio._get_running_loop, asyncio.current_task, asyncio.Task
    _HANDLE_RUN = asyncio.events.Handle._run.__code__


when_imported("asyncio", _bind_asyncio)
_line_tables: dict[int, tuple[CodeType, list[int], list[int]]] = {}


def line_at(code: CodeType, offset: int) -> int:
    """The source line of instruction ``offset`` (a take stores offsets: a line costs more)."""
    entry = _line_tables.get(id(code))
    if entry is None or entry[0] is not code:
        starts, lines = [], []
        for start, _end, line in code.co_lines():
            starts.append(start)
            lines.append(line or 0)
        entry = (code, starts, lines)
        if len(_line_tables) < 20_000:
            _line_tables[id(code)] = entry
    i = bisect.bisect_right(entry[1], offset) - 1
    return entry[2][i] if i >= 0 else code.co_firstlineno


def take_frames(frame: FrameType | None) -> tuple[TakeFrame, ...]:
    """The first user frames from ``frame`` outwards (innermost first), up to the task's step."""
    out: list[TakeFrame] = []
    while frame is not None and len(out) < TAKE_FRAMES:
        code = frame.f_code
        if code is _HANDLE_RUN:
            break
        if not is_library(code):
            out.append((id(frame), code, frame.f_lasti))
        frame = frame.f_back
    return tuple(out)


# A loop's closing jump. Not JUMP_BACKWARD_NO_INTERRUPT: every ``await`` is such a little loop.
_BACKWARD_JUMPS = frozenset({"JUMP_BACKWARD", "JUMP_ABSOLUTE"})
_loop_cache: dict[tuple[int, int], tuple[CodeType, bool]] = {}


def in_loop(code: CodeType, offset: int) -> bool:
    """Is instruction ``offset`` of ``code`` inside a loop body (a later jump goes back before it)?"""
    key = (id(code), offset)
    cached = _loop_cache.get(key)
    if cached is not None and cached[0] is code:
        return cached[1]
    found = False
    dis = imported("dis")  # when first needed: a followed child starts without it
    for ins in dis.get_instructions(code):
        if (
            ins.offset > offset
            and ins.opname in _BACKWARD_JUMPS
            and isinstance(ins.argval, int)
            and ins.argval <= offset
        ):
            found = True
            break
    if len(_loop_cache) < 10_000:
        _loop_cache[key] = (code, found)
    return found


def user_stack(frame: FrameType | None, limit: int = 6) -> tuple[tuple[Frame, ...], int]:
    """The first user frames from ``frame`` outwards, and the index of the innermost one among
    the first four that runs inside a loop (``-1``: none does)."""
    out: list[Frame] = []
    loop_index = -1
    while frame is not None and len(out) < limit:
        code = frame.f_code
        if not is_library(code):
            line = frame.f_lineno or 0
            if loop_index < 0 and len(out) < 4 and in_loop(code, frame.f_lasti):
                loop_index = len(out)
            out.append(frame_at(code.co_filename, line, code.co_name))
        frame = frame.f_back
    return tuple(out), loop_index


def task_now() -> Any:
    loop = _get_running_loop()
    if loop is None:
        return None
    try:
        return _current_task(loop)
    except RuntimeError:
        return None


def _await_chain(coro: Any) -> list[tuple[FrameType, Any]]:
    """(frame, what it awaits) from a task's coroutine down its ``await`` chain, outermost first."""
    out: list[tuple[FrameType, Any]] = []
    obj = coro
    for _ in range(64):
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None) or getattr(obj, "ag_frame", None)
        if frame is None:
            break
        nxt = getattr(obj, "cr_await", None)
        if nxt is None:
            nxt = getattr(obj, "gi_yieldfrom", None)
        if nxt is None:
            nxt = getattr(obj, "ag_await", None)
        out.append((frame, nxt))
        if nxt is None:
            break
        obj = nxt
    return out


def _leaf_words(obj: Any) -> str | None:
    if obj is None:
        return None
    name = type(obj).__name__
    if name == "_GatheringFuture":
        return "gather()"
    if isinstance(obj, _Task):
        try:
            return f"task {obj.get_name()!r}"
        except Exception:
            return "a task"
    if "Future" in name:
        return "a future"
    return name


def _choose(frames: list[FrameType], taken: tuple[TakeFrame, ...]) -> tuple[int, str]:
    """Index (innermost-first list) of the frame to show and where it took the item.

    The innermost frame that took the item and still runs, else the innermost user frame.
    """
    by_id = {fid: (code, offset) for fid, code, offset in taken}
    for i, f in enumerate(frames):
        hit = by_id.get(id(f))
        if hit is not None and hit[0] is f.f_code:
            return i, site_of(hit[0], line_at(hit[0], hit[1]))
    acquired = _acquired_words(taken)
    for i, f in enumerate(frames):
        if not is_library(f.f_code):
            return i, acquired
    return (0 if frames else -1), acquired


def _acquired_words(taken: tuple[TakeFrame, ...]) -> str:
    """Where an item was taken when none of those frames runs any more: the first user frame in
    another file than the innermost one (the caller of a pool helper), else the innermost."""
    if not taken:
        return ""
    first = taken[0][1].co_filename
    for _, code, offset in taken:
        if code.co_filename != first:
            return site_of(code, line_at(code, offset))
    return site_of(taken[0][1], line_at(taken[0][1], taken[0][2]))


_POOLS_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _call_name(code: CodeType) -> str:
    """``fetch_upstream()``; a queue method that conctools wraps keeps its own name (``get()``)."""
    name = code.co_name
    if code.co_filename.startswith(_POOLS_DIR) and name.startswith(("_aq_", "_q_")):
        name = name.split("_", 2)[2]
    return name + "()"


def thread_who(thread: Any, name: str | None = None) -> str:
    return f"thread {(name if name is not None else getattr(thread, 'name', '?'))!r}"


def describe_task(
    task: Any, thread_name: str, taken: tuple[TakeFrame, ...], held_s: float | None, acquired_hint: str = ""
) -> PoolHolder:
    if task is None:
        return PoolHolder(
            who="a task that no longer exists",
            party="task",
            state="finished",
            call=None,
            site="?",
            function="?",
            line="",
            acquired_at=_acquired_words(taken) or acquired_hint,
            held_s=held_s,
        )
    try:
        name = task.get_name()
    except Exception:
        name = "?"
    who = f"task {name!r} (thread {thread_name!r})"
    if task.done():
        return PoolHolder(
            who=who,
            party="task",
            state="finished",
            call=None,
            site="?",
            function="?",
            line="",
            acquired_at=_acquired_words(taken) or acquired_hint,
            held_s=held_s,
        )
    chain = _await_chain(task.get_coro())
    frames = [f for f, _ in reversed(chain)]  # innermost first
    index, acquired = _choose(frames, taken)
    if index < 0:
        return PoolHolder(
            who=who,
            party="task",
            state="unknown",
            call=None,
            site="?",
            function="?",
            line="",
            acquired_at=acquired or acquired_hint,
            held_s=held_s,
        )
    frame = frames[index]
    if index > 0:
        call: str | None = _call_name(frames[index - 1].f_code)
    else:
        call = _leaf_words(chain[-1][1]) if chain else None
    coro = task.get_coro()
    running = bool(getattr(coro, "cr_running", False) or getattr(coro, "gi_running", False))
    code, line = frame.f_code, frame.f_lineno
    return PoolHolder(
        who=who,
        party="task",
        state="running" if running else "awaiting",
        call=None if running else call,
        site=site_of(code, line),
        function=code.co_name,
        line=frame_at(code.co_filename, line or 0, code.co_name).line,
        acquired_at=acquired or acquired_hint,
        held_s=held_s,
    )


def describe_thread(
    thread: Any,
    name: str,
    taken: tuple[TakeFrame, ...],
    held_s: float | None,
    frames_now: dict[int, FrameType],
    acquired_hint: str = "",
) -> PoolHolder:
    alive = thread is not None and thread.is_alive()
    top = frames_now.get(thread.ident) if alive and thread.ident is not None else None
    if not alive or top is None:
        return PoolHolder(
            who=f"exited thread {name!r}" if not alive else thread_who(thread, name),
            party="thread",
            state="exited" if not alive else "unknown",
            call=None,
            site="?",
            function="?",
            line="",
            acquired_at=_acquired_words(taken) or acquired_hint,
            held_s=held_s,
        )
    frames: list[FrameType] = []
    f: FrameType | None = top
    while f is not None and len(frames) < 128:
        frames.append(f)
        f = f.f_back
    index, acquired = _choose(frames, taken)
    frame = frames[index]
    call = _call_name(frames[index - 1].f_code) if index > 0 else None
    code, line = frame.f_code, frame.f_lineno
    return PoolHolder(
        who=thread_who(thread, name),
        party="thread",
        state="calling" if call else "running",
        call=call,
        site=site_of(code, line),
        function=code.co_name,
        line=frame_at(code.co_filename, line or 0, code.co_name).line,
        acquired_at=acquired or acquired_hint,
        held_s=held_s,
    )


def _pending_task(task: Any, loop: Any) -> Any:
    """``task`` if it is one of ``loop``'s pending tasks (what ``asyncio.all_tasks(loop)`` lists)."""
    try:
        return task if loop is not None and task.get_loop() is loop and not task.done() else None
    except Exception:
        return None


def describe_semaphore(prim: Any) -> tuple[tuple[PoolHolder, ...], int, int]:
    # The holders only: a semaphore that thousands of tasks wait on must not cost a look at each.
    found = registry.holders_of(prim)
    if found is None:
        return (), 0, 0
    in_loop = (registry.kind_of(prim) or "").startswith("aio.")
    now = _mono()
    loop = _get_running_loop()
    tasks: dict[int, Any] = {}
    # A holder's party carries its task: the loop's task list (every task of a busy loop) is read
    # only for a holder that does not.
    if loop is not None and any(p.task_id is not None and p.task is None for p in found):
        try:
            tasks = {id(t): t for t in asyncio.all_tasks(loop)}
        except RuntimeError:
            tasks = {}
    threads = {t.ident: t for t in threading.enumerate()}
    frames_now: dict[int, FrameType] | None = None
    out = []
    for p in found[:MAX_DESCRIBED]:
        held_s = (now - p.since_ns) / 1e9 if p.since_ns else None
        hint = p.site if p.site and p.site != "?" else ""
        task = (
            _pending_task(p.task, loop)
            if p.task is not None
            else tasks.get(p.task_id)
            if p.task_id is not None
            else None
        )
        if task is not None:
            out.append(describe_task(task, p.thread_name, (), held_s, hint))
        elif p.task_id is not None and in_loop:
            out.append(
                PoolHolder(
                    who=f"task {p.task_name!r}",
                    party="task",
                    state="unknown",
                    call=None,
                    site="?",
                    function="?",
                    line="",
                    acquired_at=hint,
                    held_s=held_s,
                )
            )
        else:
            if frames_now is None:
                frames_now = current_frames(own_from=1)
            out.append(describe_thread(threads.get(p.thread_id), p.thread_name, (), held_s, frames_now, hint))
    return tuple(out), len(found), len(found)
