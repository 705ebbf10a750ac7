"""The patched queue methods and the semaphore wait hook: how pools are observed."""

from __future__ import annotations

import _thread
import queue
import sys
from types import FrameType, ModuleType

from conctools import registry
from conctools._imports import when_imported
from conctools._log import get_logger
from conctools._typing import Any
from conctools.pools import _state as _state_module
from conctools.pools._holders import line_at, site_of, take_frames
from conctools.pools._state import MAX_POOLS, SPEEDUPS, PoolState, registry_mutex

_log = get_logger("conctools.pools")
_getframe = sys._getframe

STATE_KEY = "_conctools_pool"  # a tracked queue's state, in the queue's __dict__
NAME_KEY = "_conctools_pool_name"  # (name, items) given by name_pool(), in the queue's __dict__
SEMAPHORES = frozenset({"Semaphore", "BoundedSemaphore"})
# Traced semaphores have no room for our state: it lives here, by id (checked against a weak ref).
sem_states: dict[int, PoolState] = {}
sem_waits: dict[tuple[int, int | None], tuple[PoolState, int]] = {}  # (thread, task) -> (state, wait start)
sem_names: dict[int, tuple[Any, str, str | None]] = {}  # id -> (weak ref, name, items)
# (A free-threaded build without its GIL counts under the pool's mutex.)
_GIL = bool(getattr(sys, "_is_gil_enabled", lambda: True)())
_first_sight = _thread.RLock()  # (re-entrant: a queue subclass's __getattr__ may use queues)


def _queue_kind(q: Any) -> tuple[str, str]:
    cls = type(q)
    module = cls.__module__
    if module.startswith("asyncpg"):
        return "asyncpg.Pool", "connections"
    if module == "asyncio.queues":
        return f"asyncio.{cls.__qualname__}", "items"
    if module == "queue":
        return f"queue.{cls.__qualname__}", "items"
    base = "asyncio.Queue" if isinstance(q, _AsyncioQueue) else "queue.Queue"
    return f"{cls.__qualname__} ({base})", "items"


def _creation_site(frame: FrameType | None) -> str:
    for _, code, offset in take_frames(frame)[:1]:
        return site_of(code, line_at(code, offset))
    return "?"


def queue_state(q: Any, frame: FrameType | None, made: bool = False) -> PoolState:
    """The state of queue ``q``, made on first sight. ``frame``: the code that made the queue
    (``made``) or, for a queue made before tracking began, the code that first used it.

    The state is an attribute of the queue, read and written as attributes (never through
    ``q.__dict__``: touching it makes the instance's dict a real one, and then every attribute
    the queue's own methods read costs a dict lookup: put and get ~30% slower)."""
    state = _state_of(q)
    if state is not None:
        return state
    kind, items = _queue_kind(q)
    if made and frame is not None and str(frame.f_globals.get("__name__", "")).startswith("asyncpg"):
        kind, items = "asyncpg.Pool", "connections"  # the queue inside an asyncpg pool (any version)
    named = getattr(q, NAME_KEY, None)
    site = _creation_site(frame)
    if not made:
        site = f"first used at {site}"
    name, items = (named[0], named[1] or items) if isinstance(named, tuple) else (None, items)
    state = PoolState(kind, items, name, site, q, in_loop=isinstance(q, _AsyncioQueue))
    with _first_sight:  # two threads seeing a queue for the first time keep one state
        kept = _state_of(q)
        if kept is None:  # (also an unpickled or copied queue: its state was left behind as None)
            object.__setattr__(q, STATE_KEY, state)
            kept = state
    return kept


def _state_of(q: Any) -> PoolState | None:
    """The state kept on queue ``q``, if any (a queue class's own ``__getattr__`` may answer anything)."""
    state = getattr(q, STATE_KEY, None)
    return state if type(state) is PoolState else None


def sem_state(prim: Any) -> PoolState:
    key = id(prim)
    state = sem_states.get(key)
    if state is not None and state.ref is not None and state.ref() is prim:
        return state
    st = registry.state_of(prim)
    named = sem_names.get(key)
    name = named[1] if named is not None and named[0]() is prim else (st.name if st is not None else None)
    items = (named[2] if named is not None and named[0]() is prim else None) or "slots"
    kind = st.kind if st is not None else "Semaphore"
    state = PoolState(kind, items, name, st.created_at if st else "?", prim, in_loop=kind.startswith("aio."))
    with registry_mutex:
        if len(sem_states) > 4 * MAX_POOLS:
            for k, s in list(sem_states.items()):
                if s.ref is None or s.ref() is None:
                    del sem_states[k]
        sem_states[key] = state
    return state


