"""Traced drop-ins for ``threading``'s primitives, and :func:`trace_locks`.

``conctools.Lock``, ``RLock``, ``Condition``, ``Semaphore``, ``BoundedSemaphore``, ``Event`` and
``Barrier`` behave exactly like the ``threading`` classes (CPython's own ``lock_tests`` pass
against them) and also record, per lock *class* (its ``name=``, else its creation site in user
code): acquisitions, contended acquisitions, wait and hold time histograms and the hottest
waiting call sites. Every contended acquisition is a
:class:`~conctools.events.LockWaitEvent` naming the waiter and the holder when the wait
began (JFR's ``previousOwner``). The wait registry (:mod:`conctools.registry`) knows every
primitive's holders and waiters, for the deadlock watchdog.

Cost model (measured in ``benchmarks/bench_locks.py``): an uncontended ``with lock:`` tries a
non-blocking acquire and, when it gets the lock, stores only the owner's thread id and bumps
a counter (an RLock only counts: the C lock knows its owner); it takes no timestamp and no
stack. The first contention switches that lock to a timed variant (only contended locks have
interesting hold times): it times every contended hold and one in ``HOLD_SAMPLE`` of the
others. A waiter pays for clocks, its site and the event; its full stack is taken for the
first ``STACKS_PER_SITE`` waits at each site of each lock class. With lock-order checking on
(:mod:`conctools.lockorder`), locks also remember where they were taken (a code object and an
offset, turned into ``file:line`` only when someone reads it) and feed the order graph.

The uncontended paths of ``Lock`` and ``RLock`` (plain, timed and ordered) run in C when the
optional extension ``conctools._speedups`` is built (``pip install`` builds it where a compiler
exists), at about the cost of the stdlib lock; the Python methods below are the same paths, used
where it is not built or with ``CONCTOOLS_PURE_PYTHON=1`` (each ``with`` then pays Python frames:
about 2x). Waits, timeouts, argument checks and the lock-order graph are Python in both.

The holder's acquire site (for "where it took the lock it holds") is known for contended
acquisitions and, in lock-order mode (``conctools run``'s default), for every acquisition; a
plain drop-in outside that mode does not pay for it on the fast path.

>>> import conctools
>>> lock = conctools.Lock(name="accounts")
>>> with lock:
...     pass
"""

from __future__ import annotations

import _thread
import asyncio
import dataclasses
import itertools
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any
from weakref import ref as _weakref

from conctools import lockorder, registry
from conctools import recorder as recorder_module
from conctools._context import _SAMPLE_DIR, _SKIP_MAYBE, _SKIP_PREFIXES, _STDLIB_SKIP, capture_stack, is_conctools_frame
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
    "lock_table",
    "publish_lock_table",
    "reset_stats",
    "trace_locks",
]

_log = logging.getLogger("conctools.locks")

# Captured at import, before anyone patches anything: conctools' own internals use these.
_allocate_lock = _thread.allocate_lock
_CRLock = _thread.RLock
_get_ident = _thread.get_ident
_mono = time.monotonic_ns
_getframe = sys._getframe
_get_running_loop = asyncio._get_running_loop
_current_task = asyncio.current_task
_threads: dict[int, Any] = threading._active  # type: ignore[attr-defined] # ident -> Thread; read without its lock
_StdCondition = threading.Condition
_StdSemaphore = threading.Semaphore
_StdBoundedSemaphore = threading.BoundedSemaphore
_StdEvent = threading.Event
_StdBarrier = threading.Barrier
_PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
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
STACKS_PER_SITE = 8  # lock waits at one site (of one lock class) that record a full stack
RETIRED_BACKLOG = 1024  # dead instances' counters waiting to be folded into their class


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


def _party(ident: int, task: Any, site: str, since_ns: int, timeout_s: float | None = None) -> Party:
    task_name = None
    if task is not None:
        try:
            task_name = task.get_name()
        except Exception:
            task_name = repr(task)
    return Party(
        thread_id=ident,
        thread_name=_thread_name(ident),
        task_name=task_name,
        task_id=id(task) if task is not None else None,
        site=site,
        since_ns=since_ns,
        timeout_s=timeout_s,
    )


def _owner_exited(prim: Any) -> bool:
    """True when ``prim``'s owner is known to be a thread that has exited.

    Thread ids are reused: a lock left locked by a finished thread would otherwise look held by
    whichever live thread now has that id (a "self-deadlock" when that thread waits for it). The C
    fast path also records the owner's thread-state id, which is never reused; the pure-Python
    path cannot, and answers False.
    """
    tid = getattr(prim, "_owner_tid", 0)
    if not tid or _speedups is None:
        return False
    try:
        return bool(_speedups.thread_state_id(prim._owner) != tid)
    except Exception:
        return False


def _exited_name(ident: int) -> str:
    return f"exited thread {ident}"


def _who(ident: int, task: Any) -> str:
    if task is not None:
        try:
            return f"task {task.get_name()!r} (thread {_thread_name(ident)!r})"
        except Exception:
            pass
    return f"thread {_thread_name(ident)!r}"


# -- statistics per lock class -----------------------------------------------------------


