"""What every asyncio task is doing: the hang view of an event loop.

:func:`dump_tasks` lists every pending task with its name, state, await stack (the chain of
coroutines it is suspended in, innermost first like every stack in conctools), where it was
created when that is known, and what it awaits (another task, a lock, an event, a queue, a
timer, an executor job, a plain future). It is safe to call from ANOTHER thread while the
loop runs or is blocked: it only reads, copies the task registries defensively and never
touches the loop's own state.

:func:`loop_idle_forever` says whether a loop has pending tasks and nothing left that could
wake them (no ready callback, no timer, no I/O other than its own self-pipe, no signal
handler, no executor job). :func:`find_await_cycles` is a pure search for await cycles
(task A awaits B awaits A) over the ``awaits_task_ids`` edges of a dump.

:func:`running_loops` lists the loops running right now in any thread: loops seen by the
loop monitor (:mod:`conctools.loopmon` registers every loop it watches or sees start), plus,
best effort, any ``BaseEventLoop.run_forever`` found on a thread's stack.
"""

from __future__ import annotations

import _thread
import os
import sys
import threading
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from types import CodeType, FrameType

from conctools import registry
from conctools._context import (
    _PKG_DIR,
    _SAMPLE_DIR,
    current_frames,
    is_conctools_frame,
    line_of,
    thread_name_of,
    user_frame,
)
from conctools._imports import later
from conctools._log import get_logger
from conctools._records import record
from conctools._typing import TYPE_CHECKING, Any, TypeVar
from conctools.events import Frame, WaiterInfo, frame_at
from conctools.recorder import _ctracing

if TYPE_CHECKING:
    import asyncio
else:  # asyncio itself once the program imports it; imported by the first use before (never at start-up)
    asyncio = later("asyncio", globals())

__all__ = [
    "TaskInfo",
    "creation_site",
    "dump_tasks",
    "find_await_cycles",
    "format_task_dump",
    "loop_idle_forever",
    "loop_thread_id",
    "note_creation_site",
    "pending_tasks",
    "register_loop",
    "running_loops",
    "task_cycles",
    "unregister_loop",
]

_log = get_logger("conctools.taskdump")

_ASYNCIO_DIR = os.path.join(os.path.dirname(threading.__file__), "asyncio") + os.sep  # (without importing it)
_MAX_DEPTH = 64
_MAX_REPR = 120
K = TypeVar("K", bound=Hashable)


@record(kw_only=True)
class TaskInfo:
    """One asyncio task as seen from outside: who it is, where it is suspended, what it awaits.

    ``stack`` is the await chain, innermost first (the frame that is suspended or running
    right now comes first, the task's own coroutine last), like every stack in conctools.
    ``awaits_kind`` is one of ``"task"``, ``"gather"``, ``"lock"``, ``"event"``,
    ``"condition"``, ``"semaphore"``, ``"queue"``, ``"barrier"``, ``"stream"``,
    ``"sleep"``, ``"executor"``, ``"future"`` or ``None`` (running, or not known).
    """

    task_id: int
    name: str
    coro: str  # the coroutine's qualified name
    state: str  # "running" | "pending" | "done" | "cancelled" | "failed"
    stack: tuple[Frame, ...]
    created_at: str | None  # file:line where the task was created, when known
    awaits: str | None  # what it waits on, in words
    awaits_kind: str | None
    awaits_task_ids: tuple[int, ...] = ()  # tasks it waits for (await-graph edges)
    loop_id: int = 0
    thread_id: int | None = None  # the thread running its loop, when known

    @property
    def site(self) -> str | None:
        """``file:line`` of the innermost user frame of the await stack."""
        frame = user_frame(self.stack)
        return frame.site if frame is not None else None

    def as_waiter_info(self) -> WaiterInfo:
        """This task as a :class:`~conctools.events.WaiterInfo` for a hang event."""
        thread_id = self.thread_id or 0
        return WaiterInfo(
            thread_id=thread_id,
            thread_name=thread_name_of(thread_id) if thread_id else "?",
            task_name=self.name,
            state=self.state,
            waits_on=self.awaits,
            stack=self.stack,
        )


