"""What a thread waits for in other processes, read from its frames: joins, pools, futures, pipes.

A thread blocked on a child process sits in the standard library's machinery: a
``multiprocessing`` join (``os.waitpid``), a ``Pool`` result (a ``threading`` wait), a
``ProcessPoolExecutor`` future, a ``multiprocessing.Queue.get()`` or ``Connection.recv()`` (a
read on a pipe), a ``subprocess.Popen.wait()``. :func:`cross_wait` recognises these from the
thread's frames (read-only: locals and attributes are read statically, no program code runs)
and names the processes the thread waits on: the child it joins, the pool's or executor's
worker processes, or, for a pipe, the pipe itself (which processes hold its other end is for
:mod:`conctools.children.pipes` to find).
"""

from __future__ import annotations

import os
import sys
import threading
import types
from types import FrameType

from conctools._imports import imported
from conctools._records import record
from conctools._typing import Any

__all__ = ["CrossWait", "cross_wait", "idle_worker", "pool_of_wait"]

_STDLIB = os.path.dirname(threading.__file__) + os.sep
_MP = _STDLIB + "multiprocessing" + os.sep
_FUTURES = _STDLIB + "concurrent" + os.sep + "futures" + os.sep
_SUBPROCESS = _STDLIB + "subprocess.py"
_THREADING = _STDLIB + "threading.py"
_SELECTORS = _STDLIB + "selectors.py"
_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_MACHINERY = (_MP, _FUTURES, _SUBPROCESS, _THREADING, _SELECTORS, _PKG)
_MAX_DEPTH = 40


@record(kw_only=True)
class CrossWait:
    """A thread's wait on other processes."""

    kind: str  # "join", "pool", "future", "executor", "queue", "pipe", "popen", "sync"
    waits_on: str  # in words, without the targets: "multiprocessing.Pool.map() results"
    target_pids: tuple[int, ...] = ()  # the processes it waits on, when known
    target_names: tuple[str, ...] = ()  # their names, as this process knows them
    pipe_fd: int | None = None  # the fd of the pipe or socket it reads (queue, pipe)
    timeout_s: float | None = None  # the wait's own timeout (None: forever)


def _static(obj: Any, name: str) -> Any:
    """``obj.name`` without running program code (no properties, no ``__getattr__``)."""
    inspect = imported("inspect")  # when first needed: a followed child starts without it
    try:
        value = inspect.getattr_static(obj, name)
    except AttributeError:
        return None
    if isinstance(value, types.MemberDescriptorType):
        try:
            return value.__get__(obj, type(obj))
        except AttributeError:
            return None
    if isinstance(value, (property, types.FunctionType, types.MethodType, classmethod, staticmethod)):
        return None
    return value


def _local(frame: FrameType, name: str) -> Any:
    try:
        return frame.f_locals.get(name)
    except Exception:
        return None


def _timeout(frame: FrameType, name: str = "timeout") -> float | None:
    value = _local(frame, name)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def _process_pid(proc: Any) -> int | None:
    popen = _static(proc, "_popen")
    pid = _static(popen, "pid") if popen is not None else None
    return pid if isinstance(pid, int) and pid > 0 else None


