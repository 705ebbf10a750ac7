"""Threads and tasks that ended with an exception, and what they were using when they did.

A program often hangs one step after the real failure: a consumer task dies with
``ZeroDivisionError`` and ``Queue.join()`` waits forever; a loader thread raises before it sets
its ``Event``. This module notes each such ending as a :class:`~conctools.events.FailureEvent`
(who, which exception, on which line) together with weak references to the queues, locks,
events and futures its frames were using, so the hang report can name the dead party next to
what its victims wait on.

Two cheap hooks, no cost per task or per thread:

* threads: a chained ``threading.excepthook`` (:func:`install`; Python's own hook still prints
  the traceback);
* tasks: a chained exception handler on each watched loop (:func:`watch_loop_failures`), which
  asyncio calls when a failed task is dropped unretrieved ("Task exception was never
  retrieved"); failed tasks still referenced are found by :func:`failed_tasks`.

Both never raise into the program and keep a bounded number of records.
"""

from __future__ import annotations

import _thread
import gc
import os
import queue
import sys
import sysconfig
import threading
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from time import monotonic_ns
from types import FrameType, ModuleType, TracebackType

from conctools import taskdump
from conctools._context import is_conctools_frame, user_frame
from conctools._imports import later, when_imported
from conctools._log import get_logger
from conctools._records import replace
from conctools._typing import TYPE_CHECKING, Any
from conctools.events import FailureEvent, Frame
from conctools.recorder import Recorder, get_recorder

if TYPE_CHECKING:
    import asyncio
else:  # asyncio itself once the program imports it; imported by the first use before (never at start-up)
    asyncio = later("asyncio", globals())

__all__ = [
    "failed_jobs",
    "failed_tasks",
    "failure_of",
    "failures",
    "failures_touching",
    "install",
    "uninstall",
    "waitable_name",
    "watch_loop_failures",
]

_log = get_logger("conctools.casualties")

_MAX_RECORDS = 100
_MAX_OBJECTS = 32
_lock = _thread.RLock()  # reentrant: a finalizer run by GC while it is held may record too
# (event, weak references to the objects its frames used, id of the exception)
_records: deque[tuple[FailureEvent, tuple[weakref.ref[Any], ...], int]] = deque(maxlen=_MAX_RECORDS)
_installs = [0]
_previous_hook: list[Any] = []
_recorders: list[Recorder | None] = []


# -- what counts as "something another party waits on" -----------------------------------------

_RAW_LOCKS = (type(_thread.allocate_lock()), type(_thread.RLock()))
_PATHS = sysconfig.get_paths()
_STDLIB_DIRS = tuple({os.path.join(_PATHS[k], "") for k in ("stdlib", "platstdlib") if k in _PATHS} | {"<frozen"})
_WAITABLE: tuple[type, ...] = (
    queue.Queue,
    threading.Event,
    threading.Condition,
    threading.Semaphore,
    threading.Barrier,
    *_RAW_LOCKS,
)


def _bind_asyncio(asyncio: ModuleType) -> None:
    global _WAITABLE
    _WAITABLE += (asyncio.Queue, asyncio.Event, asyncio.Condition, asyncio.Semaphore, asyncio.Lock, asyncio.Future)


when_imported("asyncio", _bind_asyncio)  # (no asyncio object exists before the program imports it)


def _is_waitable(obj: Any) -> bool:
    if isinstance(obj, _WAITABLE) or hasattr(type(obj), "_conctools_state"):
        return True
    cls = type(obj)
    return cls.__name__ in ("Future", "Barrier") and cls.__module__.startswith(("concurrent", "asyncio", "threading"))


_PUBLIC_MODULES = {"concurrent.futures._base": "concurrent.futures", "_thread": "threading", "_queue": "queue"}


def waitable_name(obj: Any) -> str:
    """``queue.Queue at 0x...`` or the traced primitive's own name: how a failure names what it used."""
    name = getattr(obj, "_ct_name", None)
    cls = type(obj)
    module = cls.__module__
    if isinstance(name, str) and module.startswith("conctools"):
        return f"{cls.__qualname__} {name!r}"
    module = _PUBLIC_MODULES.get(module, module.split(".")[0])
    qualname = {"lock": "Lock (untraced)", "RLock": "RLock (untraced)"}.get(cls.__qualname__, cls.__qualname__)
    return f"{module}.{qualname} at {id(obj):#x}"


