"""Profiles on yappi: per function, per thread (real names) and per asyncio task.

``profile()`` is one object for the three ways people start a profiler::

    with conctools.profile() as p:          # a block
        work()
    print(p.top(10))
    p.save("out.pstat")                    # pstats / snakeviz; "out.callgrind" for KCachegrind

    @conctools.profile                     # every call of a function
    def handler(): ...

    @conctools.profile(clock="cpu")
    async def job(): ...

The wall clock (the default) is coroutine-aware: an ``async def`` is charged for the time it
spent awaiting, as yappi measures it. Results are plain data, kept after the session ends,
and published to the current recorder as the ``"profile"`` section of the report.

yappi's traps, and what this module does about them:

- yappi is one profiler per process: starting a second session while one runs raises
  :class:`ProfileError` instead of silently merging or resetting the other's data.
- ``yappi.get_func_stats(ctx_id=0)`` means "every thread" (``0`` is falsy); per-thread
  results are built from the raw per-context entries instead, in one enumeration.
- thread stats carry the ``Thread`` subclass name unless a context-name callback is set:
  this module sets one that reads the real ``Thread.name`` (without ``current_thread()``,
  which can deadlock inside yappi's callback).
- ``start(profile_threads=False)`` leaks its profile hook on Python 3.12+: sessions always
  profile every thread, and ``threads=False`` only filters the results to the starting thread.
"""

from __future__ import annotations

import _thread
import asyncio
import functools
import inspect
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, cast, overload

from conctools._callgraph import call_graphs
from conctools._log import get_logger
from conctools.recorder import Recorder, get_recorder

__all__ = ["Clock", "FunctionStats", "Profile", "ProfileError", "TaskStats", "ThreadStats", "profile"]

_log = get_logger("conctools.profiling")

F = TypeVar("F", bound=Callable[..., Any])
Clock = Literal["wall", "cpu"]

# At most this many distinct tasks get a tag of their own (yappi keeps stats per tag, so an
# unbounded number of tags is unbounded memory); later tasks share the overflow tag.
MAX_TASKS = 10_000
_NO_TASK = 0
_OTHER_TASKS = 1
_OTHER_TASKS_NAME = "(other tasks)"
# Rows kept in the report section: enough to read, small enough for report.json.
SECTION_FUNCTIONS = 50
SECTION_PER_CONTEXT = 5

_session_lock = _thread.allocate_lock()  # guards the one process-wide yappi session
_get_running_loop = asyncio._get_running_loop
_current_task = asyncio.current_task
_get_ident = _thread.get_ident
_active_threads = threading._active  # type: ignore[attr-defined]
try:
    # The dict asyncio's C and Python tasks update on entering and leaving a task step (3.11-3.13).
    from asyncio.tasks import _current_tasks  # type: ignore[attr-defined]
except ImportError:  # a Python without it: the tagger falls back to asyncio.current_task()
    _current_tasks = None


class ProfileError(RuntimeError):
    """A profile cannot start: yappi runs only one profiler per process."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionStats:
    """One function's calls and times; ``total_s`` includes callees, ``own_s`` does not."""

    name: str
    filename: str
    lineno: int
    calls: int
    total_s: float
    own_s: float
    builtin: bool = False

    @property
    def site(self) -> str:
        """``file.py:LINE`` of the function's definition."""
        return f"{self.filename}:{self.lineno}"

    @property
    def mean_s(self) -> float:
        """Mean time per call, callees included."""
        return self.total_s / self.calls if self.calls else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as in the ``profile`` section of ``report.json``."""
        return {
            "name": self.name,
            "filename": self.filename,
            "lineno": self.lineno,
            "calls": self.calls,
            "total_s": self.total_s,
            "own_s": self.own_s,
            "builtin": self.builtin,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreadStats:
    """One thread's profile: its real name, time (of the session's clock) and hottest functions."""

    name: str
    thread_id: int
    total_s: float
    switches: int
    top: tuple[FunctionStats, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "name": self.name,
            "thread_id": self.thread_id,
            "total_s": self.total_s,
            "switches": self.switches,
            "top": [f.to_dict() for f in self.top],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStats:
    """One asyncio task's profile: time in its own frames and its hottest functions."""

    name: str
    own_s: float
    calls: int
    top: tuple[FunctionStats, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "own_s": self.own_s, "calls": self.calls, "top": [f.to_dict() for f in self.top]}


