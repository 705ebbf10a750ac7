"""Watch every event loop that starts (what ``conctools run`` uses), uvloop included."""

from __future__ import annotations

import _thread
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

from conctools._imports import NO_RUNNING_LOOP, when_imported
from conctools._log import get_logger
from conctools._typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from conctools.loopmon.monitor import LoopMonitor

__all__ = ["monitor_all_loops"]

_log = get_logger("conctools.loopmon")
_get_running_loop: Any = NO_RUNNING_LOOP  # asyncio's once the program imports it (_bind_asyncio)

_hook_lock = _thread.RLock()
_hook_config: list[dict[str, Any]] = []  # stack of monitor_all_loops() options; the last one applies
_auto: dict[int, LoopMonitor] = {}
_failure_undo: dict[
    int, Callable[[], None]
] = {}  # id(loop) -> undo its failure watching  # id(loop) -> the monitor started when that loop first ran
_original_set_running_loop: Any = None  # asyncio.events._set_running_loop, once imported
_uv_patched: list[tuple[type, Callable[..., Any]]] = []  # (uvloop.Loop, our run_forever) while hooked


def _hooked_set_running_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    _original_set_running_loop(loop)
    if _hook_config:
        try:
            _on_loop_switch(loop)
        except Exception:
            _log.exception("conctools: loop start hook failed")


def _on_loop_switch(loop: asyncio.AbstractEventLoop | None) -> None:
    """A loop starts (or stops, ``None``) in this thread: watch it, reusing its monitor across runs.

    ``asyncio.run`` starts its loop three or four times, and a program may call
    ``run_until_complete`` thousands of times: one monitor per loop lives until the loop is
    closed (its watchdog then exits by itself) or ``monitor_all_loops`` ends.
    """
    if loop is None or getattr(loop, "_conctools_own", False):  # stopped, or conctools' own (the console's)
        return  # the watchdog notices by itself that the loop stopped
    from conctools import casualties, taskdump  # here: a process without a loop never imports them

    tid = _thread.get_ident()
    taskdump.register_loop(loop, tid)
    with _hook_lock:
        current = _auto.get(id(loop))
        config = dict(_hook_config[-1]) if _hook_config else None
    if current is not None and current.loop is loop and current.alive:
        current._loop_tid = tid
        current.kick()
        return
    if config is None:
        return
    from conctools.loopmon.monitor import LoopMonitor  # here: a program without a loop never needs it

    monitor = LoopMonitor(loop, **config)
    monitor._exit_when_closed = True
    monitor._on_closed = _forget_auto
    try:  # tasks that die unretrieved are named in hang reports (what their victims wait on)
        _failure_undo[id(loop)] = casualties.watch_loop_failures(loop)
    except Exception:
        _log.debug("conctools: could not watch the loop's failures", exc_info=True)
    with _hook_lock:
        _auto[id(loop)] = monitor
    monitor.start()  # last: the loop's silence counts from its end, not while this hook runs


def _forget_auto(monitor: LoopMonitor) -> None:
    """An automatic monitor's loop was closed: drop it and undo what it changed."""
    with _hook_lock:
        if monitor.loop is not None and _auto.get(id(monitor.loop)) is monitor:
            del _auto[id(monitor.loop)]
    monitor._release()
    if monitor.loop is not None:
        from conctools import taskdump

        taskdump.unregister_loop(monitor.loop)
        _undo_failures(monitor.loop)


def _undo_failures(loop: asyncio.AbstractEventLoop) -> None:
    with _hook_lock:
        undo = _failure_undo.pop(id(loop), None)
    if undo is not None:
        undo()


def _uvloop_run_forever(original: Callable[..., Any]) -> Callable[..., Any]:
    def run_forever(self: asyncio.AbstractEventLoop) -> Any:
        if _hook_config:
            try:
                _on_loop_switch(self)
            except Exception:
                _log.exception("conctools: loop start hook failed")
        try:
            return original(self)
        finally:
            if _hook_config:
                try:
                    _on_loop_switch(None)
                except Exception:
                    _log.exception("conctools: loop stop hook failed")

    run_forever._conctools_original = original  # type: ignore[attr-defined]
    return run_forever


def _bind_asyncio(asyncio: ModuleType) -> None:
    global _get_running_loop, _original_set_running_loop
    _get_running_loop, _original_set_running_loop = asyncio._get_running_loop, asyncio.events._set_running_loop


when_imported("asyncio", _bind_asyncio)


def _hook_loop_starts(aio_module: Any) -> None:
    """Hook ``asyncio.events._set_running_loop`` (and uvloop's ``run_forever``) while a
    :func:`monitor_all_loops` block is active: at its start, or when the program imports asyncio."""
    events_mod: Any = aio_module.events
    uvloop = sys.modules.get("uvloop")
    uv_cls = getattr(uvloop, "Loop", None) if uvloop is not None else None
    with _hook_lock:
        if not _hook_config:
            return
        if events_mod._set_running_loop is _original_set_running_loop:
            events_mod._set_running_loop = _hooked_set_running_loop
        # uvloop binds ``asyncio._set_running_loop`` when it is imported: one imported from
        # now on binds the hook (which does nothing once no block is active any more).
        if getattr(aio_module, "_set_running_loop", None) is _original_set_running_loop:
            aio_module._set_running_loop = _hooked_set_running_loop
        if uv_cls is not None and "run_forever" not in vars(uv_cls):
            patched = _uvloop_run_forever(uv_cls.run_forever)
            uv_cls.run_forever = patched
            _uv_patched.append((uv_cls, patched))


@contextmanager
def monitor_all_loops(threshold_s: float = 0.1, **options: Any) -> Iterator[None]:
    """Watch every event loop that starts running inside the block, in any thread.

    Hooks ``asyncio.events._set_running_loop`` (every asyncio loop calls it when it starts and
    stops) and, when uvloop is imported, ``uvloop.Loop.run_forever``; restores both on exit
    and stops every monitor it started. Options as :class:`LoopMonitor`.
    """
    if not threshold_s > 0:
        raise ValueError(f"threshold_s must be more than 0 seconds, got {threshold_s!r}")
    config = {"threshold_s": threshold_s, **options}
    with _hook_lock:
        first = not _hook_config
        _hook_config.append(config)
        if first:
            # A program that has not imported asyncio yet has its loops hooked when it does: every
            # loop (uvloop's too) starts after that import.
            when_imported("asyncio", _hook_loop_starts)
    # A loop already running in this thread (entered from inside a coroutine) is watched too.
    running = _get_running_loop()
    if running is not None:
        try:
            _on_loop_switch(running)
        except Exception:
            _log.exception("conctools: could not watch the running loop")
    try:
        yield
    finally:
        with _hook_lock:
            _hook_config.remove(config)
            last = not _hook_config
            monitors = list(_auto.items()) if last else []
            aio_module: Any = sys.modules.get("asyncio")
            if last and aio_module is not None:
                _auto.clear()
                events_mod = aio_module.events
                if events_mod._set_running_loop is _hooked_set_running_loop:
                    events_mod._set_running_loop = _original_set_running_loop
                if getattr(aio_module, "_set_running_loop", None) is _hooked_set_running_loop:
                    aio_module._set_running_loop = _original_set_running_loop
                for cls, patched in _uv_patched:
                    if vars(cls).get("run_forever") is patched:
                        delattr(cls, "run_forever")
                _uv_patched.clear()
        for _tid, monitor in monitors:
            monitor.stop()
            if monitor.loop is not None:
                from conctools import taskdump

                taskdump.unregister_loop(monitor.loop)
                _undo_failures(monitor.loop)