# -- loop registry ---------------------------------------------------------------------------

_registry_lock = _thread.RLock()  # reentrant: a weakref callback may run (GC) while it is held
_loops: dict[int, tuple[weakref.ref[asyncio.AbstractEventLoop], int]] = {}  # id(loop) -> (ref, thread id)


def register_loop(loop: asyncio.AbstractEventLoop, thread_id: int | None = None) -> None:
    """Remember that ``loop`` runs in ``thread_id`` (the caller's thread by default)."""
    tid = thread_id if thread_id is not None else _thread.get_ident()
    key = id(loop)

    def forget(ref: weakref.ref[asyncio.AbstractEventLoop]) -> None:  # bounded: dead loops leave
        with _registry_lock:
            entry = _loops.get(key)
            if entry is not None and entry[0] is ref:
                del _loops[key]

    with _registry_lock:
        entry = _loops.get(key)
        if entry is not None and entry[0]() is loop:
            _loops[key] = (entry[0], tid)
        else:
            _loops[key] = (weakref.ref(loop, forget), tid)


def unregister_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Forget ``loop`` (it stopped running)."""
    with _registry_lock:
        _loops.pop(id(loop), None)


def loop_thread_id(loop: asyncio.AbstractEventLoop) -> int | None:
    """The id of the thread running ``loop``, or ``None`` if it is not known to run."""
    tid = getattr(loop, "_thread_id", None)  # BaseEventLoop sets it while running
    if isinstance(tid, int):
        return tid
    with _registry_lock:
        entry = _loops.get(id(loop))
    if entry is not None and entry[0]() is loop:
        return entry[1]
    for found, tid in _running_on_stacks():  # a loop nobody registered (uvloop without a monitor)
        if found is loop:
            register_loop(loop, tid)
            return tid
    return None


def running_loops() -> list[asyncio.AbstractEventLoop]:
    """Event loops running right now in any thread (registered ones, plus any found on a stack)."""
    found: dict[int, asyncio.AbstractEventLoop] = {}
    with _registry_lock:
        entries = list(_loops.items())
    for key, (ref, _tid) in entries:
        loop = ref()
        if loop is None:
            with _registry_lock:
                _loops.pop(key, None)
            continue
        if _is_running(loop):
            found[id(loop)] = loop
    for loop in _loops_on_stacks():
        found.setdefault(id(loop), loop)
    # conctools' own loops (the console's) are not the program's.
    return [loop for loop in found.values() if not getattr(loop, "_conctools_own", False)]


def _is_running(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return bool(loop.is_running()) and not loop.is_closed()
    except Exception:
        return False


def _loops_on_stacks() -> list[asyncio.AbstractEventLoop]:
    """Loops that some thread's stack is running (see :func:`_running_on_stacks`)."""
    return [loop for loop, _tid in _running_on_stacks()]


def _running_on_stacks() -> list[tuple[asyncio.AbstractEventLoop, int]]:
    """``(loop, thread id)`` for each loop a thread's stack runs: asyncio's ``run_forever`` frame,
    or an ``asyncio.Runner`` (``asyncio.run``, ``uvloop.run``) whose loop has no Python frames."""
    out = []
    try:
        frames = current_frames(own_from=1)
    except Exception:
        return []
    target = _ASYNCIO_DIR + "base_events.py"
    runners = _ASYNCIO_DIR + "runners.py"
    for tid, frame in frames.items():
        f: FrameType | None = frame
        depth = 0
        while f is not None and depth < 200:
            code = f.f_code
            loop: Any = None
            if code.co_name == "run_forever" and code.co_filename == target:
                loop = _frame_self(f)
            elif code.co_name == "run" and code.co_filename == runners:
                loop = getattr(_frame_self(f), "_loop", None)
            if loop is not None and isinstance(loop, asyncio.AbstractEventLoop):
                if _is_running(loop):
                    out.append((loop, tid))
                break
            f = f.f_back
            depth += 1
    return out


