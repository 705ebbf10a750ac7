"""Traced drop-ins for ``threading``'s primitives, and :func:`trace_locks`.

``conctools.Lock``, ``RLock``, ``Condition``, ``Semaphore``, ``BoundedSemaphore``, ``Event`` and
``Barrier`` behave exactly like the ``threading`` classes (CPython's own ``lock_tests`` pass
against them) and also record, per lock *class* (its ``name=``, else its creation site in user
code): acquisitions, contended acquisitions, wait and hold time histograms and the hottest
waiting call sites. The wait registry (:mod:`conctools.registry`) knows every primitive's holders
and waiters, for the deadlock watchdog.

Cost model (JFR's, measured in ``benchmarks/bench_locks.py`` and ``bench_contended.py``):

- Every acquisition records its holder: thread id, a thread identity never reused, the
  ``threading.Thread``, the asyncio task when one runs in that thread, and bumps a counter. No
  clock, no stack. The first contention makes a lock time its holds: every contended hold and one
  in ``HOLD_SAMPLE`` of the others.
- Every contended wait counts exactly: the contention when it begins, its time in the wait
  histogram when it ends, the holder when it began (JFR's ``previousOwner``), its call site.
  With the C paths a contended ``Lock``/``RLock`` acquisition first waits briefly in the real lock
  (50 µs, before any bookkeeping; a thread that finds the lock just handed to a thread still
  waiting for the GIL first lets that one run, without queueing): a wait that ends there is
  counted the same, from a copy of its facts recorded later by :func:`flush_waits` (before a
  table or report is read), and a longer one makes its full record, dated from the start.
- Expensive facts are sampled: a :class:`~conctools.events.LockWaitEvent` for the first
  ``STACKS_PER_SITE`` waits at each site of each lock class (with their stacks), then for waits
  of at least :data:`wait_threshold_s` (``conctools run --lock-wait-threshold``, default 1 ms), at
  most ``EVENTS_PER_SITE`` per site, and for every new longest wait at a site.

Observing never changes what the program does (issue 22). Between the real lock's acquire and
the caller's next statement, and around the release, a traced lock only stores into fields it
already has: whatever must be allocated (the acquisition's site, the held-stack entry, a new
lock-order edge with its stack, the wait record) is prepared BEFORE the acquire, on the same
stack; a wait's statistics and event are recorded later (:func:`flush_waits`: when a report or the
lock table is read, or at the start of a later wait), outside any critical section; a reference
that could be the last one (the previous holder's task) is released at the lock's next
acquisition. A garbage collection, and the finalizers it runs, cannot start inside a section
because of conctools.

The paths of ``Lock`` and ``RLock`` run in C when the optional extension ``conctools._speedups`` is
built (``pip install`` builds it where a compiler exists), at about the cost of the stdlib lock;
the Python methods below are the same paths, used where it is not built or with
``CONCTOOLS_PURE_PYTHON=1``.

>>> import conctools
>>> lock = conctools.Lock(name="accounts")
>>> with lock:
...     pass
"""

from __future__ import annotations

import _thread
import collections
import gc
import itertools
import operator
import os
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import FrameType, MethodType, ModuleType
from weakref import ref as _weakref

from conctools import lockorder, registry
from conctools import recorder as recorder_module
from conctools._context import (
    _PKG_DIR,
    _SAMPLE_DIR,
    _SKIP_MAYBE,
    _SKIP_PREFIXES,
    _STDLIB_SKIP,
    is_conctools_frame,
    line_of,
    raw_stack,
    resolve_stack,
)
from conctools._imports import NO_RUNNING_LOOP, no_current_task, when_imported
from conctools._layout import own_dict
from conctools._log import get_logger
from conctools._typing import TYPE_CHECKING, Any
from conctools.events import LockWaitEvent
from conctools.recorder import Histogram, Recorder, get_recorder
from conctools.registry import Party, PrimitiveState

__all__ = [
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Lock",
    "LockStats",
    "RLock",
    "Semaphore",
    "flush_waits",
    "lock_table",
    "publish_lock_table",
    "reset_stats",
    "set_wait_threshold",
    "trace_locks",
    "wait_threshold_s",
]

_log = get_logger("conctools.locks")

# Captured at import, before anyone patches anything: conctools' own internals use these.
_allocate_lock = _thread.allocate_lock
_CRLock = _thread.RLock
_get_ident = _thread.get_ident
_mono = time.monotonic_ns
_getframe = sys._getframe
# asyncio's once the program imports it (_bind_asyncio): until then no loop runs in any thread.
_get_running_loop: Callable[[], Any] = NO_RUNNING_LOOP
_current_task: Callable[..., Any] = no_current_task
_threads: dict[int, Any] = threading._active  # type: ignore[attr-defined] # ident -> Thread; read without its lock
_StdCondition = threading.Condition
_StdSemaphore = threading.Semaphore
_StdBoundedSemaphore = threading.BoundedSemaphore
_StdEvent = threading.Event
_StdBarrier = threading.Barrier
_serials = itertools.count(1)
_order_enabled = lockorder._enabled  # read on every creation: a list lookup, not a call
_order_local = lockorder._local
_code_site = lockorder.code_site
_site_text = lockorder.site_text
MAX_SITES = 32  # waiting call sites kept per lock class
MAX_CLASSES = 10_000  # lock classes kept; past it, new ones share one "(other locks)" row
MAX_HOLDERS = 64  # semaphore holders remembered
HOLD_SAMPLE = 8  # a contended lock times every contended hold and 1 in HOLD_SAMPLE of the others
HOLD_SAMPLE_MASK = HOLD_SAMPLE - 1
STACKS_PER_SITE = 8  # waits at one site (of one lock class) that record their stack and an event
EVENTS_PER_SITE = 256  # waits above the threshold at one site recorded as events (then only new maxima)
RETIRED_BACKLOG = 1024  # dead instances' counters waiting to be folded into their class
_first = operator.itemgetter(0)  # (of a retired instance: its acquisitions)
_second = operator.itemgetter(1)  # (its hold histogram, or None)
FLUSH_AT = 64  # ended waits kept before a new wait records them (before it blocks)
# Python 3.12+ runs a garbage collection that an allocation scheduled at the next eval-breaker
# check, which could come right after an acquire: a Python call before it runs it there instead.
_SAFE_POINTS = sys.version_info >= (3, 12)
# Python 3.12+: the collector is off while a contended wait's record is made (see _speedups.c's
# gc_quiet_begin: the waiter's allocations would make it collect where a plain run never does, a
# finalizer that blocks on the contested lock then holds that collection open, and the one due when it
# ends runs at the next check of whichever thread allocates next: right after a blocking acquire,
# inside a critical section).
_QUIET_WAITS = sys.version_info >= (3, 12)
_gc_isenabled = gc.isenabled
_gc_disable = gc.disable
_gc_enable = gc.enable
_BLOCKING = (True, -1)  # a blocking acquire's arguments, made once

_threshold = [0.001]
_hist_add: Callable[[Histogram, int], None] = Histogram.add  # the C extension's, once it is loaded


def wait_threshold_s() -> float:
    """Waits at least this long are recorded as events (besides a sample of the first ones per site)."""
    return _threshold[0]


def set_wait_threshold(seconds: float) -> float:
    """Record waits of at least ``seconds`` as :class:`~conctools.events.LockWaitEvent` (0: every
    wait, up to ``EVENTS_PER_SITE`` per site); returns the previous threshold. Every wait is counted
    in the lock table whatever the threshold."""
    if seconds < 0:
        raise ValueError(f"the lock-wait threshold must be non-negative, got {seconds}")
    previous = _threshold[0]
    _threshold[0] = float(seconds)
    return previous


def _safe_point() -> None:
    """Nothing: calling it lets the interpreter run a garbage collection that allocations before an
    acquire scheduled, before the acquire rather than right after it (Python 3.12+)."""


# -- where: sites and identities ---------------------------------------------------------


_INTERNAL_PREFIXES = (*_SKIP_PREFIXES, "<frozen")  # conctools, the stdlib modules sites skip, frozen ones


def _is_internal(filename: str) -> bool:
    return filename.startswith(_INTERNAL_PREFIXES)


def _short(filename: str) -> str:
    """``file.py``, or ``package/__init__.py`` where the base name alone says nothing."""
    base = os.path.basename(filename)
    if base in ("__init__.py", "__main__.py"):
        return os.path.join(os.path.basename(os.path.dirname(filename)), base)
    return base


