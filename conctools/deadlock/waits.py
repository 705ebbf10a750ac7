"""Waits the lock registry cannot see, read from threads' frames, tasks and futures.

The registry knows who holds and who waits on traced primitives. A program also waits in
ways that go through other threads and event loops; :class:`WaitReader` turns them into
:class:`~conctools.deadlock.graph.Dependency` records for the wait-for graph:

* a thread in ``Thread.join()`` waits for the thread it joins;
* a thread in ``concurrent.futures.Future.result()`` waits for whoever will complete the
  future: the pool worker running the job, the workers of the pool where the job is queued,
  the task that ``asyncio.run_coroutine_threadsafe`` started on another loop (or that loop's
  thread, while the coroutine has not started);
* a task awaiting ``run_in_executor`` / ``to_thread`` / ``wrap_future`` waits the same way;
* a suspended task waits for its loop's thread while that thread is blocked in a
  synchronous wait; an idle loop's thread waits for its tasks.

It also words what a waiter waits on for the hang report: ``queue.Queue.join()`` with its
unfinished count, ``asyncio.Queue.join()`` with its dead consumer, the job behind a future,
and the threads and tasks that ended with an exception while using what the waiter waits on.

Read-only, from another thread, never raising: anything it cannot read, it leaves out.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import weakref
from collections.abc import Iterable, Mapping
from types import FrameType

from conctools import casualties, registry, taskdump
from conctools._context import frames_of, user_frame
from conctools._imports import later
from conctools._typing import TYPE_CHECKING, Any
from conctools.deadlock.graph import Dependency, short_file
from conctools.events import FailureEvent
from conctools.registry import Party

if TYPE_CHECKING:
    import asyncio
else:  # asyncio itself once the program imports it; imported by the first use before (never at start-up)
    asyncio = later("asyncio", globals())

__all__ = ["SinceTracker", "WaitReader"]

_STDLIB_DIR = os.path.dirname(threading.__file__) + os.sep
_THREADING_PY = _STDLIB_DIR + "threading.py"
_QUEUE_PY = _STDLIB_DIR + "queue.py"
_FUTURES_DIR = _STDLIB_DIR + "concurrent" + os.sep + "futures" + os.sep
_FUTURES_BASE = _FUTURES_DIR + "_base.py"
_FUTURES_THREAD = _FUTURES_DIR + "thread.py"
_SELECTORS_PY = _STDLIB_DIR + "selectors.py"
_ASYNCIO_DIR = _STDLIB_DIR + "asyncio" + os.sep
_BASE_EVENTS = _ASYNCIO_DIR + "base_events.py"
_ASYNCIO_QUEUES = _ASYNCIO_DIR + "queues.py"
_MAX_TASKS = 2000  # tasks per loop given edges of their own (a huge server stays cheap)


class SinceTracker:
    """When each wait was first seen (waits read from frames have no start time of their own)."""

    def __init__(self) -> None:
        self._seen: dict[Any, int] = {}
        self._now: dict[Any, int] = {}

    def begin(self) -> None:
        """A new scan: waits not seen again in it are forgotten at :meth:`end`."""
        self._now = {}

    def since(self, key: Any, now_ns: int) -> int:
        """When the wait ``key`` was first seen (``now_ns`` if it is new)."""
        first = self._seen.get(key, now_ns)
        self._now[key] = first
        return first

    def end(self) -> None:
        """Forget the waits that ended."""
        self._seen, self._now = self._now, {}


def _local(frame: FrameType, name: str) -> Any:
    try:
        return frame.f_locals.get(name)
    except Exception:
        return None


def _innermost(frame: FrameType | None, depth: int = 8) -> list[FrameType]:
    out: list[FrameType] = []
    while frame is not None and len(out) < depth:
        out.append(frame)
        frame = frame.f_back
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class WaitReader:
    """One scan's view of the waits behind joins, futures, loops and queues (see the module doc)."""

    def __init__(
        self,
        frames: Mapping[int, FrameType],
        threads: Mapping[int, threading.Thread],
        now_ns: int,
        since: SinceTracker,
        *,
        parked_since: Mapping[int, int] | None = None,
    ) -> None:
        self.frames = frames
        self.parked_since = parked_since or {}
        self.threads = threads
        self.now = now_ns
        self.since = since
        self._loops: list[tuple[asyncio.AbstractEventLoop, int]] | None = None
        self._jobs: dict[int, int] | None = None  # id(concurrent future) -> worker thread running it
        self._pools: dict[int, tuple[Any, list[int]]] | None = None  # id(executor) -> (executor, worker tids)

    # ---- names ----
    def name(self, tid: int) -> str:
        t = self.threads.get(tid)
        return t.name if t is not None else f"thread-{tid}"

    def thread_party(self, tid: int, *, site: str = "?", since_ns: int = 0, timeout_s: float | None = None) -> Party:
        return Party(
            thread_id=tid,
            thread_name=self.name(tid),
            task_name=None,
            task_id=None,
            site=site,
            since_ns=since_ns,
            timeout_s=timeout_s,
        )

    def task_party(self, task: Any, tid: int, *, since_ns: int = 0) -> Party:
        info = _task_site(task)
        try:
            name = task.get_name()
        except Exception:
            name = repr(task)
        return Party(
            thread_id=tid,
            thread_name=self.name(tid),
            task_name=name,
            task_id=id(task),
            site=info,
            since_ns=since_ns,
        )

    def running_party(self, tid: int, *, site: str, since_ns: int, timeout_s: float | None = None) -> Party:
        """The thread, named with the task it runs now when it runs an event loop."""
        party = self.thread_party(tid, site=site, since_ns=since_ns, timeout_s=timeout_s)
        for loop, loop_tid in self.loops():
            if loop_tid != tid:
                continue
            task = _current_task(loop)
            if task is not None:
                try:
                    return Party(
                        thread_id=tid,
                        thread_name=party.thread_name,
                        task_name=task.get_name(),
                        task_id=id(task),
                        site=site,
                        since_ns=since_ns,
                        timeout_s=timeout_s,
                    )
                except Exception:
                    pass
        return party

    # ---- loops, pools ----
    def loops(self) -> list[tuple[asyncio.AbstractEventLoop, int]]:
        """Running event loops and their threads."""
        if self._loops is None:
            out = []
            for loop in taskdump.running_loops():
                tid = taskdump.loop_thread_id(loop)
                if tid is not None:
                    out.append((loop, tid))
            self._loops = out
        return self._loops

    def _scan_pools(self) -> None:
        jobs: dict[int, int] = {}
        pools: dict[int, tuple[Any, list[int]]] = {}
        for tid, frame in self.frames.items():
            f: FrameType | None = frame
            depth = 0
            while f is not None and depth < 64:
                if f.f_code.co_name == "_worker" and f.f_code.co_filename == _FUTURES_THREAD:
                    item = _local(f, "work_item")
                    fut = getattr(item, "future", None)
                    if fut is not None:
                        jobs[id(fut)] = tid
                    ref = _local(f, "executor_reference")
                    executor = ref() if isinstance(ref, weakref.ref) else None
                    if executor is not None:
                        pools.setdefault(id(executor), (executor, []))[1].append(tid)
                    break
                f = f.f_back
                depth += 1
        self._jobs, self._pools = jobs, pools

    def job_runner(self, fut: Any) -> int | None:
        """The pool worker thread running the job of ``fut`` now."""
        if self._jobs is None:
            self._scan_pools()
        assert self._jobs is not None
        return self._jobs.get(id(fut))

    def pools(self) -> dict[int, tuple[Any, list[int]]]:
        """Thread pools with live workers: id -> (executor, worker thread ids)."""
        if self._pools is None:
            self._scan_pools()
        assert self._pools is not None
        return self._pools

    # ---- who completes a concurrent future ----
    def future_producers(self, fut: Any) -> tuple[tuple[Party, ...], str] | None:
        """Who will complete ``fut`` (a ``concurrent.futures.Future``), in words; ``None`` if unknown.

        An empty tuple means nobody can (a job queued in a pool that has no worker left).
        """
        state = getattr(fut, "_state", None)
        if state not in ("PENDING", "RUNNING"):
            return None
        # asyncio.run_coroutine_threadsafe: chained to a task on another (or the same) loop.
        for cb in list(getattr(fut, "_done_callbacks", None) or ()):
            source = _closure_var(cb, "source") if "_chain_future" in getattr(cb, "__qualname__", "") else None
            if source is not None and hasattr(source, "get_loop"):
                return self._loop_future_producers(source)
        queued = self._queued_threadsafe(fut)
        if queued is not None:
            _loop, tid = queued
            what = (
                "a coroutine scheduled with run_coroutine_threadsafe() on the event loop of thread"
                f" {self.name(tid)!r}, which has not started it yet"
            )
            return (self.thread_party(tid, since_ns=self.now),), what
        runner = self.job_runner(fut)
        if runner is not None:
            return (self.thread_party(runner, since_ns=self.now),), f"a job running in thread {self.name(runner)!r}"
        if state == "PENDING":
            return self._queued_job(fut)
        return None

    def _loop_future_producers(self, source: Any) -> tuple[tuple[Party, ...], str] | None:
        try:
            loop = source.get_loop()
        except Exception:
            return None
        tid = taskdump.loop_thread_id(loop)
        if tid is None or source.done():
            return None
        if isinstance(source, asyncio.Task):
            coro = taskdump._task_coro(source)
            what = (
                f"coroutine {getattr(coro, '__qualname__', '?')}() (task {source.get_name()!r}) scheduled with"
                f" run_coroutine_threadsafe() on the event loop of thread {self.name(tid)!r}"
            )
            return (self.task_party(source, tid, since_ns=self.now),), what
        return (self.thread_party(tid, since_ns=self.now),), f"a future of the event loop of thread {self.name(tid)!r}"

    def _queued_threadsafe(self, fut: Any) -> tuple[asyncio.AbstractEventLoop, int] | None:
        """The loop whose ready queue holds the run_coroutine_threadsafe callback of ``fut``."""
        for loop, tid in self.loops():
            ready = getattr(loop, "_ready", None)
            if ready is None:
                continue
            try:
                handles = list(ready)
            except RuntimeError:
                continue
            for handle in handles:
                cb = getattr(handle, "_callback", None)
                if "run_coroutine_threadsafe" in getattr(cb, "__qualname__", "") and _closure_var(cb, "future") is fut:
                    return loop, tid
        return None

    def _queued_job(self, fut: Any) -> tuple[tuple[Party, ...], str] | None:
        """A job still queued in a thread pool: it waits for any of the pool's workers."""
        try:
            referrers = gc.get_referrers(fut)
        except Exception:
            return None
        items = [  # a thread pool's work item (a process pool's runs elsewhere: unknown here)
            r
            for r in referrers
            if type(r).__name__ == "_WorkItem"
            and type(r).__module__ == "concurrent.futures.thread"
            and getattr(r, "future", None) is fut
        ]
        if not items:
            return None
        pools = list(self.pools().values())
        # Which pool's queue holds the item: by identity where the queue is visible to the GC
        # (3.13), else the pools that have queued work (never fewer candidates than the truth).
        holders = gc.get_referrers(items[0])
        exact = [p for p in pools if any(getattr(p[0], "_work_queue", None) is h for h in holders)]
        candidates = exact or [p for p in pools if _queue_size(getattr(p[0], "_work_queue", None)) > 0]
        if not candidates:
            return (), "a job queued in a thread pool that has no worker thread left"
        workers = sorted({tid for _, tids in candidates for tid in tids})
        names = ", ".join(repr(self.name(t)) for t in workers[:4]) + (" ..." if len(workers) > 4 else "")
        pool = candidates[0][0] if len(candidates) == 1 else None
        label = (
            f"ThreadPoolExecutor {getattr(pool, '_thread_name_prefix', '')!r}" if pool is not None else "a thread pool"
        )
        what = f"a job queued in {label}, behind its {_plural(len(workers), 'busy worker')} ({names})"
        return tuple(self.thread_party(t, since_ns=self.now) for t in workers), what

    # ---- the dependencies of one scan ----
    def dependencies(self) -> list[Dependency]:
        """Every join, future, loop and task wait of the program now (see the module doc)."""
        deps: list[Dependency] = []
        for tid, frame in self.frames.items():
            t = self.threads.get(tid)
            if t is not None and t.name.startswith("conctools-"):
                continue
            try:
                dep = self.thread_dependency(tid, frame)
            except Exception:
                dep = None
            if dep is not None:
                deps.append(dep)
        for loop, tid in self.loops():
            try:
                deps.extend(self.loop_dependencies(loop, tid))
            except Exception:
                continue
        return deps

    def thread_dependency(self, tid: int, frame: FrameType) -> Dependency | None:
        """A thread's join or future wait, read from its innermost frames."""
        for f in _innermost(frame):
            code = f.f_code
            if code.co_filename == _THREADING_PY and code.co_name in ("_wait_for_tstate_lock", "join"):
                return self._join_dependency(tid, frame, f)
            if code.co_filename == _FUTURES_BASE and code.co_name == "result":
                fut = _local(f, "self")
                timeout = _local(f, "timeout")
                if fut is None:
                    return None
                return self._future_dependency(tid, frame, fut, timeout)
        return None

    def _join_dependency(self, tid: int, frame: FrameType, f: FrameType) -> Dependency | None:
        target = _local(f, "self")
        if not isinstance(target, threading.Thread) or not target.is_alive() or target.ident is None:
            return None
        if f.f_code.co_name == "_wait_for_tstate_lock":
            forever = _local(f, "block") is not False and _local(f, "timeout") in (-1, None)
        else:
            forever = _local(f, "timeout") is None
        if not forever:
            return None
        site = _site(frame)
        since = self.parked_since.get(tid) or self.since.since(("join", tid, target.ident), self.now)
        waiter = self.running_party(tid, site=site, since_ns=since)
        return Dependency(
            waiter=waiter,
            on=(self.thread_party(target.ident, since_ns=self.now),),
            what=f"thread {target.name!r} to finish (Thread.join())",
            kind="join",
        )

    def _future_dependency(self, tid: int, frame: FrameType, fut: Any, timeout: Any) -> Dependency | None:
        if timeout is not None:
            return None
        producers = self.future_producers(fut)
        if producers is None:
            return None
        on, what = producers
        site = _site(frame)
        since = self.parked_since.get(tid) or self.since.since(("future", tid, id(fut)), self.now)
        waiter = self.running_party(tid, site=site, since_ns=since)
        return Dependency(waiter=waiter, on=on, what=f"{what} (Future.result())", kind="future")

    def loop_dependencies(self, loop: asyncio.AbstractEventLoop, tid: int) -> list[Dependency]:
        """A loop's tasks waiting on futures, on its blocked thread; its idle thread on its tasks."""
        deps: list[Dependency] = []
        tasks = taskdump.pending_tasks(loop)[:_MAX_TASKS]
        current = _current_task(loop)
        frame = self.frames.get(tid)
        idle = frame is not None and frame.f_code.co_filename == _SELECTORS_PY
        blocked = not idle and frame is not None and _waiting(frame, tid)
        for task in tasks:
            if task is current:
                continue
            since = self.since.since(("task", id(task), id(getattr(task, "_fut_waiter", None))), self.now)
            party = self.task_party(task, tid, since_ns=since)
            dep = self._task_future_dependency(task, party)
            if dep is not None:
                deps.append(dep)
            if blocked:
                deps.append(
                    Dependency(
                        waiter=party,
                        on=(self.thread_party(tid, since_ns=self.now),),
                        what=f"its event loop thread {self.name(tid)!r}",
                        kind="loop",
                        sync=False,
                    )
                )
        if idle and tasks and taskdump.loop_idle_forever(loop, allow_futures=True):
            signature = tuple(sorted(id(t) for t in tasks))
            since = self.since.since(("idle", tid, signature), self.now)
            waiter = self.thread_party(tid, site=_site(frame), since_ns=since)
            deps.append(
                Dependency(
                    waiter=waiter,
                    on=tuple(self.task_party(t, tid, since_ns=since) for t in tasks),
                    what="one of its event loop's tasks (the loop has no timer, I/O or ready callback)",
                    kind="loop-tasks",
                )
            )
        return deps

    def _task_future_dependency(self, task: Any, party: Party) -> Dependency | None:
        """A task awaiting a future chained to a concurrent one (executor job, another loop)."""
        waiter = getattr(task, "_fut_waiter", None)
        if waiter is None:
            return None
        source = _chained_source(waiter)
        if source is None:
            return None
        producers = self.future_producers(source)
        if producers is None:
            return None
        on, what = producers
        return Dependency(waiter=party, on=on, what=what, kind="future", sync=False)

    # ---- words for the hang report ----
    def thread_detail(self, tid: int, frame: FrameType | None) -> str:
        """More about what thread ``tid`` waits for: the job behind its future, its queue's
        counts, and who ended with an exception while using what it waits on."""
        if frame is None:
            return ""
        parts = []
        for f in _innermost(frame, 12):
            code = f.f_code
            if code.co_filename == _QUEUE_PY and code.co_name == "join":
                q = _local(f, "self")
                if q is not None:
                    parts.append(self.queue_join_words(q))
                break
            if code.co_filename == _FUTURES_BASE and code.co_name == "result":
                producers = self.future_producers(_local(f, "self"))
                if producers is not None:
                    parts.append(f"it waits for {producers[1]}")
                break
        parts.extend(self.failure_words(_waited_objects(frame, tid)))
        return "; ".join(p for p in parts if p)

    def queue_join_words(self, q: Any) -> str:
        """What a ``queue.Queue.join()``'s count means: items taken without ``task_done()``, and
        who still gets from the queue (its counts are in the wait's own words)."""
        try:
            unfinished = int(q.unfinished_tasks)
            size = int(q.qsize())
        except Exception:
            return ""
        words = ""
        if unfinished > size:
            missing = unfinished - size
            words = (
                f"{'the queue is empty, so ' if size == 0 else ''}{_plural(missing, 'item')} taken by get()"
                f" {'has' if missing == 1 else 'have'} had no task_done() call"
            )
        getters = [self.name(t) for t, fr in self.frames.items() if _in_queue_get(fr, q)]
        if getters:
            who = ", ".join(f"thread {n!r}" for n in getters[:4])
            words += ("; " if words else "") + f"{who} {'waits' if len(getters) == 1 else 'wait'} in get() on it"
        elif unfinished:
            words += ("; " if words else "") + "no thread waits in get() on it"
        return words

    def task_detail(self, task: Any) -> str:
        """More about what a suspended task waits for: the job or coroutine behind its future,
        an ``asyncio.Queue.join()``'s consumers, and who ended with an exception while using
        what it waits on."""
        parts = []
        objects: list[Any] = []
        try:
            frames = taskdump._await_frames(taskdump._task_coro(task))
        except Exception:
            frames = []
        for f in frames:
            owner = _local(f, "self")
            if f.f_code.co_filename.startswith(_ASYNCIO_DIR) and owner is not None:
                objects.append(owner)
            if f.f_code.co_filename == _ASYNCIO_QUEUES and f.f_code.co_name == "join" and owner is not None:
                parts.append(self.async_queue_words(owner, task))
        waiter = getattr(task, "_fut_waiter", None)
        if waiter is not None:
            objects.append(waiter)
            source = _chained_source(waiter)
            if source is not None:
                objects.append(source)
                producers = self.future_producers(source)
                if producers is not None:
                    parts.append(f"it waits for {producers[1]}")
        if not any("ended with" in p for p in parts):
            parts.extend(self.failure_words(objects))
        return "; ".join(p for p in parts if p)

    def async_queue_words(self, q: Any, joiner: Any) -> str:
        """Who could still finish an ``asyncio.Queue``'s items: its getters, or nobody (a dead consumer)."""
        words = []
        dead = casualties.failures_touching([q])
        for f in dead[:3]:
            message = f": {f.message}" if f.message else ""
            words.append(f"{f.who}, which used this queue, ended with {f.exc_type}{message} at {f.site}")
        getters = [g for g in list(getattr(q, "_getters", ()) or ()) if not g.done()]
        if not getters and not self._other_task_uses(q, joiner):
            words.append("no task is left that gets from this queue")
        return "; ".join(words)

    def _other_task_uses(self, q: Any, joiner: Any) -> bool:
        for loop, _tid in self.loops():
            for task in taskdump.pending_tasks(loop)[:_MAX_TASKS]:
                if task is joiner:
                    continue
                try:
                    frames = taskdump._await_frames(taskdump._task_coro(task))
                except Exception:
                    continue
                for f in frames:
                    try:
                        values = list(f.f_locals.values())
                    except Exception:
                        values = []
                    if any(v is q for v in values):
                        return True
        return False

    def failure_words(self, objects: Iterable[Any]) -> list[str]:
        """One line per party that ended with an exception while using one of ``objects``."""
        return [failure_words(f) for f in casualties.failures_touching(objects)]


