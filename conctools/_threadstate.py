"""What each thread is doing right now, as the kernel sees it: the GIL monitor's eyes.

Linux shows, for every thread of the process, the system call it is blocked in
(``/proc/self/task/<tid>/syscall``: ``running``, or the call's number and arguments) and its
CPU time and time spent runnable but not running (``/proc/self/task/<tid>/schedstat``). A thread
that waits for the GIL is blocked in ``futex()`` on the GIL's condition variable or mutex; a
thread waiting on a lock, queue or future is blocked in ``futex()`` too, but on another address;
a thread in ``time.sleep`` or a socket call is in another system call. The GIL's address is
found once per process by :func:`calibrate_gil`: a probe thread spins in Python while the
calibrating thread holds the GIL, so the probe must wait for the GIL, and its ``futex()``
address is the GIL's.

The files are read with ``pread`` called through ``ctypes.PyDLL``, which keeps the GIL held
during the read: while the reader holds it, every thread that wants to run Python is waiting
for it, and nothing changes under the reader's feet. (``os.pread`` would release the GIL for
each read and hand it to a waiting thread.)

Everything here degrades instead of failing: without ``/proc`` (not Linux) :func:`open_reader`
returns ``None``; a thread that ended reads as ``None``.
"""

from __future__ import annotations

import _thread
import ctypes
import opcode
import operator
import os
import sys
import time
from collections.abc import Callable
from types import FrameType

from conctools._context import current_frames
from conctools._log import get_logger
from conctools._records import record
from conctools._typing import Any

__all__ = [
    "CALL_OPCODES",
    "GilZone",
    "StateReader",
    "at_call",
    "calibrate_gil",
    "current_frames",
    "futex_syscall",
    "gil_enabled",
    "open_reader",
    "sleep_syscalls",
]

_log = get_logger("conctools.gil")

# Instructions that call into C code (or a lock's __enter__, or an import): the only places where
# a thread can be running C code that released the GIL, or be blocked in a system call.
CALL_OPCODES = frozenset(
    op
    for name, op in opcode.opmap.items()  # dis.opmap, without importing dis
    if name.startswith("CALL")
    or name in {"PRECALL", "BEFORE_WITH", "BEFORE_ASYNC_WITH", "IMPORT_NAME", "IMPORT_FROM", "LOAD_SPECIAL"}
)

# Sleeping system calls by machine (everything else a thread blocks in, but futex, is I/O).
_SLEEP_SYSCALLS = {"x86_64": (35, 230), "aarch64": (101, 115), "arm64": (101, 115)}
_FUTEX_SYSCALLS = {"x86_64": 202, "aarch64": 98, "arm64": 98}


def sleep_syscalls() -> frozenset[int]:
    """The numbers of ``nanosleep`` and ``clock_nanosleep`` on this machine (empty if unknown)."""
    return frozenset(_SLEEP_SYSCALLS.get(_machine(), ()))


def gil_enabled() -> bool:
    """False on a free-threaded build running without the GIL (3.13t); True everywhere else."""
    check: Callable[[], bool] | None = getattr(sys, "_is_gil_enabled", None)
    if check is None:
        return True
    try:
        return bool(check())
    except Exception:
        return True


_call = operator.call


def at_call(frame: FrameType | None) -> bool:
    """True when ``frame`` is stopped on an instruction that calls C code."""
    if frame is None:
        return True  # no Python frame: the thread runs C code only
    try:
        return frame.f_code.co_code[frame.f_lasti] in CALL_OPCODES
    except (IndexError, ValueError):
        return True


@record
class GilZone:
    """Where threads waiting for the GIL sleep: ``futex()`` (number ``futex_nr``) on ``lo..hi``."""

    futex_nr: int
    lo: int
    hi: int

    def __contains__(self, address: int) -> bool:
        return self.lo <= address < self.hi


# The GIL's state holds its condition variable, its mutex and (FORCE_SWITCHING) a second pair:
# about 200 bytes from the start of the first condition variable.
_ZONE_BEFORE = 64
_ZONE_AFTER = 208