def _site_of(frame: FrameType | None) -> tuple[str, str]:
    """``("file.py:LINE", function)`` of the first user frame from ``frame`` outwards."""
    first = frame
    while frame is not None and _is_internal(frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:
        frame = first  # no user frame (a Timer's own wait): the innermost one that is not conctools'
        while frame is not None and frame.f_back is not None and is_conctools_frame(frame.f_code.co_filename):
            frame = frame.f_back
        if frame is None:
            return "?", "?"
    code = frame.f_code
    return f"{_short(code.co_filename)}:{frame.f_lineno}", code.co_name


# The sample server is a user program (its lines are the ones to show), but its lock helpers
# (server/instruments.py: "a traced lock when tracing, else the stdlib's") only pass the creation
# on: the site is the server's line that called them.
_SAMPLE_HELPERS = _SAMPLE_DIR + "instruments.py"


def _own_creator(filename: str) -> bool:
    """True for the frames a creation site walks out of: conctools' own, and the sample's helpers."""
    return filename.startswith(_PKG_DIR) and (not filename.startswith(_SAMPLE_DIR) or filename == _SAMPLE_HELPERS)


def _creation_site(frame: FrameType | None) -> str:
    """The creation site in user code, plus the stdlib function that made it when not user code.

    ``app.py:12`` for ``Lock()`` in app.py; ``app.py:12 (queue.Queue.__init__)`` for the lock
    a ``queue.Queue()`` on line 12 creates.
    """
    inner = frame
    while inner is not None and _own_creator(inner.f_code.co_filename):
        inner = inner.f_back
    site, _ = _site_of(inner)
    if inner is not None and _is_internal(inner.f_code.co_filename):
        module = inner.f_globals.get("__name__", "?")
        qualname = getattr(inner.f_code, "co_qualname", inner.f_code.co_name)
        return f"{site} ({module}.{qualname})"
    return site


def _task_now() -> Any:
    """The running asyncio task in this thread, or ``None`` (cheap off-loop)."""
    loop = _get_running_loop()
    if loop is None:
        return None
    try:
        return _current_task(loop)
    except RuntimeError:
        return None


def _thread_name(ident: int) -> str:
    t = _threads.get(ident)
    return t.name if t is not None else f"thread-{ident}"


# Thread identities that are never reused. The C path uses the thread-state id; the pure-Python
# path numbers each threading.Thread the first time it is asked (a thread without a Thread object
# gets a number kept in a thread-local).
_pure_keys: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_pure_key_mutex = _allocate_lock()
_pure_local = threading.local()
_key_serials = itertools.count(1)


def _key_of_thread(thread: Any) -> int:
    """The pure-Python path's identity of a ``threading.Thread``."""
    try:
        key = _pure_keys.get(thread)
        if key is None:
            with _pure_key_mutex:
                key = _pure_keys.get(thread)
                if key is None:
                    key = _pure_keys[thread] = next(_key_serials)
        return key
    except TypeError:
        return 0


def _pure_thread_key() -> int:
    thread = _threads.get(_get_ident())
    if thread is not None:
        return _key_of_thread(thread)
    try:
        return int(_pure_local.key)
    except AttributeError:
        key = _pure_local.key = next(_key_serials)
        return key


_ThreadInfo: Any = None  # the C extension's record of a thread (see _speedups.c), set below


def _thread_state(ident: int, key: int, thread: Any) -> tuple[str, bool, int]:
    """``(name, exited, key)`` of a thread a primitive recorded (``thread``: its ``threading.Thread``,
    or the C extension's ``ThreadInfo`` of it): its own name even after it ended (never the name of
    a live thread that reused its id), whether it has ended, and its identity.

    Whether it ended: on the C path, its thread-state id is still the one living under its thread
    id; else, its ``threading.Thread`` is still the one registered under it (``is_alive()`` can
    lie: an interrupted ``join()`` marks a thread that still runs as stopped)."""
    info = thread if _ThreadInfo is not None and type(thread) is _ThreadInfo else None
    if info is not None:
        thread = info.thread
        key = key or info.key
    exited = False
    if _speedups is not None and key:
        try:
            exited = _speedups.thread_state_id(ident) != key
        except Exception:
            exited = False
    elif thread is not None:
        exited = _threads.get(ident) is not thread
    if info is not None:
        return str(info.name), exited, key
    if thread is not None:
        try:
            name = str(thread.name)
        except Exception:
            name = f"thread-{ident}"
        if not key:
            key = _key_of_thread(thread)
        return name, exited, key
    live = _threads.get(ident)
    if exited or live is None:
        return f"thread-{ident}", exited, key
    return str(live.name), False, key


def _task_name(task: Any) -> str | None:
    if task is None:
        return None
    try:
        return str(task.get_name())
    except Exception:
        return repr(task)


def _make_party(
    ident: int,
    key: int,
    thread: Any,
    task: Any,
    site: str,
    since_ns: int,
    timeout_s: float | None = None,
) -> Party:
    name, exited, key = _thread_state(ident, key, thread)
    return Party(
        thread_id=0 if exited else ident,
        thread_name=name,
        task_name=_task_name(task),
        task_id=id(task) if task is not None else None,
        site=site,
        since_ns=since_ns,
        timeout_s=timeout_s,
        thread_key=key,
        exited=exited,
        task=task,
    )


def _party(ident: int, task: Any, site: str, since_ns: int, timeout_s: float | None = None) -> Party:
    """A party known only by its thread id (and task): a live thread's."""
    return _make_party(ident, 0, _threads.get(ident), task, site, since_ns, timeout_s)


def _as_snapshot(record: tuple[Any, ...]) -> tuple[Any, ...]:
    """A semaphore's holder record as a snapshot ``(ident, key, thread, task, site, since)``: the
    records are ``(thread, task)`` or ``(thread, task, site)``, ``thread`` being the C extension's
    ``ThreadInfo`` or, on the pure path, the ``threading.Thread`` (or its id when it has none)."""
    if len(record) == 6:
        return record
    who, task = record[0], record[1]
    site = record[2] if len(record) > 2 else ""
    if isinstance(who, int):
        return (who, 0, None, task, site, 0)
    if _ThreadInfo is not None and type(who) is _ThreadInfo:
        return (who.ident, who.key, who, task, site, 0)
    return (getattr(who, "ident", 0) or 0, 0, who, task, site, 0)


def _snapshot_party(snap: tuple[Any, ...], timeout_s: float | None = None) -> Party:
    """The :class:`Party` of a holder snapshot ``(ident, key, thread, task, site, since)``."""
    ident, key, thread, task, site, since = _as_snapshot(snap)
    return _make_party(ident, key, thread, task, _site_text(site) if site else "?", since, timeout_s)


def _exited(snap: tuple[Any, ...]) -> bool:
    """Whether the thread of a holder snapshot has ended (judged when a wait begins: by the time the
    wait is recorded, the holder may well have released the lock and ended normally). Its
    ``threading.Thread`` is no longer the one registered under its id; without one, its thread-state
    id (C path) no longer lives under its id."""
    ident, key, thread, _task, _site, _since = snap
    if thread is not None and not key and type(thread) is not _ThreadInfo:
        return _threads.get(ident) is not thread
    return _thread_state(ident, key, thread)[1]


def _who_words(snap: Any, exited: bool = False, loop_thread: Any = None) -> str | None:
    """``thread 'X'`` / ``task 'Y' (thread 'X')`` for a holder: a snapshot tuple, or an asyncio task
    (whose loop runs in ``loop_thread``)."""
    if snap is None:
        return None
    if isinstance(snap, tuple):
        ident, key, thread, task, _site, _since = snap
        name = _thread_state(ident, key, thread)[0]
        if exited:
            return f"thread {name!r}, which has finished without releasing it"
        if task is not None:
            return f"task {task if isinstance(task, str) else _task_name(task)!r} (thread {name!r})"
        return f"thread {name!r}"
    task_name = snap if isinstance(snap, str) else _task_name(snap)  # (a brief: the task's name)
    if loop_thread is not None:
        thread_name = str(loop_thread.name)
    else:
        try:
            thread_name = _thread_name(int(getattr(snap.get_loop(), "_thread_id", None) or 0))
        except Exception:
            thread_name = "?"
    return f"task {task_name!r} (thread {thread_name!r})"


def _holder_brief(holder: Any) -> Any:
    """A wait's holder(s) as its record keeps them until recorded: tasks by their names (a record
    waiting to be recorded must not keep a task alive), threads as snapshot tuples."""
    if holder is None:
        return None
    if isinstance(holder, list):
        return [_holder_brief(h) for h in holder]
    if isinstance(holder, tuple):
        holder = _as_snapshot(holder)
        task = holder[3]
        if task is None or isinstance(task, str):
            return holder
        return (holder[0], holder[1], holder[2], _task_name(task), holder[4], holder[5])
    return _task_name(holder)


def _holder_exited(holder: Any) -> Any:
    """What of a wait's holder(s) can change before the wait is recorded, judged now: whether each
    holding thread has ended (``None`` for asyncio holders: their loop runs in the waiter's thread)."""
    if isinstance(holder, tuple):
        return _exited(_as_snapshot(holder))
    if isinstance(holder, list) and holder and isinstance(holder[0], tuple):
        return tuple(_exited(_as_snapshot(h)) for h in holder)
    return None


def _holder_words(holder: Any, exited: Any, loop_thread: Any) -> str | None:
    """Who held a primitive when a wait began: one holder or several (semaphores), as snapshot
    tuples (threading) or tasks (asyncio, whose loop runs in ``loop_thread``)."""
    if holder is None:
        return None
    if isinstance(holder, list):
        flags = exited if isinstance(exited, tuple) else (False,) * len(holder)
        words = [w for w in (_who_words(h, e, loop_thread) for h, e in zip(holder[:4], flags)) if w]
        if not words:
            return None
        more = len(holder) - 4
        return ", ".join(words) + (f" and {more} more" if more > 0 else "")
    return _who_words(holder, bool(exited), loop_thread)


# -- statistics per lock class -----------------------------------------------------------


class _SiteStats:
    """The waits at one call site of one lock class."""

    __slots__ = ("champion", "events", "function", "max_ns", "stacks", "total_ns", "waits")

    def __init__(self, function: str) -> None:
        self.function = function
        self.waits = 0
        self.total_ns = 0
        self.max_ns = 0
        self.events = 0
        self.stacks = 0
        # The settled wait (see _settle) kept only for being the longest here so far, while it waits to be
        # recorded: a longer one supersedes it (a queue whose waits keep growing keeps one, not thousands).
        self.champion: Any = None


class LockStats:
    """Aggregates of every instance of one lock class (one name or creation site).

    Counters that the fast path bumps live on the instances (exact: they are bumped while
    the lock is held); they are folded in here when an instance dies and summed with the
    live ones when the table is read. A wait counts as a contention when it begins (one that
    ended within its brief first wait, when it is recorded: see the module's cost model); its time
    is added when it ends (a wait in progress counts its time so far when the table is read).
    """

    def __init__(self, key: str, name: str, kind: str, created_at: str) -> None:
        self.key = key
        self.name = name
        self.kind = kind
        self.created_at = created_at
        self.mutex = _allocate_lock()
        self.epoch = 0
        self.retired_acquisitions = 0
        self.retired_instances = 0
        self.contentions = 0
        self.timeouts = 0
        self.wait = Histogram()
        self.hold = Histogram()
        self.sites: dict[str, _SiteStats] = {}
        self.retired: list[tuple[int, Histogram | None]] = []  # from dead instances, not folded yet

    def begin_wait(self, site: str, function: str) -> tuple[_SiteStats, bool]:
        """A wait begins at ``site``: counted now. Returns its site's entry and whether the wait
        should capture its stack (the first few per site do).

        No mutex: ``x.n += 1`` on a plain attribute runs no Python code and reaches no point where
        the interpreter switches threads, so with the GIL it loses no count; a new site's entry is
        made with ``dict.setdefault`` (one C call)."""
        entry = self.sites.get(site)
        if entry is None:
            if len(self.sites) >= MAX_SITES:
                site, function = "(other sites)", ""
            entry = self.sites.setdefault(site, _SiteStats(function))
        self.contentions += 1
        entry.waits += 1
        want_stack = entry.stacks < STACKS_PER_SITE
        if want_stack:
            entry.stacks += 1
        return entry, want_stack

    def end_wait(self, entry: _SiteStats, wait_ns: int, acquired: bool, has_stack: bool, timed: bool = True) -> bool:
        """A wait ended (recorded outside any critical section). Returns whether it is recorded as an
        event: one with a stack, one of at least the threshold (at most ``EVENTS_PER_SITE`` per
        site), or the longest wait at its site so far. ``timed``: it had a timeout (an untimed one
        that ends without the lock was interrupted, not timed out)."""
        with self.mutex:
            return self.end_wait_locked(entry, wait_ns, acquired, has_stack, timed) > 0

    def end_wait_locked(self, entry: _SiteStats, wait_ns: int, acquired: bool, has_stack: bool, timed: bool) -> int:
        """:meth:`end_wait`, the caller holding ``mutex`` (the C path does the same in ``wait_settle``):
        0 not sampled, 1 sampled (a stack, or above the threshold), 2 sampled for being the longest."""
        if not acquired and timed:
            self.timeouts += 1
        _hist_add(self.wait, wait_ns)
        entry.total_ns += wait_ns
        longest = wait_ns > entry.max_ns
        if longest:
            entry.max_ns = wait_ns
        quota = has_stack or (wait_ns >= _threshold[0] * 1e9 and entry.events < EVENTS_PER_SITE + STACKS_PER_SITE)
        if quota or longest:
            entry.events += 1
        return 1 if quota else 2 if longest else 0

    def want_stack(self, site: str) -> bool:
        """Whether a wait at ``site`` would capture its stack (the first few per site do)."""
        entry = self.sites.get(site)
        return entry is None or entry.stacks < STACKS_PER_SITE

    def fold_retired(self) -> None:
        """Fold dead instances' counters into the class (the caller holds ``mutex``).

        By batches: dying locks append to ``retired`` at any moment (from other threads too, never
        removing), so the first ``len(batch)`` items are this batch's, summed in C; most dead locks
        have no hold histogram (~5x less than one Python iteration each: a fan-out retires a lock per
        future)."""
        retired = self.retired
        while retired:
            batch = retired[:]
            del retired[: len(batch)]
            self.retired_acquisitions += sum(map(_first, batch))
            self.retired_instances += len(batch)
            for dead_hold in filter(None, map(_second, batch)):
                try:
                    self.hold.merge(dead_hold)
                except AttributeError:  # a lock that died in a reference cycle: the collector cleared it
                    pass

    def row(self, live: Iterable[Any] = ()) -> dict[str, Any]:
        """This class as one JSON-able row of the lock table (``live``: its live instances)."""
        now = _mono()
        with self.mutex:
            self.fold_retired()
            acquisitions = self.retired_acquisitions
            instances = self.retired_instances
            hold = Histogram()
            hold.merge(self.hold)
            wait = Histogram()
            wait.merge(self.wait)
            sites = [(site, e.waits, e.total_ns, e.function) for site, e in self.sites.items()]
            contentions, timeouts = self.contentions, self.timeouts
        in_progress = 0
        uncounted: dict[str, int] = {}
        registry.promote_waits()
        for prim in live:
            instances += 1
            acquisitions += prim._ct_n
            h = prim._ct_hold
            if h is not None:
                hold.merge(h)
            waiters = prim._ct_waiters
            if waiters:
                for w in list(waiters.values()):
                    start = getattr(w, "start_ns", 0)
                    if start and getattr(w, "stats", None) is self:
                        in_progress += max(0, now - start)
                        if getattr(w, "entry", _UNCOUNTED) is _UNCOUNTED:
                            # an asyncio wait the C path counts at its end (see _speedups.c wait_begin)
                            site = getattr(w, "site", "?")
                            uncounted[site] = uncounted.get(site, 0) + 1
        if uncounted:
            contentions += sum(uncounted.values())
            by_site = {s[0]: i for i, s in enumerate(sites)}
            for site, n in uncounted.items():
                i = by_site.get(site)
                if i is not None:
                    sites[i] = (site, sites[i][1] + n, sites[i][2], sites[i][3])
                else:
                    sites.append((site, n, 0, ""))
        sites.sort(key=lambda s: (-s[2], s[0]))
        total = wait.total_ns + in_progress
        return {
            "name": self.name,
            "kind": self.kind,
            "created_at": self.created_at,
            "instances": instances,
            "acquisitions": acquisitions,
            "contentions": contentions,
            "timeouts": timeouts,
            "wait_total_s": total / 1e9,
            "wait_in_progress_s": in_progress / 1e9,
            "wait_p50_s": wait.percentile_ns(0.50) / 1e9,
            "wait_p95_s": wait.percentile_ns(0.95) / 1e9,
            "wait_p99_s": wait.percentile_ns(0.99) / 1e9,
            "wait_max_s": wait.max_ns / 1e9,
            "hold_count": hold.count,
            "hold_p50_s": hold.percentile_ns(0.50) / 1e9,
            "hold_p99_s": hold.percentile_ns(0.99) / 1e9,
            "hold_max_s": hold.max_ns / 1e9,
            "hottest_sites": [
                {"site": site, "function": fn, "waits": n, "wait_total_s": t / 1e9} for site, n, t, fn in sites[:5]
            ],
        }


_stats_mutex = _allocate_lock()
_stats: dict[str, LockStats] = {}
_UNCOUNTED = object()  # (a wait record without its site's entry yet: see LockStats.row)
_published: list[Recorder | None] = [None]


def _stats_for(kind: str, name: str | None, created_at: str) -> LockStats:
    key = f"{kind}|{name if name is not None else created_at}"
    stats = _stats.get(key)
    if stats is None:
        with _stats_mutex:
            stats = _stats.get(key)
            if stats is None:
                if len(_stats) >= MAX_CLASSES:
                    key = f"{kind}|(other locks)"
                    stats = _stats.get(key)
                if stats is None:
                    stats = _stats[key] = LockStats(key, name or created_at, kind, created_at)
    return stats


def _live_prims() -> list[Any]:
    return registry.live()


def lock_table(since_epoch: int = 0) -> list[dict[str, Any]]:
    """Every lock class with instances created since ``since_epoch``, most total wait first."""
    flush_waits()
    with _stats_mutex:
        all_stats = [st for st in _stats.values() if st.epoch >= since_epoch]
    live: dict[int, list[Any]] = {}
    for prim in _live_prims():
        st = getattr(prim, "_ct_stats", None)
        if st is not None:
            live.setdefault(id(st), []).append(prim)
    rows = []
    for stats in all_stats:
        if stats.created_at.endswith(_HIDDEN_CREATORS):
            continue
        row = stats.row(live.get(id(stats), ()))
        if row["acquisitions"] or row["contentions"]:
            rows.append(row)
    rows.sort(key=lambda r: (-r["wait_total_s"], -r["contentions"], -r["acquisitions"], r["name"]))
    return rows


def reset_stats() -> None:
    """Forget every lock class's statistics (live locks start a new class entry when next created)."""
    flush_waits()
    with _stats_mutex:
        _stats.clear()
        _site_cache.clear()
    if _speedups is not None:
        _speedups.clear_caches()


def publish_lock_table(recorder: Recorder | None = None) -> None:
    """Make ``recorder`` (the current one by default) report the lock table as section ``locks``.

    The table covers lock classes with instances created from now on.
    """
    rec = recorder if recorder is not None else get_recorder()
    with _stats_mutex:
        _epoch[0] += 1
        since = _epoch[0]
    rec.add_section("locks", lambda: lock_table(since))
    _published[0] = rec


_epoch = [0]
# Primitives the stdlib makes for its own bookkeeping (a Thread's "started" Event): traced,
# visible to the watchdog, but left out of the lock table where they would only be noise.
_HIDDEN_CREATORS = ("(threading.Thread.__init__)",)
# Where a creation call is -> (created_at, stats, the code objects the key names): creating many
# locks on one line pays for the frame walk and the name once. The key holds code objects by id()
# (hashing a code object costs ~0.5 µs: more than the rest of the lookup); the value keeps them
# alive, so an id in the cache cannot be reused. A call in user code is keyed by its own code and
# offset; one inside the stdlib (a Condition's RLock, a Queue's mutex, a Future's condition) by the
# stdlib function and the user call site it serves, found by a short walk out. (The C extension
# keeps its own cache in front of this one, filled from it.)
_site_cache: dict[tuple[Any, ...], tuple[str, LockStats, tuple[Any, ...]]] = {}


def _stdlib_site_key(frame: FrameType, kind: str, name: str | None) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
    """(cache key, code objects to keep alive) for a creation inside the stdlib at ``frame``;
    ``None`` when no user frame is found."""
    inner: FrameType | None = frame
    while inner is not None and inner.f_code.co_filename.startswith(_PKG_DIR):
        inner = inner.f_back
    user = inner
    while user is not None and user.f_code.co_filename.startswith(_INTERNAL_PREFIXES):
        user = user.f_back
    if inner is None or user is None:
        return None
    return (id(inner.f_code), id(user.f_code), user.f_lasti, kind, name), (inner.f_code, user.f_code)


def _name_and_class(prim: Any, kind: str, name: str | None, frame: FrameType | None) -> None:
    """Set ``prim``'s name, creation site and lock class (``_ct_name``, ``_ct_created``, ``_ct_stats``)."""
    if _try_register is not None and _try_register(prim, kind, name):
        return
    rec = get_recorder()
    if _published[0] is not rec:
        publish_lock_table(rec)
    found: tuple[tuple[Any, ...], tuple[Any, ...]] | None = None
    cached = None
    if frame is not None:
        code = frame.f_code
        if code.co_filename.startswith(_INTERNAL_PREFIXES):
            found = _stdlib_site_key(frame, kind, name)
        else:
            found = (id(code), frame.f_lasti, kind, name), (code,)
        if found is not None:
            cached = _site_cache.get(found[0])
    if cached is None:
        created_at = _creation_site(frame)
        stats = _stats_for(kind, name, created_at)
        if found is not None and len(_site_cache) < MAX_CLASSES:
            _site_cache[found[0]] = (created_at, stats, found[1])
    else:
        created_at, stats, _ = cached
    prim._ct_stats = stats
    prim._ct_name = name if name is not None else created_at
    prim._ct_created = created_at
    stats.epoch = _epoch[0]
    if _speedups is not None:
        _speedups.remember_site(kind, name, stats, created_at)


def _register(prim: Any, kind: str, name: str | None, frame: FrameType | None) -> None:
    """Creation-time bookkeeping of a traced primitive: its name and class, counters, and a place in
    the registry (the C extension does the same for Lock and RLock without calling this, when the
    creation site is cached)."""
    _name_and_class(prim, kind, name, frame)
    if _speedups is None:
        prim._ct_serial = next(_serials)
        prim._ct_n = 0
        prim._ct_hold = None
        prim._ct_waiters = None
        registry.register(prim)
    elif isinstance(prim, _speedups.Tracked):
        _speedups.link(prim)
    elif not isinstance(prim, _speedups.Core):  # (a Core lock is in the C list already)
        prim._ct_serial = next(_serials)
        prim._ct_n = 0
        prim._ct_hold = None
        prim._ct_waiters = None
        registry.register(prim)
    own_dict(prim)  # (3.13+: a C base, no inline values; see conctools._layout)


def _retire_counts(stats: LockStats, n: int, hold: Histogram | None) -> None:
    """Hand a dead instance's counters to its class (from its deallocation).

    It can run inside any allocation, including one made while this very thread holds
    ``stats.mutex``: so no blocking on it here, only an atomic append that the next reader folds
    in, and a fold when the backlog grows (if the mutex is free), so that a program creating
    millions of short-lived locks keeps a bounded backlog. A lock never acquired leaves nothing.
    """
    try:
        if not n and hold is None:
            return
        retired = stats.retired
        retired.append((n, hold))
        if len(retired) >= RETIRED_BACKLOG and stats.mutex.acquire(False):
            try:
                stats.fold_retired()
            finally:
                stats.mutex.release()
    except Exception:
        pass


def _retire(prim: Any) -> None:
    """A dying Python-level primitive's counters (from ``__del__``)."""
    try:
        _retire_counts(prim._ct_stats, prim._ct_n, prim._ct_hold)
    except Exception:
        pass


# -- waits (slow path) -------------------------------------------------------------------


# id(code) << 24 | offset of a waiting call in user code -> (site, function, code): a contended lock
# waited on from one line over and over pays for the file name and line once. The code object in
# the value keeps its id from being reused (and is checked: the key is not a full identity).
_wait_sites: dict[int, tuple[str, str, Any]] = {}


def _wait_site(frame: FrameType | None) -> tuple[str, str]:
    """:func:`_site_of`, cached for waits made directly from user code."""
    if frame is None:
        return _site_of(frame)
    code = frame.f_code
    key = id(code) << 24 | frame.f_lasti
    cached = _wait_sites.get(key)
    if cached is not None and cached[2] is code:
        return cached[0], cached[1]
    site, function = _site_of(frame)
    if not code.co_filename.startswith(_SKIP_MAYBE) and len(_wait_sites) < MAX_CLASSES:
        _wait_sites[key] = (site, function, code)
    return site, function


# Ended waits, recorded later (statistics, events) by flush_waits(): never inside a critical section.
_pending: collections.deque[Any] = collections.deque()
# Lock waits recorded at once by _wait_done_now() and not kept as events, per recorder (counted there
# by flush_waits(), as the unsampled ones it records itself are).
_unsampled: dict[Recorder, int] = {}
_unsampled_mutex = _allocate_lock()
_waiting = registry._waiting
_progress = registry._progress


class _WaitMethods:
    """What a wait record does (the record itself: :class:`_Wait`, or the C extension's)."""

    __slots__ = ()

    prim: Any
    lock_id: int
    lock_name: str
    ident: int
    thread_key: int
    thread: Any
    task: Any
    task_name: str | None
    site: str
    stats: LockStats
    entry: _SiteStats
    stack: tuple[Any, ...] | None
    holder: Any
    holder_exited: Any
    key: tuple[int, int | None]
    timeout_s: float | None
    event: bool
    rec: Recorder
    start_ns: int
    end_ns: int
    acquired: bool
    settled: int  # 0: recorded by flush_waits; 1: statistics recorded at its end (_settle); 2: and superseded
    prev_thread: Any
    prev_task: Any

    def party(self) -> Party:
        """The waiter, as the registry shows it."""
        return _make_party(
            self.ident, self.thread_key, self.thread, self.task, self.site, self.start_ns, self.timeout_s
        )

    def _holder_words(self, thread: Any) -> str | None:
        holder = self.holder
        if holder is None:
            prev = self.prev_thread  # (known only when the wait ended: see Lock._contended)
            if prev is not None:
                holder = _as_snapshot((prev, self.prev_task))
        return _holder_words(holder, self.holder_exited, thread)

    def record(self) -> bool:
        """Statistics and (sampled) event of an ended wait; False for a lock wait whose event was
        sampled out (the caller counts those). Never raises."""
        try:
            if self.settled == 2:  # superseded by a longer wait at its site before it was recorded
                return not self.event
            wait_ns = max(0, self.end_ns - self.start_ns)
            # An asyncio wait has no timeout of its own (wait_for cancels it): that counts as timed.
            timeout = self.timeout_s
            timed = self.key[1] is not None or (timeout is not None and timeout >= 0)
            # (a settled wait's statistics are recorded already: it is kept only when it is sampled)
            if self.settled:  # its statistics are recorded (_settle): it was kept for its event
                sample = True
                entry = self.entry
                if entry is not None and entry.champion is self:
                    entry.champion = None  # recorded: nothing left to supersede (and no cycle kept)
            else:
                sample = self.stats.end_wait(self.entry, wait_ns, self.acquired, self.stack is not None, timed)
            if not self.event:
                return True
            if not sample:
                return False
            thread = self.thread
            self.rec.record(
                LockWaitEvent(
                    ts_ns=self.start_ns,
                    thread_id=self.ident,
                    thread_name=str(thread.name) if thread is not None else _thread_name(self.ident),
                    task_name=self.task_name,
                    lock_id=self.lock_id,
                    lock_name=self.lock_name,
                    lock_kind=self.stats.kind,
                    wait_s=wait_ns / 1e9,
                    acquired=self.acquired,
                    holder=self._holder_words(thread),
                    site=self.site,
                    stack=resolve_stack(self.stack, limit=32) if self.stack else (),
                )
            )
        except Exception:  # observation must never break the program
            _log.exception("conctools: recording a lock wait failed")
        return True


class _Wait(_WaitMethods):
    """One party's blocked wait, from its start to its end (the pure-Python path's record).

    It is made before the party blocks (everything that allocates happens then), ends with a few
    stores (:func:`_wait_done`, or the C extension's equivalent), and is recorded by
    :func:`flush_waits` outside any critical section.
    """

    __slots__ = (
        "acquired",
        "end_ns",
        "entry",
        "event",
        "holder",
        "holder_exited",
        "ident",
        "key",
        "lock_id",
        "lock_name",
        "prev_task",
        "prev_thread",
        "prim",
        "rec",
        "settled",
        "site",
        "stack",
        "start_ns",
        "stats",
        "task",
        "task_name",
        "thread",
        "thread_key",
        "timeout_s",
    )


def _wait_begin(
    prim: Any,
    frame: FrameType | None,
    timeout_s: float | None,
    holder: Any,
    by_task: bool = False,
    event: bool = True,
    task: Any = False,
) -> _Wait | None:
    """Prepare a wait before blocking: who waits, where, on what, held by whom. Never raises
    (``None``: the wait goes unrecorded, the program waits anyway)."""
    if len(_pending) >= FLUSH_AT:
        flush_waits()
    try:
        w = _Wait()
        w.prim = prim
        w.ident = ident = _get_ident()
        w.thread = _threads.get(ident)
        w.thread_key = _current_thread_key() if _current_thread_key is not None else 0
        if task is False:  # (the caller may know it already)
            task = _task_now()
        w.task = task
        w.task_name = _task_name(task)
        w.lock_id = id(prim)
        w.lock_name = prim._ct_name
        if frame is not None:
            code = frame.f_code
            cached = _wait_sites.get(id(code) << 24 | frame.f_lasti)
            site = cached[0] if cached is not None and cached[2] is code else _wait_site(frame)[0]
        else:
            site = "?"
        w.site = site
        w.stats = stats = prim._ct_stats
        w.entry, want_stack = stats.begin_wait(site, "")
        if want_stack:
            w.stack = _speedups.raw_stack(40) if _speedups is not None else raw_stack(_getframe(1), 40)
            if not w.entry.function:
                w.entry.function = _wait_site(frame)[1]
        else:
            w.stack = None
        w.holder = _holder_brief(holder)
        w.holder_exited = _holder_exited(holder) if holder is not None else None
        w.timeout_s = timeout_s
        w.event = event
        w.rec = get_recorder()
        w.acquired = False
        w.settled = 0
        w.end_ns = 0
        w.prev_thread = w.prev_task = None
        # A threading primitive blocks the whole thread (even when called from a task): the
        # registry knows it as the thread's wait. An asyncio primitive blocks one task.
        w.key = key = (ident, id(task) if by_task and task is not None else None)
        waiters = prim._ct_waiters
        if waiters is None:
            waiters = prim._ct_waiters = {}
        w.start_ns = _mono()
        waiters[key] = w
        _waiting[key] = prim
        return w
    except Exception:  # observation must never break the program: wait anyway, knowing less
        _log.debug("conctools: preparing a lock wait failed", exc_info=True)
        return None


def _wait_site_text(code: Any, lasti: int) -> str:
    """``file.py:LINE`` of instruction ``lasti`` of ``code`` (the C extension's wait sites)."""
    return f"{_short(code.co_filename)}:{line_of(code, lasti)}"


def _wait_done(w: _Wait | None, acquired: bool) -> None:
    """The wait ended: a few stores, nothing that allocates beyond an int (it may run right after the
    primitive was taken, inside the caller's critical section)."""
    if w is not None:
        _wait_end(w, acquired)
        _pending.append(w)


def _wait_done_now(w: _Wait | None, acquired: bool) -> None:
    """:func:`_wait_done` for the asyncio primitives, whose waits end in their loop's thread: a wait
    that is not sampled (no stack, not a new maximum at its site, not an event above the threshold)
    gets its statistics at once, and only the sampled ones wait for :func:`flush_waits`. Deferring
    buys a loop nothing, and 20,000 parked tasks would leave 20,000 records to record later."""
    if w is not None:
        _wait_end(w, acquired)
        if _settle(w):
            _pending.append(w)


def _settle(w: _Wait) -> bool:
    """Record the statistics of an ended wait now (:meth:`LockStats.end_wait`) and mark it settled,
    unless its class's mutex is busy (never waited for: :func:`flush_waits` records it later). Returns
    whether the record is still to be kept (the mutex was busy, or it is sampled: :func:`flush_waits`
    makes its event). A lock wait not sampled is counted for its recorder as not kept."""
    stats = w.stats
    if w.entry is None or not stats.mutex.acquire(False):
        return True
    try:
        timeout = w.timeout_s
        timed = w.key[1] is not None or (timeout is not None and timeout >= 0)
        entry = w.entry
        wait_ns = max(0, w.end_ns - w.start_ns)
        longest = wait_ns > entry.max_ns
        sample = stats.end_wait_locked(entry, wait_ns, w.acquired, w.stack is not None, timed)
        w.settled = 1
        if longest:  # the longest here so far is kept; the previous one, if kept only for that, is not
            old = entry.champion
            if old is not None and old.settled == 1:
                old.settled = 2  # superseded: no event (counted as dropped)
            entry.champion = w if sample == 2 else None
    finally:
        stats.mutex.release()
    if not sample and w.event:
        with _unsampled_mutex:  # (the C path's update runs no Python code: it needs none)
            _unsampled[w.rec] = _unsampled.get(w.rec, 0) + 1
    return sample > 0


def _wait_end(w: _Wait, acquired: bool) -> None:
    end = _mono()
    w.end_ns = end
    w.acquired = acquired
    prim = w.prim
    waiters = prim._ct_waiters
    if waiters is not None:
        waiters.pop(w.key, None)
    _waiting.pop(w.key, None)
    _progress[0] = end
    w.prim = w.task = None  # a record waiting to be recorded keeps neither alive (both are alive now)


def pool_wait_started(prim: Any, wait: Any, by_task: bool) -> tuple[int, int | None] | None:
    """Tell the registry's wait hooks (pool blame) that a semaphore wait begins, before it blocks.
    Returns the wait's key for :func:`pool_wait_ended` (``None``: no hook is listening)."""
    if not registry.wait_hooks:
        return None
    try:
        if wait is not None:
            key: tuple[int, int | None] = wait.key
        else:
            task = _task_now() if by_task else None
            key = (_get_ident(), id(task) if task is not None else None)
        registry._run_wait_hooks(prim, key[0], key[1])
        return key
    except Exception:  # observation must never break the program
        _log.debug("conctools: a wait hook failed", exc_info=True)
        return None


def pool_wait_ended(key: tuple[int, int | None] | None) -> None:
    """The wait that :func:`pool_wait_started` announced is over."""
    if key is not None:
        registry._run_wait_hooks(None, key[0], key[1])


def flush_waits() -> None:
    """Record the waits that ended since the last flush (statistics, sampled events). Called when a
    report or the lock table is read and at the start of a later wait: never inside a critical
    section."""
    if _speedups is not None:
        _speedups.drain_brief()  # the contended waits that ended in their brief window (C path)
    unsampled: dict[Recorder, int] = {}
    if _unsampled:
        with _unsampled_mutex:
            for rec in list(_unsampled):
                unsampled[rec] = _unsampled.pop(rec, 0)  # (one pop each: atomic against the C path's update)
    while True:
        try:
            w = _pending.popleft()
        except IndexError:
            break
        if not w.record():
            unsampled[w.rec] = unsampled.get(w.rec, 0) + 1
    for rec, n in unsampled.items():  # counted, not kept: a report shows them as dropped events
        count = getattr(rec, "count", None)
        if count is not None:
            count(LockWaitEvent.kind, n)


def _waiter_parties(prim: Any) -> tuple[Party, ...]:
    registry.promote_waits()
    waiters = prim._ct_waiters
    if not waiters:
        return ()
    out = []
    for w in list(waiters.values()):
        try:
            out.append(w.party())
        except Exception:
            continue
    return tuple(out)


def _validate(blocking: Any, timeout: Any) -> None:
    """Raise exactly what ``_thread.lock.acquire(blocking, timeout)`` raises for bad arguments.

    A fresh private lock is unlocked, so acquiring it with the caller's arguments returns at
    once or raises the C implementation's own error.
    """
    probe = _allocate_lock()
    if probe.acquire(blocking, timeout):
        probe.release()


# -- the fast path's fields: a C base type when conctools._speedups is built -------------

# The paths of Lock and RLock are a handful of attribute writes, but as Python methods each
# ``with`` pays Python frames (1.6x a plain lock before doing anything). The C module holds those
# fields and provides the same paths as C methods, installed on the classes below by
# _install_speedups(); the Python methods stay as the fallback (no compiler, PyPy, free-threaded
# builds, or CONCTOOLS_PURE_PYTHON=1).
_speedups: Any = None
_SPEEDUPS_API = 36  # _speedups.c's API_VERSION that this module speaks
if not os.environ.get("CONCTOOLS_PURE_PYTHON"):
    try:
        from conctools import _speedups  # type: ignore[no-redef]
    except ImportError:  # not built here: the pure-Python fast path
        _speedups = None
    if getattr(_speedups, "API_VERSION", None) != _SPEEDUPS_API:  # a stale build (source tree): ignore it
        _speedups = None
    elif not all(hasattr(_thread.RLock, m) for m in ("_recursion_count", "_release_save", "_acquire_restore")):
        _speedups = None  # an interpreter without the RLock API the C path calls (CPython 3.11.0-3.11.2)
SPEEDUPS = _speedups is not None
"""True when the C paths of ``Lock``/``RLock`` are in use (else the pure-Python ones)."""
if _speedups is not None:
    _ThreadInfo = _speedups.ThreadInfo
_try_register: Callable[[Any, str, str | None], bool] | None = _speedups.try_register if _speedups is not None else None
_current_thread_key: Callable[[], int] | None = _speedups.current_thread_key if _speedups is not None else None


def _thread_key() -> int:
    """The calling thread's identity, never reused (C: its thread-state id; else a serial)."""
    return _current_thread_key() if _current_thread_key is not None else _pure_thread_key()


def _pure_holder_record() -> tuple[Any, Any]:
    """``(thread, task)`` of the calling thread: its ``threading.Thread`` (or its id) and task."""
    ident = _get_ident()
    thread = _threads.get(ident)
    return (thread if thread is not None else ident), _task_now()


_holder_record: Callable[[], tuple[Any, Any]] = (
    _speedups.holder_record if _speedups is not None else _pure_holder_record
)


def _pure_holder_site_record() -> tuple[Any, Any, Any]:
    """``(thread, task, site)`` of the calling thread, ``site`` the program's call as ``(code, offset)``."""
    ident = _get_ident()
    thread = _threads.get(ident)
    frame: FrameType | None = _getframe(2)
    while frame is not None and _is_internal(frame.f_code.co_filename):
        frame = frame.f_back
    site = (frame.f_code, frame.f_lasti) if frame is not None else ""
    return (thread if thread is not None else ident), _task_now(), site


_holder_site_record: Callable[[], tuple[Any, Any, Any]] = (
    _speedups.holder_site_record
    if _speedups is not None and hasattr(_speedups, "holder_site_record")
    else _pure_holder_site_record
)


# The fields of Lock and RLock: C members of _speedups.Core, or slots of the Python classes.
_CORE_SLOTS = (
    "__weakref__",
    "_acq",
    "_ct_created",
    "_ct_entry",
    "_ct_held",
    "_ct_hold",
    "_ct_n",
    "_ct_name",
    "_ct_ordered",
    "_ct_prepared",
    "_ct_serial",
    "_ct_stats",
    "_ct_trash",
    "_ct_trash_task",
    "_ct_waiters",
    "_lock",
    "_osince",
    "_osite",
    "_otask",
    "_othread",
    "_owner",
    "_rel",
    "_t0",
)
if TYPE_CHECKING:
    _CoreBase = object
else:
    _CoreBase = _speedups.Core if _speedups is not None else object


def _holder_snapshot(prim: Any) -> tuple[Any, ...] | None:
    """A Lock's or RLock's holder now, as ``(ident, key, thread, task, site, since)`` (pure path)."""
    owner = prim._owner
    if owner is None:
        return None
    thread = prim._othread
    return (owner, 0, thread, prim._otask, prim._osite or None, prim._osince)


def _pure_took(prim: Any, thread: Any, task: Any) -> None:
    """A new holder thread or task, right after the lock was taken (pure path): stores only; the old
    values, which may hold the last reference to something, go to the trash slots, emptied before
    the next acquisition."""
    old_thread = prim._othread
    old_task = prim._otask
    prim._othread = thread
    prim._otask = task
    prim._ct_trash = old_thread
    prim._ct_trash_task = old_task


def _empty_trash(prim: Any) -> None:
    """Before an acquisition: drop what the last one left in the trash slots."""
    prim._ct_trash = None
    prim._ct_trash_task = None


# -- Lock --------------------------------------------------------------------------------


class Lock(_CoreBase):
    """A traced ``threading.Lock``: same behaviour, plus statistics and holder tracking.

    >>> lock = Lock(name="cache")
    >>> with lock:
    ...     lock.locked()
    True
    """

    __slots__ = () if _speedups is not None else _CORE_SLOTS

    _kind = "Lock"

    _lock: Any
    _ct_n: int
    _ct_hold: Histogram | None
    _ct_waiters: dict[tuple[int, int | None], Any] | None
    _ct_name: str
    _ct_created: str
    _ct_serial: int
    _ct_stats: LockStats

    def __init__(self, name: str | None = None) -> None:
        # Pure-Python path only: with the C extension, _c_lock_init replaces this method.
        lock = _allocate_lock()
        self._lock = lock
        self._acq = lock.acquire
        self._rel = lock.release
        self._owner: int | None = None
        self._othread: Any = None
        self._otask: Any = None
        self._osite: Any = ""  # "file.py:LINE", or (code, offset) resolved when read
        self._osince = 0
        self._t0 = 0
        self._ct_held: list[lockorder.Held] | None = None
        self._ct_entry: Any = None
        self._ct_prepared: Any = None
        self._ct_trash: Any = None
        self._ct_trash_task: Any = None
        self._ct_ordered = 0
        _register(self, self._kind, name, _getframe(1))
        if _order_enabled[0]:
            self._ct_ordered = 1
            self.__class__ = _OrderedLock

    # The hot path: one non-blocking try, then stores. Who we are is read before the try (the
    # try is the last call before the caller's section starts).
    def __enter__(self) -> bool:
        me = _get_ident()
        thread = _threads.get(me)
        loop = _get_running_loop()
        task = _current_task(loop) if loop is not None else None
        if self._ct_trash is not None or self._ct_trash_task is not None:
            _empty_trash(self)
        if self._acq(False):
            # From here to the return: stores only, no call (a call is where the interpreter may
            # run a garbage collection, inside the caller's section).
            self._owner = me
            if self._othread is not thread:
                self._ct_trash = self._othread
                self._othread = thread
            if self._otask is not task:
                self._ct_trash_task = self._otask
                self._otask = task
            self._ct_n += 1
            return True
        return self._contended(-1, _getframe(1), me, thread, task)

    def __exit__(self, t: object, v: object, tb: object) -> None:
        self._rel()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquire the lock, as ``threading.Lock.acquire``."""
        if blocking is not True or timeout != -1:
            return self._acquire_args(blocking, timeout, _getframe(1))
        me = _get_ident()  # __enter__'s path, inlined
        thread = _threads.get(me)
        loop = _get_running_loop()
        task = _current_task(loop) if loop is not None else None
        if self._ct_trash is not None or self._ct_trash_task is not None:
            _empty_trash(self)
        if self._acq(False):
            self._owner = me
            if self._othread is not thread:
                self._ct_trash = self._othread
                self._othread = thread
            if self._otask is not task:
                self._ct_trash_task = self._otask
                self._otask = task
            self._ct_n += 1
            return True
        return self._contended(-1, _getframe(1), me, thread, task)

    def release(self) -> None:
        """Release the lock (any thread may), as ``threading.Lock.release``."""
        self._rel()

    def _acquire_args(self, blocking: bool, timeout: float, frame: FrameType | None) -> bool:
        """``acquire`` with explicit arguments: validated exactly as the C lock does."""
        if timeout != -1:  # acquire(False) (Condition's _is_owned() probe) needs no check
            _validate(blocking, timeout)
        me = _get_ident()
        thread = _threads.get(me)
        task = _task_now()
        prepared = self._prepare(frame)
        if self._ct_trash is not None or self._ct_trash_task is not None:
            _empty_trash(self)
        if self._acq(False):
            self._took(me, thread, task, prepared, 0)
            return True
        if not blocking or timeout == 0:
            return False
        return self._contended(timeout, frame, me, thread, task, prepared)

    def _prepare(self, frame: FrameType | None) -> Any:
        """What the ordered variant must have before the acquire (nothing here)."""
        return None

    def _took(self, me: int, thread: Any, task: Any, prepared: Any, t0: int) -> None:
        # Timed and ordered variants override this; the plain one stays cheap.
        self._owner = me
        if self._othread is not thread or self._otask is not task:
            _pure_took(self, thread, task)
        self._ct_n += 1

    def _released(self) -> None:
        pass

    def _contended(
        self, timeout: float, frame: FrameType | None, me: int, thread: Any, task: Any, prepared: Any = None
    ) -> bool:
        """The slow path: prepare the wait (who holds the lock now: JFR's previousOwner), block,
        then a few stores."""
        # The holder fields (a snapshot: they may be the last holder's, that released the lock to a
        # thread not back from its own blocking acquire yet: then, if it is this very thread, the
        # holder is the one the lock passed through last before it came here, JFR's previousOwner).
        quiet = _QUIET_WAITS and _gc_isenabled()
        if quiet:
            _gc_disable()
        try:
            holder = _holder_snapshot(self)
            later = holder is not None and holder[2] is thread and holder[0] == me
            if later:
                holder = None
            if self._ct_hold is None:  # first contention: time this lock's holds from now on
                self._ct_hold = Histogram()
                if type(self) is Lock:
                    self.__class__ = _TimedLock
            wait = _wait_begin(self, frame, None if timeout == -1 else timeout, holder)
            # The blocking call's arguments too (called with * they are passed as they are).
            args = _BLOCKING if timeout == -1 else (True, timeout)
        finally:
            if quiet:
                _gc_enable()
        if _SAFE_POINTS:
            _safe_point()
        acquired = False
        try:
            acquired = self._acq(*args)
        finally:
            if later and wait is not None:
                wait.prev_thread = self._othread if self._othread is not None else self._owner
                wait.prev_task = self._otask
            if acquired:
                self._took(me, thread, task, prepared, _mono())
                if prepared is None:
                    self._osite = wait.site if wait is not None else ""
            _wait_done(wait, acquired)
        return acquired

    def locked(self) -> bool:
        """True if the lock is held."""
        return bool(self._lock.locked())

    acquire_lock = acquire
    release_lock = release
    locked_lock = locked

    def _at_fork_reinit(self) -> None:
        self._lock._at_fork_reinit()
        self._owner = None
        self._ct_waiters = None

    def __repr__(self) -> str:
        state = "locked" if self._lock.locked() else "unlocked"
        return f"<{state} conctools.Lock object name={self._ct_name!r} at {id(self):#x}>"

    def __reduce__(self) -> Any:
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")

    # -- the registry's view --
    def _conctools_state(self) -> PrimitiveState:
        owner = self._owner
        holders: tuple[Party, ...] = ()
        if owner is not None and self._lock.locked():
            site = _site_text(self._osite) if self._osite else "?"
            key = int(getattr(self, "_owner_tid", 0) or 0)
            holders = (_make_party(owner, key, self._othread, self._otask, site, self._osince),)
        return PrimitiveState(
            prim_id=id(self),
            name=self._ct_name,
            kind=self._kind,
            created_at=self._ct_created,
            holders=holders,
            waiters=_waiter_parties(self),
        )

    def _conctools_progress(self) -> int:
        return self._ct_n


class _TimedLock(Lock):
    """A Lock that has seen contention: it also measures hold times (only contended locks have
    interesting ones): every contended acquisition's, and a sample of 1 in ``HOLD_SAMPLE`` of the
    others, so a hot lock does not pay two clock reads and a histogram update every time."""

    __slots__ = ()

    def __enter__(self) -> bool:
        me = _get_ident()
        thread = _threads.get(me)
        loop = _get_running_loop()
        task = _current_task(loop) if loop is not None else None
        if self._ct_trash is not None or self._ct_trash_task is not None:
            _empty_trash(self)
        # Hold times of one uncontended acquisition in HOLD_SAMPLE (and of every contended one); the
        # clock is read before the acquire, so that nothing but stores follows it.
        t0 = 0 if (self._ct_n + 1) & HOLD_SAMPLE_MASK else _mono()
        if self._acq(False):
            self._owner = me
            if self._othread is not thread:
                self._ct_trash = self._othread
                self._othread = thread
            if self._otask is not task:
                self._ct_trash_task = self._otask
                self._otask = task
            self._ct_n += 1
            self._osite = ""
            self._osince = self._t0 = t0
            return True
        return self._contended(-1, _getframe(1), me, thread, task)

    def __exit__(self, t: object, v: object, tb: object) -> None:
        # Still under the lock: the lock itself serialises this instance's histogram.
        t0 = self._t0
        if t0:
            self._t0 = 0
            _hold_ended(self, t0)
        self._rel()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquire the lock, as ``threading.Lock.acquire``."""
        if blocking is True and timeout == -1:
            return self.__enter__()
        return self._acquire_args(blocking, timeout, _getframe(1))

    def release(self) -> None:
        """Release the lock (any thread may), as ``threading.Lock.release``."""
        self._released()
        self._rel()

    acquire_lock = acquire
    release_lock = release

    def _took(self, me: int, thread: Any, task: Any, prepared: Any, t0: int) -> None:
        self._owner = me
        if self._othread is not thread or self._otask is not task:
            _pure_took(self, thread, task)
        n = self._ct_n = self._ct_n + 1
        self._osite = ""
        self._osince = self._t0 = t0 or (0 if n & HOLD_SAMPLE_MASK else _mono())

    def _released(self) -> None:
        t0 = self._t0
        if t0:
            self._t0 = 0
            _hold_ended(self, t0)


_TimedLock.__qualname__ = _TimedLock.__name__ = "Lock"


class _OrderedLock(_TimedLock):
    """A Lock under lock-order checking: it knows where it was taken and feeds the order graph.

    The site, the held-stack entry and the order check are prepared before the acquire; after it,
    only stores and an append to the thread's held stack."""

    __slots__ = ()

    def __enter__(self) -> bool:
        me = _get_ident()
        thread = _threads.get(me)
        loop = _get_running_loop()
        task = _current_task(loop) if loop is not None else None
        prepared = _prepare_order(self, _getframe(1))
        if self._ct_trash is not None or self._ct_trash_task is not None:
            _empty_trash(self)
        t0 = 0 if self._ct_hold is None or (self._ct_n + 1) & HOLD_SAMPLE_MASK else _mono()
        if not self._acq(False):
            return self._contended(-1, _getframe(1), me, thread, task, prepared)
        self._owner = me
        if self._othread is not thread:
            self._ct_trash = self._othread
            self._othread = thread
        if self._otask is not task:
            self._ct_trash_task = self._otask
            self._otask = task
        self._ct_n += 1
        self._osince = self._t0 = t0
        if prepared is not None:
            held = prepared[0]  # (indexing: an unpacking not yet specialised allocates an iterator)
            one = prepared[1]
            self._osite = one[0][4]
            held += one  # an in-place extend: no call
            self._ct_held = held
        return True

    def __exit__(self, t: object, v: object, tb: object) -> None:
        held = self._ct_held
        if held is not None:
            self._ct_held = None
            _pop_held(self, held)
        t0 = self._t0
        if t0:
            self._t0 = 0
            _hold_ended(self, t0)
        self._rel()

    def _prepare(self, frame: FrameType | None) -> Any:
        return _prepare_order(self, frame)

    def _took(self, me: int, thread: Any, task: Any, prepared: Any, t0: int) -> None:
        self._owner = me
        if self._othread is not thread or self._otask is not task:
            _pure_took(self, thread, task)
        n = self._ct_n = self._ct_n + 1
        # Hold times only once the lock has been contended (sampled), as for unordered locks.
        self._osince = self._t0 = t0 or (0 if self._ct_hold is None or n & HOLD_SAMPLE_MASK else _mono())
        if prepared is not None:
            held = prepared[0]  # (indexing: an unpacking not yet specialised allocates an iterator)
            one = prepared[1]
            self._osite = one[0][4]
            held += one
            self._ct_held = held

    def _released(self) -> None:
        held = self._ct_held
        if held is not None:
            self._ct_held = None
            _pop_held(self, held)
        _TimedLock._released(self)


_OrderedLock.__qualname__ = _OrderedLock.__name__ = "Lock"


def _prepare_order(prim: Any, frame: FrameType | None) -> tuple[list[lockorder.Held], tuple[lockorder.Held]] | None:
    """Before taking ``prim`` (pure path, lock-order mode): its site, the thread's held stack, the
    entry to push, and the order check (which records a new edge, with its stack, now). Returns
    ``(held, (entry,))``, cached on the lock while neither changes: nothing is allocated on the way
    of a lock taken again and again from one line by one thread."""
    try:
        one = prim._ct_entry  # (entry,): pushed with an in-place extend after the acquire
        if frame is not None and not frame.f_code.co_filename.startswith(_SKIP_MAYBE):
            if one is None or not (
                type(one[0][4]) is tuple and one[0][4][0] is frame.f_code and one[0][4][1] == frame.f_lasti
            ):
                site: Any = (frame.f_code, frame.f_lasti)
                one = None
        else:
            site = _code_site(frame)
            if one is not None and one[0][4] != site:
                one = None
        if one is None:
            old = prim._ct_entry
            wref = old[0][0] if old is not None else _weakref(prim)
            one = prim._ct_entry = ((wref, prim._ct_stats.key, prim._ct_name, prim._ct_serial, site),)
        try:
            held = _order_local.stack
        except AttributeError:
            held = lockorder.held_stack()
        if held:
            lockorder.check(held, one[0])
        prepared = prim._ct_prepared
        if prepared is None or prepared[0] is not held or prepared[1] is not one:
            prepared = prim._ct_prepared = (held, one)
        if _SAFE_POINTS:
            _safe_point()  # last: whatever the above allocated is collected before the acquire
        return prepared  # type: ignore[no-any-return]
    except Exception:  # observation must never break the program
        _log.debug("conctools: lock-order bookkeeping failed", exc_info=True)
        return None


def _pop_held(prim: Any, held: Any) -> None:
    """Take ``prim`` off the held stack it was pushed on (no allocation)."""
    try:
        if held and held[-1][0]() is prim:
            del held[-1]
        else:
            lockorder.note_released(held, prim)
    except Exception:  # observation must never break the program
        pass


def _hold_ended(prim: Any, t0: int) -> None:
    """Record a timed hold that began at ``t0`` (called under the lock, which serialises the histogram)."""
    try:
        hold = prim._ct_hold
        if hold is not None:
            hold.add(_mono() - t0)
    except Exception:  # observation must never break the program
        pass


# -- RLock -------------------------------------------------------------------------------


class RLock(_CoreBase):
    """A traced ``threading.RLock``: re-entrant, owned by one thread; plus statistics.

    Built on the C ``_thread.RLock``, so ``_is_owned``, ``_recursion_count``,
    ``_release_save`` and ``_acquire_restore`` keep their exact semantics. The holder's thread,
    identity and task are recorded at the outermost acquisition.
    """

    __slots__ = () if _speedups is not None else _CORE_SLOTS

    _kind = "RLock"

    _lock: Any
    _ct_n: int
    _ct_hold: Histogram | None
    _ct_waiters: dict[tuple[int, int | None], Any] | None
    _ct_name: str
    _ct_created: str
    _ct_serial: int
    _ct_stats: LockStats

    def __init__(self, name: str | None = None) -> None:
        # Pure-Python path only: with the C extension, _c_rlock_init replaces this method.
        lock = _CRLock()
        self._lock = lock
        self._acq = lock.acquire
        self._rel = lock.release
        self._owner: int | None = None
        self._othread: Any = None
        self._otask: Any = None
        self._osite: Any = ""
        self._osince = 0
        self._t0 = 0
        self._ct_held: list[lockorder.Held] | None = None
        self._ct_entry: Any = None
        self._ct_prepared: Any = None
        self._ct_trash: Any = None
        self._ct_trash_task: Any = None
        self._ct_ordered = 0
        _register(self, self._kind, name, _getframe(1))
        if _order_enabled[0]:
            self._ct_ordered = 1
            self.__class__ = _OrderedRLock

    def __enter__(self) -> bool:
        return self._acquire(True, -1)

    def __exit__(self, t: object, v: object, tb: object) -> None:
        if self._lock._recursion_count() == 1:
            self._released()
        self._rel()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquire (re-entrantly), as ``threading.RLock.acquire``."""
        if timeout != -1:  # acquire(False) (Condition's _is_owned() probe) needs no check
            _validate(blocking, timeout)
        return self._acquire(blocking, timeout)

    def _acquire(self, blocking: Any, timeout: float) -> bool:
        """``__enter__`` and ``acquire`` (called by them: the caller's frame is two levels up, and
        only looked at in lock-order mode or when the lock is contended)."""
        lock = self._lock
        if lock._is_owned():  # a re-entry: immediate, no new holder, no edge
            got = bool(self._acq(False))
            if got:
                self._ct_n += 1
            return got
        me = _get_ident()
        thread = _threads.get(me)
        loop = _get_running_loop()
        task = _current_task(loop) if loop is not None else None
        prepared = self._prepare(_getframe(2)) if self._ct_ordered else None
        if self._ct_trash is not None or self._ct_trash_task is not None:
            _empty_trash(self)
        t0 = 0 if self._ct_hold is None or (self._ct_n + 1) & HOLD_SAMPLE_MASK else _mono()
        if self._acq(False):
            # Stores only from here (every variant: the ordered one has ``prepared``, the timed ones
            # a hold histogram).
            self._owner = me
            if self._othread is not thread:
                self._ct_trash = self._othread
                self._othread = thread
            if self._otask is not task:
                self._ct_trash_task = self._otask
                self._otask = task
            self._ct_n += 1
            self._osince = self._t0 = t0
            if prepared is not None:
                held = prepared[0]  # (indexing: an unpacking not yet specialised allocates an iterator)
                one = prepared[1]
                self._osite = one[0][4]
                held += one
                self._ct_held = held
            elif self._osite:
                self._osite = ""
            return True
        if not blocking or timeout == 0:
            return False
        return self._contended(timeout, _getframe(2), me, thread, task, prepared)

    def release(self) -> None:
        """Release one level, as ``threading.RLock.release``."""
        if self._lock._recursion_count() == 1:
            self._released()
        self._rel()

    def _prepare(self, frame: FrameType | None) -> Any:
        return None

    def _took(self, me: int, thread: Any, task: Any, prepared: Any, t0: int) -> None:
        self._owner = me
        if self._othread is not thread or self._otask is not task:
            _pure_took(self, thread, task)
        self._ct_n += 1

    def _released(self) -> None:
        pass

    def _owner_and_count(self) -> tuple[int | None, int]:
        """The owner thread and depth, read from the C lock (from any thread, without blocking)."""
        match = _RLOCK_REPR.search(repr(self._lock))
        if match is None:
            return None, 0
        owner, count = int(match.group(1)), int(match.group(2))
        return (owner or None) if count else None, count

    def _contended(
        self, timeout: float, frame: FrameType | None, me: int, thread: Any, task: Any, prepared: Any = None
    ) -> bool:
        quiet = _QUIET_WAITS and _gc_isenabled()
        if quiet:
            _gc_disable()
        try:
            holder = _holder_snapshot(self)
            if self._ct_hold is None:
                self._ct_hold = Histogram()
                if type(self) is RLock:
                    self.__class__ = _TimedRLock
            wait = _wait_begin(self, frame, None if timeout == -1 else timeout, holder)
            # The blocking call's arguments too (called with * they are passed as they are).
            args = _BLOCKING if timeout == -1 else (True, timeout)
        finally:
            if quiet:
                _gc_enable()
        if _SAFE_POINTS:
            _safe_point()
        acquired = False
        try:
            acquired = self._acq(*args)
        finally:
            if acquired:
                self._took(me, thread, task, prepared, _mono())
                if prepared is None:
                    self._osite = wait.site if wait is not None else ""
            _wait_done(wait, acquired)
        return acquired

    def _is_owned(self) -> bool:
        return bool(self._lock._is_owned())

    def _recursion_count(self) -> int:
        return int(self._lock._recursion_count())

    def _release_save(self) -> Any:
        # The state is the C lock's own (count, owner): it survives a switch to the timed class.
        if not self._lock._is_owned():
            raise RuntimeError("cannot release un-acquired lock")
        self._released()
        return self._lock._release_save()

    def _acquire_restore(self, state: Any) -> None:
        count = state[0]
        frame = _getframe(1)
        me = _get_ident()
        thread = _threads.get(me)
        task = _task_now()
        prepared = self._prepare(frame)
        if self._ct_trash is not None or self._ct_trash_task is not None:
            _empty_trash(self)
        if self._acq(False):
            self._took(me, thread, task, prepared, 0)
        else:
            quiet = _QUIET_WAITS and _gc_isenabled()
            if quiet:
                _gc_disable()
            try:
                wait = _wait_begin(self, frame, None, _holder_snapshot(self))
                restore, args = self._lock._acquire_restore, ((1, me),)
            finally:
                if quiet:
                    _gc_enable()
            if _SAFE_POINTS:
                _safe_point()
            try:
                restore(*args)
            finally:
                # (not interruptible: it returns with the lock taken, as the stdlib's does)
                self._took(me, thread, task, prepared, _mono())
                _wait_done(wait, True)
        for _ in range(count - 1):  # re-entries: immediate, and not acquisitions of their own
            self._acq()

    def _at_fork_reinit(self) -> None:
        self._lock._at_fork_reinit()
        self._owner = None
        self._ct_waiters = None

    def __repr__(self) -> str:
        owner, count = self._owner_and_count()
        state = "locked" if count else "unlocked"
        return (
            f"<{state} conctools.RLock object owner={owner or 0} count={count} name={self._ct_name!r} at {id(self):#x}>"
        )

    def __reduce__(self) -> Any:
        raise TypeError(f"cannot pickle {type(self).__name__!r} object")

    def _conctools_state(self) -> PrimitiveState:
        owner, _ = self._owner_and_count()
        holders: tuple[Party, ...] = ()
        if owner is not None:
            site = _site_text(self._osite) if self._osite else "?"
            if owner == self._owner:  # the recorded holder: its thread, identity and task
                key = int(getattr(self, "_owner_tid", 0) or 0)
                holders = (_make_party(owner, key, self._othread, self._otask, site, self._osince),)
            else:
                holders = (_party(owner, None, site, 0),)
        return PrimitiveState(
            prim_id=id(self),
            name=self._ct_name,
            kind=self._kind,
            created_at=self._ct_created,
            holders=holders,
            waiters=_waiter_parties(self),
        )

    def _conctools_progress(self) -> int:
        return self._ct_n


_RLOCK_REPR = re.compile(r"owner=(\d+) count=(\d+)")


class _TimedRLock(RLock):
    """An RLock that has seen contention: it also measures hold times (outermost level)."""

    __slots__ = ()

    def _took(self, me: int, thread: Any, task: Any, prepared: Any, t0: int) -> None:
        self._owner = me
        if self._othread is not thread or self._otask is not task:
            _pure_took(self, thread, task)
        n = self._ct_n = self._ct_n + 1
        self._osite = ""
        self._osince = self._t0 = t0 or (0 if n & HOLD_SAMPLE_MASK else _mono())

    def _released(self) -> None:
        t0 = self._t0
        if t0:
            self._t0 = 0
            _hold_ended(self, t0)


_TimedRLock.__qualname__ = _TimedRLock.__name__ = "RLock"


class _OrderedRLock(_TimedRLock):
    """An RLock under lock-order checking (re-entry adds no edge)."""

    __slots__ = ()

    def _prepare(self, frame: FrameType | None) -> Any:
        return _prepare_order(self, frame)

    def _took(self, me: int, thread: Any, task: Any, prepared: Any, t0: int) -> None:
        self._owner = me
        if self._othread is not thread or self._otask is not task:
            _pure_took(self, thread, task)
        n = self._ct_n = self._ct_n + 1
        self._osince = self._t0 = t0 or (0 if self._ct_hold is None or n & HOLD_SAMPLE_MASK else _mono())
        if prepared is not None:
            held = prepared[0]  # (indexing: an unpacking not yet specialised allocates an iterator)
            one = prepared[1]
            self._osite = one[0][4]
            held += one
            self._ct_held = held

    def _released(self) -> None:
        held = self._ct_held
        if held is not None:
            self._ct_held = None
            _pop_held(self, held)
        _TimedRLock._released(self)


_OrderedRLock.__qualname__ = _OrderedRLock.__name__ = "RLock"


_speedups_setup: dict[str, Any] = {}  # what _speedups.setup() was given (tests swap one part)


def _install_speedups() -> None:
    """Put the C paths in place of the Python ones (which remain the fallback).

    One set of C methods serves every variant (plain, timed, ordered): the C lock knows whether it
    is ordered (decided at creation) and timed (it has a hold histogram), so it never switches class.
    """
    core = _speedups.Core
    _speedups_setup.update(
        mask=HOLD_SAMPLE_MASK,
        mono=_mono,
        histogram=Histogram,
        sub_bits=recorder_module._SUB_BITS,
        skip_prefixes=(_PKG_DIR, *_STDLIB_SKIP),  # what _SKIP_PREFIXES matches, in 8 prefixes, not 38
        internal_prefixes=(_PKG_DIR, *_STDLIB_SKIP, "<frozen"),
        keep_prefix=_SAMPLE_DIR,
        pkg_dir=_PKG_DIR,
        local=_order_local,
        held_stack=lockorder.held_stack,
        check=lockorder.check,
        edges=lockorder._edges,
        generation=lockorder._generation,
        allocate_lock=_allocate_lock,
        rlock_type=_CRLock,
        order_enabled=_order_enabled,
        current=recorder_module._current,
        published=_published,
        register=_register,
        retire=_retire_counts,
        epoch=_epoch,
        wait_begin=_wait_begin,
        pending=_pending,
        waiting=_waiting,
        progress=_progress,
        safe_point=_safe_point,
        active=_threads,
        running_loop=_get_running_loop,
        current_task=_current_task,
    )
    _speedups.setup(**_speedups_setup)
    table: list[tuple[type, str, Any]] = [
        (Lock, "__init__", core._c_lock_init),
        (Lock, "__enter__", core._c_lock_enter),
        (Lock, "__exit__", core._c_lock_exit),
        (Lock, "acquire", core._c_acquire),
        (Lock, "release", core._c_lock_release),
        (Lock, "locked", core._c_locked),
        (RLock, "__init__", core._c_rlock_init),
        (RLock, "__enter__", core._c_rlock_enter),
        (RLock, "__exit__", core._c_rlock_exit),
        (RLock, "acquire", core._c_acquire),
        (RLock, "release", core._c_rlock_release),
        (RLock, "_is_owned", core._c_is_owned),
        (RLock, "_recursion_count", core._c_recursion_count),
        (RLock, "_release_save", core._c_release_save),
        (RLock, "_acquire_restore", core._c_acquire_restore),
    ]
    for cls, attr, value in table:
        setattr(cls, attr, value)
    # The variants inherit the C methods: their Python overrides are the pure path's.
    for variant in (_TimedLock, _OrderedLock, _TimedRLock, _OrderedRLock):
        for attr in ("__enter__", "__exit__", "acquire", "release", "acquire_lock", "release_lock"):
            if attr in vars(variant):
                delattr(variant, attr)
    # Wait records are made and ended in C too (the Python versions stay for the pure path).
    _speedups.setup_waits(
        wait_type=_CWait,
        flush=flush_waits,
        site_text=_wait_site_text,
        begin_wait_slow=LockStats.begin_wait,
        holder_exited=_holder_exited,
        holder_brief=_holder_brief,
        flush_at=FLUSH_AT,
        stacks_per_site=STACKS_PER_SITE,
        threshold=_threshold,
        unsampled=_unsampled,
        events_cap=EVENTS_PER_SITE + STACKS_PER_SITE,
    )
    global _hist_add
    _hist_add = recorder_module.hist_add = _speedups.hist_add
    Lock.acquire_lock = Lock.acquire  # type: ignore[method-assign] # the _thread.lock aliases follow
    Lock.release_lock = Lock.release  # type: ignore[method-assign]
    Lock.locked_lock = Lock.locked  # type: ignore[method-assign]
    registry._c_live[0] = _speedups.live
    lockorder._untrack[0] = _speedups.untrack
    lockorder._drop_dead_run[0] = _speedups.drop_dead_run
    lockorder._graph_alive[0] = _speedups.graph_alive
    lockorder._run_index[0] = _speedups.RunIndex
    if not lockorder._inst_has_out:  # (empty: no edge was added in Python yet)
        lockorder._inst_has_out = _speedups.RunIndex()
    lockorder._stack_type[0] = _speedups.HeldStack  # (its version is bumped in C too)
    _speedups.setup_runs(  # the next lock of a run of one class, in C (lockorder._run_edge)
        runs=lockorder._runs,
        into=lockorder._inst_in,
        has_out=lockorder._inst_has_out,
        count=lockorder._inst_count,
        full_skip=lockorder._inst_full_skip,
        prune_at=lockorder._inst_prune_at,
        max_edges=lockorder.INSTANCE_MAX_EDGES,
        mutex=lockorder._mutex,
        run_log=lockorder._run_log,  # the first lock of a run too (lockorder._instance_edge_from)
        stacks=lockorder._inst_stacks,
        stacks_per_site=lockorder.INSTANCE_STACKS_PER_SITE,
        looked_at=lockorder.RUNS_LOOKED_AT_PER_RUN,
    )
    lockorder._c_checking[0] = _speedups.order_checking
    registry._c_progress[0] = _speedups.acquisitions


def _bind_asyncio(asyncio: ModuleType) -> None:
    """The program imported asyncio: its loop and task getters from now on (the C paths too)."""
    global _get_running_loop, _current_task
    _get_running_loop, _current_task = asyncio._get_running_loop, asyncio.current_task
    if _speedups is not None and _speedups_setup:
        _speedups_setup.update(running_loop=_get_running_loop, current_task=_current_task)
        _speedups.setup(**_speedups_setup)


if _speedups is not None:
    # The C extension's wait record, with _WaitMethods' methods set on the C type itself: a subclass made
    # by a class statement would be a garbage-collector container, and the record is not one (see
    # _speedups.c: 20,000 parked asyncio tasks made 20,000 long-lived tracked records).
    _CWait: Any = _speedups.WaitRecord
    for _attr, _value in vars(_WaitMethods).items():
        if not _attr.startswith("__"):
            setattr(_CWait, _attr, _value)
    del _attr, _value

    _install_speedups()
    _wait_begin = _speedups.wait_begin  # (the same, in C)
    registry._promote[0] = _speedups.promote_waits  # (its asyncio waits are registered when read)
    _wait_done = _speedups.wait_done
    _wait_done_now = _speedups.wait_done_now
else:  # the C type hands a dead lock's counters to its class itself
    Lock.__del__ = RLock.__del__ = _retire  # type: ignore[attr-defined]
when_imported("asyncio", _bind_asyncio)


# -- Condition ---------------------------------------------------------------------------

# threading.Condition.__init__ (3.11-3.13): the lock, its methods, and _release_save, _acquire_restore
# and _is_owned when the lock has them (our RLock has all three), then the waiters' deque. Made
# inline for the default lock: a Python frame and three lookups less on every Future.
_INLINE_CONDITION_INIT = sys.version_info < (3, 14)
_deque = collections.deque


if TYPE_CHECKING:
    _TrackedBase = object
else:
    _TrackedBase = _speedups.Tracked if _speedups is not None else object


class _TracedAttrs(_TrackedBase):
    """The fields :func:`_register` gives a Python-level traced primitive (with the C extension, C
    fields of ``_speedups.Tracked``, which also keeps the primitive in its list of live ones and
    hands its counters to its class when it dies), and the registry hooks of the primitives that
    have waiters but no holders (events, conditions, barriers); those with holders override
    ``_conctools_state`` and ``_conctools_progress``."""

    __slots__ = ()

    _ct_n: int
    _ct_hold: Histogram | None
    _ct_waiters: dict[tuple[int, int | None], Any] | None
    _ct_name: str
    _ct_created: str
    _ct_serial: int
    _ct_stats: LockStats
    _ct_progress: int

    def _conctools_state(self) -> PrimitiveState:
        return _base_state(self, ())

    def _conctools_progress(self) -> int:
        return int(self._ct_progress)


if _speedups is None:  # the pure-Python path: defaults as class attributes, counters handed on in __del__
    _TracedAttrs._ct_n = 0  # type: ignore[misc]
    _TracedAttrs._ct_hold = None  # type: ignore[misc]
    _TracedAttrs._ct_waiters = None  # type: ignore[misc]
    _TracedAttrs._ct_serial = 0  # type: ignore[misc]
    _TracedAttrs._ct_progress = 0  # type: ignore[misc]
    _TracedAttrs.__del__ = _retire  # type: ignore[attr-defined]


def _init_traced(prim: Any, kind: str, name: str | None, frame: FrameType | None) -> None:
    _register(prim, kind, name, frame)


def _base_state(prim: Any, holders: tuple[Party, ...]) -> PrimitiveState:
    """A traced primitive's registry state: its identity, ``holders`` and current waiters."""
    return PrimitiveState(
        prim_id=id(prim),
        name=prim._ct_name,
        kind=prim._ct_stats.kind,
        created_at=prim._ct_created,
        holders=holders,
        waiters=_waiter_parties(prim),
    )


class _LockMethod:
    """A method of a :class:`Condition`'s lock, bound into the instance on first use.

    ``threading.Condition.__init__`` binds ``acquire``, ``release``, ``_release_save``,
    ``_acquire_restore`` and ``_is_owned`` of its lock into every instance: five bound methods (360
    bytes) per condition, so per ``Future``, most of which never use more than ``_is_owned``. This
    non-data descriptor binds the lock's method on first access and stores it in the instance, so
    later accesses are plain instance-dict hits, as with the stdlib. A lock without the method gets
    ``fallback`` (the stdlib's own emulation), bound and not stored (it would be a reference cycle).
    Conditions over a lock the program passed in are bound by the stdlib's ``__init__`` as ever.
    """

    __slots__ = ("fallback", "name")

    def __init__(self, name: str, fallback: Any) -> None:
        self.name = name
        self.fallback = fallback

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self.fallback if self.fallback is not None else self
        method = getattr(obj._lock, self.name, None)
        if method is None:
            if self.fallback is None:
                raise AttributeError(f"{type(obj).__name__!r} object has no attribute {self.name!r}")
            return self.fallback.__get__(obj, objtype)
        obj.__dict__[self.name] = method
        return method


class Condition(_StdCondition, _TracedAttrs):
    """A traced ``threading.Condition``; its default lock is a traced :class:`RLock`.

    Waiters are visible in the registry (a lost wake-up shows up as a waiter nobody
    notifies), and the time spent waiting is in the lock table.
    """

    # With the C extension, the attributes every condition has live in slots (its base has C fields, which
    # on 3.13+ rules out inline attribute values: the instance dict made at the first store cost 344-416
    # bytes per Future there). _is_owned is then a data descriptor over the _owned slot (set up below the
    # class), so a Future's condition has no instance dict at all; other attributes still go to the dict.
    __slots__ = ("_lock", "_waiters", "_owned") if _speedups is not None else ()

    _waiters: Any  # the stdlib's, not in typeshed
    _lock: Any

    def __init__(self, lock: Any = None, name: str | None = None) -> None:
        if lock is None:
            lock = RLock() if name is None else RLock(name=f"{name}.lock")
            if _INLINE_CONDITION_INIT:  # the stdlib's __init__ for an RLock of ours (every Future makes one)
                self._lock = lock
                if type(self) is not Condition:  # a subclass's own acquire() etc. lose to these, as in the stdlib
                    self.acquire = lock.acquire  # type: ignore[method-assign]
                    self.release = lock.release  # type: ignore[method-assign]
                    self._release_save = lock._release_save
                    self._acquire_restore = lock._acquire_restore
                # Otherwise those four are bound on first use (_LockMethod), not here: a Future's
                # condition never uses them (`with` and notify() do not), and each is 72 bytes.
                self._is_owned = lock._is_owned  # type: ignore[method-assign]
                self._waiters = _deque()
            else:
                _StdCondition.__init__(self, lock)
                if _speedups is not None:  # (whatever a later stdlib binds)
                    _bind_owned_probe(self)
        else:
            _StdCondition.__init__(self, lock)
            if _speedups is not None:
                if type(lock) is Lock:  # (a C Lock never changes class)
                    self._is_owned = lock._c_cond_owned  # type: ignore[attr-defined,method-assign]
                else:
                    _bind_owned_probe(self)
        self._ct_progress = 0  # notifications (made here: a notify inside a section only stores)
        # Named and counted: with the C extension, from its cache of creation sites in one call.
        if _try_register is not None and _try_register(self, "Condition", name):
            _speedups.link(self)
        else:
            _register(self, "Condition", name, _getframe(1))

    def _is_owned(self) -> bool:
        """``threading.Condition``'s probe for a lock without ``_is_owned`` (a ``Lock``: "owned" is
        "held by anyone"), answered by ``locked()`` when it is held: the probe's ``acquire(False)``
        would fail and record nothing, and skipping it skips its lock-order bookkeeping. A free lock
        is probed as the stdlib does. (With the C extension a traced Lock's own ``_c_cond_owned``
        does this, set in ``__init__``.)"""
        lock = self._lock
        if isinstance(lock, Lock) and lock._lock.locked():
            return True
        return bool(_StdCondition._is_owned(self))  # type: ignore[attr-defined]

    if sys.version_info < (3, 14):

        def notify(self, n: int = 1) -> None:
            """Wake up to ``n`` waiters, as ``threading.Condition.notify`` (counted: a queue's
            ``not_empty`` notifications are its puts, which a hang report on ``join()`` shows).

            The stdlib's body (3.11-3.13, identical), inlined: every queue put and get notifies,
            and a call to it from here cost a Python frame each time."""
            if not self._is_owned():
                raise RuntimeError("cannot notify on un-acquired lock")
            waiters = self._waiters
            while waiters and n > 0:
                waiter = waiters[0]
                try:
                    waiter.release()
                except RuntimeError:
                    pass  # gh-92530: released by a notify() interrupted before it removed the waiter
                else:
                    n -= 1
                try:
                    waiters.remove(waiter)
                except ValueError:
                    pass
            self._ct_progress += 1

    else:

        def notify(self, n: int = 1) -> None:
            """Wake up to ``n`` waiters, as ``threading.Condition.notify`` (counted: a queue's
            ``not_empty`` notifications are its puts, which a hang report on ``join()`` shows)."""
            _StdCondition.notify(self, n)
            self._ct_progress += 1

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until notified or until ``timeout``, as ``threading.Condition.wait``."""
        if not self._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        if timeout is not None and timeout <= 0:  # a poll, not a wait
            return super().wait(timeout)
        wait = _wait_begin(self, _getframe(1), timeout, None, event=False)
        notified = False
        try:
            notified = super().wait(timeout)
        finally:
            _wait_done(wait, notified)
        return notified

    # notify_all() is the stdlib's own (it calls notify()). A waiter that wakes up stamps the
    # watchdog's progress itself (a notification that wakes nobody is no progress).


if _speedups is not None:
    # Condition._is_owned over the _owned slot: the slot's own getter and setter (C: no Python frame for each
    # notify()). The stdlib's __init__ and ours assign it; a subclass that defines its own _is_owned gets the
    # lock's method in its instance dict instead, as with the stdlib. The probe for a lock without _is_owned
    # is kept as _owned_probe.
    Condition._owned_probe = Condition.__dict__["_is_owned"]  # type: ignore[attr-defined]
    _owned_slot = Condition.__dict__["_owned"]
    Condition._is_owned = property(  # type: ignore[assignment,method-assign]
        _owned_slot.__get__, _owned_slot.__set__, doc="The lock's _is_owned (or the probe), as the stdlib binds it."
    )

    def _bind_owned_probe(cond: Any) -> None:
        """A condition whose lock has no ``_is_owned`` (its ``__init__`` bound none) gets the class's probe,
        bound to it, where the stdlib would fall back to its class method."""
        try:
            _owned_slot.__get__(cond)
        except AttributeError:
            cond._owned = MethodType(Condition._owned_probe, cond)  # type: ignore[attr-defined]


if _INLINE_CONDITION_INIT:
    Condition.acquire = _LockMethod("acquire", None)  # type: ignore[assignment,method-assign]
    Condition.release = _LockMethod("release", None)  # type: ignore[assignment,method-assign]
    Condition._release_save = _LockMethod("_release_save", _StdCondition._release_save)  # type: ignore[attr-defined]
    Condition._acquire_restore = _LockMethod("_acquire_restore", _StdCondition._acquire_restore)  # type: ignore[attr-defined]


if _speedups is not None:
    # threading.Condition's __enter__/__exit__ (`self._lock.__enter__()`, `self._lock.__exit__(*args)`)
    # as C methods: every `with` on a queue's or a future's condition paid two Python frames for them.
    Condition.__enter__ = _speedups.Tracked._c_cond_enter  # type: ignore[method-assign,assignment]
    Condition.__exit__ = _speedups.Tracked._c_cond_exit  # type: ignore[method-assign,assignment]
    if _INLINE_CONDITION_INIT:
        # acquire() and release() too, forwarded in C: bound on first use, they cost a Python frame and
        # an instance-dict entry each for every future that wait() or as_completed() takes.
        Condition.acquire = _speedups.Tracked._c_cond_acquire  # type: ignore[method-assign,assignment]
        Condition.release = _speedups.Tracked._c_cond_release  # type: ignore[method-assign,assignment]
    # Their reads of self._lock: the slot, in place (while the class's _lock stays its slot).
    _speedups.cond_setup(Condition)


# -- Semaphore / BoundedSemaphore --------------------------------------------------------


class Semaphore(_StdSemaphore, _TracedAttrs):
    """A traced ``threading.Semaphore``: every current holder and waiter is known."""

    # With the C extension, the stdlib's attributes and ours in slots: no attribute dict (its C base rules out
    # 3.13's inline values, and there a dict-ful instance's attribute and method accesses are not specialized:
    # conctools._layout; a ThreadPoolExecutor takes its idle semaphore at every submit)
    __slots__ = ("_cond", "_value", "_holders", "_ct_trash") if _speedups is not None else ()

    def __init__(self, value: int = 1, name: str | None = None) -> None:
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        # Its internal condition is plain: the semaphore itself is what we trace.
        self._cond = _StdCondition(_allocate_lock())
        self._value = value
        # Holder snapshots (ident, thread key, thread, task, site, since); site: see _site_text.
        self._holders: list[tuple[Any, ...]] = []
        self._ct_trash: Any = None
        _init_traced(self, self._kind(), name, _getframe(1))

    @classmethod
    def _kind(cls) -> str:
        return "Semaphore"

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Decrement the counter, waiting while it is zero, as ``threading.Semaphore.acquire``."""
        if not blocking and timeout is not None:
            raise ValueError("can't specify timeout for non-blocking acquire")
        if not self._value and (not blocking or timeout == 0):
            return False  # a poll of an empty semaphore (what the stdlib's loop ends up returning)
        # Made before the internal lock is taken: from the decrement on, the caller holds a permit
        # and only stores follow.
        # Who takes it and where (code and offset; text only when a report reads it): a permit that
        # is never released is blamed on its line.
        rec: tuple[Any, ...] = _holder_site_record()
        if self._ct_trash is not None:
            self._ct_trash = None
        with self._cond:
            if self._value:  # the fast path: no wait, no clock, no stack
                self._value -= 1
                self._ct_n += 1
                holders = self._holders
                if len(holders) < MAX_HOLDERS:  # past that, not every holder is named
                    holders.append(rec)
                return True
            if not blocking or timeout == 0:
                return False
        # The slow path: the wait is prepared outside the internal lock, then the stdlib's loop.
        wait = _wait_begin(self, _getframe(1), timeout, list(self._holders[:5]))
        hooked = pool_wait_started(self, wait, False)  # pool blame (conctools.pools), before blocking
        if _SAFE_POINTS:
            _safe_point()
        rc = False
        endtime = None
        try:
            with self._cond:
                while self._value == 0:
                    if timeout is not None:
                        if endtime is None:
                            endtime = time.monotonic() + timeout
                        else:
                            timeout = endtime - time.monotonic()
                            if timeout <= 0:
                                break
                    self._cond.wait(timeout)
                else:
                    self._value -= 1
                    rc = True
                    self._ct_n += 1
                    holders = self._holders
                    if len(holders) < MAX_HOLDERS:
                        holders.append(rec)
        finally:
            _wait_done(wait, rc)
            if hooked is not None:
                pool_wait_ended(hooked)
        return rc

    __enter__ = acquire

    def release(self, n: int = 1) -> None:
        """Increment the counter by ``n`` and wake waiters, as ``threading.Semaphore.release``."""
        if n < 1:
            raise ValueError("n must be one or more")
        with self._cond:
            bound = self._ct_bound
            if bound is not None and self._value + n > bound:
                raise ValueError("Semaphore released too many times")
            self._value += n
            holders = self._holders
            if holders:
                # The dropped holder records go to the trash (emptied at the next acquire): they
                # may hold the last reference to a thread or task.
                me = _holder_record()[0]
                if n == 1 and holders[-1][0] is me:
                    self._ct_trash = holders.pop()
                else:
                    self._ct_trash = self._forget_holders(n, me)
            self._cond.notify(n)
        if self._ct_waiters:
            _progress[0] = _mono()

    _ct_bound: int | None = None  # a BoundedSemaphore's initial value

    def __exit__(self, t: object, v: object, tb: object) -> None:
        self.release()

    def _forget_holders(self, n: int, me: Any) -> list[Any]:
        """Drop ``n`` holder records: the releasing thread's own (looked for among the newest few),
        else the oldest (a permit released by another thread than the one that took it)."""
        holders = self._holders
        dropped = []
        for _ in range(n):
            if not holders:
                break
            for i in range(len(holders) - 1, max(-1, len(holders) - 9), -1):
                if holders[i][0] is me:
                    dropped.append(holders.pop(i))
                    break
            else:
                dropped.append(holders.pop(0))
        return dropped

    def _conctools_state(self) -> PrimitiveState:
        return PrimitiveState(
            prim_id=id(self),
            name=self._ct_name,
            kind=self._ct_stats.kind,
            created_at=self._ct_created,
            holders=self._conctools_holders(),
            waiters=_waiter_parties(self),
        )

    def _conctools_holders(self) -> tuple[Party, ...]:
        return tuple(_snapshot_party(snap) for snap in list(self._holders))

    def _conctools_progress(self) -> int:
        return int(self._ct_n)


if _speedups is not None:
    # acquire() and release() that wait for nothing, in C (every ThreadPoolExecutor.submit() takes its
    # idle semaphore and every worker gives it back): the same stores under the same internal lock;
    # the Python methods above do the rest (waits, waking waiters, errors), called from C.
    _speedups.setup_primitives(Semaphore.acquire, Semaphore.release, _StdCondition, MAX_HOLDERS, Lock, RLock)
    Semaphore.acquire = Semaphore.__enter__ = _speedups.Tracked._c_sem_acquire  # type: ignore[method-assign,assignment]
    Semaphore.release = _speedups.Tracked._c_sem_release  # type: ignore[method-assign,assignment]
    Semaphore.__exit__ = _speedups.Tracked._c_sem_exit  # type: ignore[method-assign,assignment]


class BoundedSemaphore(Semaphore):
    """A traced ``threading.BoundedSemaphore``: releasing more than acquired raises ``ValueError``."""

    __slots__ = ("_initial_value", "_ct_bound") if _speedups is not None else ()

    def __init__(self, value: int = 1, name: str | None = None) -> None:
        self._initial_value = value
        self._ct_bound = value
        super().__init__(value, name=name)

    @classmethod
    def _kind(cls) -> str:
        return "BoundedSemaphore"

    def __repr__(self) -> str:
        cls = self.__class__
        return f"<{cls.__module__}.{cls.__qualname__} at {id(self):#x}: value={self._value}/{self._initial_value}>"


# -- Event -------------------------------------------------------------------------------


class Event(_StdEvent, _TracedAttrs):
    """A traced ``threading.Event``: its waiters are in the registry (an Event nobody sets is a hang)."""

    __slots__ = ("_cond", "_flag") if _speedups is not None else ()  # (see Semaphore's)

    def __init__(self, name: str | None = None) -> None:
        self._cond = _StdCondition(_allocate_lock())
        self._flag = False
        _init_traced(self, "Event", name, _getframe(1))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the flag is set or ``timeout`` passes, as ``threading.Event.wait``."""
        if self._flag or (timeout is not None and timeout <= 0):
            return super().wait(timeout)
        wait = _wait_begin(self, _getframe(1), timeout, None, event=False)
        signaled = False
        try:
            signaled = super().wait(timeout)
        finally:
            _wait_done(wait, signaled)
        return signaled

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        super().set()
        self._ct_progress += 1
        _progress[0] = _mono()


# -- Barrier -----------------------------------------------------------------------------


class Barrier(_StdBarrier, _TracedAttrs):
    """A traced ``threading.Barrier``: the parties waiting at it are in the registry."""

    def __init__(
        self,
        parties: int,
        action: Callable[[], object] | None = None,
        timeout: float | None = None,
        name: str | None = None,
    ) -> None:
        if sys.version_info >= (3, 13) and parties < 1:
            raise ValueError("parties must be > 0")
        # The stdlib's own __init__, with a plain condition (threading's globals may be patched).
        self._cond = _StdCondition(_allocate_lock())
        self._action = action
        self._timeout = timeout
        self._parties = parties
        self._state = 0
        self._count = 0
        _init_traced(self, "Barrier", name, _getframe(1))

    def wait(self, timeout: float | None = None) -> int:
        """Wait until every party arrived, as ``threading.Barrier.wait``."""
        if getattr(self, "_ct_stats", None) is None:
            # A subclass that did not run this __init__ (multiprocessing's Barrier, whose state lives
            # in shared memory, subclasses threading.Barrier): not traced, the stdlib's behaviour.
            return _StdBarrier.wait(self, timeout)
        wait = _wait_begin(self, _getframe(1), timeout if timeout is not None else self._timeout, None, event=False)
        ok = False
        try:
            index = super().wait(timeout)
            ok = True
        finally:
            self._ct_progress += 1
            _wait_done(wait, ok)
        return index


# -- trace_locks() -----------------------------------------------------------------------

_patch_mutex = _allocate_lock()
_patch_depth = [0]
_saved: list[tuple[Any, str, Any]] = []


def _patch_targets() -> list[tuple[Any, str, Any]]:
    targets: list[tuple[Any, str, Any]] = [
        (threading, "Lock", Lock),
        (threading, "RLock", RLock),
        (threading, "Condition", Condition),
        (threading, "Semaphore", Semaphore),
        (threading, "BoundedSemaphore", BoundedSemaphore),
        (threading, "Event", Event),
        (threading, "Barrier", Barrier),
    ]
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:  # else patched when the program imports it (_patch_asyncio)
        targets += _asyncio_targets(asyncio)
    return targets


def _asyncio_targets(asyncio: ModuleType) -> list[tuple[Any, str, Any]]:
    from conctools import aio  # late: aio imports this module (and asyncio)

    targets: list[tuple[Any, str, Any]] = []
    for module in (asyncio, asyncio.locks):
        for name in ("Lock", "Condition", "Semaphore", "BoundedSemaphore", "Event", "Barrier"):
            if hasattr(module, name) and hasattr(aio, name):
                targets.append((module, name, getattr(aio, name)))
    return targets


def _patch_asyncio(asyncio: ModuleType) -> None:
    """The program imported asyncio inside ``trace_locks()``: its primitives become the traced
    ones now, as they would have been had asyncio been imported before. The event-loop policy's
    own lock, made by that import under the patch, stays a plain one, as it was then."""
    with _patch_mutex:
        if _patch_depth[0] == 0:
            return
        policy_lock = getattr(asyncio.events, "_lock", None)
        if type(policy_lock).__module__ == "conctools":
            asyncio.events._lock = _allocate_lock()
        have = {(id(module), name) for module, name, _ in _saved}
        for module, name, replacement in _asyncio_targets(asyncio):
            if (id(module), name) not in have:
                _saved.append((module, name, getattr(module, name)))
                setattr(module, name, replacement)


@contextmanager
def trace_locks(
    *, lock_order: bool = False, recorder: Recorder | None = None, wait_threshold_s: float | None = None
) -> Iterator[None]:
    """Make every lock created inside the block a traced one; restore everything on exit.

    It replaces the factories in ``threading`` and ``asyncio`` (``Lock``, ``RLock``,
    ``Condition``, ``Semaphore``, ``BoundedSemaphore``, ``Event``, ``Barrier``), so locks that
    the stdlib (``queue.Queue``, ``concurrent.futures``, ``threading.Condition()``'s default
    RLock, ``asyncio.Queue``) and third-party code create are traced too. Code that calls
    ``_thread.allocate_lock()`` directly is untouched. Locks created inside stay traced after
    the block ends. ``lock_order=True`` also checks lock order (see :mod:`conctools.lockorder`);
    ``wait_threshold_s`` sets :func:`set_wait_threshold` inside the block.
    Nests, and is safe to enter from several threads.

    >>> import queue
    >>> with trace_locks():
    ...     q = queue.Queue()
    >>> type(q.mutex).__name__
    'Lock'
    """
    publish_lock_table(recorder)
    previous_threshold = set_wait_threshold(wait_threshold_s) if wait_threshold_s is not None else None
    with _patch_mutex:
        if _patch_depth[0] == 0:
            if lock_order:  # a new outermost session reports its own inversions
                lockorder.reset()
            targets = _patch_targets()
            _saved[:] = [(module, name, getattr(module, name)) for module, name, _ in targets]
            for module, name, replacement in targets:
                setattr(module, name, replacement)
            if "asyncio" not in sys.modules:
                when_imported("asyncio", _patch_asyncio)
        _patch_depth[0] += 1
    if lock_order:
        lockorder.enable()
    try:
        yield
    finally:
        if lock_order:
            lockorder.disable()
        with _patch_mutex:
            _patch_depth[0] -= 1
            if _patch_depth[0] == 0:
                for module, name, original in reversed(_saved):
                    setattr(module, name, original)
                _saved.clear()
        if previous_threshold is not None:
            set_wait_threshold(previous_threshold)


# Reports read the recorder: the waits that ended since the last flush are recorded first.
_before_read = getattr(recorder_module, "_before_read", None)
if isinstance(_before_read, list) and flush_waits not in _before_read:
    _before_read.append(flush_waits)


# The public home of the drop-ins is ``conctools`` (reprs read ``<conctools.Event at ...>``,
# the shape ``threading``'s own reprs have and CPython's lock tests expect).
for _cls in (Lock, RLock, Condition, Semaphore, BoundedSemaphore, Event, Barrier):
    _cls.__module__ = "conctools"
for _cls in (_TimedLock, _OrderedLock, _TimedRLock, _OrderedRLock):
    _cls.__module__ = "conctools"
del _cls