def wait_hook(prim: Any, thread_id: int, task_id: int | None) -> None:
    """The wait registry's hook: follow waits on traced threading semaphores (pools of slots)."""
    if prim is None:
        entry = sem_waits.pop((thread_id, task_id), None)
        if entry is not None:
            entry[0].wait_ended(entry[1])
        return
    if type(prim).__name__ not in SEMAPHORES or isinstance(prim, _AsyncioSemaphore):
        return  # (an asyncio semaphore's waits come through aio_wait_started/aio_wait_ended)
    state = sem_state(prim)
    start = state.wait_started(prim)
    if start:
        sem_waits[(thread_id, task_id)] = (state, start)


def aio_wait_started(prim: Any) -> int:
    """A task must wait on a traced asyncio semaphore (``registry.semaphore_hooks``): returns the wait's
    start, handed back to :func:`aio_wait_ended` (no record per wait: thousands of tasks may queue)."""
    state = sem_states.get(id(prim))
    if state is None or state.ref is None or state.ref() is not prim:
        state = sem_state(prim)
    return state.wait_started(prim)


def aio_wait_ended(prim: Any, start_ns: int) -> None:
    """The wait that :func:`aio_wait_started` returned ``start_ns`` for is over."""
    if start_ns:
        state = sem_states.get(id(prim))
        if state is None or state.ref is None or state.ref() is not prim:
            state = sem_state(prim)
        state.wait_ended(start_ns)


SEMAPHORE_HOOKS = (aio_wait_started, aio_wait_ended)


def semaphore_hooks() -> tuple[Any, Any]:
    """The pair for ``registry.semaphore_hooks``: :data:`SEMAPHORE_HOOKS`, or their C twins when
    conctools.locks runs its C paths (a wait that joins an exhaustion under way is counted in C; the
    rest goes through the Python pair, which the C functions call)."""
    locks = sys.modules.get("conctools.locks")
    speedups = getattr(locks, "_speedups", None) if locks is not None else None
    if speedups is None or not hasattr(speedups, "pool_sem_started"):
        return SEMAPHORE_HOOKS
    speedups.setup_pools(sem_states, aio_wait_started, aio_wait_ended, vars(_state_module))
    return (speedups.pool_sem_started, speedups.pool_sem_ended)


# asyncio's, once the program imports it (_bind_asyncio; conctools run does not import asyncio for
# a program that never uses it). isinstance() of an empty tuple is False.
_AsyncioQueue: Any = ()
_AsyncioSemaphore: Any = ()
_AQ_INIT: Any = None
_AQ_GET: Any = None
_AQ_GET_NOWAIT: Any = None
_AQ_PUT_NOWAIT: Any = None
# asyncio.Queue's get_nowait/put_nowait as installed: the C QueueMethods where the extension is built (and
# not CONCTOOLS_PURE_PYTHON=1), else the Python functions below (set by _bind_asyncio).
_aq_get_nowait_wrapper: Any = None
_aq_put_nowait_wrapper: Any = None
_Q_INIT: Any = queue.Queue.__init__
_Q_GET: Any = queue.Queue.get
_Q_PUT: Any = queue.Queue.put


def _state(q: Any, frame: FrameType | None) -> PoolState | None:
    """The queue's state, made on first sight; ``None`` when conctools cannot keep one (never raises)."""
    try:
        state = _state_of(q)
        return state if state is not None else queue_state(q, frame)
    except Exception:
        _log.debug("conctools: a queue's state is not available", exc_info=True)
        return None


def _existing(q: Any) -> PoolState | None:
    """The queue's state if it has one (a put never makes one: a queue only filled is no pool yet)."""
    try:
        return _state_of(q)
    except Exception:
        return None


def _aq_init(self: Any, *args: Any, **kwargs: Any) -> None:
    _AQ_INIT(self, *args, **kwargs)
    try:
        queue_state(self, _getframe(1), made=True)
    except Exception:
        _log.debug("conctools: noting a queue's creation failed", exc_info=True)


