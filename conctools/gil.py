"""The GIL monitor: which threads wanted to run Python code at the same time, how long each one
waited for the GIL, and how many of its cores the program used.

CPU-bound Python code in threads runs one thread at a time: each thread must hold the GIL to run
Python code, so two threads crunching numbers on two cores take as long as one thread doing both
jobs. This module measures that, per thread, while the program runs::

    with conctools.watch_gil() as gil:      # also @conctools.watch_gil, and on in `conctools run`
        run_the_threads()
    for t in gil.threads():
        print(t.name, t.cpu_s, t.gil_wait_s)

How: a daemon thread (``conctools-gil``) wakes every ``interval_s`` (10 ms), takes the GIL, and
reads each thread's state from the kernel (:mod:`conctools._threadstate`): blocked in ``futex()``
on the GIL (it wants to run Python), running C code that released the GIL, blocked on I/O or
sleeping, or blocked on a lock, queue or future. While the sampler holds the GIL nobody else
runs Python, so every thread that wanted to run Python is waiting for it at that instant: the
sampler counts the threads that *wanted* the GIL; which of them held it in between comes from
each thread's CPU time (``schedstat``). Over the run, time when at least one thread wanted the
GIL is time the GIL was held; it is shared among the threads in proportion to the CPU time they
spent in Python, and the rest of each thread's wanting time is its wait for the GIL. Python
stacks (``sys._current_frames()``, read without its 3.11 deadlock) give each thread's hottest
lines, the function it runs, and what a blocked thread waits for.

The results are the ``"gil"`` section of the report (plain data; ``conctools.reporting.gil_text``
turns it into the "CPU-bound threads" section and the bottleneck verdict) and a
:class:`~conctools.events.GilSampleEvent` every quarter second (a counter track on the timeline).
Memory is bounded: at most ``MAX_SITES`` lines per thread and ``MAX_THREADS`` finished threads
(older ones are folded into one row). The sampler keeps its own CPU under ~0.5% of one core by
sampling less often when a sample costs more (many threads). Each sample also stops, for its
duration, the thread that was running Python: while at most one thread of the program has been
running (an asyncio program's loop thread, a script with idle helper threads), nothing can contend
for the GIL, and the sampler samples ``QUIET_SLOWDOWN`` times less often until a sample finds two
threads running again.

Without ``/proc`` (not Linux) the monitor reports the parallelism only. On a free-threaded build
running without the GIL it reports parallelism and running threads, and no GIL waits.
"""

from __future__ import annotations

import _thread
import contextlib
import functools
import linecache
import os
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType, ModuleType, TracebackType

from conctools._context import internal_thread, is_conctools_frame, main_yields_gil, wait_lock
from conctools._imports import imported, when_imported
from conctools._log import get_logger
from conctools._records import record
from conctools._threadstate import (
    StateReader,
    at_call,
    calibrate_gil,
    current_frames,
    futex_syscall,
    gil_enabled,
    open_reader,
    sleep_syscalls,
)
from conctools._typing import Any, TypeVar, cast, overload
from conctools.events import GilSampleEvent
from conctools.recorder import Recorder, get_recorder

__all__ = ["GilMonitor", "ThreadGilStats", "active_monitor", "live_summary", "watch_gil"]

_log = get_logger("conctools.gil")

F = TypeVar("F", bound=Callable[..., Any])

# loop -> the task it is running now (3.11-3.13), read to charge a loop thread's samples to its
# task; asyncio's once the program imports it (none before: no loop runs), or none on a Python
# without it (no per-task figures).
_current_tasks: Any = None


def _bind_asyncio(asyncio: ModuleType) -> None:
    global _current_tasks
    _current_tasks = getattr(asyncio.tasks, "_current_tasks", None)


when_imported("asyncio", _bind_asyncio)

THREAD_NAME = "conctools-gil"
DEFAULT_INTERVAL_S = 0.01
WINDOW_S = 0.25  # one GilSampleEvent per window
MAX_COST_SHARE = 0.005  # the sampler's own CPU: at most ~0.5% of a core
# After QUIET_SAMPLES samples in a row that found at most one of the program's threads running
# (Python or C), the sampler waits QUIET_SLOWDOWN times its interval: a sample takes the GIL from the
# running thread (a forced switch, two context switches), and there is no contention to measure.
QUIET_SAMPLES = 10
QUIET_SLOWDOWN = 10
COST_WINDOW = 5  # the sampler is paced by the median cost of this many samples
MAX_THREADS = 256  # finished threads kept one by one; older ones are folded into one row
MAX_SITES = 128  # lines counted per thread (the rarest are dropped past this)
MAX_TASKS = 1000  # task names counted one by one; later ones share one row
SECTION_TASKS = 20
SECTION_SITES = 5  # hottest lines per thread in the section

# What a sample says a thread was doing.
PYTHON, NATIVE, IO, SLEEP, SYNC, IDLE, UNKNOWN = range(7)
STATES = ("python", "native", "io", "sleep", "sync", "idle", "unknown")
_RECHECK = -1  # running inside a C call: read again at the end of the sample
RECHECK_US = 50  # the pause before the second read (the GIL held, the CPU left to the others)
BUSY_CPU_SHARE = 0.25  # a thread that used a CPU this share of the time was running, not waking up
# A sample that has held the GIL this long (the sampler preempted on a loaded machine, or many
# threads to read): a thread found at the GIL on its way out of a C call may have come out during
# the sample, and waits for the sampler only. It counts as the C code it was running.
LATE_NS = 1_000_000

