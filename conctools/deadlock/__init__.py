"""The deadlock and hang watchdog: who waits for whom, and why nothing moves.

A daemon thread, ``conctools-watchdog``, wakes a few times per ``timeout_s`` (a timed wait
on a plain lock: no busy loop) and looks at the program from outside:

* **Deadlocks.** It builds the *wait-for graph* from the lock registry
  (:func:`conctools.registry.primitives`): one node per thread or asyncio task, an edge from
  each waiter to each holder of what it waits on (a semaphore with several holders gives
  several edges), plus the waits read from frames, tasks and futures
  (:mod:`conctools.deadlock.waits`): a ``Thread.join()`` waits for the joined thread, a
  ``Future.result()`` for the pool worker running the job (or any worker of the pool where it
  is queued) or for the loop a coroutine was scheduled on, a task awaiting an executor job or
  another loop's coroutine the same way, a suspended task for its loop's thread while a
  synchronous wait blocks it, an idle loop's thread for its tasks. Threads and tasks share the
  graph, so cycles through locks, loops, pools and joins are found alike. A cycle whose waits
  have no timeout and whose threads have waited ``timeout_s`` is a deadlock; each one is
  reported once, as a :class:`~conctools.events.DeadlockEvent` with the blame in one paragraph
  and the advice that fits it (:mod:`conctools.deadlock.blame`), to the recorder and the callback.
* **Hangs without a cycle** (an Event nobody sets, a lost wake-up, a pool waiting on
  itself, a queue nobody feeds, a join of a thread that never ends): when every thread is
  blocked *forever* (a wait without a timeout on a primitive, a ``Thread.join``, an idle
  pool worker, an event loop with pending tasks and nothing that could wake it) and nothing
  progressed for ``timeout_s``, it reports every thread's and task's stack and what each
  waits on (:class:`~conctools.events.HangEvent`). A thread running Python code, sleeping,
  in ``select()``/``recv()`` or in any wait with a timeout is *not* blocked forever: healthy
  idle programs are never reported. Waits the registry cannot see are read from the
  threads' frames: stdlib waits (``Condition.wait``, ``Event.wait``, ``Queue.get``,
  ``Future.result``, ``Thread.join``) with their timeout, and ``with lock:`` /
  ``lock.acquire()`` on an untraced, locked ``threading.Lock``/``RLock`` from the bytecode.
  Threads, tasks and pool jobs that ended with an exception (:mod:`conctools.casualties`) are
  named next to what their victims wait on.

The graph and the cycle search are pure functions of registry records
(:func:`build_wait_graph`, :func:`find_deadlocks`), apart from the thread that drives them,
in the spirit of asyncio's ``tools.py``. The watchdog reads only atomic copies and plain
``_thread`` locks, never a program lock, so it cannot deadlock itself, and it never raises
into the program.

Exit statuses used by ``conctools run`` when it stops a stuck program:

* :data:`EXIT_DEADLOCK` (86): a deadlock was found; the report is on stderr.
* :data:`EXIT_HANG` (87): a hang was found; the report is on stderr.

>>> import conctools
>>> with conctools.watch_deadlocks(timeout_s=5.0) as watchdog:
...     pass
>>> watchdog.deadlocks
[]
"""

from __future__ import annotations

from conctools.deadlock.blame import explain
from conctools.deadlock.graph import (
    Dependency,
    PartyKey,
    WaitEdge,
    WaitGraph,
    build_wait_graph,
    cycle_key,
    describe_cycle,
    find_deadlocks,
    participants_of,
    party_key,
    prim_label,
    stuck_parties,
)
from conctools.deadlock.threads import ThreadState, classify_thread
from conctools.deadlock.watchdog import (
    EXIT_DEADLOCK,
    EXIT_HANG,
    WATCHDOG_THREAD_NAME,
    DeadlockCallback,
    DeadlockError,
    DeadlockWatchdog,
    HangCallback,
    HangError,
    watch_deadlocks,
)

__all__ = [
    "EXIT_DEADLOCK",
    "EXIT_HANG",
    "WATCHDOG_THREAD_NAME",
    "DeadlockCallback",
    "DeadlockError",
    "DeadlockWatchdog",
    "Dependency",
    "HangCallback",
    "HangError",
    "PartyKey",
    "ThreadState",
    "WaitEdge",
    "WaitGraph",
    "build_wait_graph",
    "classify_thread",
    "cycle_key",
    "describe_cycle",
    "explain",
    "find_deadlocks",
    "participants_of",
    "party_key",
    "prim_label",
    "stuck_parties",
    "watch_deadlocks",
]