def _used_objects(tb: TracebackType | None) -> list[Any]:
    """The waitable objects the failing frames used: their locals, ``self``'s attributes and the
    globals their code names (a module-level queue)."""
    found: dict[int, Any] = {}

    def note(value: Any) -> None:
        if len(found) < _MAX_OBJECTS and id(value) not in found and _is_waitable(value):
            found[id(value)] = value

    while tb is not None:
        frame = tb.tb_frame
        filename = frame.f_code.co_filename
        # The program's own frames: the stdlib's (Thread.run's self and its internals) say nothing.
        if not is_conctools_frame(filename) and not filename.startswith(_STDLIB_DIRS):
            _scan_frame(frame, note)
        tb = tb.tb_next
    return list(found.values())


def _scan_frame(frame: FrameType, note: Callable[[Any], None]) -> None:
    try:
        local = dict(frame.f_locals)
    except Exception:
        local = {}
    for value in local.values():
        note(value)
    owner = local.get("self")
    try:
        attrs = list(vars(owner).values()) if owner is not None and hasattr(owner, "__dict__") else []
    except Exception:
        attrs = []
    for value in attrs[:64]:
        note(value)
    g = frame.f_globals
    for name in frame.f_code.co_names:
        value = g.get(name)
        if value is not None:
            note(value)


def _short_file(filename: str) -> str:
    base = os.path.basename(filename)
    if base in ("__init__.py", "__main__.py"):
        return os.path.join(os.path.basename(os.path.dirname(filename)), base)
    return base


def _frames_of_tb(tb: TracebackType | None) -> tuple[Frame, ...]:
    """The traceback as frames, innermost first (without conctools' own)."""
    out: list[Frame] = []
    for entry in reversed(traceback.extract_tb(tb, limit=64)):
        if is_conctools_frame(entry.filename):
            continue
        out.append(Frame(entry.filename, entry.lineno or 0, entry.name, (entry.line or "").strip()))
    return tuple(out)


def failure_of(
    exc: BaseException, *, thread_id: int, thread_name: str, task_name: str | None, ts_ns: int
) -> tuple[FailureEvent, list[Any]]:
    """The :class:`FailureEvent` of an exception, and the waitable objects its frames used."""
    tb = exc.__traceback__
    stack = _frames_of_tb(tb)
    frame = user_frame(stack)
    objects = _used_objects(tb)
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable>"
    if not message.isprintable():  # the program's text must not drive the terminal a report is read in
        message = repr(message)[1:-1]
    event = FailureEvent(
        ts_ns=ts_ns,
        thread_id=thread_id,
        thread_name=thread_name,
        task_name=task_name,
        exc_type=type(exc).__qualname__,
        message=message[:300],
        site=f"{_short_file(frame.filename)}:{frame.lineno}" if frame is not None else "?",
        stack=stack,
        objects=tuple(waitable_name(o) for o in objects),
    )
    return event, objects


def _note(event: FailureEvent, objects: Iterable[Any], exc: BaseException) -> None:
    refs = []
    for obj in objects:
        try:
            refs.append(weakref.ref(obj))
        except TypeError:
            pass
    with _lock:
        if any(exc_id == id(exc) for _, _, exc_id in _records):
            return  # the same ending seen twice (a scan found the task, then asyncio dropped it)
        _records.append((event, tuple(refs), id(exc)))
        recorder = _recorders[-1] if _recorders else None
    try:
        (recorder or get_recorder()).record(event)
    except Exception:
        _log.debug("conctools: could not record a failure", exc_info=True)


def failures() -> list[FailureEvent]:
    """Every noted failure, oldest first (bounded)."""
    with _lock:
        return [event for event, _, _ in _records]


def failures_touching(objects: Iterable[Any]) -> list[FailureEvent]:
    """The noted failures whose frames used one of ``objects`` (by identity)."""
    wanted = {id(o) for o in objects if o is not None}
    if not wanted:
        return []
    out = []
    with _lock:
        records = list(_records)
    for event, refs, _ in records:
        for ref in refs:
            obj = ref()
            if obj is not None and id(obj) in wanted:
                out.append(event)
                break
    return out


# -- threads -----------------------------------------------------------------------------------


def _thread_hook(args: Any) -> None:
    try:
        exc = args.exc_value
        thread = args.thread
        if exc is not None and not isinstance(exc, SystemExit):
            event, objects = failure_of(
                exc,
                thread_id=getattr(thread, "ident", None) or 0,
                thread_name=getattr(thread, "name", "?"),
                task_name=None,
                ts_ns=monotonic_ns(),
            )
            _note(event, objects, exc)
    except Exception:
        _log.debug("conctools: could not note a thread's failure", exc_info=True)
    previous = _previous_hook[-1] if _previous_hook else threading.__excepthook__
    previous(args)


_thread_hook._conctools = True  # type: ignore[attr-defined]