def _thread_name() -> str | None:
    # yappi calls this once per new context from inside its profile hook: a plain dict lookup,
    # never threading.current_thread(), which may take threading's limbo lock (yappi issue #48).
    thread = _active_threads.get(_get_ident())
    return None if thread is None else str(thread.name)


class _TaskTagger:
    """yappi's tag callback (:attr:`callback`): a small int per asyncio task, and the names behind them."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {_OTHER_TASKS: _OTHER_TASKS_NAME}
        # id(task) -> (weakref to the task, tag): the weakref tells a reused id from the same task.
        self._seen: dict[int, tuple[weakref.ref[Any], int]] = {}
        self._next = 2
        self.callback: Callable[[], int] = self._make_callback()

    def _make_callback(self) -> Callable[[], int]:
        # yappi calls this on every profiled call, so it is a plain closure (an instance's
        # __call__ costs a bound-method dispatch more) with the cheapest test first: asyncio's
        # {loop: task} dict of task steps running right now is empty in threads-only code and
        # whenever no task step runs. Then one C call for this thread's loop.
        current = _current_tasks
        get_loop = _get_running_loop
        tag_of = self._tag_of
        # (task, tag) of the last lookup: consecutive calls are nearly always in the same task
        # step. One tuple, swapped whole, so threads with loops of their own never see it torn.
        last: list[tuple[object, int]] = [(None, _NO_TASK)]

        def callback() -> int:
            if not current:
                return _NO_TASK
            try:
                task = current[get_loop()]
            except KeyError:  # this thread's loop (or no loop) is not running a task step
                return _NO_TASK
            cached = last[0]
            if task is cached[0]:
                return cached[1]
            tag = tag_of(task)
            last[0] = (task, tag)
            return tag

        def fallback() -> int:  # a Python without asyncio.tasks._current_tasks
            try:
                loop = get_loop()
                task = None if loop is None else _current_task(loop)
                return _NO_TASK if task is None else tag_of(task)
            except Exception:  # never raise into yappi's hook
                return _NO_TASK

        return callback if isinstance(current, dict) else fallback

    def _tag_of(self, task: Any) -> int:
        try:
            entry = self._seen.get(id(task))
            return entry[1] if entry is not None and entry[0]() is task else self._new_tag(task)
        except Exception:  # never raise into yappi's hook
            return _NO_TASK

    def _new_tag(self, task: asyncio.Task[Any]) -> int:
        if self._next - 2 >= MAX_TASKS:
            return _OTHER_TASKS
        tag = self._next
        self._next += 1
        self._seen[id(task)] = (weakref.ref(task), tag)
        self.names[tag] = task.get_name()
        return tag


class Profile:
    """A yappi profiling session: a context manager, and a decorator of sync and async functions.

    ``clock`` is ``"wall"`` (elapsed time, coroutine-aware) or ``"cpu"`` (CPU time of each
    thread). ``builtins`` also profiles C functions. ``threads=False`` keeps only the thread
    that started the session in the results; ``tasks=False`` skips per-task tagging (a little
    cheaper per call). Results are kept after :meth:`stop` until the next :meth:`start`.

    >>> with Profile() as p:
    ...     sum(range(10))
    45
    >>> isinstance(p.top(5), str)
    True
    """

    def __init__(
        self,
        clock: Clock = "wall",
        *,
        builtins: bool = False,
        threads: bool = True,
        tasks: bool = True,
        recorder: Recorder | None = None,
        section: bool = True,
    ) -> None:
        if clock not in ("wall", "cpu"):
            raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
        self.clock: Clock = clock
        self.builtins = builtins
        self.threads = threads
        self.tasks = tasks
        self.section = section
        self._recorder = recorder
        self.functions: tuple[FunctionStats, ...] = ()
        self.thread_stats: tuple[ThreadStats, ...] = ()
        self.task_stats: tuple[TaskStats, ...] = ()
        self.call_graphs: list[dict[str, Any]] = []  # per thread and per task group (the flame graphs)
        self.duration_s = 0.0
        self._yappi_stats: Any = None
        self._running = False
        self._tagger: _TaskTagger | None = None
        self._start_thread = 0
        self._started_ns = 0

    # ---- control ----
    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._running

    def start(self) -> Profile:
        """Start profiling every thread; :class:`ProfileError` if a yappi session already runs."""
        import yappi

        with _session_lock:
            if self._running or yappi.is_running():
                raise ProfileError(
                    "a profile is already running in this process (yappi supports one profiler per "
                    "process): stop it before starting another"
                )
            yappi.stop()
            yappi.clear_stats()  # set_clock_type refuses to switch while stats exist
            yappi.set_clock_type(self.clock)
            yappi.set_context_name_callback(_thread_name)
            self._tagger = _TaskTagger() if self.tasks else None
            yappi.set_tag_callback(self._tagger.callback if self._tagger is not None else None)
            self._start_thread = _get_ident()
            self._started_ns = time.monotonic_ns()
            # profile_threads=True always: False leaks the hook on 3.12+ (see the module docstring).
            yappi.start(builtins=self.builtins, profile_threads=True)
            self._running = True
            self.functions, self.thread_stats, self.task_stats = (), (), ()
            self.call_graphs = []
            self._yappi_stats = None
        if self.section:
            rec = self._recorder if self._recorder is not None else get_recorder()
            rec.add_section("profile", self.summary)
        return self

    def stop(self) -> Profile:
        """Stop the session and collect its results (a no-op when not running)."""
        import yappi

        with _session_lock:
            if not self._running:
                return self
            self._running = False
            self.duration_s = (time.monotonic_ns() - self._started_ns) / 1e9
            try:
                yappi.stop()
                self._collect(yappi)
            except Exception:  # a profile that cannot be read must not break the program
                _log.exception("conctools: could not collect the yappi profile")
            finally:
                yappi.set_tag_callback(None)
                yappi.set_context_name_callback(None)
                yappi.clear_stats()
                self._tagger = None  # it holds the last task it saw
        return self

    def __enter__(self) -> Profile:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __call__(self, func: F) -> F:
        """Decorate ``func``: each call runs in a session (a nested or concurrent call joins the running one)."""
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                if not self._try_start():
                    return await func(*args, **kwargs)
                try:
                    return await func(*args, **kwargs)
                finally:
                    self.stop()

            async_wrapper.profile = self  # type: ignore[attr-defined]
            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not self._try_start():
                return func(*args, **kwargs)
            try:
                return func(*args, **kwargs)
            finally:
                self.stop()

        wrapper.profile = self  # type: ignore[attr-defined]
        return cast(F, wrapper)

    def _try_start(self) -> bool:
        """Start for a decorated call; False (and run unprofiled) when a session already runs."""
        try:
            self.start()
        except ProfileError:
            return False
        except Exception:
            _log.exception("conctools: could not start the profile; running unprofiled")
            return False
        return True

    # ---- results ----
    def _collect(self, yappi: Any) -> None:
        # conctools' own threads (the resource sampler, watchdogs) observe; they are not the program.
        contexts = {t.id: t for t in yappi.get_thread_stats() if not str(t.name).startswith("conctools-")}
        if not self.threads:
            contexts = {i: c for i, c in contexts.items() if c.tid == self._start_thread}
        raw: list[Any] = []
        pits: list[Any] = []  # the same entries as plain tuples, callees included: the call graphs

        def keep(stat: Any) -> bool:
            # The session's own start/stop frames are not the program's either.
            if stat.ctx_id not in contexts or stat.module == __file__:
                return False
            raw.append(stat)
            pits.append(
                (
                    stat.ctx_id,
                    stat.tag,
                    stat.index,
                    str(stat.name),
                    str(stat.module),
                    int(stat.lineno),
                    float(stat.ttot),
                    float(stat.tsub),
                    int(stat.ncall),
                    tuple(stat.children or ()),
                )
            )
            return True

        # One enumeration: the callback sees every per-(thread, tag) entry before yappi merges
        # them by function, so the per-thread and per-task tables need no ctx_id/tag filters.
        self._yappi_stats = yappi.get_func_stats(filter_callback=keep)
        self.functions = tuple(_function_of(s) for s in self._yappi_stats)
        self.functions = tuple(sorted(self.functions, key=lambda f: (-f.total_s, f.name)))

        by_ctx: dict[int, list[Any]] = {}
        by_tag: dict[int, list[Any]] = {}
        for s in raw:
            by_ctx.setdefault(s.ctx_id, []).append(s)
            if s.tag != _NO_TASK:
                by_tag.setdefault(s.tag, []).append(s)
        threads = []
        for ctx_id, ctx in contexts.items():
            stats = by_ctx.get(ctx_id, [])
            threads.append(
                ThreadStats(
                    name=str(ctx.name),
                    thread_id=int(ctx.tid),
                    total_s=float(ctx.ttot),
                    switches=int(ctx.sched_count),
                    top=_merged_top(stats, SECTION_PER_CONTEXT),
                )
            )
        self.thread_stats = tuple(sorted(threads, key=lambda t: (-t.total_s, t.name)))
        names = self._tagger.names if self._tagger is not None else {}
        tasks = []
        for tag, stats in by_tag.items():
            tasks.append(
                TaskStats(
                    name=names.get(tag, f"task #{tag}"),
                    own_s=sum(float(s.tsub) for s in stats),
                    calls=sum(int(s.ncall) for s in stats),
                    top=_merged_top(stats, SECTION_PER_CONTEXT),
                )
            )
        self.task_stats = tuple(sorted(tasks, key=lambda t: (-t.own_s, t.name)))
        try:
            self.call_graphs = call_graphs(pits, {i: str(c.name) for i, c in contexts.items()})
        except Exception:  # the flame graphs are a view: never lose the profile over them
            _log.exception("conctools: could not build the profile's call graphs")
            self.call_graphs = []

    def _collect_live(self) -> None:
        import yappi

        with _session_lock:
            if not self._running:
                return
            self.duration_s = (time.monotonic_ns() - self._started_ns) / 1e9
            try:
                self._collect(yappi)  # yappi pauses itself while it enumerates
            except Exception:
                _log.exception("conctools: could not read the running yappi profile")

    def top(self, n: int = 20, *, sort: Literal["total", "own"] = "total") -> str:
        """The ``n`` hottest functions as a text table (by total or own time)."""
        # The table is the text report's own (a pure reporter), so both read the same.
        from conctools._frames import hidden_note, is_own_file
        from conctools.reporting.profile_text import functions_table

        mine = [f for f in self.functions if not is_own_file(f.filename)]  # not conctools' wrappers
        funcs = sorted(mine, key=lambda f: -(f.total_s if sort == "total" else f.own_s))[:n]
        title = f"Top {len(funcs)} of {len(self.functions)} functions ({self.clock} clock, by {sort} time)"
        hidden = len(self.functions) - len(mine)
        note = f"\n  {hidden_note(hidden, 'function')}" if hidden else ""
        return f"{title}\n" + functions_table([f.to_dict() for f in funcs]) + note

    def __str__(self) -> str:
        """:meth:`top`: ``print(p)``, or ``print(func.profile)`` after ``@conctools.profile``."""
        return self.top()

    def save(self, path: str | Path, format: Literal["pstat", "callgrind"] | None = None) -> Path:
        """Write the profile as ``pstat`` (``pstats``, snakeviz) or ``callgrind`` (KCachegrind).

        The format defaults from the file name: ``*.callgrind`` / ``callgrind.*`` is callgrind,
        anything else pstat.
        """
        p = Path(path)
        if format is None:
            format = "callgrind" if p.suffix == ".callgrind" or p.name.startswith("callgrind.") else "pstat"
        if format not in ("pstat", "callgrind"):
            raise ValueError(f"format must be 'pstat' or 'callgrind', got {format!r}")
        if self._yappi_stats is None:
            raise ProfileError("nothing to save: the profile has not run (or is still running)")
        self._yappi_stats.save(str(p), type=format)
        return p

    def summary(self) -> dict[str, Any]:
        """The JSON-able ``profile`` section of the report (the profile so far, while it runs).

        A live view matters when the program never ends normally: a deadlock report taken by
        the watchdog still shows where the time went before everything stopped.
        """
        if self._running:
            self._collect_live()
        return {
            "clock": self.clock,
            "running": self._running,
            "duration_s": self.duration_s,
            "function_count": len(self.functions),
            "functions": [f.to_dict() for f in self.functions[:SECTION_FUNCTIONS]],
            "threads": [t.to_dict() for t in self.thread_stats],
            "tasks": [t.to_dict() for t in self.task_stats[:SECTION_FUNCTIONS]],
            "task_count": len(self.task_stats),
            "call_graphs": self.call_graphs,
        }


def _function_of(stat: Any) -> FunctionStats:
    return FunctionStats(
        name=str(stat.name),
        filename=str(stat.module),
        lineno=int(stat.lineno),
        calls=int(stat.ncall),
        total_s=float(stat.ttot),
        own_s=float(stat.tsub),
        builtin=bool(stat.builtin),
    )


def _merged_top(stats: list[Any], n: int) -> tuple[FunctionStats, ...]:
    """Merge raw entries of one context by function and keep the ``n`` with most own time."""
    merged: dict[tuple[str, str, int], list[Any]] = {}
    for s in stats:
        key = (str(s.name), str(s.module), int(s.lineno))
        m = merged.setdefault(key, [0, 0.0, 0.0, bool(s.builtin)])
        m[0] += int(s.ncall)
        m[1] += float(s.ttot)
        m[2] += float(s.tsub)
    funcs = [
        FunctionStats(name=k[0], filename=k[1], lineno=k[2], calls=v[0], total_s=v[1], own_s=v[2], builtin=v[3])
        for k, v in merged.items()
    ]
    funcs.sort(key=lambda f: (-f.own_s, f.name))
    return tuple(funcs[:n])


@overload
def profile(func: F, /) -> F: ...


@overload
def profile(
    func: None = None,
    /,
    *,
    clock: Clock = "wall",
    builtins: bool = False,
    threads: bool = True,
    tasks: bool = True,
    recorder: Recorder | None = None,
) -> Profile: ...


def profile(
    func: Callable[..., Any] | None = None,
    /,
    *,
    clock: Clock = "wall",
    builtins: bool = False,
    threads: bool = True,
    tasks: bool = True,
    recorder: Recorder | None = None,
) -> Any:
    """Profile a block or a function with yappi: ``with profile() as p``, ``@profile``, ``@profile(clock="cpu")``.

    Returns a :class:`Profile` (or, used bare on a function, the decorated function, whose
    ``.profile`` attribute is its session). See the module docstring for the yappi traps it avoids.
    """
    session = Profile(clock, builtins=builtins, threads=threads, tasks=tasks, recorder=recorder)
    if func is not None:
        return session(func)
    return session
