"""The exit statuses of children, as their parent learns them when it reaps them.

A child cannot report that it was killed: its parent learns it from ``waitpid``. Three places
in the standard library reap the children conctools follows, and each is wrapped here to note
``(pid, exit code)`` (negative: killed by that signal) and, where the rusage comes for free,
the child's CPU time and peak RSS (exact even for a child killed before it wrote its file):

* ``multiprocessing``'s ``Popen.poll`` (fork and spawn children): the same code, with
  ``os.wait4`` for ``os.waitpid``; errors are swallowed there as in the original.
* ``subprocess.Popen._handle_exitstatus`` (every ``Popen`` that learns its status).
* ``os.waitpid`` inside the forkserver process only, which reaps the forkserver's children.

A direct ``os.waitpid`` by the program itself is not wrapped (a wrapper would show in its
tracebacks): such a child's status is then unknown to the report, which says so.
"""

from __future__ import annotations

import _thread
import contextlib
import gc
import os
import sys
import time
import weakref
from collections.abc import Callable
from types import ModuleType

from conctools._imports import when_imported
from conctools._typing import Any

__all__ = ["install", "launching", "note", "reaped", "reset_after_fork", "uninstall", "wrap_waitpid"]

_lock = _thread.allocate_lock()
_reaped: dict[int, dict[str, Any]] = {}
# pid -> the signal its parent sent it (Process.terminate()/kill()): a worker ended that way was
# stopped on purpose (Pool's exit terminates its workers), not killed by accident.
_signalled: dict[int, int] = {}
# Called when a child is reaped (a followed child's writer: its parent's view changed).
listeners: list[Any] = []
_MAX = 10_000
# Process -> its target's name, noted by the parent as it forks the child: Process.start() drops the
# target, and a child ended before it wrote its first record (a pool worker that Pool.terminate()
# stopped before the writer thread ran) leaves the parent the only one that knew it.
_targets: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_saved: list[tuple[Any, str, Any]] = []
_installed: list[bool] = []
_cancels: list[Callable[[], None]] = []  # hooks on imports still to come (conctools._imports)


def note(pid: int, exit_code: int, rusage: Any = None, source: str = "multiprocessing", process: Any = None) -> None:
    """Remember that child ``pid`` ended with ``exit_code`` (negative: the signal that killed it);
    ``source`` says who reaped it (``multiprocessing`` or ``subprocess``), ``process`` is its
    ``multiprocessing.Process`` when known (for its name)."""
    entry: dict[str, Any] = {
        "pid": pid,
        "exit_code": exit_code,
        "by": os.getpid(),
        "at_wall": time.time(),
        "source": source,
    }
    sent = _signalled.get(pid)
    if sent is not None and exit_code == -sent:
        entry["terminated_by_parent"] = True
    if process is not None:  # (its target is gone: Process.start() drops it; launching() kept its name)
        entry["name"] = getattr(process, "_name", None)
        target = _targets.get(process)
        if target is not None:
            entry["target"] = target
        method = getattr(getattr(process, "_popen", None), "method", None)
        if isinstance(method, str):
            entry["start_method"] = method
    if rusage is not None:
        try:
            entry["cpu_s"] = float(rusage.ru_utime + rusage.ru_stime)
            maxrss = int(rusage.ru_maxrss)
            entry["peak_rss_bytes"] = maxrss if sys.platform == "darwin" else maxrss * 1024
        except (AttributeError, TypeError, ValueError):
            pass
    with _lock:
        if len(_reaped) >= _MAX:
            _reaped.pop(next(iter(_reaped)))
        _reaped.pop(pid, None)  # a recycled pid: the latest child that had it
        _reaped[pid] = entry
    for listener in list(listeners):
        try:
            listener()
        except Exception:
            pass


def launching(process: Any) -> str | None:
    """The parent is starting ``process``: keep its target's name for :func:`note`; returns it."""
    target = target_name(getattr(process, "_target", None))
    if target is not None:
        with contextlib.suppress(TypeError):  # not weak-referenceable
            _targets[process] = target
    return target


def target_name(target: Any) -> str | None:
    """``module.qualname`` of a process's target function."""
    if target is None:
        return None
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}"