async def _aq_get(self: Any) -> Any:
    """Remove and return an item, waiting while the queue is empty (``asyncio.Queue.get``)."""
    if not self.empty():
        return self.get_nowait()
    state = None if getattr(self, "_is_shutdown", False) else _state(self, _getframe(1))
    if state is None:  # 3.13's shut-down queue raises QueueShutDown without waiting
        return await _AQ_GET(self)
    start = state.wait_started(self)
    try:
        return await _AQ_GET(self)
    finally:
        state.wait_ended(start)


def _aq_get_nowait(self: Any) -> Any:
    """Remove and return an item if one is available (``asyncio.Queue.get_nowait``)."""
    item = _AQ_GET_NOWAIT(self)
    try:
        state = self._conctools_pool  # (STATE_KEY; see _aq_took)
    except Exception:
        state = None
    if state is not None and _GIL and not state.identities:
        state.takes += 1  # a channel's take, only counted (_aq_took's case, inlined: no second frame per item)
    else:
        _aq_took(self, item, _getframe(1))
    return item


def _aq_took(self: Any, item: Any, frame: FrameType | None = None) -> None:
    """Queue ``self`` handed out ``item`` (in ``get_nowait``, called from ``frame``; ``None``: the caller's,
    as when the C ``get_nowait`` calls this, having no frame of its own). Never raises."""
    try:
        # _existing() inlined (this runs for every item): an attribute read, as queue_state() stores it. Never
        # self.__dict__: asking for it makes the queue's attributes a dict of their own (3.11+ keeps them
        # inline), which slows every attribute access of asyncio's own methods on this queue.
        state = self._conctools_pool  # (STATE_KEY)
    except Exception:
        state = None
    if frame is None:
        frame = _getframe(1)
    if state is None:
        state = _state(self, frame)
        if state is None:
            return
    if state.identities:
        state.take(item, frame)
    elif _GIL:  # a channel's take, only counted (PoolState.take's first case, inlined): with the GIL,
        state.takes += 1  # `x.n += 1` on a plain attribute runs no Python code, so loses no count (see _q_get)
    else:
        with state.mutex:
            state.takes += 1


def _aq_put_nowait(self: Any, item: Any) -> None:
    """Put an item into the queue without blocking (``asyncio.Queue.put_nowait``)."""
    try:
        state = self._conctools_pool  # (STATE_KEY) _existing() inlined, never self.__dict__ (see _aq_get_nowait)
    except Exception:
        state = None
    # (a channel holds nobody's items: PoolState.give_back() would return None at once)
    back = state.give_back(item) if state is not None and (state.identities or state.held) else None
    try:
        _AQ_PUT_NOWAIT(self, item)
    except BaseException:
        if back is not None and state is not None:
            state.undo(item, back)
        raise


def _q_init(self: Any, *args: Any, **kwargs: Any) -> None:
    _Q_INIT(self, *args, **kwargs)
    try:
        queue_state(self, _getframe(1), made=True)
    except Exception:
        _log.debug("conctools: noting a queue's creation failed", exc_info=True)


def _q_get(self: Any, block: bool = True, timeout: float | None = None) -> Any:
    """Remove and return an item from the queue (``queue.Queue.get``).

    Every queue operation of the program comes through here (a pipeline makes hundreds of thousands):
    the state lookup and the emptiness test are inlined, and a channel's take only counts."""
    try:
        state = getattr(self, STATE_KEY, None)
        if type(state) is not PoolState:
            state = None
    except Exception:
        state = None
    if state is None:
        state = _state(self, _getframe(1))
    if state is not None and block:
        try:
            empty = not self._qsize()
        except Exception:
            empty = False
        if empty:
            start = state.wait_started(self)
            try:
                item = _Q_GET(self, block, timeout)
            finally:
                state.wait_ended(start)
            state.take(item, _getframe(1) if state.identities else None)
            return item
    item = _Q_GET(self, block, timeout)
    if state is not None:
        if state.identities:
            state.take(item, _getframe(1))
        elif _GIL:  # a channel's take, only counted (PoolState.take's first case, inlined): with the
            state.takes += 1  # GIL, `x.n += 1` on a plain attribute runs no Python code, so loses no count
        else:
            with state.mutex:
                state.takes += 1
    return item


