"""Blocking-call detection: ``time.sleep``, blocking sockets and files, thread waits on a loop's thread."""

from __future__ import annotations

import _thread
import asyncio
import builtins
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from conctools import _fileio
from conctools._context import (
    capture_stack,
    is_conctools_frame,
)
from conctools._log import get_logger
from conctools.events import BlockingCallEvent
from conctools.loopmon.culprits import _current_task, _task_name, culprit_of
from conctools.loopmon.stats import stats_for
from conctools.recorder import get_recorder

__all__ = ["patched_names"]

_log = get_logger("conctools.loopmon")
_monotonic_ns = time.monotonic_ns
_get_running_loop = asyncio._get_running_loop

_blocking_lock = _thread.allocate_lock()
_blocking_loops: dict[int, int] = {}  # id(loop) -> how many monitors asked for detection on it
_patches: list[tuple[Any, str, Any, bool]] = []  # (owner, name, original, was_own_attribute)
_tls = threading.local()
_WAIT_MIN_NS = 1_000_000  # a thread wait shorter than 1 ms did not really block


def _report_blocking(call: str, start_ns: int, skip: int) -> None:
    duration_ns = _monotonic_ns() - start_ns
    stack = capture_stack(skip + 1)
    frame = culprit_of(stack)
    site = frame.site if frame is not None else "?"
    recorder = get_recorder()
    if stats_for(recorder).add_blocking(call, site, duration_ns, stack):
        thread = threading.current_thread()
        loop = _get_running_loop()
        task = _current_task(loop) if loop is not None else None
        recorder.record(
            BlockingCallEvent(
                ts_ns=start_ns,
                thread_id=thread.ident or 0,
                thread_name=thread.name,
                task_name=_task_name(task) if task is not None else None,
                loop_id=id(loop),
                call=call,
                site=site,
                duration_s=duration_ns / 1e9,
                stack=stack,
            )
        )


# Waits the stdlib makes on purpose and for microseconds: Thread.start() waits for the new
# thread to boot (run_in_executor / to_thread start workers that way), and asyncio.run's
# shutdown_default_executor() joins a thread that has already resolved the future it awaited
# (on a busy machine that join can outlast _WAIT_MIN_NS: a false alarm in every asyncio.run).
_EXEMPT_CALLERS = frozenset({threading.Thread.start.__code__, asyncio.BaseEventLoop.shutdown_default_executor.__code__})