def failure_words(f: FailureEvent) -> str:
    """``thread 'loader' ended with ValueError: bad row at app.py:12``."""
    message = f": {f.message}" if f.message else ""
    return f"{f.who} ended with {f.exc_type}{message} at {f.site}"


# -- helpers -----------------------------------------------------------------------------------


def _closure_var(fn: Any, name: str) -> Any:
    code = getattr(fn, "__code__", None)
    closure = getattr(fn, "__closure__", None)
    if code is None or not closure or name not in code.co_freevars:
        return None
    try:
        return closure[code.co_freevars.index(name)].cell_contents
    except (ValueError, IndexError):
        return None


def _chained_source(fut: Any) -> Any:
    """The concurrent future an asyncio future is chained to (run_in_executor, wrap_future)."""
    for entry in list(getattr(fut, "_callbacks", None) or ()):
        cb = entry[0] if isinstance(entry, tuple) else entry
        if "_chain_future" in getattr(cb, "__qualname__", ""):
            source = _closure_var(cb, "source")
            futures = sys.modules.get("concurrent.futures")  # imported: a loop's chained future is one
            if futures is not None and isinstance(source, futures.Future):
                return source
    return None


def _current_task(loop: asyncio.AbstractEventLoop) -> Any:
    try:
        return asyncio.current_task(loop)
    except Exception:
        return None