def _frame_self(frame: FrameType) -> Any:
    """``self`` in ``frame`` (read-only; None if the frame has no such local)."""
    try:
        return frame.f_locals.get("self")
    except Exception:
        return None


# -- creation sites --------------------------------------------------------------------------


def _c_speedups() -> Any:
    """The C extension module once conctools.locks has set it up, else ``None``."""
    locks = sys.modules.get("conctools.locks")
    return getattr(locks, "_speedups", None) if getattr(locks, "SPEEDUPS", False) else None


class _CreationSites(dict[int, tuple["weakref.ref[Any]", "str | CodeType", int]]):
    """id(task) -> (weak reference to the task, file, line), or (..., code object, instruction offset)
    from the C extension, whose line is found only when a report asks (creation_site).

    The C task factory (:func:`fast_task_factory`, what the loop monitor installs) keeps its sites in a
    compact table of its own (no Python object per task); ``table[id(task)]`` and ``len(table)`` see
    those entries too. Entries of dead tasks are purged when the table doubles (a WeakKeyDictionary would
    run a Python callback at every task's death).
    """

    def __missing__(self, key: int) -> tuple[weakref.ref[Any], str | CodeType, int]:
        speedups = _c_speedups()
        entry = speedups.task_site(key) if speedups is not None else None
        if entry is None:
            raise KeyError(key)
        return entry  # type: ignore[no-any-return]

    def __len__(self) -> int:
        speedups = _c_speedups()
        return dict.__len__(self) + (speedups.task_sites_len() if speedups is not None else 0)


_created: dict[int, tuple[weakref.ref[Any], str | CodeType, int]] = _CreationSites()
_created_limit = [4096]
# Frames a creation site walks out of (the sample server, under the package, is user code).
_CREATION_SKIP = (_ASYNCIO_DIR, _PKG_DIR)
_note_site = _ctracing.note_site if _ctracing is not None else None


def purge_created() -> None:
    """Forget the creation sites of dead tasks (called when the table doubled since the last purge)."""
    for key in [k for k, entry in _created.items() if entry[0]() is None]:
        del _created[key]
    _created_limit[0] = max(4096, 2 * dict.__len__(_created))


def fast_creation_noter() -> Callable[[dict[int, Any], Any], Any] | None:
    """The C extension's ``note_task_site(table, task)`` once conctools.locks has set it up (it walks the
    interpreter's frames without making frame objects), else ``None``."""
    locks = sys.modules.get("conctools.locks")
    speedups = getattr(locks, "_speedups", None) if getattr(locks, "SPEEDUPS", False) else None
    noter: Callable[[dict[int, Any], Any], Any] | None = getattr(speedups, "note_task_site", None)
    return noter


def fast_task_factory() -> Callable[..., Any] | None:
    """The C extension's task factory (``task_factory``): makes an ``asyncio.Task`` and notes its
    creation site in the C extension's table (``_created[id(task)]`` and :func:`creation_site` read it),
    without a Python frame or a Python object per task; ``None`` where the C extension is not in use."""
    make = getattr(_c_speedups(), "task_factory", None)
    if make is None:
        return None
    factory: Callable[..., Any] = make(asyncio.Task)
    return factory


def fast_create_task(original: Callable[..., Any]) -> Callable[..., Any] | None:
    """CPython 3.13.0's stand-in for :func:`fast_task_factory` (there a task factory renames unnamed tasks):
    a C ``create_task(coro, **kwargs)`` that calls ``original`` (a loop's own) as given and notes the task's
    creation site in the same C table, with no Python frame or Python object per task; ``None`` where the
    C extension is not in use."""
    make = getattr(_c_speedups(), "create_task_noter", None)
    if make is None:
        return None
    wrapper: Callable[..., Any] = make(original)
    return wrapper