class StateReader:
    """Reads threads' system calls and CPU times from ``/proc`` without releasing the GIL."""

    def __init__(self) -> None:
        self._pread: Callable[[int, object, int, int], int] | None = None
        self._buf: ctypes.Array[ctypes.c_char] = ctypes.create_string_buffer(512)
        self._usleep: Callable[[int], int] | None = None
        self._libc: Any = None
        self._file_buf: ctypes.Array[ctypes.c_char] | None = None
        try:
            libc = ctypes.PyDLL(None)
            fn = libc.pread
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_long]
            fn.restype = ctypes.c_ssize_t
            self._pread = fn
            sleep = libc.usleep
            sleep.argtypes = [ctypes.c_uint]
            sleep.restype = ctypes.c_int
            self._usleep = sleep
            self._libc = libc
        except (AttributeError, OSError, TypeError):  # no pread in the process: os.pread releases the GIL
            _log.debug("conctools: ctypes pread unavailable; reading /proc with os.pread", exc_info=True)
        self.holds_gil = self._pread is not None
        self._dir_calls: tuple[Any, Any, Any] | None = None
        self._file_calls: tuple[Any, Any, Any] | None = None

    def pause(self, microseconds: int) -> None:
        """Wait without releasing the GIL and without using the CPU (others may need it to move on)."""
        if self._usleep is not None:
            self._usleep(microseconds)
            return
        until = time.perf_counter_ns() + microseconds * 1000
        while time.perf_counter_ns() < until:
            pass

    def open(self, native_id: int, name: str) -> int | None:
        """An open descriptor of ``/proc/self/task/<native_id>/<name>``, or ``None``."""
        try:
            return os.open(f"/proc/self/task/{native_id}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None

    def read(self, fd: int) -> bytes | None:
        """The file's current content (re-read from the start), or ``None`` once the thread ended."""
        pread = self._pread
        if pread is None:
            try:
                return os.pread(fd, 512, 0) or None
            except OSError:
                return None
        n = pread(fd, self._buf, 512, 0)
        if n <= 0:
            return None
        return self._buf.raw[:n]

    def read_file(self, path: bytes, size: int = 8192) -> bytes | None:
        """A small file's content, opened and read without releasing the GIL; ``None`` when it cannot be
        read so, or is ``size`` bytes or longer (the caller reads it the usual way)."""
        calls = self._file_calls
        if calls is None:
            calls = self._file_calls = self._libc_calls(
                ("open", [ctypes.c_char_p, ctypes.c_int], ctypes.c_int),
                ("read", [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t], ctypes.c_ssize_t),
                ("close", [ctypes.c_int], ctypes.c_int),
            )
        if not calls:
            return None
        open_, read, close = calls
        buf = self._file_buf
        if buf is None or len(buf) < size:
            buf = self._file_buf = ctypes.create_string_buffer(size)
        fd = open_(path, os.O_RDONLY | os.O_CLOEXEC)
        if fd < 0:
            return None
        try:
            n = read(fd, buf, size)
        finally:
            close(fd)
        return buf.raw[:n] if 0 <= n < size else None

    def count_entries(self, path: bytes) -> int | None:
        """The entries of a directory, ``.`` and ``..`` left out, read without releasing the GIL (its own
        descriptor of the directory is one of them under ``/proc/self/fd``); ``None`` when it cannot."""
        calls = self._dir_calls
        if calls is None:
            calls = self._dir_calls = self._libc_calls(
                ("opendir", [ctypes.c_char_p], ctypes.c_void_p),
                ("readdir", [ctypes.c_void_p], ctypes.c_void_p),
                ("closedir", [ctypes.c_void_p], ctypes.c_int),
            )
        if not calls:
            return None
        opendir, readdir, closedir = calls
        d = opendir(path)
        if not d:
            return None
        n = 0
        try:
            while readdir(d):
                n += 1
        finally:
            closedir(d)
        return max(0, n - 2)

    def _libc_calls(self, *specs: tuple[str, list[Any], Any]) -> tuple[Any, ...]:
        """libc's functions by name, typed (through ``PyDLL``: called with the GIL held); ``()`` if any is missing."""
        if self._libc is None:
            return ()
        try:
            out = []
            for name, argtypes, restype in specs:
                fn = getattr(self._libc, name)
                fn.argtypes = argtypes
                fn.restype = restype
                out.append(fn)
            return tuple(out)
        except (AttributeError, TypeError):
            return ()

    @staticmethod
    def close(fd: int | None) -> None:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def open_reader() -> StateReader | None:
    """A :class:`StateReader` when this system shows per-thread system calls, else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    reader = StateReader()
    fd = reader.open(_thread.get_native_id(), "schedstat")
    if fd is None:
        return None
    try:
        ok = reader.read(fd) is not None
    finally:
        reader.close(fd)
    probe = reader.open(_thread.get_native_id(), "syscall")
    if probe is None:
        return None
    reader.close(probe)
    return reader if ok else None


def _machine() -> str:
    """``platform.machine()`` without importing ``platform`` (~1 ms of ``conctools run``'s start-up)."""
    if hasattr(os, "uname"):
        return os.uname().machine
    import platform

    return platform.machine()


_calibration_lock = _thread.allocate_lock()
_calibrated: list[GilZone | None] = []  # one entry once calibrated (None: it failed)


def calibrate_gil(reader: StateReader, *, attempts: int = 200) -> GilZone | None:
    """Find where threads wait for the GIL (once per process; later calls return the same answer).

    A probe thread (``conctools-gil-probe``) waits on a plain lock. This thread, holding the GIL,
    notes the probe's system call there (``futex()`` on the lock), releases the lock and, still
    holding the GIL, reads the probe's system call again: woken, the probe must wait for the GIL,
    so it is now in ``futex()`` at another address, the GIL's. Twice, to check the answer. Takes
    well under a millisecond of CPU (the probe never spins: ``conctools run`` calibrates before
    the program starts, see benchmarks/bench_run.py), at most half a second on a busy machine.
    """
    with _calibration_lock:
        if _calibrated:
            return _calibrated[0]
        zone = None
        if reader.holds_gil and gil_enabled():
            try:
                zone = _probe_gil(reader, attempts)
            except Exception:
                _log.debug("conctools: GIL calibration failed", exc_info=True)
        if zone is None:
            _log.debug("conctools: could not find the GIL's address; using the bytecode heuristic")
        _calibrated.append(zone)
        return zone


def _probe_gil(reader: StateReader, attempts: int) -> GilZone | None:
    from conctools._context import internal_thread

    go = _thread.allocate_lock()
    go.acquire()
    state = {"run": True, "tid": 0}

    def park() -> None:
        state["tid"] = _thread.get_native_id()
        while state["run"]:
            go.acquire()  # blocks without the GIL until the calibrating thread lets it go

    probe = internal_thread(park, "conctools-gil-probe")
    probe.start()
    fd = None
    seen: list[tuple[int, int]] = []
    try:
        deadline = time.monotonic() + 1.0
        while not state["tid"] and time.monotonic() < deadline:
            time.sleep(0.0002)
        if not state["tid"]:
            return None
        fd = reader.open(state["tid"], "syscall")
        if fd is None:
            return None
        give_up = time.monotonic() + 0.5
        parked = None
        for _ in range(attempts):
            if time.monotonic() > give_up:
                break
            if parked is None:
                parked = _read_parked(reader, fd, give_up)  # the probe in futex() on `go`
                if parked is None:
                    continue
            go.release()  # this thread keeps the GIL: the probe wakes and waits for it
            reading = _read_blocked(reader, fd, other_than=parked)
            again = _read_parked(reader, fd, give_up)  # the GIL to the probe, which parks again
            # A reading counts only if the probe parked again where it was: then `parked` was its lock
            # (not a wait for the GIL that outlasted this thread's sleeps on a loaded machine).
            if reading is not None and again == parked:
                seen.append(reading)
                if len(seen) >= 2:
                    break
            parked = again
    finally:
        state["run"] = False
        if go.locked():
            go.release()
        probe.join(2.0)
        reader.close(fd)
    if not seen:
        return None
    nrs = {nr for nr, _ in seen}
    if len(nrs) != 1:
        return None
    nr = nrs.pop()
    expected = _FUTEX_SYSCALLS.get(_machine())
    if expected is not None and nr != expected:
        return None
    addresses = [a for _, a in seen]
    if max(addresses) - min(addresses) > _ZONE_AFTER:
        return None
    return GilZone(futex_nr=nr, lo=min(addresses) - _ZONE_BEFORE, hi=max(addresses) + _ZONE_AFTER)


def _read_parked(reader: StateReader, fd: int, give_up: float) -> tuple[int, int] | None:
    """The probe's (system call, first argument) once it sleeps on its lock: the same blocked
    reading twice in a row, the GIL let go in between (it needs the GIL to get to its lock)."""
    last = None
    while time.monotonic() < give_up:
        raw = reader.read(fd)
        if raw is None:
            return None
        reading = _blocked(raw)
        if reading is not None and reading == last:
            return reading
        last = reading
        time.sleep(0.0002)
    return None


def _blocked(raw: bytes) -> tuple[int, int] | None:
    """(system call, first argument) of a ``/proc/.../syscall`` line of a blocked thread, else ``None``."""
    parts = raw.split()
    if len(parts) >= 2 and parts[0] != b"running" and parts[0].lstrip(b"-").isdigit():
        return int(parts[0]), int(parts[1], 16)
    return None


def _read_blocked(reader: StateReader, fd: int, *, other_than: tuple[int, int]) -> tuple[int, int] | None:
    """The probe's (system call, first argument) once it blocks elsewhere than ``other_than``, polled
    for up to 3 ms while this thread keeps the GIL (woken, the probe may wait for a CPU a while first)."""
    until = time.perf_counter_ns() + 3_000_000
    while True:
        raw = reader.read(fd)
        if raw is None:
            return None
        reading = _blocked(raw)
        if reading is not None and reading != other_than:
            return reading
        if time.perf_counter_ns() > until:
            return None
        for _ in range(200):  # keep the GIL: a call that releases it would hand it to the probe
            pass


def futex_syscall() -> int | None:
    """The number of ``futex`` on this machine, when known."""
    return _FUTEX_SYSCALLS.get(_machine())
