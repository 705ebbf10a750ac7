"""``multiprocessing``'s shared locks, semaphores, events, conditions and barriers: who holds
them and who waits on them, in every process of the run.

All of them are built on ``_multiprocessing.SemLock`` (a POSIX semaphore the processes share,
by fork or by pickling its name). :func:`install` patches ``multiprocessing.synchronize.SemLock``
in this process (forked children inherit the patch; a spawned child installs it in its
bootstrap) so that each SemLock

* has an identity that is the same in every process (:func:`semlock_key`): its name when it
  has one (the ``spawn`` and ``forkserver`` contexts), else the pid of the process that made it
  and its handle (``fork``: the handle is the same address in every forked child);
* knows where the program made it (``Lock 'x.py:3'``, ``Event 'x.py:9'``);
* has an ``acquire`` that, uncontended, only notes which thread took it (the cost of one
  Python call), and on contention notes the wait (what the thread waits on, since when, with
  which timeout) for as long as it lasts.

:func:`sync_state` reads it all for the process's record: the locks this process holds now
(``_count()`` and the semaphore's value are the truth; the noted thread names the holder), the
waits in progress and the SemLocks it has (who could set an Event). Observation only: the
SemLock's own ``acquire`` does the work, with the same arguments, results and errors.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref

from conctools._typing import Any

__all__ = ["UNKNOWN_SITE", "install", "installed", "semlock_key", "sync_state", "uninstall", "wait_of"]

_STDLIB = os.path.dirname(threading.__file__) + os.sep
_SYNC_PY = _STDLIB + "multiprocessing" + os.sep + "synchronize.py"
_THREADING_PY = _STDLIB + "threading.py"
_MP_DIR = _STDLIB + "multiprocessing" + os.sep
_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_MAX_HAS = 2000  # SemLocks a record lists as this process's
#: The site of a SemLock this process did not make (its maker's record says where).
UNKNOWN_SITE = "made in another process"

# What a wait is on, by the class of the object the program called (outermost machinery frame).
_SIGNALS = frozenset({"Event", "Condition", "Barrier", "Semaphore"})

_saved: dict[str, Any] = {}
_cancel: list[Any] = []  # cancels the wait for multiprocessing.synchronize's import (install)
_fork_hook: list[bool] = []
_serials: dict[str, list[Any]] = {}  # site -> [objects made there so far, the last one (weakly)]
_live: weakref.WeakSet[Any] = weakref.WeakSet()  # every SemLock of this process (inherited ones too)
# thread id -> (semlock, what it waits on in words, kind, since (wall), timeout_s)
_waits: dict[int, tuple[Any, str, str, float, float | None]] = {}


class _Holder:
    """The thread that last took a SemLock in this process (its ``_count()`` says if it still holds it)."""

    __slots__ = ("thread_id",)

    def __init__(self) -> None:
        self.thread_id = 0


def installed() -> bool:
    """Whether this process's ``multiprocessing.synchronize.SemLock`` is patched."""
    return bool(_saved)


def install() -> None:
    """Patch ``multiprocessing.synchronize.SemLock`` when the program imports it, at once if it
    already has (idempotent; never raises): a run does not import ``multiprocessing`` for a
    program that never uses it, and no SemLock exists before that import."""
    if _saved or _cancel:
        return
    from conctools._imports import when_imported

    _cancel.append(when_imported("multiprocessing.synchronize", _patch))