def note_creation_site(task: asyncio.Future[Any], skip: int = 1) -> None:
    """Remember where ``task`` is being created: the innermost caller outside asyncio/conctools.

    Called by the loop monitor's task factory, for every task: where the C extension is built, the
    walk and the store are done in C (a third of the cost of the Python code below).
    """
    if _note_site is not None:
        try:
            _note_site(_created, task, skip + 1, _CREATION_SKIP, _SAMPLE_DIR)
        except (TypeError, ValueError):  # not weak-referenceable, or a frame that cannot be read
            pass
        return
    try:
        f: FrameType | None = sys._getframe(skip + 1)
    except ValueError:
        return
    depth = 0
    while f is not None and depth < 32:
        filename = f.f_code.co_filename
        if not filename.startswith(_ASYNCIO_DIR) and not is_conctools_frame(filename):
            try:
                _created[id(task)] = (weakref.ref(task), filename, f.f_lineno)
            except TypeError:  # not weak-referenceable: give up quietly
                return
            # (the dict's own entries: len() adds the C task factory's, which purge_created() cannot drop;
            # counting them would purge at every task once that table is large)
            if dict.__len__(_created) >= _created_limit[0]:
                purge_created()
            return
        f = f.f_back
        depth += 1


def creation_site(task: asyncio.Future[Any]) -> str | None:
    """``file:line`` where ``task`` was created, when known (task factory or debug mode)."""
    speedups = _c_speedups()
    entry = speedups.task_site(id(task)) if speedups is not None else None  # (the C task factory's)
    if entry is None:
        entry = _created.get(id(task))
    if entry is not None and entry[0]() is task:
        where = entry[1]
        if isinstance(where, str):
            return f"{where}:{entry[2]}"
        return f"{where.co_filename}:{line_of(where, entry[2])}"
    tb = getattr(task, "_source_traceback", None)  # asyncio debug mode
    if tb:
        for entry in reversed(tb):
            filename, lineno = entry[0], entry[1]
            if not filename.startswith(_ASYNCIO_DIR) and not is_conctools_frame(filename):
                return f"{filename}:{lineno}"
    coro = _task_coro(task)
    origin = getattr(coro, "cr_origin", None)  # sys.set_coroutine_origin_tracking_depth
    if origin:
        for filename, lineno, _fn in origin:
            if not filename.startswith(_ASYNCIO_DIR) and not is_conctools_frame(filename):
                return f"{filename}:{lineno}"
    return None


# -- reading tasks ---------------------------------------------------------------------------


def pending_tasks(loop: asyncio.AbstractEventLoop | None = None) -> list[asyncio.Future[Any]]:
    """The pending task objects of ``loop`` (of every loop when ``None``), from any thread."""
    return _task_objects(loop)


def _task_objects(loop: asyncio.AbstractEventLoop | None) -> list[asyncio.Future[Any]]:
    """Every task object asyncio knows (copied defensively: other threads mutate the sets)."""
    if "asyncio" not in sys.modules:  # no task before the program imports asyncio
        return []
    tasks_mod = asyncio.tasks
    seen: dict[int, asyncio.Future[Any]] = {}
    for attr in ("_all_tasks", "_scheduled_tasks", "_eager_tasks"):
        registry = getattr(tasks_mod, attr, None)
        if registry is None:
            continue
        for _ in range(1000):
            try:
                items = list(registry)
                break
            except RuntimeError:  # "Set changed size during iteration": another thread added one
                continue
        else:
            items = []
        for t in items:
            seen[id(t)] = t
    loops = [loop] if loop is not None else running_loops()
    for lp in loops:  # Python versions that keep tasks elsewhere (3.14's per-thread lists)
        try:
            for t in asyncio.all_tasks(lp):
                seen.setdefault(id(t), t)
        except Exception:
            pass
    out = []
    for t in seen.values():
        try:
            if loop is not None and t.get_loop() is not loop:
                continue
            if t.done():
                continue
        except Exception:
            continue
        out.append(t)
    return out