def _wrap(call: str, original: Callable[..., Any], should_report: Callable[..., bool]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        loop = _get_running_loop()
        if loop is None or id(loop) not in _blocking_loops or getattr(_tls, "inside", False):
            return original(*args, **kwargs)
        caller = sys._getframe(1).f_code
        exempt = caller in _EXEMPT_CALLERS or is_conctools_frame(caller.co_filename)
        _tls.inside = True  # outermost call only: Event.wait -> Condition.wait is one report
        start = _monotonic_ns()
        try:
            return original(*args, **kwargs)
        finally:
            try:
                if not exempt and should_report(start, *args, **kwargs):
                    _report_blocking(call, start, 2)
            except Exception:
                _log.debug("conctools: could not report %s", call, exc_info=True)
            _tls.inside = False

    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    wrapper.__name__ = getattr(original, "__name__", call)
    wrapper.__qualname__ = getattr(original, "__qualname__", call)
    wrapper.__doc__ = getattr(original, "__doc__", None)
    return wrapper


def _always(start: int, *args: Any, **kwargs: Any) -> bool:
    return True


def _waited(start: int, *args: Any, **kwargs: Any) -> bool:
    return _monotonic_ns() - start >= _WAIT_MIN_NS


def _wait_unless_told_not_to(block_at: int | None, timeout_at: int, block_kw: str = "block") -> Callable[..., bool]:
    """`_waited`, except for a call asked not to block (``timeout=0``, ``blocking=False``).

    Such a call only takes an internal lock (``ThreadPoolExecutor.submit``'s idle check is
    ``Semaphore.acquire(timeout=0)``): however long a busy machine makes it, it is not a blocking call.
    ``block_at``/``timeout_at`` are the positions of those parameters, ``self`` being 0.
    """

    def waited(start: int, *args: Any, **kwargs: Any) -> bool:
        block = args[block_at] if block_at is not None and len(args) > block_at else kwargs.get(block_kw, True)
        timeout = args[timeout_at] if len(args) > timeout_at else kwargs.get("timeout")
        if not block or (timeout is not None and timeout <= 0):
            return False
        return _monotonic_ns() - start >= _WAIT_MIN_NS

    return waited


def _blocking_socket(start: int, sock: Any, *args: Any, **kwargs: Any) -> bool:
    try:
        return bool(sock.gettimeout() != 0.0)
    except Exception:
        return False


def _blocking_fd(start: int, fd: Any, *args: Any, **kwargs: Any) -> bool:
    try:
        return bool(os.get_blocking(fd))
    except Exception:
        return False


def _patch_targets() -> list[tuple[Any, str, str, Callable[..., bool]]]:
    import concurrent.futures
    import queue
    import socket

    targets: list[tuple[Any, str, str, Callable[..., bool]]] = [(time, "sleep", "time.sleep", _always)]
    for name in ("recv", "recv_into", "recvfrom", "recvfrom_into", "send", "sendall", "sendto", "connect", "accept"):
        targets.append((socket.socket, name, f"socket.{name}", _blocking_socket))
    targets += [
        (os, "read", "os.read", _blocking_fd),
        (os, "write", "os.write", _blocking_fd),
        (threading.Event, "wait", "threading.Event.wait", _wait_unless_told_not_to(None, 1)),
        (threading.Condition, "wait", "threading.Condition.wait", _wait_unless_told_not_to(None, 1)),
        (threading.Semaphore, "acquire", "threading.Semaphore.acquire", _wait_unless_told_not_to(1, 2, "blocking")),
        (threading.Barrier, "wait", "threading.Barrier.wait", _wait_unless_told_not_to(None, 1)),
        (threading.Thread, "join", "threading.Thread.join", _wait_unless_told_not_to(None, 1)),
        (queue.Queue, "get", "queue.Queue.get", _wait_unless_told_not_to(1, 2)),
        (queue.Queue, "put", "queue.Queue.put", _wait_unless_told_not_to(2, 3)),
        (concurrent.futures.Future, "result", "concurrent.futures.Future.result", _wait_unless_told_not_to(None, 1)),
        (builtins, "open", "open", _waited),  # a FIFO's open blocks; its file's reads: _fileio.TimedFileIO
    ]
    return targets


# Files opened on a loop's thread while detection is on read through TimedFileIO: time those reads.
_fileio.set_hooks(lambda call, method: _wrap(call, method, _waited))


def patched_names() -> list[tuple[Any, str]]:
    """Every ``(owner, attribute)`` blocking-call detection patches (the test guard checks them)."""
    return [(owner, name) for owner, name, _call, _pred in _patch_targets()]


def _enable_blocking_detection(loop: asyncio.AbstractEventLoop) -> None:
    with _blocking_lock:
        _blocking_loops[id(loop)] = _blocking_loops.get(id(loop), 0) + 1
        if _patches:
            return
        for owner, name, call, pred in _patch_targets():
            own = name in vars(owner)
            original = getattr(owner, name)
            wrapper = _wrap(call, _fileio.open_file if owner is builtins else original, pred)
            wrapper.__wrapped__ = original  # type: ignore[attr-defined]
            setattr(owner, name, wrapper)
            _patches.append((owner, name, original, own))


def _disable_blocking_detection(loop: asyncio.AbstractEventLoop) -> None:
    with _blocking_lock:
        n = _blocking_loops.get(id(loop), 0) - 1
        if n > 0:
            _blocking_loops[id(loop)] = n
        else:
            _blocking_loops.pop(id(loop), None)
        if _blocking_loops:
            return
        for owner, name, original, own in reversed(_patches):
            current = getattr(owner, name, None)
            if getattr(current, "__wrapped__", None) is not original:
                _log.warning("conctools: %s.%s was replaced by someone else; leaving it", owner, name)
                continue
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
        _patches.clear()
