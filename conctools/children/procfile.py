"""The per-process data file: what one process of a run hands to the report (coverage.py's
parallel mode, for concurrency).

Every followed process owns one file in the run folder, ``<pid>-<start>.json``, rewritten
whole (a temporary file, then an atomic rename) every ``flush_interval_s`` and when it ends,
so a reader never sees half a file and a child that crashes or is killed loses at most the
last interval. A process that finds itself deadlocked or hung also drops a small
``<pid>-<start>.stuck`` file next to it: the parent's monitor looks for those.

The file holds the process's identity (pid, parent, name, argv, start method), its CPU time
and peak RSS, the stacks of its threads at the last write, what its threads wait for in other
processes, the exit statuses of the children it reaped, and its whole report
(:meth:`conctools.recorder.Snapshot.to_dict`).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from types import FrameType

from conctools._context import current_frames, frames_of
from conctools._typing import Any
from conctools.children.waits import cross_wait, idle_worker
from conctools.recorder import Recorder

__all__ = [
    "SCHEMA",
    "ProcessIdentity",
    "build_record",
    "cpu_and_rss",
    "read_records",
    "sync_file",
    "sync_state",
    "thread_states",
    "write_atomic",
]

SCHEMA = "conctools.process/1"
SYNC_SCHEMA = "conctools.sync/1"
_MAX_THREADS = 64  # threads whose last stack a record keeps


def _hostname() -> str:
    """``socket.gethostname()``, without importing ``socket`` (a new interpreter pays for each import)."""
    uname = getattr(os, "uname", None)
    if uname is not None:
        return str(uname().nodename)
    import socket

    return socket.gethostname()


class ProcessIdentity:
    """Who a process is, fixed when it starts being followed (a plain class: a ``@dataclass``
    would import ``dataclasses`` and ``inspect`` into every followed child)."""

    __slots__ = ("argv", "host", "name", "pid", "ppid", "start_method", "started_ns", "started_wall", "target")

    def __init__(
        self,
        *,
        pid: int,
        ppid: int,
        start_method: str,  # "run" (the program itself), "fork", "spawn", "forkserver", "exec", "os.fork", ...
        started_wall: float,
        started_ns: int,
        argv: list[str] | None = None,
        host: str | None = None,
        name: str | None = None,  # as multiprocessing names it, once known
        target: str | None = None,  # its Process's target function
    ) -> None:
        self.pid = pid
        self.ppid = ppid
        self.start_method = start_method
        self.started_wall = started_wall
        self.started_ns = started_ns
        self.argv: list[str] = [] if argv is None else argv
        self.host: str = _hostname() if host is None else host
        self.name = name
        self.target = target

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={getattr(self, name)!r}" for name in _IDENTITY_FIELDS)
        return f"ProcessIdentity({values})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _IDENTITY_FIELDS)

    __hash__ = None  # type: ignore[assignment]  # mutable, as the @dataclass it was

    @property
    def key(self) -> str:
        """The file name stem: a pid reused later in the run gets a file of its own."""
        return f"{self.pid}-{self.started_ns}"

    @classmethod
    def here(cls, start_method: str, argv: list[str] | None = None) -> ProcessIdentity:
        """This process, as of now."""
        return cls(
            pid=os.getpid(),
            ppid=os.getppid(),
            start_method=start_method,
            started_wall=time.time(),
            started_ns=time.monotonic_ns(),
            argv=list(sys.argv if argv is None else argv),
        )


_IDENTITY_FIELDS = ("pid", "ppid", "start_method", "started_wall", "started_ns", "argv", "host", "name", "target")


def cpu_and_rss() -> tuple[float, float, int]:
    """(user CPU s, system CPU s, peak RSS bytes) of this process (a forked child starts at 0 CPU)."""
    times = os.times()
    peak = 0
    try:
        import resource

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = int(maxrss) if sys.platform == "darwin" else int(maxrss) * 1024
    except (ImportError, OSError, ValueError):
        pass
    return float(times.user), float(times.system), peak


def process_name() -> tuple[str | None, str | None]:
    """(name, target) of this process as ``multiprocessing`` knows it, when it is one of its children."""
    mp = sys.modules.get("multiprocessing.process")
    if mp is None:
        return None, None
    try:
        current = mp.current_process()
        if current.name == "MainProcess" and mp.parent_process() is None:
            return None, None
        from conctools.children.reaping import target_name

        return str(current.name), target_name(getattr(current, "_target", None))
    except Exception:
        return None, None


def thread_states(frames: dict[int, FrameType] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The last stacks of the program's threads, and what each waits for in other processes."""
    if frames is None:
        frames = current_frames(own_from=1)
    names = {t.ident: t for t in threading.enumerate()}
    threads: list[dict[str, Any]] = []
    waits: list[dict[str, Any]] = []
    main_id = threading.main_thread().ident
    mpsync = sys.modules.get("conctools.children.mpsync")
    for tid in sorted(frames, key=lambda t: (t != main_id, t)):
        thread = names.get(tid)
        name = thread.name if thread is not None else f"thread-{tid}"
        if name.startswith("conctools-"):
            continue
        frame = frames[tid]
        if len(threads) < _MAX_THREADS:
            stack = child_stack(frames_of(frame, limit=48))
            threads.append(
                {
                    "thread_id": tid,
                    "thread_name": name,
                    "daemon": bool(thread.daemon) if thread is not None else True,
                    "idle_worker": idle_worker(frame),
                    "stack": stack,
                }
            )
        shared = mpsync.wait_of(tid) if mpsync is not None else None
        if shared is not None:  # a multiprocessing lock, event, condition, barrier or semaphore
            waits.append(
                {
                    "thread_id": tid,
                    "thread_name": name,
                    "kind": "mpsync",
                    "waits_on": shared["waits_on"],
                    "sync_key": shared["key"],
                    "sync": shared["sync"],
                    "since_wall": shared["since_wall"],
                    "target_pids": [],
                    "target_names": [],
                    "pipe": None,
                    "timeout_s": shared["timeout_s"],
                    "stack": child_stack(frames_of(frame, limit=48)),
                }
            )
            continue
        wait = cross_wait(frame)
        if wait is not None:
            waits.append(
                {
                    "thread_id": tid,
                    "thread_name": name,
                    "kind": wait.kind,
                    "waits_on": wait.waits_on,
                    "target_pids": list(wait.target_pids),
                    "target_names": list(wait.target_names),
                    "pipe": _pipe_identity(wait.pipe_fd),
                    "timeout_s": wait.timeout_s,
                    "stack": child_stack(frames_of(frame, limit=48)),
                }
            )
    return threads, waits


