"""Traced drop-ins for ``asyncio``'s primitives: ``Lock``, ``Condition``, ``Semaphore``,
``BoundedSemaphore``, ``Event`` and ``Barrier``.

Each subclasses the asyncio class it replaces (so ``isinstance`` checks, reprs, ``_waiters``,
fairness and cancellation behave exactly as asyncio's; CPython's ``test_asyncio.test_locks``
passes against them) and records what the threading drop-ins record: acquisitions,
contended acquisitions with the holding task (:class:`~conctools.events.LockWaitEvent`),
wait and hold times, and, in the wait registry, the task holding a lock and the tasks
waiting on it.

The uncontended ``async with lock:`` is inlined into ``__aenter__``/``__aexit__`` (asyncio's
own goes through one more coroutine), so tracing costs about nothing there.

>>> import asyncio, conctools
>>> async def main():
...     lock = conctools.aio.Lock(name="db")
...     async with lock:
...         return lock.locked()
>>> asyncio.run(main())
True
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal
from weakref import ref as _weakref

from conctools import lockorder, registry
from conctools._context import _SKIP_MAYBE
from conctools.locks import (
    HOLD_SAMPLE_MASK,
    MAX_HOLDERS,
    SPEEDUPS,
    _base_state,
    _getframe,
    _make_party,
    _mono,
    _progress,
    _register,
    _threads,
    _TracedAttrs,
    _wait_begin,
    _wait_done_now,
    _who_words,
)
from conctools.locks import _speedups as _speedups_module
from conctools.recorder import Histogram
from conctools.registry import Party, PrimitiveState

__all__ = ["Barrier", "BoundedSemaphore", "Condition", "Event", "Lock", "Semaphore"]

_current_task = asyncio.current_task
_get_running_loop = asyncio._get_running_loop
# On 3.11, asyncio.current_task() and _get_running_loop() call getpid() (a syscall, ~2 us on
# a VM) on every call when a loop runs. The fast path there reads the current task from
# asyncio's own loop -> task dict, keyed by the loop this primitive last ran on (a cache,
# not a binding: asyncio's loop binding rules stay untouched). 3.12+ is fast natively.
_tasks_get: Any = None
if sys.version_info < (3, 12):
    try:
        from asyncio.tasks import _current_tasks  # type: ignore[attr-defined]

        _tasks_get = _current_tasks.get
    except ImportError:  # pragma: no cover - other implementations
        _tasks_get = None
_DICT = _tasks_get is not None
_sem_hooks = registry.semaphore_hooks
_task_stacks = lockorder._task_stacks
_spare_stacks = lockorder._spare_stacks
_sem_started = registry.run_semaphore_started
_sem_ended = registry.run_semaphore_ended
_sem_hooks_failed = registry.semaphore_hooks_failed
# conctools.pools' C hook for the end of a semaphore wait (see _sem_wait_over): called without a frame of ours.
_C_SEM_ENDED: Any = getattr(_speedups_module, "pool_sem_ended", None) if SPEEDUPS else None
# An uncontended aio.Lock's hold sample and lock-order push and pop, in C when they need no Python (the
# lock's held-stack entry cached for the site, its task holding no other lock; see _took_timed): False
# when the Python method must run.
_C_TOOK: Any = getattr(_speedups_module, "aio_took", None) if SPEEDUPS else None
_C_RELEASED: Any = getattr(_speedups_module, "aio_released", None) if SPEEDUPS else None
# A traced semaphore's `async with`, in C: asyncio's own acquire() coroutine, watched by an awaitable
# that begins the wait record and pool blame's hooks when it waits, and counts the acquisition and its
# holder (see _speedups.c: SemEnter). None: the Python __aenter__ below.
_C_SEM_ENTER: Any = getattr(_speedups_module, "sem_enter", None) if SPEEDUPS else None
_BASE_SEMAPHORE = asyncio.Semaphore
# The C extension finds a wait's site from the thread's frames itself; the pure path needs the
# caller's frame object (made on demand for a coroutine's frame: memory per waiting task).
_WAIT_FRAMES = not SPEEDUPS


def _sem_wait_over(prim: Any, pair: Any, hooked: int) -> None:
    """The semaphore wait that ``pair`` (``None``: every pair) was told of is over. Never raises."""
    if pair is None:
        _sem_ended(prim, hooked)
        return
    try:
        pair[1](prim, hooked)
    except Exception:
        _sem_hooks_failed(pair)


def _task_slowly(prim: Any) -> Any:
    """The current task, the slow way; remembers the loop so that the fast way works next time."""
    loop = prim._ct_loop = _get_running_loop()
    return _current_task(loop) if loop is not None else None


def _task_words(task: Any) -> str | None:
    """``task 'Y' (thread 'X')``: the task and the thread its loop runs in."""
    return _who_words(task) if task is not None else None


def _task_party(task: Any, site: str, since_ns: int) -> Party:
    try:
        thread_id = int(getattr(task.get_loop(), "_thread_id", None) or 0)
    except Exception:
        thread_id = 0
    return _make_party(thread_id, 0, _threads.get(thread_id), task, site, since_ns)


async def _aenter_via_acquire(self: Any) -> None:
    await self.acquire()


async def _aexit_via_release(self: Any, exc_type: object, exc: object, tb: object) -> None:
    self.release()


def _keep_overrides(cls: Any, base: Any) -> None:
    """A program's subclass of a traced primitive (made after trace_locks() replaced asyncio's) that overrides
    ``acquire()`` or ``release()`` gets asyncio's ``__aenter__``/``__aexit__``, which call them: the traced
    ones run the acquisition and release inline, and would skip the override."""
    if cls.acquire is not base.acquire and cls.__aenter__ is base.__aenter__:
        cls.__aenter__ = _aenter_via_acquire
    if cls.release is not base.release and cls.__aexit__ is base.__aexit__:
        cls.__aexit__ = _aexit_via_release


def _init(prim: Any, kind: str, name: str | None) -> None:
    _register(prim, kind, name, _getframe(2))


# -- Lock --------------------------------------------------------------------------------

# The fields that aio_took() and aio_released() read and store, as C slots with the C extension (see
# _speedups.c: AioLockFields), which the Python methods below read as fast as instance attributes.
if TYPE_CHECKING:
    _LockFields = _TracedAttrs
elif SPEEDUPS and hasattr(_speedups_module, "AioLockFields"):

    class _LockFields(_speedups_module.AioLockFields, _TracedAttrs):
        __slots__ = ()

else:
    _LockFields = _TracedAttrs


class Lock(asyncio.Lock, _LockFields):
    """A traced ``asyncio.Lock``: knows the task holding it and the tasks waiting for it."""

    # With the C extension, asyncio's own attributes and ours live in slots, so that an instance has no
    # attribute dict at all: its C base rules out 3.13's inline values, and there the interpreter specializes
    # neither attribute nor method access to a dict-ful instance of such a class (see conctools._layout).
    __slots__ = ("_waiters", "_locked", "_loop", "_ct_loop") if SPEEDUPS else ()

    _locked: bool  # asyncio's own state, not in typeshed
    _waiters: Any
    _wake_up_first: Callable[[], None]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _keep_overrides(cls, Lock)

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__()
        self._loop = None  # (asyncio's _LoopBoundMixin has it as a class attribute, which the slot hides)
        self._ct_owner: Any = None
        self._ct_loop: Any = None
        self._ct_site = ""
        self._ct_since = 0
        self._ct_ordered = lockorder._enabled[0] > 0
        self._ct_holdstack: list[lockorder.Held] | None = None
        self._ct_entry: Any = None
        _init(self, "aio.Lock", name)
        if self._ct_ordered:
            self._ct_hold = Histogram()

    async def acquire(self) -> Literal[True]:
        """Acquire the lock, as ``asyncio.Lock.acquire``."""
        if not self._locked and (self._waiters is None or all(w.cancelled() for w in self._waiters)):
            self._locked = True
            self._ct_n += 1
            self._ct_owner = (_tasks_get(self._ct_loop) or self._ct_task()) if _DICT else _current_task()
            if self._ct_hold is not None and (_C_TOOK is None or not _C_TOOK(self, _task_stacks, _spare_stacks)):
                self._took_timed(_getframe(1), 0)
            return True
        # The slow path, in this coroutine (a coroutine of its own would cost each waiting task one more).
        frame = _getframe(1) if _WAIT_FRAMES or self._ct_ordered else None
        wait = self._wait_begins(frame)
        acquired = False
        try:
            acquired = await super().acquire()
        finally:
            _wait_done_now(wait, acquired)
        self._wait_ended(wait, frame)
        return True

    async def __aenter__(self) -> None:
        # acquire() inlined: one coroutine less than asyncio's own __aenter__.
        if not self._locked and (self._waiters is None or all(w.cancelled() for w in self._waiters)):
            self._locked = True
            self._ct_n += 1
            self._ct_owner = (_tasks_get(self._ct_loop) or self._ct_task()) if _DICT else _current_task()
            if self._ct_hold is not None and (_C_TOOK is None or not _C_TOOK(self, _task_stacks, _spare_stacks)):
                self._took_timed(_getframe(1), 0)
            return None
        frame = _getframe(1) if _WAIT_FRAMES or self._ct_ordered else None
        wait = self._wait_begins(frame)
        acquired = False
        try:
            acquired = await super().acquire()
        finally:
            _wait_done_now(wait, acquired)
        self._wait_ended(wait, frame)
        return None

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._locked:
            if self._ct_hold is not None and (
                _C_RELEASED is None or not _C_RELEASED(self, _task_stacks, _spare_stacks)
            ):
                self._released_timed()
            self._ct_owner = None
            self._locked = False
            self._wake_up_first()
        else:
            raise RuntimeError("Lock is not acquired.")

    def release(self) -> None:
        """Release the lock, as ``asyncio.Lock.release``."""
        if self._locked:
            if self._ct_hold is not None and (
                _C_RELEASED is None or not _C_RELEASED(self, _task_stacks, _spare_stacks)
            ):
                self._released_timed()
            self._ct_owner = None
            self._locked = False
            self._wake_up_first()
        else:
            raise RuntimeError("Lock is not acquired.")

    _ct_task = _task_slowly

    def _took_timed(self, frame: Any, t0: int) -> None:
        # Hold times: every contended hold (t0), one in HOLD_SAMPLE of the others.
        self._ct_since = t0 or (0 if self._ct_n & HOLD_SAMPLE_MASK else _mono())
        if self._ct_ordered:
            # _held_entry()'s cache check first, inlined: a site (code, offset) of this very frame is right
            # whichever way it was found (a frame that code_site() skips is never its own site).
            entry = self._ct_entry
            if (
                entry is None
                or frame is None
                or type(entry[4]) is not tuple
                or entry[4][0] is not frame.f_code
                or entry[4][1] != frame.f_lasti
            ):
                entry = self._held_entry(frame)
            self._ct_site = entry[4]
            task = self._ct_owner
            # lockorder.task_held_stack() and note_acquired(), inlined: this runs at every acquisition.
            if task is not None:
                held = _task_stacks.get(id(task))
                if held is None:
                    held = _task_stacks[id(task)] = _spare_stacks.pop() if _spare_stacks else []
            else:
                held = lockorder.held_stack()
            self._ct_holdstack = held
            if held:
                lockorder.check(held, entry)
            held.append(entry)

    def _held_entry(self, frame: Any) -> lockorder.Held:
        """This lock's held-stack entry when taken at ``frame``, cached while the site is the same
        (the site is walked out of asyncio and conctools only when the caller is one of them)."""
        code = frame.f_code if frame is not None else None
        entry: lockorder.Held | None = self._ct_entry
        if code is not None and not code.co_filename.startswith(_SKIP_MAYBE):
            if entry is not None and type(entry[4]) is tuple and entry[4][0] is code and entry[4][1] == frame.f_lasti:
                return entry
            site: Any = (code, frame.f_lasti)
        else:
            site = lockorder.code_site(frame)
            if entry is not None and entry[4] == site:
                return entry
        wref = entry[0] if entry is not None else _weakref(self)
        entry = self._ct_entry = (wref, self._ct_stats.key, self._ct_name, self._ct_serial, site)
        return entry

    def _released_timed(self) -> None:
        since = self._ct_since
        if since:
            self._ct_since = 0
            hold = self._ct_hold
            if hold is not None:
                hold.add(_mono() - since)
        held = self._ct_holdstack
        if held is not None:
            self._ct_holdstack = None
            if held and held[-1][0]() is self:  # the innermost: lockorder.note_released() inlined
                del held[-1]
            else:
                lockorder.note_released(held, self)
            owner = self._ct_owner
            if not held and owner is not None and _task_stacks.get(id(owner)) is held:
                del _task_stacks[id(owner)]  # lockorder.forget_task() inlined
                if len(_spare_stacks) < 64:
                    _spare_stacks.append(held)

    def _wait_begins(self, frame: Any) -> Any:
        """The slow path, before waiting: the order check, the wait record with the holding task."""
        me = (_tasks_get(self._ct_loop) or self._ct_task()) if _DICT else _current_task()
        if self._ct_ordered:
            held = lockorder.task_held_stack(me) if me is not None else lockorder.held_stack()
            if held:
                lockorder.check(held, self._held_entry(frame))
        if self._ct_hold is None:
            self._ct_hold = Histogram()
        return _wait_begin(self, frame, None, self._ct_owner, by_task=True, task=me)

    def _wait_ended(self, wait: Any, frame: Any) -> None:
        """The slow path, once the lock is taken: the new holder, its hold timed from now."""
        self._ct_n += 1
        self._ct_owner = (_tasks_get(self._ct_loop) or self._ct_task()) if _DICT else _current_task()
        self._took_timed(frame, wait.end_ns if wait is not None else 0)
        if wait is not None:
            self._ct_site = wait.site

    def _conctools_state(self) -> PrimitiveState:
        owner = self._ct_owner
        site = lockorder.site_text(self._ct_site) if self._ct_site else "?"
        holders = (_task_party(owner, site, self._ct_since),) if owner is not None else ()
        return _base_state(self, holders)

    def _conctools_progress(self) -> int:
        return int(self._ct_n)


# -- Event -------------------------------------------------------------------------------


class Event(asyncio.Event, _TracedAttrs):
    """A traced ``asyncio.Event``: the tasks waiting on it are in the registry."""

    _value: bool

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__()
        _init(self, "aio.Event", name)

    async def wait(self) -> Literal[True]:
        """Wait until the event is set, as ``asyncio.Event.wait``."""
        if self._value:
            return True
        wait = _wait_begin(self, _getframe(1), None, None, by_task=True, event=False)
        ok = False
        try:
            ok = await super().wait()
        finally:
            _wait_done_now(wait, ok)
        return ok

    def set(self) -> None:
        """Set the event and wake every waiter."""
        super().set()
        self._ct_progress += 1
        _progress[0] = _mono()


# -- Condition ---------------------------------------------------------------------------


class Condition(asyncio.Condition, _TracedAttrs):
    """A traced ``asyncio.Condition``; its default lock is a traced :class:`Lock`."""

    def __init__(self, lock: asyncio.Lock | None = None, *, name: str | None = None) -> None:
        if lock is None:
            lock = Lock(name=f"{name}.lock" if name else None)
        super().__init__(lock)
        _init(self, "aio.Condition", name)

    async def wait(self) -> Literal[True]:
        """Wait until notified, as ``asyncio.Condition.wait``."""
        wait = _wait_begin(self, _getframe(1), None, None, by_task=True, event=False) if self.locked() else None
        ok = False
        try:
            ok = await super().wait()
        finally:
            _wait_done_now(wait, ok)
        return ok

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiters, as ``asyncio.Condition.notify``."""
        super().notify(n)
        self._ct_progress += 1
        _progress[0] = _mono()


