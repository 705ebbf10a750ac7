"""The wait registry: who holds and who waits on every live traced primitive.

Written by the traced primitives (``conctools.locks``, ``conctools.aio`` and the ones
``trace_locks()`` substitutes), read by the deadlock/hang watchdog, the loop monitor and
the console. Reading is safe from any thread while the program runs and never blocks on a
program lock: each primitive keeps its holder and waiter records in plain attributes that
are replaced, not mutated, so a reader copies them atomically under the GIL, and the
registry's own table is guarded by a plain ``_thread`` lock.

The hot path pays nothing here: a primitive registers itself once, at creation (the C
extension's locks are in a linked list of its own, no weakref needed); holders are kept as raw
fields inside the primitive and turned into :class:`Party` records only when a reader asks.
Waits announce themselves in ``_waiting`` (a dict keyed by ``(thread id, task id)``).

>>> from conctools import registry
>>> isinstance(registry.primitives(), tuple)
True
"""

from __future__ import annotations

import _thread
import time
import weakref
from collections.abc import Callable

from conctools._log import get_logger
from conctools._records import field, record
from conctools._typing import Any, Protocol

__all__ = [
    "Party",
    "PrimitiveState",
    "Traceable",
    "holders_of",
    "kind_of",
    "last_progress_ns",
    "live",
    "note_progress",
    "note_wait_end",
    "note_wait_start",
    "primitives",
    "register",
    "semaphore_hooks",
    "state_of",
    "wait_hooks",
    "waiting_on",
]

_log = get_logger("conctools.registry")


@record(kw_only=True)
class Party:
    """A thread or task that holds or waits on a primitive.

    ``thread_key`` identifies the thread for good (thread ids are reused as soon as a thread has
    ended): the C path's thread-state id, or a per-thread serial on the pure-Python path; 0 when
    unknown. A holder whose thread has ended is ``exited``: its ``thread_id`` is then 0 (the id may
    belong to another live thread by now) and ``thread_name`` stays the ended thread's own name.
    ``task`` is the asyncio task (also for threading primitives taken inside a running task).
    """

    thread_id: int
    thread_name: str
    task_name: str | None  # asyncio task, when the party is a task
    task_id: int | None  # id(task)
    site: str  # "file.py:LINE" of the acquire / wait call (user code)
    since_ns: int  # time.monotonic_ns() when it took / started waiting
    timeout_s: float | None = None  # the wait's timeout; a wait with a timeout is never a hang
    thread_key: int = 0  # an identity of the thread never reused in the process; 0 = unknown
    exited: bool = False  # a holder whose thread has ended (the primitive is still held by it)
    task: object | None = field(default=None, compare=False, repr=False)  # the asyncio Task, when known

    @property
    def who(self) -> str:
        """``thread 'X'`` or ``task 'Y' (thread 'X')``."""
        if self.task_name is not None:
            return f"task {self.task_name!r} (thread {self.thread_name!r})"
        return f"thread {self.thread_name!r}"


@record(kw_only=True)
class PrimitiveState:
    """One traced primitive as a reader sees it at one instant."""

    prim_id: int  # stable id of the primitive (id() of the traced object)
    name: str  # name= given, else creation site "file.py:LINE"
    kind: str  # "Lock", "RLock", ..., "aio.Lock", "aio.Condition", ...
    created_at: str  # "file.py:LINE" of user code that created it
    holders: tuple[Party, ...]  # owner(s): one for Lock/RLock, every current holder for semaphores
    waiters: tuple[Party, ...]


class Traceable(Protocol):
    """What a traced primitive offers the registry."""

    def _conctools_state(self) -> PrimitiveState:
        """Its holders and waiters now (must not block, must not take program locks)."""
        ...

    def _conctools_progress(self) -> int:
        """A counter that grows with every acquisition (read without a lock)."""
        ...