def _task_coro(task: Any) -> Any:
    try:
        return task.get_coro()
    except Exception:
        return getattr(task, "_coro", None)


def _await_frames(coro: Any) -> list[FrameType]:
    """The frames of the await chain, outermost (the task's coroutine) first."""
    frames: list[FrameType] = []
    obj = coro
    depth = 0
    while obj is not None and depth < _MAX_DEPTH:
        depth += 1
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None) or getattr(obj, "ag_frame", None)
        if frame is not None:
            frames.append(frame)
        nxt = getattr(obj, "cr_await", None)
        if nxt is None:
            nxt = getattr(obj, "gi_yieldfrom", None)
        if nxt is None:
            nxt = getattr(obj, "ag_await", None)
        obj = nxt
    return frames


def _frame_record(frame: FrameType) -> Frame:
    code = frame.f_code
    return frame_at(code.co_filename, frame.f_lineno or code.co_firstlineno, code.co_name)


def _short_repr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _named(obj: Any) -> str:
    """``asyncio.Lock 'name'`` or ``asyncio.Lock at 0x...``."""
    cls = type(obj)
    module = cls.__module__
    prefix = "asyncio" if module.startswith("asyncio") else module
    name = getattr(obj, "_ct_name", None) or getattr(obj, "name", None)  # conctools' drop-ins: name or site
    if isinstance(name, str) and name:
        return f"{prefix}.{cls.__name__} {name!r}"
    return f"{prefix}.{cls.__name__} at {id(obj):#x}"


def _task_label(task: Any) -> str:
    try:
        return f"Task {task.get_name()!r}"
    except Exception:
        return _short_repr(task)


_PRIMITIVES: tuple[tuple[str, str], ...] = (
    ("Condition", "condition"),
    ("BoundedSemaphore", "semaphore"),
    ("Semaphore", "semaphore"),
    ("Lock", "lock"),
    ("Event", "event"),
    ("Barrier", "barrier"),
    ("Queue", "queue"),
    ("StreamReader", "stream"),
)


def _primitive_kind(obj: Any) -> str | None:
    """What kind of asyncio primitive ``obj`` is (by class name, so drop-ins count too)."""
    for cls in type(obj).__mro__:
        for name, kind in _PRIMITIVES:
            if cls.__name__.endswith(name):  # drop-ins and subclasses: TracedLock, PriorityQueue
                return kind
    return None


def _primitive_state(obj: Any, kind: str) -> str:
    try:
        if kind in ("lock", "condition", "semaphore"):
            if not obj.locked():
                return " (free)"
            return f" (locked{_held_by(obj)})"
        if kind == "event":
            return " (set)" if obj.is_set() else " (not set)"
        if kind == "queue":
            return f" (size {obj.qsize()}, maxsize {obj.maxsize})"
    except Exception:
        pass
    return ""


def _held_by(obj: Any) -> str:
    """`` by task 'x' since file:line`` for conctools' traced primitives (the lock registry knows)."""
    if not hasattr(obj, "_conctools_state"):
        return ""
    holders = registry.holders_of(obj)
    if not holders:
        return ""
    h = holders[0]
    who = f"task {h.task_name!r}" if h.task_name is not None else f"thread {h.thread_name!r}"
    if h.task_id is not None and not any(id(t) == h.task_id for t in _task_objects(None)):
        who += ", which is no longer running"
    more = f" and {len(holders) - 1} more" if len(holders) > 1 else ""
    return f" by {who}{more}, taken at {h.site}"


def _is_executor_future(fut: Any) -> bool:
    """True for an asyncio future chained to a concurrent one (run_in_executor, to_thread)."""
    callbacks = getattr(fut, "_callbacks", None) or ()
    try:
        for entry in list(callbacks):
            cb = entry[0] if isinstance(entry, tuple) else entry
            if "_chain_future" in getattr(cb, "__qualname__", ""):
                return True
    except Exception:
        pass
    return False