def _q_put(self: Any, item: Any, block: bool = True, timeout: float | None = None) -> None:
    """Put an item into the queue (``queue.Queue.put``). A channel's put (no identities, nothing
    held: items never come back) goes straight through."""
    try:
        state = getattr(self, STATE_KEY, None)
        if type(state) is not PoolState:
            state = None
    except Exception:
        state = None
    if state is None or (not state.identities and not state.held):
        _Q_PUT(self, item, block, timeout)
        return
    back = state.give_back(item)
    try:
        _Q_PUT(self, item, block, timeout)
    except BaseException:
        if back is not None:
            state.undo(item, back)
        raise


def _copy_meta(wrapper: Any, original: Any) -> Any:
    for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
        try:
            setattr(wrapper, attr, getattr(original, attr))
        except (AttributeError, TypeError):
            pass
    wrapper.__wrapped__ = original
    return wrapper


# queue.Queue's get/put as installed: the C QueueMethods where the extension is built (their common cases
# without _q_get's or _q_put's frame: issue 12), else those Python functions. The QueueMethod reads
# len(self.queue) for the stdlib's own _qsize() only.
_QUEUE_METHOD: Any = getattr(SPEEDUPS, "QueueMethod", None)
_STDLIB_QSIZES = tuple({cls._qsize for cls in (queue.Queue, queue.LifoQueue, queue.PriorityQueue)})
_q_get_wrapper: Any = _QUEUE_METHOD(_Q_GET, _q_get, False, _STDLIB_QSIZES) if _QUEUE_METHOD is not None else _q_get
_q_put_wrapper: Any = _QUEUE_METHOD(_Q_PUT, _q_put, True, _STDLIB_QSIZES) if _QUEUE_METHOD is not None else _q_put


def patch_targets() -> list[tuple[type, str, Any]]:
    """What :func:`~conctools.pools.track_pools` replaces: ``asyncio.Queue``'s methods once the
    program imported asyncio (:func:`asyncio_targets`), and ``queue.Queue``'s."""
    return [
        *asyncio_targets(),
        (queue.Queue, "__init__", _q_init),
        (queue.Queue, "get", _q_get_wrapper),
        (queue.Queue, "put", _q_put_wrapper),
    ]


def asyncio_targets() -> list[tuple[type, str, Any]]:
    """``asyncio.Queue``'s methods and their wrappers; none before the program imports asyncio."""
    if _AQ_INIT is None:
        return []
    return [
        (_AsyncioQueue, "__init__", _aq_init),
        (_AsyncioQueue, "get", _aq_get),
        (_AsyncioQueue, "get_nowait", _aq_get_nowait_wrapper),
        (_AsyncioQueue, "put_nowait", _aq_put_nowait_wrapper),
    ]


def patched_names() -> list[tuple[type, str]]:
    """The ``(class, method)`` pairs :func:`track_pools` replaces (for leak checks)."""
    return [(owner, name) for owner, name, _ in patch_targets()]


ORIGINALS: dict[tuple[type, str], Any] = {}


def _note_originals(targets: list[tuple[type, str, Any]]) -> None:
    for owner, name, wrapper in targets:
        ORIGINALS[(owner, name)] = owner.__dict__[name]
        _copy_meta(wrapper, ORIGINALS[(owner, name)])


def _bind_asyncio(asyncio: ModuleType) -> None:
    global _AsyncioQueue, _AsyncioSemaphore, _AQ_INIT, _AQ_GET, _AQ_GET_NOWAIT, _AQ_PUT_NOWAIT
    global _aq_get_nowait_wrapper, _aq_put_nowait_wrapper
    _AsyncioQueue, _AsyncioSemaphore = asyncio.Queue, asyncio.Semaphore
    aq = asyncio.Queue
    _AQ_INIT, _AQ_GET, _AQ_GET_NOWAIT, _AQ_PUT_NOWAIT = aq.__init__, aq.get, aq.get_nowait, aq.put_nowait
    if _QUEUE_METHOD is not None:  # (issue 12: no Python frame per item; see _speedups.c's QueueMethod)
        _aq_get_nowait_wrapper = _QUEUE_METHOD(_AQ_GET_NOWAIT, _aq_took, False)
        _aq_put_nowait_wrapper = _QUEUE_METHOD(_AQ_PUT_NOWAIT, _aq_put_nowait, True)
    else:
        _aq_get_nowait_wrapper, _aq_put_nowait_wrapper = _aq_get_nowait, _aq_put_nowait
    _note_originals(asyncio_targets())


_note_originals(patch_targets())
when_imported("asyncio", _bind_asyncio)