# Weak references to every live traced primitive that is not one of the C extension's locks (those
# are in its own list). A set of refs whose callback is the set's own (C) ``discard``: registering
# costs one weakref, no lock and no closure, and a dead primitive leaves by itself (a dead ref left
# in the set would collide with the next object allocated at its address). Adding and copying a
# set are atomic under the GIL.
_lock = _thread.allocate_lock()
_refs: set[weakref.ref[Traceable]] = set()
# (thread_id, task_id) -> the primitive that party waits on now (a wait removes its entry when it
# ends, so the reference never outlives the wait).
_waiting: dict[tuple[int, int | None], Any] = {}
# The C extension's own list of live locks and the sum of their counters (set by conctools.locks).
_c_live: list[Callable[[], list[Any]] | None] = [None]
_c_progress: list[Callable[[], int] | None] = [None]
# [explicit progress stamp, last observed progress sum, when that sum was first observed]
_progress: list[int] = [time.monotonic_ns(), -1, time.monotonic_ns()]
# The C extension's asyncio waits are registered when something reads the tables above, not when they
# begin (most end first): ``_promote[0](min_age_s)`` puts those begun at least that long ago into
# ``_waiting`` and their primitives' waiters tables (set by conctools.locks; see promote_waits()).
_promote: list[Callable[[float], object] | None] = [None]


def promote_waits(min_age_s: float = 0.0) -> None:
    """Make the waits that began at least ``min_age_s`` ago visible in ``_waiting`` and in their
    primitives' waiters tables (every wait, by default). Whatever reads those tables calls this first:
    the C extension links a new asyncio wait in a list of its own and registers it only when asked
    (issue 12: a semaphore's 20,000 parked tasks each waited a fraction of a second, and two table
    insertions and two deletions per wait were a third of their bookkeeping). Never raises."""
    promote = _promote[0]
    if promote is not None:
        try:
            promote(min_age_s)
        except Exception:
            _log.debug("conctools: promoting waits failed", exc_info=True)


def register(prim: Traceable) -> None:
    """Track ``prim`` (weakly) until it is garbage collected."""
    try:
        _refs.add(weakref.ref(prim, _refs.discard))
    except TypeError:
        pass


def live() -> list[Traceable]:
    """Every live traced primitive object (strong references: do not keep them)."""
    c_live = _c_live[0]
    out: list[Any] = c_live() if c_live is not None else []
    for ref in list(_refs):
        prim = ref()
        if prim is not None:
            out.append(prim)
    return out


_snapshot_refs = live


def kind_of(prim: object) -> str | None:
    """The kind of a traced primitive (``"Lock"``, ``"aio.Semaphore"``, ...) without building its
    state; ``None`` when it cannot say."""
    try:
        kind = getattr(getattr(prim, "_ct_stats", None), "kind", None)
    except Exception:
        return None
    return kind if isinstance(kind, str) else None


def holders_of(prim: Traceable) -> tuple[Party, ...] | None:
    """The holders of one primitive, without its waiters (a semaphore awaited by 20,000 tasks
    answers in the time of its 50 holders); ``None`` if it cannot say (never raises)."""
    try:
        holders = getattr(prim, "_conctools_holders", None)
        if holders is not None:
            found: tuple[Party, ...] = holders()
            return found
        return prim._conctools_state().holders
    except Exception:
        _log.debug("conctools: holders of %r failed", type(prim).__name__, exc_info=True)
        return None


def state_of(prim: Traceable) -> PrimitiveState | None:
    """The state of one primitive, or ``None`` if it cannot say (never raises)."""
    try:
        return prim._conctools_state()
    except Exception:
        _log.debug("conctools: state of %r failed", type(prim).__name__, exc_info=True)
        return None


def primitives() -> tuple[PrimitiveState, ...]:
    """Every live traced primitive, with its holders and waiters now."""
    out = []
    for prim in _snapshot_refs():
        state = state_of(prim)
        if state is not None:
            out.append(state)
    return tuple(out)


# Observers of waits, checked by presence (``conctools.pools`` watches semaphore pools with one):
# ``hook(prim, thread_id, task_id)`` when a wait starts, ``hook(None, thread_id, task_id)`` when
# it ends, in the waiting thread. A hook that raises is logged and removed. The traced threading
# semaphores call them around their slow path (conctools.locks.pool_wait_started / pool_wait_ended);
# the other primitives' waits are recorded without them (their records are made in C).
WaitHook = Callable[["Traceable | None", int, "int | None"], object]
wait_hooks: list[WaitHook] = []