def _site(frame: FrameType | None) -> str:
    found = user_frame(frames_of(frame, limit=32)) if frame is not None else None
    return f"{short_file(found.filename)}:{found.lineno}" if found is not None else "?"


def _task_site(task: Any) -> str:
    try:
        coro = taskdump._task_coro(task)
        frames = taskdump._await_frames(coro)
    except Exception:
        return "?"
    for f in reversed(frames):
        code = f.f_code
        if not code.co_filename.startswith((_ASYNCIO_DIR, _STDLIB_DIR + "concurrent")):
            return f"{short_file(code.co_filename)}:{f.f_lineno}"
    return "?"


def _queue_size(q: Any) -> int:
    try:
        return int(q.qsize())
    except Exception:
        return 0


def _in_queue_get(frame: FrameType, q: Any) -> bool:
    for f in _innermost(frame, 10):
        if f.f_code.co_filename == _QUEUE_PY and f.f_code.co_name == "get" and _local(f, "self") is q:
            return True
    return False


def _waiting(frame: FrameType, tid: int) -> bool:
    """The loop's thread is in a synchronous wait (a lock, a join, a future, a condition)."""
    if registry.waiting_on(tid) is not None:
        return True
    for f in _innermost(frame, 6):
        code = f.f_code
        if code.co_filename == _THREADING_PY and code.co_name in ("wait", "_wait_for_tstate_lock", "join", "acquire"):
            return True
        if code.co_filename == _FUTURES_BASE and code.co_name in ("result", "wait"):
            return True
    return False


def _waited_objects(frame: FrameType, tid: int) -> list[Any]:
    """What a thread waits on: the traced primitive the registry names, and the ``self`` of the
    stdlib waiting frames (an Event, a Condition, a Queue, a Barrier, a Future)."""
    out: list[Any] = []
    entry = getattr(registry, "_waiting", {}).get((tid, None))
    prim = entry() if isinstance(entry, weakref.ref) else entry  # the registry keeps the primitive itself
    if prim is not None:
        out.append(prim)
    for f in _innermost(frame, 12):
        filename = f.f_code.co_filename
        if filename in (_THREADING_PY, _QUEUE_PY) or filename.startswith(_FUTURES_DIR):
            owner = _local(f, "self")
            if owner is not None:
                out.append(owner)
    return out