def _process_of(popen: Any) -> Any:
    """The ``multiprocessing.Process`` whose Popen this is (still in the parent's children set)."""
    process_mod = sys.modules.get("multiprocessing.process")
    try:
        for proc in list(getattr(process_mod, "_children", ())):
            if getattr(proc, "_popen", None) is popen:
                return proc
    except Exception:
        pass
    return None


def reaped() -> list[dict[str, Any]]:
    """Every child reaped by this process so far: ``{pid, exit_code, by[, cpu_s, peak_rss_bytes]}``."""
    with _lock:
        return [dict(v) for v in _reaped.values()]


def reset_after_fork() -> None:
    """In a forked child: its parent's children are not its own."""
    global _lock
    _lock = _thread.allocate_lock()
    _reaped.clear()
    _signalled.clear()
    _targets.clear()


def _exit_code(status: int) -> int:
    try:
        return int(os.waitstatus_to_exitcode(status))
    except ValueError:
        return status


def _mp_poll(self: Any, flag: int = os.WNOHANG) -> Any:
    """``multiprocessing.popen_fork.Popen.poll``, reading the child's rusage as it reaps it."""
    if self.returncode is None:
        try:
            pid, sts, rusage = os.wait4(self.pid, flag)
        except OSError:
            # Child process not yet created. See #1731717 (as the original does).
            return None
        if pid == self.pid:
            self.returncode = os.waitstatus_to_exitcode(sts)
            try:
                note(pid, self.returncode, rusage, process=_process_of(self))
            except Exception:
                pass
    return self.returncode


def _wrap_send_signal(original: Any) -> Any:
    def _send_signal(self: Any, sig: int) -> Any:
        try:
            if self.returncode is None and len(_signalled) < _MAX:
                _signalled[int(self.pid)] = int(sig)
        except Exception:
            pass
        return original(self, sig)

    _send_signal.__wrapped__ = original  # type: ignore[attr-defined]
    return _send_signal


def _wrap_forkserver_poll(original: Any) -> Any:
    """A forkserver child's status comes from the forkserver (which reaped it): note it here too."""

    def poll(self: Any, flag: int = os.WNOHANG) -> Any:
        known = self.returncode is not None
        result = original(self, flag)
        if result is not None and not known:
            try:
                note(int(self.pid), int(result), process=_process_of(self))
            except Exception:
                pass
        return result

    poll.__wrapped__ = original  # type: ignore[attr-defined]
    return poll


def _wrap_handle_exitstatus(original: Any) -> Any:
    def _handle_exitstatus(self: Any, sts: int, *args: Any, **kwargs: Any) -> Any:
        result = original(self, sts, *args, **kwargs)
        try:
            code = int(self.returncode) if self.returncode is not None else _exit_code(sts)
            note(int(self.pid), code, source="subprocess")
        except Exception:
            pass
        return result

    _handle_exitstatus.__wrapped__ = original  # type: ignore[attr-defined]
    return _handle_exitstatus


def wrap_waitpid() -> None:
    """``os.waitpid`` that notes what it reaps, with the rusage (for the forkserver process only)."""
    original = os.waitpid
    if getattr(original, "__conctools__", False):
        return

    def waitpid(pid: int, options: int) -> tuple[int, int]:
        got, status, rusage = os.wait4(pid, options)
        if got > 0:
            try:
                note(got, _exit_code(status), rusage)
            except Exception:
                pass
        return got, status

    waitpid.__conctools__ = True  # type: ignore[attr-defined]
    waitpid.__wrapped__ = original  # type: ignore[attr-defined]
    _saved.append((os, "waitpid", original))
    os.waitpid = waitpid


def install() -> None:
    """Wrap the reaping places (idempotent). A module the program has not imported yet
    (``multiprocessing``'s ``popen_fork`` and ``popen_forkserver``) is wrapped when it imports it:
    the run does not import ``multiprocessing`` for a program that never uses it."""
    if _installed:
        return
    _installed.append(True)
    if sys.platform != "win32":
        _cancels.append(when_imported("multiprocessing.popen_fork", _wrap_popen_fork))
        _cancels.append(when_imported("multiprocessing.popen_forkserver", _wrap_popen_forkserver))
        for name in ("multiprocessing.forkserver", "multiprocessing.resource_tracker"):
            _cancels.append(when_imported(name, _keep_plain_lock))
    _cancels.append(when_imported("subprocess", _wrap_subprocess))