def _describe_wait(task: Any, frames: Sequence[FrameType]) -> tuple[str | None, str | None, tuple[int, ...]]:
    """``(awaits, awaits_kind, awaited task ids)`` for a suspended task."""
    waiter = getattr(task, "_fut_waiter", None)
    awaited_ids: list[int] = []
    if isinstance(waiter, asyncio.Task):
        return _task_label(waiter), "task", (id(waiter),)
    children = getattr(waiter, "_children", None)
    if waiter is not None and children is not None:
        labels = []
        for child in list(children):
            if isinstance(child, asyncio.Task):
                if not child.done():
                    awaited_ids.append(id(child))
                labels.append(_task_label(child))
            else:
                labels.append(_short_repr(child))
        pending = sum(1 for c in list(children) if not c.done())
        shown = ", ".join(labels[:5]) + (", ..." if len(labels) > 5 else "")
        return f"gather of {len(labels)} ({pending} pending): {shown}", "gather", tuple(awaited_ids)
    for frame in frames:  # Queue.join() awaits an Event inside: name the queue, not its Event
        code = frame.f_code
        if code.co_name == "join" and code.co_filename == _ASYNCIO_DIR + "queues.py":
            q = _local(frame, "self")
            n = getattr(q, "_unfinished_tasks", None)
            if isinstance(n, int):
                return f"asyncio.Queue.join(): {n} unfinished item{'' if n == 1 else 's'}", "queue", ()
    # Innermost frames first: the primitive whose method the task is suspended in.
    for frame in reversed(frames):
        code = frame.f_code
        filename = code.co_filename
        if filename.startswith(_ASYNCIO_DIR) and code.co_name == "sleep" and filename.endswith("tasks.py"):
            delay = _local(frame, "delay")
            return (f"asyncio.sleep({delay!r})" if delay is not None else "asyncio.sleep"), "sleep", ()
        if filename.startswith(_ASYNCIO_DIR) and code.co_name in ("wait", "_wait", "wait_for"):
            fs = _local(frame, "fs") or _local(frame, "fut")
            items = list(fs) if isinstance(fs, (set, list, tuple, frozenset)) else ([fs] if fs is not None else [])
            tasks = [t for t in items if isinstance(t, asyncio.Task)]
            if tasks:
                names = ", ".join(_task_label(t) for t in tasks[:5])
                ids = tuple(id(t) for t in tasks if not t.done())
                return f"{code.co_name} on {names}", "task", ids
        if code.co_name == "__aexit__" and type(_local(frame, "self")).__name__ == "TaskGroup":
            group = _local(frame, "self")
            tasks = [t for t in list(getattr(group, "_tasks", ())) if isinstance(t, asyncio.Task)]
            names = ", ".join(_task_label(t) for t in tasks[:5])
            return f"TaskGroup of {len(tasks)}: {names}", "task", tuple(id(t) for t in tasks)
        owner = _local(frame, "self")
        if owner is not None and not isinstance(owner, (asyncio.Future, asyncio.AbstractEventLoop)):
            kind = _primitive_kind(owner)
            if kind is not None:
                return f"{_named(owner)}{_primitive_state(owner, kind)}", kind, ()
    if waiter is None:
        return None, None, ()
    if _is_executor_future(waiter):
        return "an executor job (run_in_executor / to_thread)", "executor", ()
    return f"future {_short_repr(waiter)}", "future", ()


def _local(frame: FrameType, name: str) -> Any:
    try:
        return frame.f_locals.get(name)
    except Exception:
        return None


def _task_state(task: Any, current: Any) -> str:
    if task is current:
        return "running"
    try:
        if task.done():
            if task.cancelled():
                return "cancelled"
            return "failed" if task.exception() is not None else "done"
    except Exception:
        return "pending"
    return "pending"


def _current_task_of(loop: asyncio.AbstractEventLoop) -> Any:
    try:
        return asyncio.current_task(loop)
    except Exception:
        return None