class LockStats:
    """Aggregates of every instance of one lock class (one name or creation site).

    Counters that the fast path bumps live on the instances (exact: they are bumped while
    the lock is held); they are folded in here when an instance dies and summed with the
    live ones when the table is read.
    """

    def __init__(self, key: str, name: str, kind: str, created_at: str) -> None:
        self.key = key
        self.name = name
        self.kind = kind
        self.created_at = created_at
        self.mutex = _allocate_lock()
        self.instances = 0
        self.epoch = 0
        self.retired_acquisitions = 0
        self.contentions = 0
        self.timeouts = 0
        self.wait = Histogram()
        self.hold = Histogram()
        # site -> [waits, total wait ns, function]
        self.sites: dict[str, list[Any]] = {}
        self.retired: list[tuple[int, Histogram | None]] = []  # from dead instances, not folded yet

    def want_stack(self, site: str) -> bool:
        """Whether a wait at ``site`` should capture its stack (the first few per site do)."""
        entry = self.sites.get(site)
        return entry is None or entry[0] < STACKS_PER_SITE

    def record_wait(self, wait_ns: int, site: str, function: str, acquired: bool, timed: bool = True) -> None:
        """One blocked wait (slow path); ``timed``: it had a timeout (an untimed one that ends without
        the lock was interrupted, not timed out)."""
        with self.mutex:
            self.contentions += 1
            if not acquired and timed:
                self.timeouts += 1
            self.wait.add(wait_ns)
            entry = self.sites.get(site)
            if entry is None:
                if len(self.sites) >= MAX_SITES:
                    site, function = "(other sites)", ""
                    entry = self.sites.get(site)
                if entry is None:
                    entry = self.sites[site] = [0, 0, function]
            entry[0] += 1
            entry[1] += wait_ns

    def fold_retired(self) -> None:
        """Fold dead instances' counters into the class (the caller holds ``mutex``)."""
        while self.retired:
            n, dead_hold = self.retired.pop()
            self.retired_acquisitions += n
            if dead_hold is not None:
                self.hold.merge(dead_hold)

    def row(self, live: Iterable[Any] = ()) -> dict[str, Any]:
        """This class as one JSON-able row of the lock table (``live``: its live instances)."""
        with self.mutex:
            self.fold_retired()
            acquisitions = self.retired_acquisitions
            hold = Histogram()
            hold.merge(self.hold)
            wait = Histogram()
            wait.merge(self.wait)
            sites = sorted(self.sites.items(), key=lambda kv: (-kv[1][1], kv[0]))[:5]
            contentions, timeouts, instances = self.contentions, self.timeouts, self.instances
        for prim in live:
            acquisitions += prim._ct_n
            h = prim._ct_hold
            if h is not None:
                hold.merge(h)
        return {
            "name": self.name,
            "kind": self.kind,
            "created_at": self.created_at,
            "instances": instances,
            "acquisitions": acquisitions,
            "contentions": contentions,
            "timeouts": timeouts,
            "wait_total_s": wait.total_ns / 1e9,
            "wait_p50_s": wait.percentile_ns(0.50) / 1e9,
            "wait_p95_s": wait.percentile_ns(0.95) / 1e9,
            "wait_p99_s": wait.percentile_ns(0.99) / 1e9,
            "wait_max_s": wait.max_ns / 1e9,
            "hold_count": hold.count,
            "hold_p50_s": hold.percentile_ns(0.50) / 1e9,
            "hold_p99_s": hold.percentile_ns(0.99) / 1e9,
            "hold_max_s": hold.max_ns / 1e9,
            "hottest_sites": [
                {"site": site, "function": fn, "waits": n, "wait_total_s": total / 1e9}
                for site, (n, total, fn) in sites
            ],
        }


_stats_mutex = _allocate_lock()
_stats: dict[str, LockStats] = {}
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


def lock_table(since_epoch: int = 0) -> list[dict[str, Any]]:
    """Every lock class with instances created since ``since_epoch``, most total wait first."""
    with _stats_mutex:
        all_stats = [st for st in _stats.values() if st.epoch >= since_epoch]
    live: dict[int, list[Any]] = {}
    for prim in registry.live():
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
    with _stats_mutex:
        _stats.clear()
        _site_cache.clear()


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
# stdlib function and the user call site it serves, found by a short walk out.
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


def _register(prim: Any, kind: str, name: str | None, frame: FrameType | None) -> None:
    """Creation-time bookkeeping shared by every traced primitive (every lock the program makes
    under ``trace_locks()`` pays it). With the C module, a creation whose site is cached is done in C."""
    if _try_register is not None and _try_register(prim, kind, name, frame):
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
    prim._ct_serial = next(_serials)
    prim._ct_n = 0
    prim._ct_hold = None
    prim._ct_waiters = {}
    stats.instances += 1  # approximate under races, like any unlocked counter: it is informative only
    stats.epoch = _epoch[0]
    registry.register(prim)


def _retire(prim: Any) -> None:
    """Hand a dying instance's counters to its class (from ``__del__``).

    ``__del__`` can run inside any allocation, including one made while this very thread holds
    ``stats.mutex``: so no blocking on it here, only an atomic append that the next reader folds
    in, and a fold when the backlog grows (if the mutex is free), so that a program creating
    millions of short-lived locks keeps a bounded backlog. A lock never acquired leaves nothing.
    """
    try:
        n = prim._ct_n
        hold = prim._ct_hold
        if not n and hold is None:
            return
        stats = prim._ct_stats
        retired = stats.retired
        retired.append((n, hold))
        if len(retired) >= RETIRED_BACKLOG and stats.mutex.acquire(False):
            try:
                stats.fold_retired()
            finally:
                stats.mutex.release()
    except Exception:
        pass


# -- waits (slow path) -------------------------------------------------------------------


# (id(code), offset) of a waiting call in user code -> (site, function, code): a contended lock
# waited on from one line over and over pays for the file name and line once. The code object in
# the value keeps its id from being reused.
_wait_sites: dict[tuple[int, int], tuple[str, str, Any]] = {}