def _frame_dict(f: Any) -> dict[str, Any]:
    return {"filename": f.filename, "lineno": f.lineno, "function": f.function, "line": f.line}


_LAUNCH = os.path.join("multiprocessing", "popen_fork.py")


def child_stack(frames: Any) -> list[dict[str, Any]]:
    """A stack as a record keeps it: in a forked child, without the frames it inherited from its
    parent (below ``multiprocessing``'s ``_launch``, where the child began: it never returns there)."""
    out = []
    for f in frames:
        if f.function == "_launch" and f.filename.endswith(_LAUNCH):
            break
        out.append(_frame_dict(f))
    return out


def _pipe_identity(fd: int | None) -> str | None:
    """``pipe:[123]`` / ``socket:[456]``: what the fd is, as ``/proc`` names it (Linux)."""
    if fd is None:
        return None
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def build_record(
    identity: ProcessIdentity,
    recorder: Recorder | None,
    *,
    final: bool,
    exit_status: int | None = None,
    ended_by: str | None = None,
    reaped: list[dict[str, Any]] | None = None,
    stuck: dict[str, Any] | None = None,
    exit_stack: list[dict[str, Any]] | None = None,
    with_stacks: bool = True,
) -> dict[str, Any]:
    """This process's record, as its file holds it (``with_stacks=False``: no thread stacks)."""
    user, system, peak = cpu_and_rss()
    name, target = process_name()
    name, target = name or identity.name, target or identity.target
    threads, waits = thread_states() if with_stacks else ([], [])
    if exit_stack is not None and threads:
        threads[0] = {**threads[0], "stack": exit_stack}
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "pid": identity.pid,
        "ppid": identity.ppid,
        "host": identity.host,
        "name": name,
        "target": target,
        "argv": identity.argv,
        "start_method": identity.start_method,
        "started_wall": identity.started_wall,
        "started_ns": identity.started_ns,
        "updated_wall": time.time(),
        "final": final,
        "exit_status": exit_status,
        "ended_by": ended_by,
        "cpu_user_s": user,
        "cpu_system_s": system,
        "peak_rss_bytes": peak,
        "threads": threads,
        "waits": waits,
        "reaped": reaped or [],
        "mpsync": sync_state(),
        "stuck": stuck,
        "report": recorder.snapshot().to_dict() if recorder is not None else None,
    }
    return record


def sync_state() -> dict[str, Any] | None:
    """The shared ``multiprocessing`` locks this process holds, waits for and has (``None``: not
    followed, or none; see :mod:`conctools.children.mpsync`)."""
    mpsync = sys.modules.get("conctools.children.mpsync")
    if mpsync is None or not mpsync.installed():
        return None
    state: dict[str, Any] | None = mpsync.sync_state()
    return state


def sync_file(
    identity: ProcessIdentity, state: dict[str, Any], *, final: bool, exit_status: int | None = None
) -> dict[str, Any]:
    """The small ``<key>.sync`` file next to the record: what the run's main process reads at each
    look for processes stuck on each other through shared locks (the record is too big to read then)."""
    name, _target = process_name()
    return {
        "schema": SYNC_SCHEMA,
        "pid": identity.pid,
        "name": name or identity.name,
        "started_wall": identity.started_wall,
        "updated_wall": time.time(),
        "final": final,
        "exit_status": exit_status,
        **state,
    }


def write_atomic(directory: str, name: str, data: dict[str, Any]) -> bool:
    """Write ``data`` as ``directory/name`` atomically; False (and nothing left behind) on failure.

    The folder is never created here: once the run removed it, a late child writes nothing.
    """
    tmp = os.path.join(directory, f".{name}.{threading.get_ident()}.tmp")
    try:
        text = json.dumps(data, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        text = json.dumps(_finite(data), separators=(",", ":"), default=str)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError:
        return False
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, os.path.join(directory, name))
        return True
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False


def _finite(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def read_records(directory: str, suffix: str = ".json") -> list[dict[str, Any]]:
    """Every readable record in the run folder (a file being replaced is read whole or not at all)."""
    out = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    for name in names:
        if name.startswith(".") or not name.endswith(suffix):
            continue
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        wanted = {".json": SCHEMA, ".sync": SYNC_SCHEMA}.get(suffix)
        if isinstance(data, dict) and (wanted is None or data.get("schema") == wanted):
            out.append(data)
    return out