def _processes(procs: Any) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Pids and names of a list (or dict values) of ``multiprocessing`` processes."""
    if isinstance(procs, dict):
        procs = list(procs.values())
    pids, names = [], []
    try:
        items = list(procs or ())
    except Exception:
        return (), ()
    for proc in items:
        pid = _process_pid(proc)
        if pid is not None:
            pids.append(pid)
            name = _static(proc, "_name")
            names.append(name if isinstance(name, str) else "?")
    return tuple(pids), tuple(names)


def _machinery(frame: FrameType | None) -> list[FrameType]:
    """The innermost run of frames in the waiting machinery (stdlib and conctools), innermost first."""
    out = []
    depth = 0
    while frame is not None and depth < _MAX_DEPTH:
        if not frame.f_code.co_filename.startswith(_MACHINERY):
            break
        out.append(frame)
        frame = frame.f_back
        depth += 1
    return out


def _qualname(frame: FrameType) -> str:
    code = frame.f_code
    return str(getattr(code, "co_qualname", code.co_name))


def cross_wait(frame: FrameType | None) -> CrossWait | None:
    """What the thread whose innermost frame is ``frame`` waits for in other processes, if anything."""
    frames = _machinery(frame)
    if not frames:
        return None
    by_place = [(f.f_code.co_filename, _qualname(f), f) for f in frames]
    if any(_infrastructure(filename, qualname) for filename, qualname, _f in by_place):
        return None
    # Outermost API first: Pool.map is named, not the ApplyResult.get inside it.
    for filename, qualname, f in reversed(by_place):
        found = _recognise(filename, qualname, f, by_place)
        if found is not None:
            return found
    return None


def _recognise(
    filename: str, qualname: str, f: FrameType, frames: list[tuple[str, str, FrameType]]
) -> CrossWait | None:
    if filename.startswith(_MP):
        base = filename[len(_MP) :]
        if base == "process.py" and qualname == "BaseProcess.join":
            proc = _local(f, "self")
            pid = _process_pid(proc)
            name = _static(proc, "_name")
            return CrossWait(
                kind="join",
                waits_on="multiprocessing.Process.join()",
                target_pids=(pid,) if pid else (),
                target_names=(name if isinstance(name, str) else "?",) if pid else (),
                timeout_s=_timeout(f),
            )
        if base == "pool.py" and qualname.startswith("Pool.") and qualname[5:] in _POOL_APIS:
            return _pool_wait(f"multiprocessing.Pool.{qualname[5:]}()", _local(f, "self"), frames)
        if base == "pool.py" and qualname in ("ApplyResult.get", "ApplyResult.wait", "IMapIterator.next"):
            result = _local(f, "self")
            label = {"IMapIterator.next": "Pool.imap() iterator's next()"}.get(qualname, "AsyncResult." + qualname[12:])
            return _pool_wait(f"multiprocessing.{label}", _static(result, "_pool"), frames)
        if base == "queues.py" and qualname in ("Queue.get", "SimpleQueue.get"):
            queue = _local(f, "self")
            block = _local(f, "block")
            if block is False:
                return None
            reader = _static(queue, "_reader")
            return CrossWait(
                kind="queue",
                waits_on=f"multiprocessing.{qualname}()",
                pipe_fd=_fileno(reader),
                timeout_s=_timeout(f),
            )
        if base == "queues.py" and qualname == "JoinableQueue.join":
            return CrossWait(kind="sync", waits_on="multiprocessing.JoinableQueue.join()")
        if base == "connection.py" and qualname in _CONNECTION_APIS:
            conn = _local(f, "self")
            timeout = _timeout(f) if qualname.endswith("poll") else None
            return CrossWait(
                kind="pipe",
                waits_on=f"multiprocessing.connection.Connection.{qualname.rsplit('.', 1)[1]}()",
                pipe_fd=_fileno(conn),
                timeout_s=timeout,
            )
        if base == "synchronize.py" and qualname in _SYNC_APIS:
            return CrossWait(kind="sync", waits_on=f"multiprocessing.{qualname}()", timeout_s=_timeout(f))
        return None
    if filename.startswith(_FUTURES):
        base = filename[len(_FUTURES) :]
        if base == "_base.py" and qualname in ("Future.result", "Future.exception"):
            return _future_wait(f"concurrent.futures.{qualname}()", [_local(f, "self")], _timeout(f), frames)
        if base == "_base.py" and qualname in ("wait", "as_completed"):
            fs = _local(f, "fs")
            try:
                futures = list(fs or ())
            except Exception:
                futures = []
            return _future_wait(f"concurrent.futures.{qualname}()", futures, _timeout(f), frames)
        if base == "process.py" and qualname == "ProcessPoolExecutor.shutdown":
            executor = _local(f, "self")
            if _local(f, "wait") is False:
                return None
            pids, names = _processes(_static(executor, "_processes"))
            return CrossWait(
                kind="executor",
                waits_on="concurrent.futures.ProcessPoolExecutor.shutdown() waits for its workers",
                target_pids=pids,
                target_names=names,
            )
        return None
    if filename == _SUBPROCESS and qualname in ("Popen.wait", "Popen.communicate", "Popen.__exit__"):
        popen = _local(f, "self")
        pid = _static(popen, "pid")
        if not isinstance(pid, int):
            return None
        args = _static(popen, "args")
        return CrossWait(
            kind="popen",
            waits_on=f"subprocess.{qualname}()",
            target_pids=(pid,),
            target_names=(_command_name(args),),
            timeout_s=_timeout(f),
        )
    return None


_POOL_APIS = frozenset({"map", "starmap", "apply"})
_CONNECTION_APIS = frozenset(
    {"_ConnectionBase.recv", "_ConnectionBase.recv_bytes", "_ConnectionBase.recv_bytes_into", "_ConnectionBase.poll"}
)
_SYNC_APIS = frozenset({"Event.wait", "Condition.wait", "Condition.wait_for", "Barrier.wait"})


def _infrastructure(filename: str, qualname: str) -> bool:
    """A frame of the machinery's own helper threads and worker loops: their waits are the pool's
    business (a result handler reading the workers' pipe, a worker waiting for its next job)."""
    if filename.startswith(_MP):
        base = filename[len(_MP) :]
        if base == "pool.py":
            return qualname.startswith("Pool._handle_") or qualname == "worker"
        return base in ("queues.py", "resource_tracker.py", "forkserver.py", "managers.py") and (
            qualname.startswith(("Queue._feed", "main", "Server.")) or base != "queues.py"
        )
    if filename.startswith(_FUTURES):
        return qualname.startswith(("_ExecutorManagerThread", "_process_worker", "_worker"))
    return False


def _pool_wait(label: str, pool: Any, frames: list[tuple[str, str, FrameType]]) -> CrossWait:
    timeout = None
    for filename, qualname, f in frames:
        if filename.startswith(_MP) and qualname in ("ApplyResult.get", "ApplyResult.wait", "IMapIterator.next"):
            timeout = _timeout(f)
            break
    pids, names = _processes(_static(pool, "_pool"))
    return CrossWait(
        kind="pool",
        waits_on=f"{label} results from the pool's workers",
        target_pids=pids,
        target_names=names,
        timeout_s=timeout,
    )


def _future_wait(
    label: str, futures: list[Any], timeout: float | None, frames: list[tuple[str, str, FrameType]]
) -> CrossWait | None:
    """A wait on futures: a cross-process wait when one of them is a ProcessPoolExecutor job."""
    process_mod = sys.modules.get("concurrent.futures.process")
    manager_cls = getattr(process_mod, "_ExecutorManagerThread", None) if process_mod is not None else None
    if manager_cls is None or not futures:
        return None
    wanted = {id(f) for f in futures}
    for thread in threading.enumerate():
        if not isinstance(thread, manager_cls):
            continue
        pending = _static(thread, "pending_work_items")
        try:
            items = list(pending.values()) if isinstance(pending, dict) else []
        except RuntimeError:  # changed size while copied: look again next time
            items = []
        if any(id(_static(item, "future")) in wanted for item in items):
            pids, names = _processes(_static(thread, "processes"))
            if any("Executor.map" in q for _, q, _f in frames):
                label = "concurrent.futures.ProcessPoolExecutor.map()"
            return CrossWait(
                kind="future",
                waits_on=f"{label} of a ProcessPoolExecutor job, run by its workers",
                target_pids=pids,
                target_names=names,
                timeout_s=timeout,
            )
    return None


def _fileno(conn: Any) -> int | None:
    handle = _static(conn, "_handle")
    return handle if isinstance(handle, int) and handle >= 0 else None


def _command_name(args: Any) -> str:
    if isinstance(args, (list, tuple)) and args:
        parts = [os.path.basename(str(args[0]))] + [str(a) for a in args[1:3]]
        return " ".join(parts)
    return str(args)[:60]


def pool_of_wait(frame: FrameType | None) -> Any:
    """The ``multiprocessing.Pool`` whose results this thread waits for without a timeout, if any."""
    for f in _machinery(frame):
        code = f.f_code
        if code.co_filename != _MP + "pool.py":
            continue
        qualname = _qualname(f)
        if qualname in ("ApplyResult.get", "ApplyResult.wait", "IMapIterator.next"):
            if _timeout(f) is not None:
                return None
            return _static(_local(f, "self"), "_pool")
    return None


def idle_worker(frame: FrameType | None) -> bool:
    """True when this thread is a pool or executor worker process's main loop waiting for its next job."""
    depth = 0
    while frame is not None and depth < _MAX_DEPTH:
        filename, name = frame.f_code.co_filename, frame.f_code.co_name
        if (filename == _MP + "pool.py" and name == "worker") or (
            filename == _FUTURES + "process.py" and name == "_process_worker"
        ):
            return frame.f_lineno in _worker_get_lines(frame)
        frame = frame.f_back
        depth += 1
    return False


def _worker_get_lines(frame: FrameType) -> set[int]:
    """The lines of a worker loop that fetch the next job (``get()``), from its source."""
    code = frame.f_code
    lines = _get_lines_cache.get(code)
    if lines is None:
        import linecache

        lines = set()
        start = code.co_firstlineno
        for offset in range(400):
            text = linecache.getline(code.co_filename, start + offset)
            if not text:
                break
            if "get(" in text and ("task" in text or "call_item" in text):
                lines.add(start + offset)
        _get_lines_cache[code] = lines
    return lines


_get_lines_cache: dict[types.CodeType, set[int]] = {}
