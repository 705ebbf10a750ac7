"""Pool blame: when tasks or threads wait for an item of a pool, who holds the items, and where.

A *pool* is anything that hands items out and gets them back: an ``asyncio.Queue`` or a
``queue.Queue`` of connections, a semaphore guarding a list, asyncpg's pool (an
``asyncio.LifoQueue`` of connection holders inside). :func:`track_pools` (``conctools run``
switches it on with the lock tracing) observes them all:

* the stdlib queues' ``get``/``put`` methods are wrapped on the classes themselves, so queues
  made before tracking started, subclasses (asyncpg's) and third-party ones count too. A get
  records which task or thread took the item, when and from which lines; a put of that same
  object is its return. A queue counts as a pool once items come back (a producer/consumer
  queue, whose items never return, is a channel: after :data:`CHANNEL_AFTER` gets it is
  followed by counters only, and never reported);
* traced semaphores (``conctools.aio.Semaphore``, ``conctools.Semaphore`` and what
  ``trace_locks()`` substitutes) through the wait registry's hook: their holders are known.

Costs follow the house rule. Counting is always exact (takes, returns, waits, the wait
histogram, the time the pool was exhausted). Identities are kept for live items only (at
most :data:`MAX_HELD` per pool). The expensive part, describing what each holder is doing
(walking its coroutine chain or thread stack), runs only when someone has to wait, at most
once per :data:`SNAPSHOT_EVERY_S` per pool: in an event loop that moment is exact, since
every other task of the loop is suspended at its ``await``.

What comes out: a ``pools`` section of the recorder (per pool: counters, percentiles, who
held the items while others waited, the longest exhaustion with its holders, and runs of
takes from one line by one task, the N+1 pattern) and a
:class:`~conctools.events.PoolExhaustedEvent` per exhaustion longer than ``threshold_s``.

>>> import asyncio, conctools.pools as pools
>>> async def main():
...     q = asyncio.Queue()
...     q.put_nowait("conn")
...     pools.name_pool(q, "db", items="connections")
...     conn = await q.get()
...     q.put_nowait(conn)
...     return q.qsize()
>>> with pools.track_pools():
...     asyncio.run(main())
1
"""

from __future__ import annotations

import _thread
import queue
import sys
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from conctools import registry
from conctools._imports import later, when_imported
from conctools._typing import TYPE_CHECKING, Any
from conctools.pools._looker import LOOKER
from conctools.pools._patch import (
    NAME_KEY,
    ORIGINALS,
    SEMAPHORE_HOOKS,
    SEMAPHORES,
    STATE_KEY,
    asyncio_targets,
    patch_targets,
    patched_names,
    sem_names,
    sem_states,
    sem_waits,
    semaphore_hooks,
    wait_hook,
)
from conctools.pools._state import (
    CHANNEL_AFTER,
    DEFAULT_THRESHOLD_S,
    MAX_HELD,
    REPEAT_MIN,
    SNAPSHOT_EVERY_S,
    PoolState,
    reset,
    threshold_ns,
)
from conctools.pools._table import pool_table
from conctools.recorder import Recorder, get_recorder

if TYPE_CHECKING:
    import asyncio
else:
    asyncio = later("asyncio", globals())  # name_pool() of an asyncio queue: the program has asyncio

__all__ = [
    "CHANNEL_AFTER",
    "MAX_HELD",
    "REPEAT_MIN",
    "SNAPSHOT_EVERY_S",
    "name_pool",
    "patched_names",
    "pool_table",
    "reset",
    "track_pools",
]

_wref = weakref.ref
_patch_mutex = _thread.allocate_lock()
_depth = [0]
_sem_pair: list[Any] = [SEMAPHORE_HOOKS]  # the pair registered while tracking (C or Python)


def name_pool(obj: Any, name: str, *, items: str | None = None) -> None:
    """Give a pool a name for the reports (and say what it hands out: ``items="connections"``).

    ``obj`` is an ``asyncio.Queue`` or ``queue.Queue`` (any subclass), a semaphore, or an
    asyncpg pool (after ``await asyncpg.create_pool(...)``). Without a name a pool is called
    by its creation site, ``app.py:12``. Naming works whether or not tracking is on.

    Raises ``TypeError`` for anything else.
    """
    if isinstance(obj, (asyncio.Queue, queue.Queue)):
        object.__setattr__(obj, NAME_KEY, (name, items))  # (not through __dict__: see queue_state)
        state = getattr(obj, STATE_KEY, None)
        if isinstance(state, PoolState):
            state.name = name
            if items:
                state.items = items
        return
    if type(obj).__module__.startswith("asyncpg") and isinstance(getattr(obj, "_queue", None), asyncio.Queue):
        name_pool(obj._queue, name, items=items or "connections")
        return
    if isinstance(obj, (asyncio.Semaphore, threading.Semaphore)) or type(obj).__name__ in SEMAPHORES:
        sem_names[id(obj)] = (_wref(obj), name, items)
        state = sem_states.get(id(obj))
        if state is not None and state.ref is not None and state.ref() is obj:
            state.name = name
            if items:
                state.items = items
        return
    raise TypeError(f"name_pool() takes a queue, a semaphore or an asyncpg pool, not {type(obj).__name__}")


def _track_asyncio_queues(asyncio: ModuleType) -> None:
    """The program imported asyncio while pools are tracked: its queues are tracked from now on."""
    with _patch_mutex:
        if _depth[0] > 0:
            for owner, name, wrapper in asyncio_targets():
                setattr(owner, name, wrapper)


@contextmanager
def track_pools(*, threshold_s: float = DEFAULT_THRESHOLD_S, recorder: Recorder | None = None) -> Iterator[None]:
    """Observe every pool used inside the block; publish the ``pools`` section to ``recorder``.

    Wraps ``get``/``put`` of ``asyncio.Queue`` and ``queue.Queue`` (and so of every subclass)
    and follows waits on traced semaphores; restores everything on exit. ``threshold_s``: an
    exhaustion at least this long is recorded as a :class:`~conctools.events.PoolExhaustedEvent`.
    Nests, and is safe to enter from several threads; a new outermost block starts from zero.
    """
    if threshold_s < 0:
        raise ValueError(f"threshold_s must be >= 0, got {threshold_s}")
    rec = recorder if recorder is not None else get_recorder()
    rec.add_section("pools", pool_table)
    with _patch_mutex:
        if _depth[0] == 0:
            reset()
            for owner, name, wrapper in patch_targets():
                setattr(owner, name, wrapper)
            if "asyncio" not in sys.modules:
                when_imported("asyncio", _track_asyncio_queues)
            registry.wait_hooks.append(wait_hook)
            _sem_pair[0] = semaphore_hooks()
            registry.semaphore_hooks.append(_sem_pair[0])
            LOOKER.start()
        _depth[0] += 1
        threshold_ns[0] = int(threshold_s * 1e9)
    try:
        yield
    finally:
        with _patch_mutex:
            _depth[0] -= 1
            stopping = _depth[0] == 0
            if stopping:
                for owner, name, _ in patch_targets():
                    setattr(owner, name, ORIGINALS[(owner, name)])
                try:
                    registry.wait_hooks.remove(wait_hook)
                except ValueError:
                    pass
                try:
                    registry.semaphore_hooks.remove(_sem_pair[0])
                except ValueError:
                    pass
                sem_waits.clear()
        if stopping:
            LOOKER.stop()  # outside the patch mutex: the thread may be finishing a look