def _info(task: Any, current: Any, thread_id: int | None) -> TaskInfo:
    coro = _task_coro(task)
    frames = _await_frames(coro)
    stack = tuple(_frame_record(f) for f in reversed(frames) if not is_conctools_frame(f.f_code.co_filename))
    state = _task_state(task, current)
    if state == "running":
        awaits: str | None = None
        kind: str | None = None
        ids: tuple[int, ...] = ()
    else:
        awaits, kind, ids = _describe_wait(task, frames)
    try:
        name = task.get_name()
    except Exception:
        name = _short_repr(task)
    loop = task.get_loop()
    return TaskInfo(
        task_id=id(task),
        name=name,
        coro=getattr(coro, "__qualname__", type(coro).__name__),
        state=state,
        stack=stack,
        created_at=creation_site(task),
        awaits=awaits,
        awaits_kind=kind,
        awaits_task_ids=ids,
        loop_id=id(loop),
        thread_id=thread_id,
    )


def dump_tasks(loop: asyncio.AbstractEventLoop | None = None) -> list[TaskInfo]:
    """Every pending task of ``loop`` (of every loop when ``None``), as :class:`TaskInfo`.

    Callable from any thread, while the loop runs or while it is blocked; never raises
    (a task that cannot be read is left out and logged).

    >>> async def main():
    ...     return [t.name for t in dump_tasks(asyncio.get_running_loop())]
    >>> asyncio.run(main())
    ['Task-1']
    """
    try:
        tasks = _task_objects(loop)
    except Exception:
        _log.exception("conctools: could not list asyncio tasks")
        return []
    currents: dict[int, Any] = {}
    threads: dict[int, int | None] = {}
    out = []
    for task in tasks:
        try:
            task_loop = task.get_loop()
            key = id(task_loop)
            if key not in currents:
                currents[key] = _current_task_of(task_loop)
                threads[key] = loop_thread_id(task_loop)
            out.append(_info(task, currents[key], threads[key]))
        except Exception:
            _log.debug("conctools: could not read task %r", task, exc_info=True)
    out.sort(key=lambda t: (t.loop_id, t.state != "running", t.name))
    return out


# -- idleness ----------------------------------------------------------------------------------


def loop_idle_forever(loop: asyncio.AbstractEventLoop, *, allow_futures: bool = False) -> bool:
    """True when ``loop`` has pending tasks and nothing left that could ever wake them.

    That is: the loop is blocked in ``select()`` (when its thread is known), with no ready
    callback, no live timer, no file descriptor registered but its own self-pipe, no signal
    handler, no subprocess, and no task waiting on an executor job (``allow_futures``: such
    tasks are allowed, the caller follows those jobs itself). Another thread could
    still wake it with ``call_soon_threadsafe``; the caller (the hang watchdog) decides
    whether every other thread is blocked too. For loops this cannot inspect (uvloop) it
    returns ``False``: never a false alarm.
    """
    try:
        return _idle_forever(loop, allow_futures)
    except Exception:
        _log.debug("conctools: could not inspect loop %r", loop, exc_info=True)
        return False


def _is_probe(handle: Any) -> bool:
    """The loop monitor's heartbeat: it wakes the loop but never a task."""
    return bool(getattr(getattr(handle, "_callback", None), "_conctools_probe", False))


def _copy(items: Iterable[Any]) -> list[Any]:
    """``list(items)`` of a container another thread mutates: retry on "changed size"."""
    for _ in range(100):
        try:
            return list(items)
        except RuntimeError:
            continue
    raise RuntimeError("container kept changing while being copied")


