"""What the sample server runs under: conctools' primitives and instruments, each optional.

The server is a user of conctools like any other program. Every instrument is imported
lazily and skipped (with one log line) when its module is not there, so the server also
runs on a partial install; ``instrument=False`` gives the plain stdlib primitives and no
instruments at all, the baseline the overhead benchmark compares against.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from conctools._log import get_logger

__all__ = [
    "InstrumentOptions",
    "Instruments",
    "aio_lock",
    "aio_semaphore",
    "lock_order_checking",
    "name_pool",
    "thread_lock",
]

_log = get_logger("conctools.server")


def aio_lock(name: str, traced: bool) -> asyncio.Lock:
    """``conctools.aio.Lock(name=...)`` when tracing (and available), else ``asyncio.Lock()``."""
    if traced:
        try:
            from conctools import aio

            lock: asyncio.Lock = aio.Lock(name=name)
            return lock
        except (ImportError, AttributeError):
            _log.info("conctools.aio is not available: %s is a plain asyncio.Lock", name)
    return asyncio.Lock()


def aio_semaphore(value: int, name: str, traced: bool) -> asyncio.Semaphore:
    """``conctools.aio.Semaphore(value, name=...)`` when tracing (and available), else asyncio's."""
    if traced:
        try:
            from conctools import aio

            sem: asyncio.Semaphore = aio.Semaphore(value, name=name)
            return sem
        except (ImportError, AttributeError):
            _log.info("conctools.aio is not available: %s is a plain asyncio.Semaphore", name)
    return asyncio.Semaphore(value)


def thread_lock(name: str, traced: bool) -> Any:
    """``conctools.Lock(name=...)`` when tracing (and available), else ``threading.Lock()``."""
    if traced:
        try:
            from conctools import locks

            return locks.Lock(name=name)
        except (ImportError, AttributeError):
            _log.info("conctools.locks is not available: %s is a plain threading.Lock", name)
    return threading.Lock()


def name_pool(pool: Any, name: str, traced: bool, items: str | None = None) -> None:
    """``conctools.pools.name_pool(pool, name)`` when tracing (and available): reports say 'db'."""
    if not traced or pool is None:
        return
    try:
        from conctools import pools

        pools.name_pool(pool, name, items=items)
    except (ImportError, AttributeError, TypeError):
        _log.info("conctools.pools is not available: the pool %s keeps its creation site as its name", name)


@contextlib.contextmanager
def lock_order_checking(traced: bool) -> Iterator[None]:
    """Locks created inside check their acquisition order (conctools' lockdep), when tracing."""
    if not traced:
        yield
        return
    try:
        from conctools import lockorder
    except ImportError:
        yield
        return
    lockorder.enable()
    try:
        yield
    finally:
        lockorder.disable()


@dataclass(slots=True, kw_only=True)
class InstrumentOptions:
    """Which instruments run, and their thresholds."""

    loop_threshold_s: float = 0.1
    deadlock_timeout_s: float = 10.0
    resource_interval_s: float = 1.0
    pool_threshold_s: float = 0.1  # a pool exhausted this long is a finding (conctools.pools)
    # Recording each task's creation site costs a Python task factory on every task: a server
    # creates one per request, so it stays off unless asked for.
    track_task_creation: bool = False
    gil: bool = True  # the GIL monitor (conctools.gil)


class Instruments:
    """The loop monitor, the deadlock/hang watchdog, the resource sampler, the pool tracker and the GIL monitor.

    ``start()`` runs in the event loop's thread (the loop monitor watches the running loop);
    ``stop()`` undoes exactly what started. ``running`` names what is on.
    """

    def __init__(self, options: InstrumentOptions | None = None) -> None:
        self.options = options if options is not None else InstrumentOptions()
        self.running: list[str] = []
        self._stack = contextlib.ExitStack()

    def start(self) -> list[str]:
        """Start every instrument whose module is available; returns their names."""
        opts = self.options
        # First: its one-off calibration (tens of ms) runs before the loop monitor could call it a stall.
        if opts.gil:
            self._try("GIL monitor", lambda: self._enter("conctools.gil", "watch_gil", opts))
        self._try("loop monitor", lambda: self._loop_monitor(opts.loop_threshold_s, opts.track_task_creation))
        self._try("deadlock watchdog", lambda: self._enter("conctools.deadlock", "watch_deadlocks", opts))
        self._try("resource sampler", lambda: self._enter("conctools.resources", "sample_resources", opts))
        self._try("pool tracker", lambda: self._enter("conctools.pools", "track_pools", opts))
        return list(self.running)

    def stop(self) -> None:
        """Stop every instrument that started (never raises)."""
        try:
            self._stack.close()
        except Exception:
            _log.exception("conctools: stopping the server's instruments failed")
        self.running.clear()

    def _try(self, what: str, start: Any) -> None:
        try:
            if start():
                self.running.append(what)
        except ImportError:
            _log.info("conctools: %s is not available; running without it", what)
        except Exception:
            _log.exception("conctools: could not start the %s", what)

    def _loop_monitor(self, threshold_s: float, track_creation: bool) -> bool:
        from conctools import loopmon

        monitor = loopmon.LoopMonitor(
            asyncio.get_running_loop(), threshold_s=threshold_s, track_creation=track_creation
        )
        monitor.start()
        self._stack.callback(monitor.stop)
        return True

    def _enter(self, module_name: str, function: str, opts: InstrumentOptions) -> bool:
        import importlib

        module = importlib.import_module(module_name)
        factory = getattr(module, function, None)
        if factory is None:
            raise ImportError(f"{module_name}.{function}")
        if function == "watch_deadlocks":
            cm = factory(timeout_s=opts.deadlock_timeout_s)
        elif function == "track_pools":
            cm = factory(threshold_s=opts.pool_threshold_s)
        elif function == "watch_gil":
            cm = factory()
        else:
            cm = factory(interval_s=opts.resource_interval_s)
        self._stack.enter_context(cm)
        return True