# -- Semaphore / BoundedSemaphore --------------------------------------------------------


class Semaphore(asyncio.Semaphore, _TracedAttrs):
    """A traced ``asyncio.Semaphore``: every holding and waiting task is known."""

    # asyncio's attributes and ours in slots, with the C extension: no attribute dict (see Lock's)
    __slots__ = ("_waiters", "_value", "_loop", "_ct_holders", "_ct_loop") if SPEEDUPS else ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _keep_overrides(cls, Semaphore)

    def __init__(self, value: int = 1, *, name: str | None = None) -> None:
        super().__init__(value)
        self._loop = None  # (a class attribute of asyncio's _LoopBoundMixin, which the slot hides)
        self._ct_holders: list[Any] = []
        self._ct_loop: Any = None
        _init(self, self._ct_kind, name)

    _ct_kind = "aio.Semaphore"

    async def acquire(self) -> Literal[True]:
        """Acquire, as ``asyncio.Semaphore.acquire``."""
        if not self.locked():
            self._value -= 1
            self._ct_n += 1
            holders = self._ct_holders
            if len(holders) < MAX_HOLDERS:  # past that, not every holder is named
                holders.append((_tasks_get(self._ct_loop) or self._ct_task()) if _DICT else _current_task())
            return True
        # _wait_begins() inlined: the wait record with the first holding task (JFR's previousOwner; the
        # registry lists them all). The waiting task is the one that takes the slot afterwards.
        holders = self._ct_holders
        me = (_tasks_get(self._ct_loop) or self._ct_task()) if _DICT else _current_task()
        wait = _wait_begin(
            self, _getframe(1) if _WAIT_FRAMES else None, None, holders[0] if holders else None, True, True, me
        )
        # Pool blame (conctools.pools), before waiting: an int to hand back, nothing allocated. Its one pair
        # of hooks (the usual case) is called directly, without registry.run_semaphore_started's loop.
        pair = _sem_hooks[0] if len(_sem_hooks) == 1 else None
        try:
            hooked = pair[0](self) if pair is not None else _sem_started(self) if _sem_hooks else 0
        except Exception:
            hooked = _sem_hooks_failed(pair)
        acquired = False
        try:
            acquired = await super().acquire()
        finally:
            _wait_done_now(wait, acquired)
            if hooked:
                if pair is not None and pair[1] is _C_SEM_ENDED:
                    _C_SEM_ENDED(self, hooked)  # (C: never raises)
                else:
                    _sem_wait_over(self, pair, hooked)
        self._ct_n += 1
        if len(holders) < MAX_HOLDERS:
            holders.append(me)
        return True

    async def __aenter__(self) -> None:
        if not self.locked():
            self._value -= 1
            self._ct_n += 1
            holders = self._ct_holders
            if len(holders) < MAX_HOLDERS:
                holders.append((_tasks_get(self._ct_loop) or self._ct_task()) if _DICT else _current_task())
            return None
        # The slow path, in this coroutine (a coroutine of its own would cost each waiting task one more).
        # _wait_begins() inlined: the wait record with the first holding task (JFR's previousOwner; the
        # registry lists them all). The waiting task is the one that takes the slot afterwards.
        holders = self._ct_holders
        me = (_tasks_get(self._ct_loop) or self._ct_task()) if _DICT else _current_task()
        wait = _wait_begin(
            self, _getframe(1) if _WAIT_FRAMES else None, None, holders[0] if holders else None, True, True, me
        )
        # Pool blame (conctools.pools), before waiting: an int to hand back, nothing allocated. Its one pair
        # of hooks (the usual case) is called directly, without registry.run_semaphore_started's loop.
        pair = _sem_hooks[0] if len(_sem_hooks) == 1 else None
        try:
            hooked = pair[0](self) if pair is not None else _sem_started(self) if _sem_hooks else 0
        except Exception:
            hooked = _sem_hooks_failed(pair)
        acquired = False
        try:
            acquired = await super().acquire()
        finally:
            _wait_done_now(wait, acquired)
            if hooked:
                if pair is not None and pair[1] is _C_SEM_ENDED:
                    _C_SEM_ENDED(self, hooked)  # (C: never raises)
                else:
                    _sem_wait_over(self, pair, hooked)
        self._ct_n += 1
        if len(holders) < MAX_HOLDERS:
            holders.append(me)
        return None

    if _C_SEM_ENTER is not None:

        def __aenter__(self) -> Any:  # type: ignore[misc]  # (an awaitable, as `async with` needs)
            return _C_SEM_ENTER(self)

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.release()

    _ct_task = _task_slowly

    def release(self) -> None:
        """Release, as ``asyncio.Semaphore.release`` (``BoundedSemaphore`` checks its bound first)."""
        super().release()
        holders = self._ct_holders
        if holders:
            me = (_tasks_get(self._ct_loop) or self._ct_task()) if _DICT else _current_task()
            try:
                holders.remove(me)
            except ValueError:  # released by another task than the one that acquired: forget the oldest
                del holders[0]
        if self._waiters:
            _progress[0] = _mono()

    def _conctools_state(self) -> PrimitiveState:
        return _base_state(self, self._conctools_holders())

    def _conctools_holders(self) -> tuple[Party, ...]:
        return tuple(_task_party(t, "?", 0) for t in list(self._ct_holders) if t is not None)

    def _conctools_progress(self) -> int:
        return int(self._ct_n)