def install(recorder: Recorder | None = None) -> None:
    """Note threads that end with an exception (nests; undo with :func:`uninstall`)."""
    with _lock:
        _installs[0] += 1
        _recorders.append(recorder)
        if _installs[0] == 1 and threading.excepthook is not _thread_hook:
            _previous_hook.append(threading.excepthook)
            threading.excepthook = _thread_hook


def uninstall() -> None:
    """Undo one :func:`install`; the last one restores ``threading.excepthook``."""
    with _lock:
        if _installs[0] == 0:
            return
        _installs[0] -= 1
        if _recorders:
            _recorders.pop()
        if _installs[0] == 0:
            previous = _previous_hook.pop() if _previous_hook else threading.__excepthook__
            if threading.excepthook is _thread_hook:
                threading.excepthook = previous


# -- tasks -------------------------------------------------------------------------------------


def _task_failure(task: Any, exc: BaseException) -> None:
    try:
        loop = task.get_loop()
        tid = taskdump.loop_thread_id(loop) or _thread.get_ident()
        names = {t.ident: t.name for t in threading.enumerate()}
        event, objects = failure_of(
            exc,
            thread_id=tid,
            thread_name=names.get(tid, f"thread-{tid}"),
            task_name=task.get_name(),
            ts_ns=monotonic_ns(),
        )
        _note(event, objects, exc)
    except Exception:
        _log.debug("conctools: could not note a task's failure", exc_info=True)


def watch_loop_failures(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Note the tasks of ``loop`` that die unretrieved; returns a function that undoes it.

    The loop's exception handler is chained: the previous one (or asyncio's default) still
    handles every context, so the program's output is unchanged.
    """
    previous = loop.get_exception_handler()
    if getattr(previous, "_conctools", False):
        return lambda: None

    def handler(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        try:
            exc = context.get("exception")
            task = context.get("task") or context.get("future")
            if isinstance(exc, BaseException) and isinstance(task, asyncio.Task):
                _task_failure(task, exc)
        except Exception:
            _log.debug("conctools: could not note a failure", exc_info=True)
        if previous is not None:
            previous(lp, context)
        else:
            lp.default_exception_handler(context)

    handler._conctools = True  # type: ignore[attr-defined]
    loop.set_exception_handler(handler)

    def undo() -> None:
        try:
            if loop.get_exception_handler() is handler and not loop.is_closed():
                loop.set_exception_handler(previous)
        except Exception:
            pass

    return undo


def failed_jobs() -> list[FailureEvent]:
    """Thread-pool jobs that ended with an exception still held by their future (nobody retrieved
    it: a worker thread does not die, the job just stops); each is noted as a failure too.

    Walks the heap, so it is for a report (a hang), never for a hot path.
    """
    out: list[Any] = []
    futures = sys.modules.get("concurrent.futures")  # no future exists before it is imported
    if futures is None:
        return out
    for obj in gc.get_objects():
        if not isinstance(obj, futures.Future) or getattr(obj, "_state", None) != "FINISHED":
            continue
        exc = getattr(obj, "_exception", None)
        if not isinstance(exc, BaseException) or exc.__traceback__ is None:
            continue
        try:
            names = [e.name for e in traceback.extract_tb(exc.__traceback__, limit=8)]
            job = next((n for n in names if n not in ("run", "_worker")), "?")
            event, objects = failure_of(exc, thread_id=0, thread_name="?", task_name=None, ts_ns=monotonic_ns())
            event = replace(event, job=f"{job}()")
            _note(event, objects, exc)
            out.append(event)
        except Exception:
            continue
        if len(out) >= 20:
            break
    return out


def failed_tasks() -> list[Any]:
    """Tasks that ended with an exception nobody retrieved yet and that are still referenced
    (asyncio reports them only once they are dropped); each is noted as a failure too."""
    out: list[Any] = []
    tasks: list[Any] = []
    if "asyncio" not in sys.modules:  # no task before the program imports asyncio
        return out
    for attr in ("_all_tasks", "_scheduled_tasks", "_eager_tasks"):
        registry = getattr(asyncio.tasks, attr, None)
        if registry is None:
            continue
        for _ in range(100):
            try:
                tasks.extend(list(registry))
                break
            except RuntimeError:  # another thread changed it while we copied
                continue
    for task in tasks:
        try:
            if not task.done() or task.cancelled():
                continue
            exc = getattr(task, "_exception", None)  # not task.exception(): that would mark it retrieved
            if isinstance(exc, BaseException) and getattr(task, "_log_traceback", False):
                out.append(task)
                _task_failure(task, exc)
        except Exception:
            continue
    return out