# The asyncio semaphores' slow path (thousands of tasks may queue on one) calls these instead, with
# nothing to allocate per wait: ``started(prim) -> token`` before the task parks (an int; 0: not
# followed) and ``ended(prim, token)`` once it is done waiting, acquired or not. A pair that raises
# is logged and removed. One pair is expected (conctools.pools'): with several, each ``ended`` gets
# the last non-zero token.
SemaphoreHooks = tuple[Callable[[Any], int], Callable[[Any, int], object]]
semaphore_hooks: list[SemaphoreHooks] = []


def run_semaphore_started(prim: Any) -> int:
    """Tell :data:`semaphore_hooks` that a wait on ``prim`` begins; returns the token for
    :func:`run_semaphore_ended` (``0``: nobody follows it). Never raises."""
    token = 0
    for pair in semaphore_hooks[:] if len(semaphore_hooks) > 1 else semaphore_hooks:
        try:
            token = pair[0](prim) or token
        except Exception:
            _drop_semaphore_hooks(pair)
    return token


def run_semaphore_ended(prim: Any, token: int) -> None:
    """The wait that :func:`run_semaphore_started` announced is over. Never raises."""
    for pair in semaphore_hooks[:] if len(semaphore_hooks) > 1 else semaphore_hooks:
        try:
            pair[1](prim, token)
        except Exception:
            _drop_semaphore_hooks(pair)


def semaphore_hooks_failed(pair: SemaphoreHooks | None) -> int:
    """A pair called directly (the only one registered) raised: it is logged and removed, as
    :func:`run_semaphore_started` would. Returns ``0`` (the wait is not followed)."""
    if pair is not None:
        _drop_semaphore_hooks(pair)
    return 0


def _drop_semaphore_hooks(pair: SemaphoreHooks) -> None:
    _log.exception("conctools: semaphore hooks %r raised; removing them", pair)
    try:
        semaphore_hooks.remove(pair)
    except ValueError:
        pass


def _run_wait_hooks(prim: Traceable | None, thread_id: int, task_id: int | None) -> None:
    for hook in list(wait_hooks):
        try:
            hook(prim, thread_id, task_id)
        except Exception:
            _log.exception("conctools: wait hook %r raised; removing it", hook)
            try:
                wait_hooks.remove(hook)
            except ValueError:
                pass


def note_wait_start(prim: Traceable, thread_id: int, task_id: int | None) -> None:
    """A party starts waiting on ``prim`` (slow path only)."""
    _waiting[(thread_id, task_id)] = prim
    if wait_hooks:
        _run_wait_hooks(prim, thread_id, task_id)


def note_wait_end(thread_id: int, task_id: int | None) -> None:
    """The party's wait ended (acquired, timed out, cancelled or woken)."""
    _waiting.pop((thread_id, task_id), None)
    _progress[0] = time.monotonic_ns()
    if wait_hooks:
        _run_wait_hooks(None, thread_id, task_id)


def note_progress() -> None:
    """Something progressed: a release that woke a waiter, a set, a notify."""
    _progress[0] = time.monotonic_ns()


def waiting_on(thread_id: int, task_id: int | None = None) -> PrimitiveState | None:
    """What this party waits on now, if it is a traced primitive.

    A wait on a threading primitive blocks the whole thread, so it is found with
    ``task_id=None`` even when a task made it (the waiter's :class:`Party` still names the
    task); a wait on an asyncio primitive blocks one task: ``waiting_on(thread_id, id(task))``.
    """
    if task_id is not None:  # (a thread's own waits are registered at once)
        promote_waits()
    prim = _waiting.get((thread_id, task_id))
    if prim is None:
        return None
    if isinstance(prim, weakref.ref):  # (an entry made by an older writer)
        prim = prim()
        if prim is None:
            return None
    return state_of(prim)


def last_progress_ns() -> int:
    """Monotonic ns of the last acquire/release/set/notify/wake anywhere.

    Uncontended acquisitions do not stamp a clock (that would tax the fast path); they bump
    a counter in their primitive instead, and this function notices the counters moved.
    So an uncontended acquisition shows up here with the latency of the caller's polling.
    """
    c_progress = _c_progress[0]
    total = c_progress() if c_progress is not None else 0
    for ref in list(_refs):
        prim = ref()
        if prim is None:
            continue
        try:
            total += prim._conctools_progress()
        except Exception:
            pass
    now = time.monotonic_ns()
    with _lock:
        if total != _progress[1]:
            _progress[1] = total
            _progress[2] = now
        return max(_progress[0], _progress[2])