def _wait_site(frame: FrameType | None) -> tuple[str, str]:
    """:func:`_site_of`, cached for waits made directly from user code."""
    if frame is None:
        return _site_of(frame)
    code = frame.f_code
    key = (id(code), frame.f_lasti)
    cached = _wait_sites.get(key)
    if cached is not None and cached[2] is code:
        return cached[0], cached[1]
    site, function = _site_of(frame)
    if not code.co_filename.startswith(_SKIP_MAYBE) and len(_wait_sites) < MAX_CLASSES:
        _wait_sites[key] = (site, function, code)
    return site, function


class _Wait:
    """One party's blocked wait, from its start to its end."""

    __slots__ = ("frame", "function", "holder", "ident", "key", "prim", "site", "stack", "start_ns", "task")

    def __init__(
        self, prim: Any, frame: FrameType | None, timeout_s: float | None, holder: str | None, by_task: bool = False
    ) -> None:
        self.prim = prim
        self.ident = ident = _get_ident()
        self.holder = holder
        try:
            self.task = task = _task_now()
            self.site, self.function = _wait_site(frame)
            # A full stack for the first waits at each site of each lock class; later events carry
            # the site only (a hot contended lock would otherwise pay a stack walk per wait).
            self.stack = capture_stack(2, limit=32) if prim._ct_stats.want_stack(self.site) else ()
        except Exception:  # observation must never break the program: wait anyway, knowing less
            _log.debug("conctools: capturing a lock wait's site failed", exc_info=True)
            self.task = task = None
            self.site, self.function, self.stack = "?", "?", ()
        # A threading primitive blocks the whole thread (even when called from a task): the
        # registry knows it as the thread's wait. An asyncio primitive blocks one task.
        self.key = key = (ident, id(task) if by_task and task is not None else None)
        self.start_ns = start = _mono()
        prim._ct_waiters[key] = (ident, task, self.site, start, timeout_s)
        registry.note_wait_start(prim, key[0], key[1])

    def end(self, acquired: bool, event: bool = True) -> int:
        """Unregister the wait and record it; returns its end time."""
        end = _mono()
        prim = self.prim
        try:
            entry = prim._ct_waiters.pop(self.key, None)
            registry.note_wait_end(self.key[0], self.key[1])
            wait_ns = end - self.start_ns
            # An asyncio wait has no timeout of its own (wait_for cancels it): that counts as timed.
            timed = entry is None or self.key[1] is not None or (entry[4] is not None and entry[4] >= 0)
            prim._ct_stats.record_wait(wait_ns, self.site, self.function, acquired, timed)
            if event:
                task = self.task
                task_name = None
                if task is not None:
                    try:
                        task_name = task.get_name()
                    except Exception:
                        pass
                get_recorder().record(
                    LockWaitEvent(
                        ts_ns=self.start_ns,
                        thread_id=self.ident,
                        thread_name=_thread_name(self.ident),
                        task_name=task_name,
                        lock_id=id(prim),
                        lock_name=prim._ct_name,
                        lock_kind=prim._ct_stats.kind,
                        wait_s=wait_ns / 1e9,
                        acquired=acquired,
                        holder=self.holder,
                        site=self.site,
                        stack=self.stack,
                    )
                )
        except Exception:  # observation must never break the program
            _log.exception("conctools: recording a lock wait failed")
        return end


def _validate(blocking: Any, timeout: Any) -> None:
    """Raise exactly what ``_thread.lock.acquire(blocking, timeout)`` raises for bad arguments.

    A fresh private lock is unlocked, so acquiring it with the caller's arguments returns at
    once or raises the C implementation's own error.
    """
    probe = _allocate_lock()
    if probe.acquire(blocking, timeout):
        probe.release()


def _waiter_parties(prim: Any) -> tuple[Party, ...]:
    return tuple(_party(i, t, s, since, to) for (i, t, s, since, to) in list(prim._ct_waiters.values()))


# -- the fast path's fields: a C base type when conctools._speedups is built -------------

# The uncontended path of Lock and RLock is a handful of attribute writes, but as Python
# methods each ``with`` pays a Python frame (1.6x a plain lock before doing anything). The C
# module holds those fields and provides the same fast paths as C methods, installed on the
# classes below by _install_speedups(); the Python methods stay as the fallback (no compiler,
# PyPy, free-threaded builds, or CONCTOOLS_PURE_PYTHON=1) and as the slow paths both share.
_speedups: Any = None
_SPEEDUPS_API = 3  # _speedups.c's API_VERSION that this module speaks
if not os.environ.get("CONCTOOLS_PURE_PYTHON"):
    try:
        from conctools import _speedups  # type: ignore[no-redef]
    except ImportError:  # not built here: the pure-Python fast path
        _speedups = None
    if getattr(_speedups, "API_VERSION", None) != _SPEEDUPS_API:  # a stale build (source tree): ignore it
        _speedups = None
SPEEDUPS = _speedups is not None
_try_register: Callable[[Any, str, str | None, FrameType | None], bool] | None = (
    _speedups.try_register if _speedups is not None else None
)
"""True when the C fast path of ``Lock``/``RLock`` is in use (else the pure-Python one)."""

# The fields of Lock and RLock: C members of _speedups.Core, or slots of the Python classes.
_CORE_SLOTS = (
    "__weakref__",
    "_acq",
    "_ct_created",
    "_ct_held",
    "_ct_hold",
    "_ct_n",
    "_ct_name",
    "_ct_serial",
    "_ct_stats",
    "_ct_waiters",
    "_lock",
    "_osince",
    "_osite",
    "_otask",
    "_owner",
    "_rel",
    "_t0",
)
if TYPE_CHECKING:
    _CoreBase = object