if _C_SEM_ENTER is not None:
    _speedups_module.sem_enter_setup(
        _BASE_SEMAPHORE.acquire,
        _sem_hooks,
        registry.run_semaphore_started,
        registry.run_semaphore_ended,
        getattr(asyncio.tasks, "_current_tasks", None) if _DICT else None,
        _current_task,
        MAX_HOLDERS,
    )


class BoundedSemaphore(Semaphore, asyncio.BoundedSemaphore):
    """A traced ``asyncio.BoundedSemaphore``."""

    __slots__ = ("_bound_value",) if SPEEDUPS else ()

    _ct_kind = "aio.BoundedSemaphore"

    def __init__(self, value: int = 1, *, name: str | None = None) -> None:
        super().__init__(value, name=name)


# `async with` on a traced Lock or Semaphore without a coroutine of its own (issue 12): their __aenter__ and
# __aexit__ become C descriptors that, read on the object, make an awaitable standing for the bound method
# (called, it returns itself: no method object per `async with` half), which does the common case in C when first
# sent (a free Lock taken, a held Lock released, a Semaphore's release(): aio.Semaphore's own in C) and
# otherwise runs the Python method above as its coroutine (a Lock's wait; an error to raise); a Semaphore's
# __aenter__ takes a free slot of these two classes in C, without asyncio's acquire() coroutine (see
# _speedups.c: AwaitStep, SemEnter). None: the Python methods stay (no C extension, or the asyncio fields
# are not slots).
_C_STEPS: Any = (
    _speedups_module.aio_steps_setup(
        Lock,
        Lock.__aenter__,
        Lock.__aexit__,
        Semaphore.__aexit__,
        _task_stacks,
        _spare_stacks,
        Semaphore,
        (Semaphore, BoundedSemaphore),
        _progress,
    )
    if _C_SEM_ENTER is not None and hasattr(_speedups_module, "aio_steps_setup")
    else None
)
if _C_STEPS is not None:
    Lock.__aenter__, Lock.__aexit__, Semaphore.__aenter__, Semaphore.__aexit__ = _C_STEPS  # type: ignore[method-assign]


# -- Barrier -----------------------------------------------------------------------------


class Barrier(asyncio.Barrier, _TracedAttrs):
    """A traced ``asyncio.Barrier``: the tasks waiting at it are in the registry."""

    def __init__(self, parties: int, *, name: str | None = None) -> None:
        super().__init__(parties)
        _init(self, "aio.Barrier", name)

    async def wait(self) -> int:
        """Wait until every party arrived, as ``asyncio.Barrier.wait``."""
        wait = _wait_begin(self, _getframe(1), None, None, by_task=True, event=False)
        ok = False
        try:
            index = await super().wait()
            ok = True
        finally:
            self._ct_progress += 1
            _wait_done_now(wait, ok)
        return index