_sep = os.sep
_FUTURES = f"{_sep}concurrent{_sep}futures{_sep}"
_ASYNCIO = f"{_sep}asyncio{_sep}"
# Frames that are a thread's plumbing, not its work: the entry function is the first one below them.
_PLUMBING = (f"{_sep}threading.py", _FUTURES, _ASYNCIO, f"{_sep}runpy.py", "<frozen runpy>", f"{_sep}contextlib.py")
# Frames of the waiting machinery: a blocked thread is judged by the first frame outside them.
_WAIT_MACHINERY = (f"{_sep}threading.py", f"{_sep}queue.py")
_MACHINERY = (*_WAIT_MACHINERY, f"{_sep}selectors.py")
_JOIN_FUNCTIONS = frozenset({"join", "_wait_for_tstate_lock", "_shutdown"})
_FUTURE_WAITS = frozenset({"result", "exception", "wait", "as_completed", "shutdown", "__exit__"})
# Waits for multiprocessing's child processes: a join (the end of a child), a pool's results. The
# work is another process's (which has its own figures): such a thread is idle, as in a thread join.
_MP = f"{_sep}multiprocessing{_sep}"
_CHILD_WAITS = {
    f"{_MP}process.py": frozenset({"join"}),
    f"{_MP}popen_fork.py": frozenset({"wait", "poll"}),
    f"{_MP}popen_forkserver.py": frozenset({"poll"}),
    # (its shutdown: terminate() helps the task handler finish, waiting for the idle workers to let go of the
    # call queue's read lock, which they hold while they wait for a job: the workers' and handlers' doing)
    f"{_MP}pool.py": frozenset(
        {
            "wait",
            "get",
            "map",
            "starmap",
            "join",
            "next",
            "__exit__",
            "terminate",
            "_terminate_pool",
            "_help_stuff_finish",
        }
    ),
}


def _listed(table: dict[str, frozenset[str]], filename: str, function: str) -> bool | None:
    """Whether ``function`` is listed for ``filename``'s module in ``table`` (file suffix -> functions);
    None when the file is not in the table."""
    for suffix, functions in table.items():
        if filename.endswith(suffix):
            return function in functions
    return None


def _child_wait(filename: str, function: str) -> bool:
    """True for a frame of multiprocessing that waits for child processes (see _CHILD_WAITS)."""
    return _MP in filename and bool(_listed(_CHILD_WAITS, filename, function))


@record(kw_only=True)
class ThreadGilStats:
    """Where one thread's time went while the monitor ran (seconds; estimates from samples).

    ``python_s`` ran Python code (holding the GIL), ``gil_wait_s`` was ready to run Python code
    but waited for the GIL, ``native_s`` ran C code that released the GIL, ``cpu_wait_s`` was
    ready to run but waited for a CPU (the machine was busy), ``io_s`` / ``sleep_s``
    waited on I/O / slept, ``sync_s`` waited on a lock, condition, queue or future, ``idle_s``
    waited for work or for other threads (an idle pool worker, ``join()``, ``future.result()``) or
    for child processes (``Process.join()``, a ``multiprocessing`` pool's results).
    ``cpu_s`` is exact (the kernel's count). ``entry`` is the function the thread runs (its target,
    or the function submitted to its pool); ``pool`` is ``"ThreadPoolExecutor"``, ``"asyncio"``
    (the event loop's default executor: ``asyncio.to_thread``, ``run_in_executor(None, ...)``) or None.
    """

    name: str
    thread_id: int
    native_id: int
    alive: bool
    threads: int  # 1, or how many finished threads this row folds together
    wall_s: float
    cpu_s: float
    runqueue_s: float
    python_s: float
    gil_wait_s: float
    native_s: float
    cpu_wait_s: float
    io_s: float
    sleep_s: float
    sync_s: float
    idle_s: float
    unknown_s: float
    samples: int
    entry: str | None
    pool: str | None
    loop: bool
    hot: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as in the ``gil`` section of ``report.json``."""
        out = {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]
        out["hot"] = [dict(h) for h in self.hot]
        return out


class _Track:
    """One thread's running counts (only the sampler thread writes them)."""

    __slots__ = (
        "alive",
        "count",
        "cpu",
        "cpu0",
        "cpu_read_ns",
        "entries",
        "fd_sched",
        "fd_sys",
        "ident",
        "io_cache",
        "last_state",
        "loop",
        "name",
        "native_id",
        "pool",
        "rq",
        "rq0",
        "samples",
        "sites",
        "thread",
        "times",
        "wait_cache",
    )

    def __init__(self, thread: threading.Thread | None, ident: int, native_id: int, name: str) -> None:
        self.thread = thread
        self.ident = ident
        self.native_id = native_id
        self.name = name
        self.alive = True
        self.count = 1
        self.fd_sys: int | None = None
        self.fd_sched: int | None = None
        self.cpu0 = self.cpu = 0
        self.cpu_read_ns = 0  # when cpu was last read
        self.rq0 = self.rq = 0
        self.times = [0] * len(STATES)  # nanoseconds per state
        self.samples = 0
        self.sites: dict[tuple[str, int, str], list[int]] = {}  # -> [python samples, native samples]
        self.entries: dict[str, int] = {}
        self.pool: str | None = None
        self.loop = False
        # (the stack's key, see _stack_key; the state): a blocked thread's state is judged once per wait
        self.wait_cache: tuple[tuple[int, ...], int] = ((), SYNC)
        self.io_cache: tuple[tuple[int, ...], int] = ((), IO)
        self.last_state = UNKNOWN

    def merge(self, other: _Track) -> None:
        """Fold a finished thread's counts into this row."""
        self.count += other.count
        self.cpu += other.cpu - other.cpu0
        self.rq += other.rq - other.rq0
        self.samples += other.samples
        for i, ns in enumerate(other.times):
            self.times[i] += ns
        for key, counts in other.sites.items():
            mine = self.sites.setdefault(key, [0, 0])
            mine[0] += counts[0]
            mine[1] += counts[1]
        for name, n in other.entries.items():
            self.entries[name] = self.entries.get(name, 0) + n
        _prune(self.sites)