def _patch(synchronize: Any) -> None:
    if _saved:
        return
    cls: Any = synchronize.SemLock
    if not _fork_hook and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_waits.clear)  # the parent's waiting threads did not come along
        _fork_hook.append(True)
    _saved.update({"__init__": cls.__init__, "__setstate__": cls.__setstate__, "_make_methods": cls._make_methods})
    _saved["__enter__"] = cls.__dict__["__enter__"]
    original_init = cls.__init__
    original_setstate = cls.__setstate__
    original_make = cls._make_methods

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        self._ct_origin = os.getpid()
        try:
            self._ct_site = _creation_site(self, sys._getframe(1))
        except Exception:
            self._ct_site = None
        original_init(self, *args, **kwargs)

    def __setstate__(self: Any, state: Any) -> None:
        self._ct_site = None  # made in another process: its record knows where
        original_setstate(self, state)

    def _make_methods(self: Any) -> None:
        original_make(self)
        try:
            _wrap(self)
        except Exception:  # observing never breaks the lock: it keeps its own acquire
            pass

    def __enter__(self: Any) -> Any:
        return self.acquire()

    patches: list[tuple[str, Any]] = [
        ("__init__", __init__),
        ("__setstate__", __setstate__),
        ("_make_methods", _make_methods),
        ("__enter__", __enter__),
    ]
    for name, value in patches:
        value.__wrapped__ = _saved[name]
        value.__conctools__ = True
        setattr(cls, name, value)


def uninstall() -> None:
    """Undo :func:`install` (SemLocks made meanwhile keep working as they are)."""
    while _cancel:
        _cancel.pop()()
    if not _saved:
        return
    from multiprocessing import synchronize

    for name, value in _saved.items():
        setattr(synchronize.SemLock, name, value)
    _saved.clear()


def _creation_site(lock: Any, frame: Any) -> str | None:
    """``file.py:LINE`` of the program line that made the SemLock (out of multiprocessing's frames);
    ``file.py:LINE #2`` for the second object made on that line (an Event's SemLocks are one object,
    the Event), as conctools names the locks of one line (:mod:`conctools._lockname`)."""
    depth = 0
    made = lock  # the object the program asked for: the Event, Condition or Barrier around this SemLock
    while frame is not None and depth < 30:
        filename = frame.f_code.co_filename
        if filename == _SYNC_PY and frame.f_code.co_name == "__init__":
            made = frame.f_locals.get("self", made)
        elif not filename.startswith((_MP_DIR, _PKG)) and filename != _THREADING_PY:
            site = f"{os.path.basename(filename)}:{frame.f_lineno}"
            serial = _serials.get(site)
            if serial is None:
                serial = _serials[site] = [0, None]
            if serial[1] is None or serial[1]() is not made:
                serial[0] += 1
                serial[1] = weakref.ref(made)
            return site if serial[0] == 1 else f"{site} #{serial[0]}"
        frame = frame.f_back
        depth += 1
    return None


def _wrap(lock: Any) -> None:
    """``lock.acquire`` that notes the holder, and the wait when it has to wait."""
    semlock = lock._semlock
    try_acquire = semlock.acquire
    holder = _Holder()
    get_ident = threading.get_ident
    ref = weakref.ref(lock)

    def acquire(block: bool = True, timeout: float | None = None) -> bool:
        if try_acquire(False):
            holder.thread_id = get_ident()
            return True
        if not block:
            return False
        got = _wait(ref, try_acquire, block, timeout)
        if got:
            holder.thread_id = get_ident()
        return got

    acquire.__doc__ = try_acquire.__doc__
    lock.acquire = acquire
    lock._ct_holder = holder
    _live.add(lock)


def _wait(ref: Any, acquire: Any, block: bool, timeout: float | None) -> bool:
    """The contended path: note the wait for as long as it lasts (only here are frames read)."""
    tid = threading.get_ident()
    noted = False
    try:
        words, kind = _what_is_waited(ref(), sys._getframe(2))
        limit = float(timeout) if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) else None
        _waits[tid] = (ref, words, kind, time.time(), limit)
        noted = True
    except Exception:
        pass
    try:
        return bool(acquire(block, timeout))
    finally:
        if noted:
            _waits.pop(tid, None)