def _idle_forever(loop: asyncio.AbstractEventLoop, allow_futures: bool = False) -> bool:
    if not _is_running(loop):
        return False
    ready = getattr(loop, "_ready", None)
    scheduled = getattr(loop, "_scheduled", None)
    selector = getattr(loop, "_selector", None)
    if ready is None or scheduled is None or selector is None:
        return False  # not a BaseEventLoop we can read (uvloop): assume it can wake up
    if any(not _is_probe(h) for h in _copy(ready)):
        return False  # something is ready to run (the loop monitor's own heartbeat does not count)
    if any(not h.cancelled() and not _is_probe(h) for h in _copy(scheduled)):
        return False
    if getattr(loop, "_signal_handlers", None):
        return False
    own = set()
    ssock = getattr(loop, "_ssock", None)
    if ssock is not None:
        try:
            own.add(ssock.fileno())
        except Exception:
            pass
    if any(fd not in own for fd in _copy(selector.get_map().keys())):
        return False
    tid = loop_thread_id(loop)
    if tid is not None:
        frame = current_frames().get(tid)
        if frame is None or frame.f_code.co_name != "select":
            return False  # it is running something right now
    tasks = _task_objects(loop)
    if not tasks:
        return False
    if allow_futures:
        return True
    for task in tasks:
        waiter = getattr(task, "_fut_waiter", None)
        if waiter is not None and _is_executor_future(waiter):
            return False
    return True


# -- await cycles ------------------------------------------------------------------------------


def find_await_cycles(edges: Mapping[K, Iterable[K]]) -> list[list[K]]:
    """Elementary cycles of the directed graph ``edges`` (node -> nodes it waits for).

    Pure: each cycle is listed once, starting at its smallest node by insertion order.

    >>> find_await_cycles({"a": ["b"], "b": ["a"], "c": ["a"]})
    [['a', 'b']]
    """
    order = {node: i for i, node in enumerate(edges)}
    for targets in list(edges.values()):
        for t in targets:
            order.setdefault(t, len(order))
    graph = {n: [t for t in edges.get(n, ())] for n in order}
    cycles: list[list[K]] = []
    seen_keys: set[tuple[K, ...]] = set()
    # Depth-first from each node, only through nodes ranked after it: every cycle is found
    # once from its lowest-ranked node. Graphs here are small (tasks of one dump).
    for start in order:
        rank = order[start]
        stack: list[tuple[K, int]] = [(start, 0)]
        path: list[K] = [start]
        on_path = {start}
        while stack:
            node, i = stack[-1]
            targets = graph.get(node, [])
            if i >= len(targets):
                stack.pop()
                path.pop()
                on_path.discard(node)
                continue
            stack[-1] = (node, i + 1)
            nxt = targets[i]
            if nxt == start:
                key = tuple(path)
                if key not in seen_keys:
                    seen_keys.add(key)
                    cycles.append(list(path))
            elif nxt not in on_path and order[nxt] > rank and len(path) < 256:
                stack.append((nxt, 0))
                path.append(nxt)
                on_path.add(nxt)
    return cycles


def task_cycles(infos: Sequence[TaskInfo]) -> list[list[TaskInfo]]:
    """Await cycles among the tasks of a dump (task A awaits B awaits A)."""
    by_id = {t.task_id: t for t in infos}
    edges = {t.task_id: [i for i in t.awaits_task_ids if i in by_id] for t in infos}
    return [[by_id[i] for i in cycle] for cycle in find_await_cycles(edges)]


def format_task_dump(infos: Sequence[TaskInfo], *, limit: int = 8) -> str:
    """The dump as text: one block per task with what it awaits and its await stack."""
    lines = []
    for t in infos:
        head = f"Task {t.name!r} [{t.state}] {t.coro}"
        if t.created_at:
            head += f"  created at {t.created_at}"
        lines.append(head)
        if t.awaits:
            lines.append(f"    awaits {t.awaits}")
        for f in t.stack[:limit]:
            lines.append(f"      {f}" + (f"\n        {f.line}" if f.line else ""))
        if len(t.stack) > limit:
            lines.append(f"      ... {len(t.stack) - limit} more frames")
    for cycle in task_cycles(infos):
        names = " -> ".join(repr(t.name) for t in [*cycle, cycle[0]])
        lines.append(f"Await cycle: {names}")
    return "\n".join(lines)