def _prune(sites: dict[tuple[str, int, str], list[int]]) -> None:
    if len(sites) > MAX_SITES:
        keep = sorted(sites.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))[: MAX_SITES // 2]
        sites.clear()
        sites.update(keep)


def _plumbing(filename: str) -> bool:
    return is_conctools_frame(filename) or any(p in filename for p in _PLUMBING)


# Threads have kernel ids here (threading sets ``native_id`` when a thread starts).
_NATIVE_IDS = hasattr(_thread, "get_native_id")

_STDLIB = os.path.dirname(threading.__file__) + _sep
_NOT_STDLIB = (f"{_sep}site-packages{_sep}", f"{_sep}dist-packages{_sep}")


STACK_KEY_DEPTH = 16  # as deep as _wait_kind looks


def _stack_key(frame: FrameType) -> tuple[int, ...]:
    """What a blocked thread's judged state depends on: the code and offset of its innermost frames.
    Not the frame object's id: a frame freed when its wait ended is often reused, at the same address,
    for the next wait's frame of the same function (``Condition.wait`` at the same line, called from
    ``Thread.start()`` and then from ``Future.result()``), which is another wait."""
    key: list[int] = []
    f: FrameType | None = frame
    while f is not None and len(key) < 2 * STACK_KEY_DEPTH:
        key.append(id(f.f_code))
        key.append(f.f_lasti)
        f = f.f_back
    return tuple(key)


def _stdlib_only(frame: FrameType | None) -> bool:
    """True when every frame from ``frame`` outwards is the standard library's (no program code;
    conctools' own frames, such as its thread-start wrapper or a traced wait, say nothing)."""
    f = frame
    depth = 0
    while f is not None and depth < 64:
        filename = f.f_code.co_filename
        if not is_conctools_frame(filename) and (
            not (filename.startswith(_STDLIB) or filename.startswith("<frozen "))
            or any(p in filename for p in _NOT_STDLIB)
        ):
            return False
        f = f.f_back
        depth += 1
    return f is None


# A process pool's worker waiting for its next job (in its call queue, or on the queue's shared lock
# while another worker reads): the pool has no work for it, as an idle thread pool worker. Its stack
# may hold its parent's program frames below (a forked worker), so only the frames above count.
_WORK_WAITS = {
    f"{_FUTURES}process.py": frozenset({"_process_worker"}),
    f"{_sep}multiprocessing{_sep}pool.py": frozenset({"worker"}),
}


def _waits_for_work(frame: FrameType) -> bool:
    """True when a process pool's worker waits for its next job (see _WORK_WAITS): the frames from
    ``frame`` out to the worker's loop are all the standard library's (or conctools')."""
    f: FrameType | None = frame
    depth = 0
    while f is not None and depth < 16:
        filename = f.f_code.co_filename
        if not is_conctools_frame(filename):
            listed = _listed(_WORK_WAITS, filename, f.f_code.co_name)
            if listed is not None:
                return listed
            if not (filename.startswith(_STDLIB) or filename.startswith("<frozen ")):
                return False  # the program's own code waits (its I/O, its lock)
        f = f.f_back
        depth += 1
    return False


def _waits_for_children(frame: FrameType) -> bool:
    """True when a thread blocked in a system call waits for multiprocessing's children to end
    (``Process.join()``: ``waitpid`` or a wait on the child's sentinel, under conctools' frames)."""
    f: FrameType | None = frame
    depth = 0
    while f is not None and depth < 8:
        filename = f.f_code.co_filename
        if not is_conctools_frame(filename):
            if _child_wait(filename, f.f_code.co_name):
                return True
            if _MP not in filename and not filename.endswith(_MACHINERY):
                return False  # the program's own code (or another library's) waits: its I/O
        f = f.f_back
        depth += 1
    return False


def _user_frame(frame: FrameType | None) -> FrameType | None:
    """The innermost frame outside conctools and the threading/queue/asyncio machinery (the line
    a person would look at), else the innermost frame outside conctools."""
    first = None
    f = frame
    depth = 0
    while f is not None and depth < 32:
        filename = f.f_code.co_filename
        if not is_conctools_frame(filename):
            if first is None:
                first = f
            if not (_plumbing(filename) or filename.endswith(_MACHINERY)):
                return f
        f = f.f_back
        depth += 1
    return first


class GilMonitor:
    """Samples every thread's state on a daemon thread; a context manager and a decorator.

    ``interval_s`` is the sampling period (the sampler takes longer when a sample costs more
    than ~1% of a core). Results go to ``recorder`` (the current one by default) as the ``"gil"``
    section and :class:`~conctools.events.GilSampleEvent` windows; :meth:`threads` and
    :meth:`summary` read them directly, during the run and after :meth:`stop`.
    """

    def __init__(
        self,
        interval_s: float = DEFAULT_INTERVAL_S,
        *,
        recorder: Recorder | None = None,
        section: bool = True,
        events: bool = True,
    ) -> None:
        if not interval_s > 0 or interval_s == float("inf"):
            raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s!r}")
        self.interval_s = float(interval_s)
        self.section = section
        self.events = events
        self._recorder = recorder
        self._rec: Recorder | None = None
        self._stop = wait_lock()  # held while running; stop() releases it
        self._state = _thread.allocate_lock()  # guards the counts against summary()
        self._control = _thread.allocate_lock()
        self._thread: threading.Thread | None = None
        self._reader: StateReader | None = None
        self._reset()

    def _reset(self) -> None:
        self._tracks: dict[int, _Track] = {}
        self._finished: list[_Track] = []
        self._folded: _Track | None = None
        self.samples = 0
        self._started_ns = self._last_ns = time.monotonic_ns()
        self._stopped_ns: int | None = None
        self._cpu0_ns = time.process_time_ns()
        self._cpu_end_ns: int | None = None
        self._own_cpu_ns = 0
        self._last_running = 0  # threads the last sample found running (Python or C)
        self._wanted_ns = 0
        self._contended_ns = 0
        self._concurrency: dict[int, int] = {}
        self._tasks: dict[tuple[str, str], list[int]] = {}  # (task, thread) -> ns per state (python, native)
        self._running_together_ns = 0  # free-threaded: two or more threads running at once
        self._gil = gil_enabled()
        self._zone = None if self._reader is None else calibrate_gil(self._reader) if self._gil else None
        self._futex_nr = self._zone.futex_nr if self._zone is not None else futex_syscall()
        self._sleep_nrs = sleep_syscalls()
        self._win_start_ns = self._started_ns
        self._win_cpu0_ns = self._cpu0_ns
        self._win_own0_ns = 0
        self._win_want_ns = 0
        self._win_wait_ns = 0
        self._failures = 0

    # ---- control ----
    @property
    def running(self) -> bool:
        """True while the sampler thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def method(self) -> str:
        """How states are read: ``"proc"`` (the GIL's address is known), ``"proc-bytecode"``
        (blocked threads judged by their bytecode), or ``"none"`` (no ``/proc``: parallelism only)."""
        if self._reader is None:
            return "none"
        return "proc" if self._zone is not None or not self._gil else "proc-bytecode"

    def start(self) -> GilMonitor:
        """Start sampling (a no-op when already running); counts start from zero."""
        with self._control:
            if self._thread is not None:
                return self
            if self._reader is None:
                self._reader = open_reader()
            self._reset()
            self._rec = self._recorder if self._recorder is not None else get_recorder()
            if self.section:
                self._rec.add_section("gil", self.summary)
            _active[self._rec] = self
            self._stop.acquire()
            self._sample_safely()  # the baseline: every thread's CPU time now
            self._thread = internal_thread(self._run, THREAD_NAME)
            self._thread.start()
            _running.add(self)
        return self

    def stop(self) -> None:
        """Take a last sample and stop the thread (waits for it, at most a few seconds)."""
        with self._control:
            thread = self._thread
            if thread is None:
                return
            self._stop.release()
            thread.join(timeout=5.0)
            self._thread = None
            self._sample_safely()
            with self._state:
                self._stopped_ns = self._last_ns
                self._cpu_end_ns = time.process_time_ns()
                for track in self._tracks.values():
                    if self._reader is not None:
                        self._read_cpu(self._reader, track)
                    self._close(track)
            if self._rec is not None and _active.get(self._rec) is self:
                del _active[self._rec]
            _running.discard(self)

    def _forget_after_fork(self) -> None:
        """In a forked child: this monitor is the parent's, and its sampler thread did not come along.

        Its locks are made free (the parent's sampler may have held ``_state`` mid-sample at the fork,
        and the child's ``stop()`` or ``summary()`` would wait for it forever), its files on the
        parent's threads closed, and it is stopped where it stood, without a last sample: its
        figures are the parent's. A child that wants its own figures starts a monitor of its own."""
        for lock in (self._stop, self._state, self._control):
            with contextlib.suppress(Exception):
                lock._at_fork_reinit()  # type: ignore[attr-defined,union-attr]
        self._thread = None
        self._stopped_ns = self._last_ns
        self._cpu_end_ns = self._cpu0_ns  # the child's process CPU time starts again from zero
        for track in [*self._tracks.values(), *self._finished]:
            _close_inherited(track.fd_sys)
            _close_inherited(track.fd_sched)
            track.fd_sys = track.fd_sched = None
        self._reader = None
        if self._rec is not None and _active.get(self._rec) is self:
            del _active[self._rec]

    def __enter__(self) -> GilMonitor:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __call__(self, func: F) -> F:
        """Decorate ``func``: each call runs the monitor (a nested or concurrent call joins the running one)."""
        if imported("inspect").iscoroutinefunction(func):  # imported here: a followed child's monitor does without

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                started = self._try_start()
                try:
                    return await func(*args, **kwargs)
                finally:
                    if started:
                        self.stop()

            async_wrapper.gil = self  # type: ignore[attr-defined]
            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = self._try_start()
            try:
                return func(*args, **kwargs)
            finally:
                if started:
                    self.stop()

        wrapper.gil = self  # type: ignore[attr-defined]
        return cast(F, wrapper)

    def _try_start(self) -> bool:
        if self.running:
            return False
        try:
            self.start()
        except Exception:
            _log.exception("conctools: could not start the GIL monitor; running unobserved")
            return False
        return True

    # ---- sampling ----
    def _run(self) -> None:
        wait = paced = self.interval_s
        quiet = 0  # samples in a row that found at most one thread running
        costs: list[int] = []  # the last COST_WINDOW samples' CPU times
        while not self._stop.acquire(timeout=wait):
            t0 = time.thread_time_ns()
            self._sample_safely()
            cost = time.thread_time_ns() - t0
            self._own_cpu_ns += cost
            costs.append(cost)
            if len(costs) > COST_WINDOW:
                del costs[0]
            # Paced by the (lower) median cost of the last few samples, and slowing down at most
            # twofold a sample: a steady cost (many threads) slows the sampling down, one outlier
            # does not. The program's garbage collection may run in this thread (its allocation can
            # be the one that starts it): a full collection of a big program costs tens of ms, and
            # pacing by that one sample stopped the sampling for seconds.
            typical = sorted(costs)[(len(costs) - 1) // 2]
            paced = max(self.interval_s, min(2 * paced, typical / 1e9 / MAX_COST_SHARE))
            quiet = quiet + 1 if self._last_running <= 1 else 0
            wait = max(paced, QUIET_SLOWDOWN * self.interval_s) if quiet >= QUIET_SAMPLES else paced
        self._stop.release()

    def _sample_safely(self) -> None:
        try:
            with self._state:
                self._sample()
        except Exception:  # observing must never break the program: log, and give up after a few
            self._failures += 1
            _log.debug("conctools: GIL sample failed", exc_info=True)
            if self._failures == 10:
                _log.warning("conctools: the GIL monitor keeps failing; its figures may be incomplete")

    def _sample(self) -> None:
        now = time.monotonic_ns()
        dt = now - self._last_ns
        self._last_ns = now  # also when the sample in progress began (LATE_NS)
        self.samples += 1
        reader = self._reader
        frames = current_frames()
        running_tasks = _running_tasks()
        me = _thread.get_ident()
        seen: set[int] = set()
        main = threading.main_thread()
        wanting = running = 0
        observed: list[tuple[_Track, FrameType | None, int, int]] = []
        for thread in threading.enumerate():
            ident = thread.ident
            if ident is None or thread.name.startswith("conctools-"):
                continue
            if _NATIVE_IDS and thread.native_id is None:
                # Starting: it has its ident but not yet its kernel id (threading sets them one
                # after the other, and may switch threads in between). A track made now could never
                # read its /proc files; the next sample after it has its id is its baseline.
                continue
            seen.add(ident)
            if ident == me:
                continue  # the thread taking the first or last sample (start(), stop()): it runs this code
            track = self._tracks.get(ident)
            if track is None or track.thread is not thread:
                if track is not None:
                    self._finish(track)
                self._tracks[ident] = self._new_track(thread, ident)
                continue  # a new thread: this sample is its baseline
            if reader is None:
                continue
            frame = frames.get(ident)
            state = self._state_of(reader, track, frame)
            if state in (SYNC, IDLE) and thread is main and main_yields_gil():
                state = PYTHON  # it let go of the GIL for one of conctools' threads (the hand-over), and wants it
            observed.append((track, frame, state, ident))
        if reader is not None and any(state < 0 for _, _, state, _ in observed):
            observed = self._recheck(reader, observed)
        for track, frame, state, ident in observed:
            track.times[state] += dt
            track.samples += 1
            if state == PYTHON:
                wanting += 1
            if state <= NATIVE:
                running += 1
                self._note_site(track, frame, state)
                task = running_tasks.get(ident)
                if task is not None:
                    self._note_task(task, track.name, state, dt)
            elif state == IO and not track.loop and frame is not None:
                track.loop = _runs_loop(frame)
            blocked_still = state == track.last_state and state >= IO
            track.last_state = state
            if not blocked_still and reader is not None:  # a thread blocked since the last sample used no CPU
                self._read_cpu(reader, track)
                track.cpu_read_ns = now
        del observed
        self._last_running = running
        for ident in [i for i in self._tracks if i not in seen]:
            self._finish(self._tracks.pop(ident))
        del frames
        if self.samples == 1:
            return
        if wanting >= 1:
            self._wanted_ns += dt
        if wanting >= 2:
            self._contended_ns += dt
            self._concurrency[wanting] = self._concurrency.get(wanting, 0) + dt
        if running >= 2 and not self._gil:
            self._running_together_ns += dt
        self._win_want_ns += wanting * dt
        self._win_wait_ns += max(0, wanting - 1) * dt if self._gil else 0
        if now - self._win_start_ns >= WINDOW_S * 1e9:
            self._emit_window(now)

    def _recheck(
        self, reader: StateReader, observed: list[tuple[_Track, FrameType | None, int, int]]
    ) -> list[tuple[_Track, FrameType | None, int, int]]:
        """Threads that were running inside a C call: still running now (it runs C code that released
        the GIL), or now waiting for the GIL (the call was a short one, and it wants to go on)?

        This thread keeps the GIL and pauses a moment without using a CPU (on a busy machine the
        other thread may need one): one that came out of its call is blocked on the GIL by then."""
        reader.pause(RECHECK_US)
        zone = self._zone
        out = []
        now = time.monotonic_ns()
        if now - self._last_ns > LATE_NS:
            zone = None  # the pause outlasted a C call of its own: what the second read finds is the sampler's doing
        for track, frame, state, ident in observed:
            if state == _RECHECK:
                state = NATIVE
                raw = reader.read(track.fd_sys) if track.fd_sys is not None else None
                if raw is not None and zone is not None and not raw.startswith(b"running"):
                    parts = raw.split(None, 2)
                    try:
                        # Out of a short call and waiting for the GIL: the thread was running Python
                        # and made a brief call that let the sampler in, if it has been using the
                        # CPU (a thread just back from a sleep or I/O has not: it waits behind the
                        # sampler only, and stays as it was seen first).
                        if int(parts[0]) == zone.futex_nr and int(parts[1], 16) in zone and self._busy(track, now):
                            state = PYTHON
                    except (ValueError, IndexError):
                        pass
            out.append((track, frame, state, ident))
        return out

    def _busy(self, track: _Track, now: int) -> bool:
        """True when the thread used a CPU a quarter of the time since its CPU time was last read."""
        before, since = track.cpu, track.cpu_read_ns
        if self._reader is None or not since:
            return False
        self._read_cpu(self._reader, track)
        track.cpu_read_ns = now
        return (track.cpu - before) >= BUSY_CPU_SHARE * max(1, now - since)

    def _new_track(self, thread: threading.Thread, ident: int) -> _Track:
        native_id = getattr(thread, "native_id", None) or 0
        track = _Track(thread, ident, native_id, thread.name)
        reader = self._reader
        if reader is not None and native_id:
            track.fd_sys = reader.open(native_id, "syscall")
            track.fd_sched = reader.open(native_id, "schedstat")
            raw = reader.read(track.fd_sched) if track.fd_sched is not None else None
            if raw is not None:
                parts = raw.split()
                track.cpu0 = track.cpu = int(parts[0])
                track.rq0 = track.rq = int(parts[1])
                track.cpu_read_ns = time.monotonic_ns()
        return track

    @staticmethod
    def _read_cpu(reader: StateReader, track: _Track) -> None:
        raw = reader.read(track.fd_sched) if track.fd_sched is not None else None
        if raw is not None:
            parts = raw.split()
            track.cpu, track.rq = int(parts[0]), int(parts[1])

    def _close(self, track: _Track) -> None:
        if self._reader is not None:
            self._reader.close(track.fd_sys)
            self._reader.close(track.fd_sched)
        track.fd_sys = track.fd_sched = None

    def _finish(self, track: _Track) -> None:
        """A thread ended: close its files, keep its counts (fold the oldest past MAX_THREADS)."""
        self._close(track)
        track.alive = False
        track.thread = None
        if track.samples == 0 and track.cpu == track.cpu0:
            return  # seen once, never measured: nothing to say about it
        self._finished.append(track)
        if len(self._finished) > MAX_THREADS:
            oldest = self._finished.pop(0)
            if self._folded is None:
                self._folded = _Track(None, 0, 0, "(finished threads)")
                self._folded.alive = False
                self._folded.count = 0
            self._folded.merge(oldest)

    def _state_of(self, reader: StateReader, track: _Track, frame: FrameType | None) -> int:
        raw = reader.read(track.fd_sys) if track.fd_sys is not None else None
        if raw is None:
            return UNKNOWN
        if raw.startswith(b"running"):
            # Runnable while the sampler holds the GIL: in C code that released it, or (at a
            # bytecode boundary) on its way to wait for the GIL. Inside a call it may be either:
            # in long C code, or just out of a short one (select(0), a small read); look again.
            if not self._gil or not at_call(frame):
                return PYTHON
            return _RECHECK if self._zone is not None else NATIVE
        parts = raw.split(None, 2)
        try:
            nr = int(parts[0])
        except (ValueError, IndexError):
            return UNKNOWN
        if nr < 0:
            return UNKNOWN  # blocked outside a system call (a page fault, a stop)
        if nr == self._futex_nr:
            zone = self._zone
            if zone is not None:
                if int(parts[1], 16) in zone:
                    if self._gil and at_call(frame) and time.monotonic_ns() - self._last_ns > LATE_NS:
                        return NATIVE
                    return PYTHON
            elif self._gil and not at_call(frame):
                return PYTHON  # blocked at a bytecode boundary: only the GIL waits there
            return self._wait_kind(track, frame)
        if nr in self._sleep_nrs:
            return SLEEP
        return self._io_kind(track, frame)

    def _io_kind(self, track: _Track, frame: FrameType | None) -> int:
        """IO, or IDLE for a helper thread of the standard library waiting on its pipes (a process
        pool's manager thread): no program code on its stack, nothing of the program's to wait for."""
        if frame is None:
            return IO
        key = _stack_key(frame)
        cached = track.io_cache
        if cached[0] == key:
            return cached[1]
        state = IDLE if _stdlib_only(frame) or _waits_for_children(frame) or _waits_for_work(frame) else IO
        track.io_cache = (key, state)
        return state

    def _wait_kind(self, track: _Track, frame: FrameType | None) -> int:
        """SYNC (a lock, condition, queue) or IDLE (waiting for work or for other threads)."""
        if frame is None:
            return SYNC
        key = _stack_key(frame)
        cached = track.wait_cache
        if cached[0] == key:
            return cached[1]
        state = IDLE if _waits_for_work(frame) else SYNC  # a process pool worker with no job
        f: FrameType | None = frame
        depth = 0
        while state == SYNC and f is not None and depth < 16:
            filename = f.f_code.co_filename
            name = f.f_code.co_name
            if filename.endswith(f"{_sep}threading.py") and name in _JOIN_FUNCTIONS:
                state = IDLE
                break
            if not (is_conctools_frame(filename) or filename.endswith(_WAIT_MACHINERY)):
                if _FUTURES in filename and (name == "_worker" or name in _FUTURE_WAITS):
                    state = IDLE  # an idle pool worker, or a wait for futures: other threads' work
                elif _child_wait(filename, name):
                    state = IDLE  # a multiprocessing pool's results: other processes' work
                elif _stdlib_only(f):
                    state = IDLE  # a helper thread of the standard library waiting for work (a queue feeder)
                break
            f = f.f_back
            depth += 1
        track.wait_cache = (key, state)
        return state

    def _note_site(self, track: _Track, frame: FrameType | None, state: int) -> None:
        """Count the thread's innermost line, and the function it runs (its entry)."""
        f = _user_frame(frame)
        if f is None:
            return
        code = f.f_code
        key = (code.co_filename, f.f_lineno or 0, code.co_name)
        counts = track.sites.get(key)
        if counts is None:
            counts = track.sites[key] = [0, 0]
            _prune(track.sites)
        counts[state] += 1
        entry = None
        depth = 0
        while f is not None and depth < 256:
            filename = f.f_code.co_filename
            if not _plumbing(filename):
                if entry is None or f.f_code.co_name != "<module>":
                    entry = f.f_code.co_name
            elif _FUTURES in filename and f.f_code.co_name == "_worker" and track.pool is None:
                track.pool = "asyncio" if track.name.startswith("asyncio_") else "ThreadPoolExecutor"
            elif _ASYNCIO in filename and f.f_code.co_name == "run_forever":
                track.loop = True
            f = f.f_back
            depth += 1
        if entry is not None:
            track.entries[entry] = track.entries.get(entry, 0) + 1

    def _note_task(self, task: str, thread: str, state: int, dt: int) -> None:
        key = (task, thread)
        counts = self._tasks.get(key)
        if counts is None:
            if len(self._tasks) >= MAX_TASKS:
                key = ("(other tasks)", thread)
            counts = self._tasks.setdefault(key, [0, 0])
        counts[state] += dt

    def _emit_window(self, now: int) -> None:
        rec = self._rec
        window = now - self._win_start_ns
        cpu = time.process_time_ns()
        own = self._own_cpu_ns
        used = max(0, (cpu - self._win_cpu0_ns) - (own - self._win_own0_ns))
        event = GilSampleEvent(
            ts_ns=now,
            thread_id=_thread.get_ident(),
            thread_name=threading.current_thread().name,
            window_s=window / 1e9,
            threads_wanting=round(self._win_want_ns / window, 3),
            threads_waiting=round(self._win_wait_ns / window, 3),
            cores_used=round(used / window, 3),
            gil_enabled=self._gil,
        )
        self._win_start_ns, self._win_cpu0_ns, self._win_own0_ns = now, cpu, own
        self._win_want_ns = self._win_wait_ns = 0
        if rec is not None and self.events:
            rec.record(event)

    # ---- results ----
    def threads(self) -> list[ThreadGilStats]:
        """Every thread seen (finished ones too), most GIL wait first."""
        with self._state:
            return self._thread_stats()

    def _thread_stats(self) -> list[ThreadGilStats]:
        tracks = [*self._finished, *self._tracks.values()]
        if self._folded is not None:
            tracks.append(self._folded)
        tracks = [t for t in tracks if t.samples or t.cpu > t.cpu0]
        cpu = {id(t): max(0, t.cpu - t.cpu0) for t in tracks}
        # Runnable inside a C call is C code running, or waiting for a CPU. The kernel counts both
        # exactly for the whole thread (CPU time, run-queue time): C calls get the same share.
        cpu_wait = {id(t): _queued_share(t, cpu[id(t)]) * t.times[NATIVE] for t in tracks}
        native = {id(t): int(t.times[NATIVE] - cpu_wait[id(t)]) for t in tracks}
        py_cpu = {id(t): max(0, cpu[id(t)] - min(cpu[id(t)], native[id(t)])) for t in tracks}
        total_py = sum(py_cpu[id(t)] for t in tracks if t.times[PYTHON])
        out = []
        for t in tracks:
            want = t.times[PYTHON]
            if self._gil and total_py > 0 and want:
                held = min(want, self._wanted_ns * py_cpu[id(t)] / total_py)
            else:
                held = want
            # Holding the GIL is running Python, or waiting for a CPU when the machine is busy: the
            # same share of it as of the thread's other runnable time.
            preempted = int(held * _queued_share(t, cpu[id(t)]))
            out.append(
                ThreadGilStats(
                    name=t.name if t.count == 1 or t is not self._folded else f"({t.count} finished threads)",
                    thread_id=t.ident,
                    native_id=t.native_id,
                    alive=t.alive,
                    threads=t.count,
                    wall_s=sum(t.times) / 1e9,
                    cpu_s=cpu[id(t)] / 1e9,
                    runqueue_s=max(0, t.rq - t.rq0) / 1e9,
                    python_s=(held - preempted) / 1e9,
                    gil_wait_s=(want - held) / 1e9,
                    native_s=native[id(t)] / 1e9,
                    cpu_wait_s=(cpu_wait[id(t)] + preempted) / 1e9,
                    io_s=t.times[IO] / 1e9,
                    sleep_s=t.times[SLEEP] / 1e9,
                    sync_s=t.times[SYNC] / 1e9,
                    idle_s=t.times[IDLE] / 1e9,
                    unknown_s=t.times[UNKNOWN] / 1e9,
                    samples=t.samples,
                    entry=max(t.entries, key=lambda k: t.entries[k]) if t.entries else None,
                    pool=t.pool,
                    loop=t.loop,
                    hot=_hot_sites(t),
                )
            )
        out.sort(key=lambda s: (-s.gil_wait_s, -s.python_s, -s.cpu_s, s.name))
        return out

    def summary(self) -> dict[str, Any]:
        """The JSON-able ``gil`` section: the process's parallelism and every thread's time."""
        with self._state:
            end_ns = self._stopped_ns if self._stopped_ns is not None else time.monotonic_ns()
            cpu_end = self._cpu_end_ns if self._cpu_end_ns is not None else time.process_time_ns()
            wall_ns = max(1, end_ns - self._started_ns)
            cpu_ns = max(0, cpu_end - self._cpu0_ns - self._own_cpu_ns)
            threads = self._thread_stats()
            return {
                "gil_enabled": self._gil,
                "method": self.method,
                "running": self.running,
                "interval_s": self.interval_s,
                "samples": self.samples,
                "wall_s": wall_ns / 1e9,
                "cpu_s": cpu_ns / 1e9,
                "monitor_cpu_s": self._own_cpu_ns / 1e9,
                "parallelism": cpu_ns / wall_ns,
                "cores": _cores(),
                "cpu_count": os.cpu_count() or 1,
                "wanted_s": self._wanted_ns / 1e9,
                "contended_s": self._contended_ns / 1e9,
                "running_together_s": self._running_together_ns / 1e9,
                "concurrency": {str(n): ns / 1e9 for n, ns in sorted(self._concurrency.items())},
                "gil_wait_s": sum(t.gil_wait_s for t in threads),
                "threads": [t.to_dict() for t in threads],
                "tasks": self._task_rows(threads),
            }

    def _task_rows(self, threads: list[ThreadGilStats]) -> list[dict[str, Any]]:
        """Asyncio tasks by the time their loop thread spent on them: running Python (its share of
        the thread's Python-or-GIL time is split like the thread's), and C code."""
        ratio = {
            t.name: (t.python_s / (t.python_s + t.gil_wait_s) if t.python_s + t.gil_wait_s else 1.0) for t in threads
        }
        rows: list[dict[str, Any]] = []
        for (task, thread), (python_ns, native_ns) in self._tasks.items():
            r = ratio.get(thread, 1.0)
            rows.append(
                {
                    "name": task,
                    "thread": thread,
                    "python_s": python_ns * r / 1e9,
                    "gil_wait_s": python_ns * (1 - r) / 1e9,
                    "native_s": native_ns / 1e9,
                }
            )
        rows.sort(key=lambda row: (-(row["python_s"] + row["gil_wait_s"] + row["native_s"]), row["name"]))
        return rows[:SECTION_TASKS]


def _queued_share(track: _Track, cpu_ns: int) -> float:
    """Of the time this thread was runnable, the share it waited for a CPU (run-queue / (CPU + run-queue))."""
    rq = max(0, track.rq - track.rq0)
    return rq / (cpu_ns + rq) if cpu_ns + rq > 0 else 0.0


def _hot_sites(track: _Track) -> tuple[dict[str, Any], ...]:
    ranked = sorted(track.sites.items(), key=lambda kv: (-(kv[1][0] + kv[1][1]), kv[0]))[:SECTION_SITES]
    return tuple(
        {
            "filename": filename,
            "lineno": lineno,
            "function": function,
            "line": linecache.getline(filename, lineno).strip(),
            "python_samples": counts[0],
            "native_samples": counts[1],
        }
        for (filename, lineno, function), counts in ranked
    )


def _running_tasks() -> dict[int, str]:
    """Thread ident -> name of the asyncio task its loop is running now (loops in other threads too)."""
    if not _current_tasks:
        return {}
    out: dict[int, str] = {}
    try:
        for loop, task in list(_current_tasks.items()):
            ident = getattr(loop, "_thread_id", None)
            if ident is not None and task is not None:
                out[ident] = task.get_name()
    except Exception:  # a foreign loop or task type: no per-task figures for it
        return out
    return out


def _runs_loop(frame: FrameType) -> bool:
    """True when a thread blocked on I/O is an event loop waiting in its selector."""
    f: FrameType | None = frame
    for _ in range(6):
        if f is None:
            return False
        if _ASYNCIO in f.f_code.co_filename and f.f_code.co_name in ("_run_once", "run_forever"):
            return True
        f = f.f_back
    return False


def _cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# The running monitor of each recorder (the console and the pytest plugin read it).
_active: weakref.WeakKeyDictionary[Recorder, GilMonitor] = weakref.WeakKeyDictionary()
# Every running monitor: a forked child stops its copies of them (see _forget_after_fork).
_running: weakref.WeakSet[GilMonitor] = weakref.WeakSet()


def _close_inherited(fd: int | None) -> None:
    """Close a descriptor a forked child copied from a monitor of its parent, if it still is one of
    the parent's ``/proc/<pid>/task/<tid>/`` files. The parent's sampler may have closed it just
    before the fork and not yet forgotten its number, and another thread may have been given the
    number since (``multiprocessing`` makes the pipes of the child it forks that way): that one is
    the child's, and stays open."""
    if fd is None:
        return
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return
    if target.startswith("/proc/") and "/task/" in target and target.endswith(("/syscall", "/schedstat")):
        with contextlib.suppress(OSError):
            os.close(fd)


def _after_fork_in_child() -> None:
    """The parent's running monitors are dead copies in a forked child: make them inert (never raises)."""
    try:
        monitors = list(_running)
        _running.clear()
    except Exception:
        return
    for monitor in monitors:
        with contextlib.suppress(Exception):
            monitor._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def active_monitor(recorder: Recorder | None = None) -> GilMonitor | None:
    """The GIL monitor running for ``recorder`` (the current one by default), if any."""
    rec = recorder if recorder is not None else get_recorder()
    monitor = _active.get(rec)
    return monitor if monitor is not None and monitor.running else None


def live_summary(recorder: Recorder | None = None, seconds: float = 1.0) -> dict[str, Any]:
    """The ``gil`` section now: the running monitor's, or a fresh ``seconds``-long measurement
    (blocking the caller for that long, and recording nothing) when none runs."""
    monitor = active_monitor(recorder)
    if monitor is not None:
        return monitor.summary()
    probe = GilMonitor(recorder=Recorder(capacity=1), section=False, events=False)
    probe.start()
    try:
        time.sleep(max(0.05, min(float(seconds), 60.0)))
    finally:
        probe.stop()
    return probe.summary()


@overload
def watch_gil(func: F, /) -> F: ...


@overload
def watch_gil(
    func: None = None, /, *, interval_s: float = DEFAULT_INTERVAL_S, recorder: Recorder | None = None
) -> GilMonitor: ...


def watch_gil(
    func: Callable[..., Any] | None = None,
    /,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    recorder: Recorder | None = None,
) -> Any:
    """Measure GIL contention and CPU-bound threads: ``with watch_gil() as gil``, ``@watch_gil``,
    ``@watch_gil(interval_s=0.02)``.

    Returns a :class:`GilMonitor` (or, used bare on a function, the decorated function, whose
    ``.gil`` attribute is its monitor). The report's "CPU-bound threads" section and bottleneck
    verdict come from it.

    >>> with watch_gil() as gil:
    ...     sum(range(1000))
    499500
    >>> gil.summary()["gil_enabled"] in (True, False)
    True
    """
    monitor = GilMonitor(interval_s, recorder=recorder)
    if func is not None:
        return monitor(func)
    return monitor