def _what_is_waited(lock: Any, frame: Any) -> tuple[str, str]:
    """(in words, "lock" or "signal"): ``multiprocessing.Event 'x.py:9' wait()`` when the program
    called Event.wait (the outermost multiprocessing frame says so), else the SemLock itself."""
    outer: tuple[str, str, Any] | None = None
    depth = 0
    while frame is not None and depth < 12:
        filename = frame.f_code.co_filename
        if filename in (_SYNC_PY, _THREADING_PY):
            owner = frame.f_locals.get("self")
            name = type(owner).__name__
            module = type(owner).__module__
            if module == "multiprocessing.synchronize" and name in ("Event", "Condition", "Barrier"):
                outer = (name, frame.f_code.co_name, owner)
        elif not filename.startswith(_PKG):
            break
        frame = frame.f_back
        depth += 1
    kind = "lock" if _is_lock(lock) else "signal"
    if outer is not None:
        name, method, owner = outer
        return f"multiprocessing.{name} {_site_of(owner)!r} ({method}())", kind
    return f"multiprocessing.{type(lock).__name__} {_site_of(lock)!r} (acquire())", kind


def _site_of(obj: Any) -> str:
    """Where the program made ``obj`` (a SemLock, or an Event/Condition/Barrier through its SemLocks)."""
    for candidate in (obj, getattr(obj, "_lock", None), getattr(obj, "_cond", None)):
        site = getattr(candidate, "_ct_site", None)
        if site:
            return str(site)
        inner = getattr(candidate, "_lock", None)
        site = getattr(inner, "_ct_site", None)
        if site:
            return str(site)
    return UNKNOWN_SITE


def _is_lock(lock: Any) -> bool:
    """A SemLock with one holder at a time (Lock, RLock, BoundedSemaphore(1)): it is held by someone.
    A Semaphore has no owner (any process may release it): its waiters wait on whoever could."""
    try:
        return int(lock._semlock.maxvalue) == 1
    except Exception:
        return False


def semlock_key(lock: Any) -> str:
    """The SemLock's identity, the same in every process that has it."""
    semlock = lock._semlock
    name = semlock.name
    if name:
        return str(name)
    return f"{getattr(lock, '_ct_origin', '?')}:{semlock.handle:x}"


def wait_of(thread_id: int) -> dict[str, Any] | None:
    """The wait on a SemLock that ``thread_id`` is in now, as a record holds it."""
    entry = _waits.get(thread_id)
    if entry is None:
        return None
    ref, words, kind, since, timeout = entry
    lock = ref()
    if lock is None:
        return None
    return {"key": semlock_key(lock), "waits_on": words, "sync": kind, "since_wall": since, "timeout_s": timeout}


def sync_state() -> dict[str, Any] | None:
    """What this process holds, waits for and has of the shared SemLocks (``None``: it has none)."""
    if not _live and not _waits:
        return None
    names = {t.ident: t.name for t in threading.enumerate()}
    holds = []
    has: list[str] = []
    made: dict[str, str] = {}
    pid = os.getpid()
    for lock in _copy(_live):
        try:
            key = semlock_key(lock)
            if len(has) < _MAX_HAS:
                has.append(key)
                if getattr(lock, "_ct_origin", None) == pid and getattr(lock, "_ct_site", None):
                    made[key] = lock._ct_site
            if not _is_lock(lock):
                continue
            semlock = lock._semlock
            if semlock._count() <= 0:
                continue
            try:
                if semlock._get_value() >= 1:
                    continue  # released by another process: nobody holds it
            except (NotImplementedError, OSError):
                pass
            tid = getattr(getattr(lock, "_ct_holder", None), "thread_id", 0)
            holds.append(
                {
                    "key": key,
                    "lock": f"multiprocessing.{type(lock).__name__} {_site_of(lock)!r}",
                    "thread_id": tid,
                    "thread_name": names.get(tid, "a thread that has ended"),
                    "count": int(semlock._count()),
                }
            )
        except Exception:
            continue
    waits = []
    for tid in _copy(_waits):
        wait = wait_of(tid)
        if wait is not None:
            waits.append({**wait, "thread_id": tid, "thread_name": names.get(tid, f"thread-{tid}")})
    program = [t for t, n in names.items() if t is not None and not n.startswith("conctools-")]
    return {"holds": holds, "waits": waits, "has": has, "made": made, "threads": program}


def _copy(items: Any) -> list[Any]:
    """A list of a set or dict that other threads change (a change mid-copy: try again)."""
    for _ in range(5):
        try:
            return list(items)
        except RuntimeError:
            continue
    return []
