"""Looks at a pool's holders while it stays exhausted, from a ``conctools-pools`` thread.

A look as a wait begins can catch holders in passing (just after their take, in their first
query). So while a pool stays exhausted, this thread looks again a little later, then less
and less often: :data:`LOOK_AFTER_S` after the exhaustion began, at most that many times, and
never once no one waits. A pool in an event loop is looked at *on its loop*
(``call_soon_threadsafe``), between two callbacks, when every task is parked at an ``await``;
a pool of threads is looked at from here. The thread starts with the outermost
:func:`~conctools.pools.track_pools` block, sleeps while no pool is exhausted and stops with it.
"""

from __future__ import annotations

import _thread
import time

from conctools._context import internal_thread, wait_lock
from conctools._log import get_logger
from conctools._typing import Any

__all__ = ["LOOKER", "LOOK_AFTER_S", "Looker"]

_log = get_logger("conctools.pools")
_mono = time.monotonic_ns

LOOK_AFTER_S = (0.05, 0.15, 0.35, 0.75, 1.55)  # after the exhaustion began; a few looks, then none


def _look(state: Any, episode_ns: int) -> None:
    """One look, if the same exhaustion still goes on (never raises: it may run as a loop callback)."""
    try:
        if state.episode_start_ns != episode_ns or state.waiters <= 0:
            return
        obj = state.ref() if state.ref is not None else None
        if obj is not None:
            state.look(obj, _mono())
    except Exception:
        _log.debug("conctools: looking at a pool's holders failed", exc_info=True)


class Looker:
    """The ``conctools-pools`` thread: the later looks at exhausted pools."""

    def __init__(self) -> None:
        self._mutex = _thread.allocate_lock()
        self._wake = wait_lock()  # held while there is nothing new; released to wake the thread
        self._wake.acquire()
        # id(state) -> [state, loop or None, episode start, index of the next look]
        self._watched: dict[int, list[Any]] = {}
        self._thread: Any = None
        self._generation = 0  # a thread runs while the generation it was started for is current
        # When the thread wakes next by itself (monotonic ns; None: only when poked). A new exhaustion whose
        # first look is due later needs no poke: the thread looks at the table again by then. (A queue that
        # runs dry and refills a thousand times a second poked it as often, and each wake-up took the GIL
        # from the program's thread: issue 12.)
        self._wakes_at: int | None = None

    def start(self) -> None:
        """Start the thread (when tracking begins: starting a thread waits for it, never do that on
        a program's event loop)."""
        with self._mutex:
            if self._thread is None:
                self._generation += 1
                generation = self._generation
                self._thread = internal_thread(lambda: self._run(generation), "conctools-pools")
                self._thread.start()

    def watch(self, state: Any, loop: Any, episode_ns: int) -> None:
        """An exhaustion of ``state`` began (in ``loop``, or among threads when ``None``)."""
        with self._mutex:
            if self._thread is None:
                return
            self._watched[id(state)] = [state, loop, episode_ns, 0]
            wakes_at = self._wakes_at
            if wakes_at is not None and wakes_at <= episode_ns + int(LOOK_AFTER_S[0] * 1e9):
                return  # awake by then anyway
            self._wakes_at = _mono()  # (poked: awake now; it sets its next wake-up before it sleeps)
        self._poke()

    def stop(self) -> None:
        """Stop the thread (it ends within a moment) and forget every pool."""
        with self._mutex:
            thread, self._thread = self._thread, None
            self._generation += 1
            self._watched.clear()
            self._wakes_at = None
        self._poke()
        if thread is not None:
            thread.join(timeout=5.0)

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's thread is not there (and may have held the mutex at the fork)."""
        self._mutex = _thread.allocate_lock()
        self._wake = wait_lock()
        self._wake.acquire()
        self._watched.clear()
        self._thread = None
        self._generation += 1
        self._wakes_at = None

    def _poke(self) -> None:
        try:
            self._wake.release()
        except RuntimeError:  # already released: the thread will wake anyway
            pass

    def _due(self, now: int) -> tuple[list[list[Any]], float | None]:
        """The looks due now, and how long to sleep until the next one (``None``: until poked;
        caller holds the mutex)."""
        due, next_ns = [], None
        for key, entry in list(self._watched.items()):
            state, _loop, episode_ns, index = entry
            current = state.episode_start_ns
            if current > episode_ns and state.waiters > 0:
                # A new exhaustion of the same pool began, and its watch() is on its way (it comes after the
                # state changes): follow it now. Dropped, it would leave the thread nothing to wake for, and
                # that watch() would poke it again: a pool that runs dry a thousand times a second, each
                # poke handing the thread the GIL mid-change, kept it waking as often (issue 12).
                entry[2] = episode_ns = current
                entry[3] = index = 0
            if current != episode_ns or state.waiters <= 0 or index >= len(LOOK_AFTER_S):
                del self._watched[key]
                continue
            at = episode_ns + int(LOOK_AFTER_S[index] * 1e9)
            if at <= now:
                entry[3] += 1
                due.append(list(entry))
                if entry[3] < len(LOOK_AFTER_S):
                    at = episode_ns + int(LOOK_AFTER_S[entry[3]] * 1e9)
                else:
                    continue
            next_ns = at if next_ns is None else min(next_ns, at)
        sleep_s = None if next_ns is None else max(0.0, (next_ns - now) / 1e9)
        return due, sleep_s

    def _run(self, generation: int) -> None:
        while True:
            with self._mutex:
                if self._generation != generation:
                    return
                now = _mono()
                due, sleep_s = self._due(now)
                self._wakes_at = None if sleep_s is None else now + int(sleep_s * 1e9)
            for state, loop, episode_ns, _index in due:
                if loop is None:
                    _look(state, episode_ns)
                    continue
                try:
                    loop.call_soon_threadsafe(_look, state, episode_ns)
                except RuntimeError:  # the loop is closed: nothing to look at any more
                    pass
            if sleep_s is None:
                self._wake.acquire()  # nothing is exhausted: sleep until a pool runs dry (or stop)
            elif sleep_s > 0:
                self._wake.acquire(timeout=sleep_s)


LOOKER = Looker()