else:
    _CoreBase = _speedups.Core if _speedups is not None else object


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
    _ct_waiters: dict[tuple[int, int | None], Any]
    _ct_name: str
    _ct_created: str
    _ct_serial: int
    _ct_stats: LockStats

    def __init__(self, name: str | None = None) -> None:
        lock = _allocate_lock()
        self._lock = lock
        self._acq = lock.acquire
        self._rel = lock.release
        if _speedups is None:  # the C base starts every field zeroed: None, 0 (and _osite None)
            self._owner: int | None = None
            self._otask: Any = None
            self._osite: Any = ""  # "file.py:LINE", or (code, offset) resolved when read
            self._osince = 0
            self._t0 = 0
            self._ct_held: list[lockorder.Held] | None = None
        _register(self, self._kind, name, _getframe(1))
        if _order_enabled[0]:
            self.__class__ = _OrderedLock

    # The hot path: one non-blocking try, the owner, a counter. Nothing else: ``_owner`` is not
    # even cleared on release (it only means something while the lock is locked).
    def __enter__(self) -> bool:
        if self._acq(False):
            self._owner = _get_ident()
            self._ct_n += 1
            return True
        return self._contended(-1, _getframe(1))

    def __exit__(self, t: object, v: object, tb: object) -> None:
        self._rel()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquire the lock, as ``threading.Lock.acquire``."""
        if blocking is True and timeout == -1:
            if self._acq(False):
                self._owner = _get_ident()
                self._ct_n += 1
                return True
            return self._contended(-1, _getframe(1))
        return self._acquire_args(blocking, timeout, _getframe(1))

    def release(self) -> None:
        """Release the lock (any thread may), as ``threading.Lock.release``."""
        self._rel()

    def _acquire_args(self, blocking: bool, timeout: float, frame: FrameType | None) -> bool:
        """``acquire`` with explicit arguments: validated exactly as the C lock does."""
        if blocking is not True or timeout != -1:
            if timeout != -1:  # acquire(False) (Condition's _is_owned() probe) needs no check
                _validate(blocking, timeout)
            if not blocking or timeout == 0:
                if self._acq(False):
                    self._took(frame, 0)
                    return True
                return False
        if self._acq(False):
            self._took(frame, 0)
            return True
        return self._contended(timeout, frame)

    def _took(self, frame: FrameType | None, t0: int) -> None:
        # Timed and ordered variants override this; the plain one stays cheap.
        self._owner = _get_ident()
        self._ct_n += 1

    def _released(self) -> None:
        self._owner = None

    def _contended(self, timeout: float, frame: FrameType | None) -> bool:
        """The slow path: wait, timing it, with the holder recorded (JFR's previousOwner)."""
        holder = self._owner if self._lock.locked() else None
        holder_words = _who(holder, self._otask) if holder is not None else None
        if holder is not None and _owner_exited(self):
            holder_words = f"thread {_exited_name(holder)!r}, which has finished without releasing it"
        wait = _Wait(self, frame, None if timeout == -1 else timeout, holder_words)
        acquired = False
        try:
            acquired = self._acq(True, timeout)
        finally:
            end = wait.end(acquired)
        if acquired:
            if self._ct_hold is None:  # first contention: time this lock's holds from now on
                # (A ``with`` binds ``__exit__`` before ``__enter__`` runs, so this very hold ends
                # in the plain ``__exit__`` and goes untimed; the next ones are timed.)
                self._ct_hold = Histogram()
                if type(self) is Lock:
                    self.__class__ = _TimedLock
            self._took(frame, end)
            self._otask = wait.task
            self._osite = wait.site
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
        self._ct_waiters = {}

    def __del__(self) -> None:
        _retire(self)

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
            holders = (_party(owner, self._otask, _site_text(self._osite) if self._osite else "?", self._osince),)
            if _owner_exited(self):  # its id may be another live thread's now: not that thread's lock
                holders = (dataclasses.replace(holders[0], thread_id=0, thread_name=_exited_name(owner)),)
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
        if self._acq(False):
            self._owner = _get_ident()
            n = self._ct_n = self._ct_n + 1
            self._otask = None
            self._osite = ""
            # Hold times of one uncontended acquisition in HOLD_SAMPLE (and of every contended one).
            self._osince = self._t0 = 0 if n & HOLD_SAMPLE_MASK else _mono()
            return True
        return self._contended(-1, _getframe(1))

    def __exit__(self, t: object, v: object, tb: object) -> None:
        # Still under the lock: the lock itself serialises this instance's histogram.
        t0 = self._t0
        if t0:
            self._t0 = 0
            _hold_ended(self, t0)
        self._owner = None
        self._rel()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquire the lock, as ``threading.Lock.acquire``."""
        return self._acquire_args(blocking, timeout, _getframe(1))

    def release(self) -> None:
        """Release the lock (any thread may), as ``threading.Lock.release``."""
        self._released()
        self._rel()

    acquire_lock = acquire
    release_lock = release

    def _took(self, frame: FrameType | None, t0: int) -> None:
        self._owner = _get_ident()
        n = self._ct_n = self._ct_n + 1
        self._otask = None
        self._osite = ""
        self._osince = self._t0 = t0 or (0 if n & HOLD_SAMPLE_MASK else _mono())

    def _released(self) -> None:
        t0 = self._t0
        if t0:
            self._t0 = 0
            _hold_ended(self, t0)
        self._owner = None


_TimedLock.__qualname__ = _TimedLock.__name__ = "Lock"


class _OrderedLock(_TimedLock):
    """A Lock under lock-order checking: it knows where it was taken and feeds the order graph."""

    __slots__ = ()

    # ``with`` is the common path: _took() and _released() inlined (three Python calls fewer).
    def __enter__(self) -> bool:
        if not self._acq(False):
            return self._contended(-1, _getframe(1))
        self._owner = _get_ident()
        n = self._ct_n = self._ct_n + 1
        self._otask = None
        self._osince = self._t0 = 0 if self._ct_hold is None or n & HOLD_SAMPLE_MASK else _mono()
        try:  # the lock is taken: from here on nothing may raise into the program
            frame = _getframe(1)
            if frame.f_code.co_filename.startswith(_SKIP_MAYBE):  # then _code_site() walks out exactly
                site = self._osite = _code_site(frame)
            else:
                site = self._osite = (frame.f_code, frame.f_lasti)
            try:
                held = _order_local.stack
            except AttributeError:
                held = lockorder.held_stack()
            self._ct_held = held
            entry = (_weakref(self), self._ct_stats.key, self._ct_name, self._ct_serial, site)
            if held:
                lockorder.check(held, entry)
            held.append(entry)
        except Exception:
            _log.debug("conctools: lock-order bookkeeping failed", exc_info=True)
        return True

    def __exit__(self, t: object, v: object, tb: object) -> None:
        held = self._ct_held
        if held is not None:
            self._ct_held = None
            try:
                if held and held[-1][0]() is self:
                    held.pop()
                else:
                    lockorder.note_released(held, self)
            except Exception:  # observation must never break the program
                _log.debug("conctools: lock-order bookkeeping failed", exc_info=True)
        t0 = self._t0
        if t0:
            self._t0 = 0
            _hold_ended(self, t0)
        self._owner = None
        self._rel()

    def _took(self, frame: FrameType | None, t0: int) -> None:
        self._owner = _get_ident()
        n = self._ct_n = self._ct_n + 1
        self._otask = None
        # Hold times only once the lock has been contended (sampled), as for unordered locks.
        self._osince = self._t0 = t0 or (0 if self._ct_hold is None or n & HOLD_SAMPLE_MASK else _mono())
        _push_held(self, frame)

    def _released(self) -> None:
        _drop_held(self)
        _TimedLock._released(self)

    def _contended(self, timeout: float, frame: FrameType | None) -> bool:
        _check_before_wait(self, frame)
        return _TimedLock._contended(self, timeout, frame)


_OrderedLock.__qualname__ = _OrderedLock.__name__ = "Lock"


def _drop_held(prim: Any) -> None:
    """Pop ``prim`` off the held stack it was pushed on (lock order)."""
    held = prim._ct_held
    if held is not None:
        prim._ct_held = None
        try:
            if held and held[-1][0]() is prim:
                held.pop()
            else:
                lockorder.note_released(held, prim)
        except Exception:  # observation must never break the program
            _log.debug("conctools: lock-order bookkeeping failed", exc_info=True)


def _push_held(prim: Any, frame: FrameType | None) -> None:
    """Push ``prim``, just taken at ``frame``, on the taker's held stack, checking the order."""
    try:
        site = prim._osite = _code_site(frame)
        try:
            held = _order_local.stack
        except AttributeError:
            held = lockorder.held_stack()
        prim._ct_held = held
        entry = (_weakref(prim), prim._ct_stats.key, prim._ct_name, prim._ct_serial, site)
        if held:
            lockorder.check(held, entry)
        held.append(entry)
    except Exception:  # observation must never break the program
        _log.debug("conctools: lock-order bookkeeping failed", exc_info=True)


def _hold_ended(prim: Any, t0: int) -> None:
    """Record a timed hold that began at ``t0`` (called under the lock, which serialises the histogram)."""
    try:
        hold = prim._ct_hold
        if hold is not None:
            hold.add(_mono() - t0)
    except Exception:  # observation must never break the program
        _log.debug("conctools: recording a hold time failed", exc_info=True)


def _check_before_wait(prim: Any, frame: FrameType | None) -> None:
    """Check the order before blocking: a real deadlock must be reported as an inversion too."""
    held = lockorder.held_stack()
    if held:
        lockorder.check(held, (_weakref(prim), prim._ct_stats.key, prim._ct_name, prim._ct_serial, _code_site(frame)))


# -- RLock -------------------------------------------------------------------------------


class RLock(_CoreBase):
    """A traced ``threading.RLock``: re-entrant, owned by one thread; plus statistics.

    Built on the C ``_thread.RLock``, so ``_is_owned``, ``_recursion_count``,
    ``_release_save`` and ``_acquire_restore`` keep their exact semantics. The C lock knows
    its owner and depth, so the uncontended path only counts: the registry reads the owner
    from the C lock when it asks.
    """

    __slots__ = () if _speedups is not None else _CORE_SLOTS

    _kind = "RLock"

    _lock: Any
    _ct_n: int
    _ct_hold: Histogram | None
    _ct_waiters: dict[tuple[int, int | None], Any]
    _ct_name: str
    _ct_created: str
    _ct_serial: int
    _ct_stats: LockStats

    def __init__(self, name: str | None = None) -> None:
        lock = _CRLock()
        self._lock = lock
        self._acq = lock.acquire
        self._rel = lock.release
        if _speedups is None:  # the C base starts every field zeroed
            self._otask: Any = None
            self._osite: Any = ""
            self._osince = 0
            self._t0 = 0
            self._ct_held: list[lockorder.Held] | None = None
        _register(self, self._kind, name, _getframe(1))
        if _order_enabled[0]:
            self.__class__ = _OrderedRLock

    def __enter__(self) -> bool:
        if self._acq(False):
            self._ct_n += 1
            return True
        return self._contended(-1, _getframe(1))

    def __exit__(self, t: object, v: object, tb: object) -> None:
        self._rel()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Acquire (re-entrantly), as ``threading.RLock.acquire``."""
        if blocking is not True or timeout != -1:
            if timeout != -1:  # acquire(False) (Condition's _is_owned() probe) needs no check
                _validate(blocking, timeout)
            if not blocking or timeout == 0:
                if self._acq(False):
                    self._took(_getframe(1), 0)
                    return True
                return False
        if self._acq(False):
            self._took(_getframe(1), 0)
            return True
        return self._contended(timeout, _getframe(1))

    def release(self) -> None:
        """Release one level, as ``threading.RLock.release``."""
        self._rel()

    def _took(self, frame: FrameType | None, t0: int) -> None:
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

    def _contended(self, timeout: float, frame: FrameType | None) -> bool:
        holder, _ = self._owner_and_count()
        holder_words = _who(holder, self._otask) if holder is not None else None
        wait = _Wait(self, frame, None if timeout == -1 else timeout, holder_words)
        acquired = False
        try:
            acquired = self._acq(True, timeout)
        finally:
            end = wait.end(acquired)
        if acquired:
            if self._ct_hold is None:
                self._ct_hold = Histogram()
                if type(self) is RLock:
                    self.__class__ = _TimedRLock
            self._took(frame, end)
            self._otask = wait.task
            self._osite = wait.site
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
        if self._acq(False):
            self._took(_getframe(1), 0)
        else:
            holder, _ = self._owner_and_count()
            holder_words = _who(holder, self._otask) if holder is not None else None
            wait = _Wait(self, _getframe(1), None, holder_words)
            try:
                self._acq()
            finally:
                end = wait.end(True)
            if self._ct_hold is None:
                self._ct_hold = Histogram()
                if type(self) is RLock:
                    self.__class__ = _TimedRLock
            self._took(_getframe(1), end)
            self._otask = wait.task
            self._osite = wait.site
        for _ in range(count - 1):  # re-entries: immediate, and not acquisitions of their own
            self._acq()

    def _at_fork_reinit(self) -> None:
        self._lock._at_fork_reinit()
        self._ct_waiters = {}

    def __del__(self) -> None:
        _retire(self)

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
            holders = (_party(owner, self._otask, site, self._osince),)
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

    def __enter__(self) -> bool:
        if self._acq(False):
            self._took(_getframe(1), 0)
            return True
        return self._contended(-1, _getframe(1))

    def __exit__(self, t: object, v: object, tb: object) -> None:
        if self._lock._recursion_count() == 1:
            self._released()
        self._rel()

    def release(self) -> None:
        """Release one level, as ``threading.RLock.release``."""
        if self._lock._recursion_count() == 1:
            self._released()
        self._rel()

    def _took(self, frame: FrameType | None, t0: int) -> None:
        n = self._ct_n = self._ct_n + 1
        if self._lock._recursion_count() == 1:
            self._otask = None
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

    def _took(self, frame: FrameType | None, t0: int) -> None:
        n = self._ct_n = self._ct_n + 1
        if self._lock._recursion_count() == 1:
            self._otask = None
            self._osince = self._t0 = t0 or (0 if self._ct_hold is None or n & HOLD_SAMPLE_MASK else _mono())
            _push_held(self, frame)

    def _released(self) -> None:
        _drop_held(self)
        _TimedRLock._released(self)

    def _contended(self, timeout: float, frame: FrameType | None) -> bool:
        _check_before_wait(self, frame)
        return _TimedRLock._contended(self, timeout, frame)


_OrderedRLock.__qualname__ = _OrderedRLock.__name__ = "RLock"


_speedups_setup: dict[str, Any] = {}  # what _speedups.setup() was given (tests swap one part)


def _install_speedups() -> None:
    """Put the C fast paths in place of the Python ones (which remain the fallback).

    ``acquire()`` without arguments is the C fast path; with arguments it calls the Python
    ``acquire`` (kept as ``_acquire_py``), which validates them exactly as the C lock does. The
    timed and ordered RLock keep the Python ``acquire``, whose ``_took`` dispatches by class.
    """
    core = _speedups.Core
    _speedups_setup.update(
        mask=HOLD_SAMPLE_MASK,
        mono=_mono,
        skip_prefixes=(_PKG_DIR, *_STDLIB_SKIP),  # what _SKIP_PREFIXES matches, in 8 prefixes, not 38
        code_site=_code_site,
        local=_order_local,
        held_stack=lockorder.held_stack,
        check=lockorder.check,
        note_released=lockorder.note_released,
        edges=lockorder._edges,
        histogram=Histogram,
        sub_bits=recorder_module._SUB_BITS,
    )
    _speedups.setup(**_speedups_setup)
    table: list[tuple[type, str, Any]] = [
        (Lock, "_acquire_py", Lock.__dict__["acquire"]),
        (RLock, "_acquire_py", RLock.__dict__["acquire"]),
        (_TimedRLock, "acquire", RLock.__dict__["acquire"]),
    ]
    variants: tuple[tuple[type, str, str | None], ...] = (
        (Lock, "_c_lock", "_c_release"),
        (_TimedLock, "_c_lock_timed", None),
        (_OrderedLock, "_c_lock_ordered", None),
        (RLock, "_c_rlock", "_c_release"),
        (_TimedRLock, "_c_rlock_timed", None),
        (_OrderedRLock, "_c_rlock_ordered", None),
    )
    for cls, prefix, release in variants:
        table.append((cls, "__enter__", getattr(core, prefix + "_enter")))
        table.append((cls, "__exit__", getattr(core, "_c_exit" if release else prefix + "_exit")))
        if release:
            table.append((cls, "acquire", getattr(core, prefix + "_acquire")))
            table.append((cls, "release", getattr(core, release)))
    # Creation: the C __init__ registers the lock itself when its creation site is cached (else it
    # calls _register); __del__ hands counters to the class only for a lock that was acquired.
    _speedups.setup_creation(
        allocate_lock=_allocate_lock,
        rlock_type=_CRLock,
        ordered_lock=_OrderedLock,
        ordered_rlock=_OrderedRLock,
        order_enabled=_order_enabled,
        site_cache=_site_cache,
        internal_prefixes=(_PKG_DIR, *_STDLIB_SKIP, "<frozen"),
        current=recorder_module._current,
        published=_published,
        register=_register,
        retire=_retire,
        serials=_serials,
        refs=registry._refs,  # what registry.register() adds to, done in C
        discard=registry._refs.discard,
        epoch=_epoch,
        keep_prefix=_SAMPLE_DIR,
        pkg_dir=_PKG_DIR,
    )
    table += [
        (Lock, "__init__", core._c_lock_init),
        (RLock, "__init__", core._c_rlock_init),
        (Lock, "__del__", core._c_del),
        (RLock, "__del__", core._c_del),
    ]
    for cls, attr, value in table:
        setattr(cls, attr, value)
    Lock.acquire_lock = Lock.acquire  # type: ignore[method-assign] # the _thread.lock aliases follow
    Lock.release_lock = Lock.release  # type: ignore[method-assign]


if _speedups is not None:
    _install_speedups()


# -- Condition ---------------------------------------------------------------------------


class _TracedAttrs:
    """What :func:`_register` puts on a traced primitive, and the registry hooks of the
    primitives that have waiters but no holders (events, conditions, barriers); those with
    holders override ``_conctools_state`` and ``_conctools_progress``."""

    _ct_n: int
    _ct_hold: Histogram | None
    _ct_waiters: dict[tuple[int, int | None], Any]
    _ct_name: str
    _ct_created: str
    _ct_serial: int
    _ct_stats: LockStats
    _ct_held: Any
    _ct_progress: int

    def __del__(self) -> None:
        _retire(self)

    def _conctools_state(self) -> PrimitiveState:
        return _base_state(self, ())

    def _conctools_progress(self) -> int:
        return int(self._ct_progress)


def _init_traced(prim: Any, kind: str, name: str | None, frame: FrameType | None) -> None:
    prim._ct_held = None
    prim._ct_progress = 0  # notify/set/pass count: progress for the watchdog, not acquisitions
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


class Condition(_StdCondition, _TracedAttrs):
    """A traced ``threading.Condition``; its default lock is a traced :class:`RLock`.

    Waiters are visible in the registry (a lost wake-up shows up as a waiter nobody
    notifies), and the time spent waiting is in the lock table.
    """

    _is_owned: Callable[[], bool]  # the stdlib's, not in typeshed
    _waiters: Any

    def __init__(self, lock: Any = None, name: str | None = None) -> None:
        frame = _getframe(1)
        if lock is None:
            lock = RLock(name=f"{name}.lock" if name else None)
        super().__init__(lock)
        _init_traced(self, "Condition", name, frame)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until notified or until ``timeout``, as ``threading.Condition.wait``."""
        if not self._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        if timeout is not None and timeout <= 0:  # a poll, not a wait
            return super().wait(timeout)
        wait = _Wait(self, _getframe(1), timeout, None)
        notified = False
        try:
            notified = super().wait(timeout)
        finally:
            wait.end(notified, event=False)
        return notified

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiters, as ``threading.Condition.notify``."""
        super().notify(n)
        self._ct_progress += 1
        registry.note_progress()

    def notify_all(self) -> None:
        """Wake up every waiter."""
        self.notify(len(self._waiters))

    notifyAll = notify_all


# -- Semaphore / BoundedSemaphore --------------------------------------------------------


class Semaphore(_StdSemaphore, _TracedAttrs):
    """A traced ``threading.Semaphore``: every current holder and waiter is known."""

    def __init__(self, value: int = 1, name: str | None = None) -> None:
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        # Its internal condition is plain: the semaphore itself is what we trace.
        self._cond = _StdCondition(_allocate_lock())
        self._value = value
        self._holders: list[tuple[int, Any, Any, int]] = []  # (ident, task, site, since); site: see _site_text
        _init_traced(self, self._kind(), name, _getframe(1))

    @classmethod
    def _kind(cls) -> str:
        return "Semaphore"

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Decrement the counter, waiting while it is zero, as ``threading.Semaphore.acquire``."""
        if not blocking and timeout is not None:
            raise ValueError("can't specify timeout for non-blocking acquire")
        rc = False
        endtime = None
        wait: _Wait | None = None
        with self._cond:
            if self._value:  # the fast path: no wait, no clock, no stack
                self._value -= 1
                self._ct_n += 1
                holders = self._holders
                if len(holders) < MAX_HOLDERS:  # past that, not every holder is named
                    # No acquire site here: even the caller's (code, offset) cost the semaphore ~20%.
                    holders.append((_get_ident(), None, "", 0))
                return True
            while self._value == 0:
                if not blocking:
                    break
                if wait is None and (timeout is None or timeout > 0):  # timeout=0 is a poll
                    wait = _Wait(self, _getframe(1), timeout, self._holder_words())
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
                    holders.append((_get_ident(), wait.task if wait else None, wait.site if wait else "", 0))
        if wait is not None:
            wait.end(rc)
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
                if n == 1 and holders[-1][0] == _get_ident():
                    holders.pop()
                else:
                    self._forget_holders(n)
            self._cond.notify(n)
        if self._ct_waiters:
            registry.note_progress()

    _ct_bound: int | None = None  # a BoundedSemaphore's initial value

    def __exit__(self, t: object, v: object, tb: object) -> None:
        self.release()

    def _forget_holders(self, n: int) -> None:
        me = _get_ident()
        holders = self._holders
        for _ in range(n):
            if not holders:
                return
            for i in range(len(holders) - 1, -1, -1):
                if holders[i][0] == me:
                    del holders[i]
                    break
            else:
                del holders[0]

    def _holder_words(self) -> str | None:
        holders = list(self._holders)
        if not holders:
            return None
        return ", ".join(_who(ident, task) for ident, task, _, _ in holders[:4]) + (
            f" and {len(holders) - 4} more" if len(holders) > 4 else ""
        )

    def _conctools_state(self) -> PrimitiveState:
        holders = tuple(_party(i, t, _site_text(s) if s else "?", since) for (i, t, s, since) in list(self._holders))
        return PrimitiveState(
            prim_id=id(self),
            name=self._ct_name,
            kind=self._ct_stats.kind,
            created_at=self._ct_created,
            holders=holders,
            waiters=_waiter_parties(self),
        )

    def _conctools_progress(self) -> int:
        return int(self._ct_n)


class BoundedSemaphore(Semaphore):
    """A traced ``threading.BoundedSemaphore``: releasing more than acquired raises ``ValueError``."""

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

    def __init__(self, name: str | None = None) -> None:
        self._cond = _StdCondition(_allocate_lock())
        self._flag = False
        _init_traced(self, "Event", name, _getframe(1))

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the flag is set or ``timeout`` passes, as ``threading.Event.wait``."""
        if self._flag or (timeout is not None and timeout <= 0):
            return super().wait(timeout)
        wait = _Wait(self, _getframe(1), timeout, None)
        signaled = False
        try:
            signaled = super().wait(timeout)
        finally:
            wait.end(signaled, event=False)
        return signaled

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        super().set()
        self._ct_progress += 1
        registry.note_progress()


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
        wait = _Wait(self, _getframe(1), timeout if timeout is not None else self._timeout, None)
        ok = False
        try:
            index = super().wait(timeout)
            ok = True
        finally:
            wait.end(ok, event=False)
            self._ct_progress += 1
            registry.note_progress()
        return index


# -- trace_locks() -----------------------------------------------------------------------

_patch_mutex = _allocate_lock()
_patch_depth = [0]
_saved: list[tuple[Any, str, Any]] = []


def _patch_targets() -> list[tuple[Any, str, Any]]:
    from conctools import aio  # late: aio imports this module

    targets: list[tuple[Any, str, Any]] = [
        (threading, "Lock", Lock),
        (threading, "RLock", RLock),
        (threading, "Condition", Condition),
        (threading, "Semaphore", Semaphore),
        (threading, "BoundedSemaphore", BoundedSemaphore),
        (threading, "Event", Event),
        (threading, "Barrier", Barrier),
    ]
    for module in (asyncio, asyncio.locks):
        for name in ("Lock", "Condition", "Semaphore", "BoundedSemaphore", "Event", "Barrier"):
            if hasattr(module, name) and hasattr(aio, name):
                targets.append((module, name, getattr(aio, name)))
    return targets


@contextmanager
def trace_locks(*, lock_order: bool = False, recorder: Recorder | None = None) -> Iterator[None]:
    """Make every lock created inside the block a traced one; restore everything on exit.

    It replaces the factories in ``threading`` and ``asyncio`` (``Lock``, ``RLock``,
    ``Condition``, ``Semaphore``, ``BoundedSemaphore``, ``Event``, ``Barrier``), so locks that
    the stdlib (``queue.Queue``, ``concurrent.futures``, ``threading.Condition()``'s default
    RLock, ``asyncio.Queue``) and third-party code create are traced too. Code that calls
    ``_thread.allocate_lock()`` directly is untouched. Locks created inside stay traced after
    the block ends. ``lock_order=True`` also checks lock order (see :mod:`conctools.lockorder`).
    Nests, and is safe to enter from several threads.

    >>> import queue
    >>> with trace_locks():
    ...     q = queue.Queue()
    >>> type(q.mutex).__name__
    'Lock'
    """
    publish_lock_table(recorder)
    with _patch_mutex:
        if _patch_depth[0] == 0:
            if lock_order:  # a new outermost session reports its own inversions
                lockorder.reset()
            targets = _patch_targets()
            _saved[:] = [(module, name, getattr(module, name)) for module, name, _ in targets]
            for module, name, replacement in targets:
                setattr(module, name, replacement)
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


# The public home of the drop-ins is ``conctools`` (reprs read ``<conctools.Event at ...>``,
# the shape ``threading``'s own reprs have and CPython's lock tests expect).
for _cls in (Lock, RLock, Condition, Semaphore, BoundedSemaphore, Event, Barrier):
    _cls.__module__ = "conctools"
for _cls in (_TimedLock, _OrderedLock, _TimedRLock, _OrderedRLock):
    _cls.__module__ = "conctools"
del _cls