def _wrap_popen_fork(popen_fork: ModuleType) -> None:
    _saved.append((popen_fork.Popen, "poll", popen_fork.Popen.__dict__["poll"]))
    popen_fork.Popen.poll = _mp_poll
    send = popen_fork.Popen.__dict__.get("_send_signal")
    if send is not None:
        _saved.append((popen_fork.Popen, "_send_signal", send))
        popen_fork.Popen._send_signal = _wrap_send_signal(send)


def _wrap_popen_forkserver(popen_forkserver: ModuleType) -> None:
    fs_poll = popen_forkserver.Popen.__dict__.get("poll")
    if fs_poll is not None:
        _saved.append((popen_forkserver.Popen, "poll", fs_poll))
        popen_forkserver.Popen.poll = _wrap_forkserver_poll(fs_poll)


def _wrap_subprocess(subprocess: ModuleType) -> None:
    original = subprocess.Popen.__dict__.get("_handle_exitstatus")
    if original is not None:
        _saved.append((subprocess.Popen, "_handle_exitstatus", original))
        subprocess.Popen._handle_exitstatus = _wrap_handle_exitstatus(original)


def _keep_plain_lock(module: ModuleType) -> None:
    """The forkserver's and the resource tracker's own lock (made when their module is imported)
    stays a plain one, as when the run imported them before the program: imported later, under
    ``trace_locks()``, it would be a traced lock of the program's. The resource tracker's becomes a
    :class:`TrackerLock`."""
    for owner_name in ("_forkserver", "_resource_tracker"):
        owner = getattr(module, owner_name, None)
        lock = getattr(owner, "_lock", None)
        if owner is None or lock is None or isinstance(lock, TrackerLock):
            continue
        if not lock.acquire(False):  # in use (imported long before): left as it is
            continue
        lock.release()
        if owner_name == "_resource_tracker" and "RLock" in type(lock).__name__:
            owner._lock = TrackerLock()
        elif type(lock).__module__.startswith("conctools"):
            owner._lock = _thread.RLock() if "RLock" in type(lock).__name__ else _thread.allocate_lock()


class TrackerLock:
    """The resource tracker's RLock, with no garbage collection inside its critical sections.

    A collection that runs while a thread holds the tracker's lock (registering a semaphore,
    starting the tracker process) runs the finalizers of dead semaphores, which call the tracker
    again: "ResourceTracker called reentrantly for resource cleanup", and a leaked semaphore.
    Where collections happen depends on every allocation before: a plain run is spared by the
    luck of its allocation pattern, and a run with conctools' own allocations (and on 3.12 its
    threads', which make a collection due in any thread) is not. So the collector waits while
    the lock is held (microseconds; a collection due meanwhile runs after it), as the program
    would see it without conctools.
    """

    __slots__ = ("_lock", "_reenable")

    def __init__(self) -> None:
        self._lock = _thread.RLock()
        self._reenable = False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self._lock.acquire(blocking, timeout)
        if got and self._lock._recursion_count() == 1:  # type: ignore[attr-defined]
            self._reenable = gc.isenabled()
            if self._reenable:
                gc.disable()
        return got

    def release(self) -> None:
        if self._reenable and self._lock._recursion_count() == 1:  # type: ignore[attr-defined]
            self._reenable = False
            gc.enable()
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _recursion_count(self) -> int:
        return int(self._lock._recursion_count())  # type: ignore[attr-defined]

    def _is_owned(self) -> bool:
        return bool(self._lock._is_owned())  # type: ignore[attr-defined]

    def _at_fork_reinit(self) -> None:
        self._lock._at_fork_reinit()  # type: ignore[attr-defined]
        self._reenable = False


def _tracker_lock_after_fork() -> None:
    """A child forked while another thread held the tracker's lock: the lock is free, and the
    collector back on (the holder, which would have switched it on, did not come along)."""
    tracker = getattr(sys.modules.get("multiprocessing.resource_tracker"), "_resource_tracker", None)
    lock = getattr(tracker, "_lock", None)
    if isinstance(lock, TrackerLock) and lock._reenable:
        lock._at_fork_reinit()
        gc.enable()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_tracker_lock_after_fork)


def uninstall() -> None:
    """Put every wrapped function back (and wrap nothing more on a later import)."""
    while _cancels:
        _cancels.pop()()
    _installed.clear()
    while _saved:
        owner, name, original = _saved.pop()
        setattr(owner, name, original)
    _signalled.clear()
