"""A sampler of this process: CPU, memory, threads, file descriptors, context switches.

``sample_resources()`` starts a daemon thread named ``conctools-resources`` that samples the
process every ``interval_s`` and records each sample as a
:class:`~conctools.events.ResourceSampleEvent` (a counter track on the timeline). It also
keeps a summary and a bounded, evenly thinned series of the whole run, published as the
``"resources"`` section of the report::

    with conctools.sample_resources(interval_s=0.2):
        work()

Memory stays bounded: events go to the recorder's ring buffer, and the series keeps at most
``max_points`` samples (when full, every other one is dropped and the stride doubles).
Context-switch counters are cumulative since the process started, as psutil reports them.
On Linux the sampler reads the files psutil reads (``/proc/self/statm``, ``status``, ``fd``) itself,
without importing psutil (~17 ms at every start, in every followed child); elsewhere it asks psutil.

CPU is measured from the process's CPU time: a sample's percentage covers the time since the
last measured one, and only once at least ``MIN_CPU_WINDOW_S`` went by (the kernel counts CPU
time in ticks: over a few milliseconds one tick reads as thousands of percent); the mean is the
whole run's CPU time over its wall time. Threads: besides the sampled count, every thread the
program starts while sampling is counted, with the live count when it starts, so a short run's
200 threads are seen even if no sample fell while they ran.
"""

from __future__ import annotations

import _thread
import os
import threading
import time
from types import TracebackType

from conctools._context import internal_thread, wait_lock
from conctools._log import get_logger
from conctools._typing import Any
from conctools.events import ResourceSampleEvent
from conctools.recorder import Recorder, get_recorder

__all__ = ["ResourceSampler", "sample_resources"]

_log = get_logger("conctools.resources")

THREAD_NAME = "conctools-resources"
DEFAULT_INTERVAL_S = 0.5
DEFAULT_MAX_POINTS = 512
MIN_CPU_WINDOW_S = 0.05  # a CPU percentage over less time than this is mostly the tick's rounding


class _ThreadStarts:
    """Counts the threads started while any sampler runs, and the live count each one saw."""

    def __init__(self) -> None:
        self.lock = _thread.allocate_lock()
        self.users = 0
        self.original: Any = None
        self.started = 0
        self.peak = 0

    def enable(self) -> None:
        with self.lock:
            self.users += 1
            if self.users > 1:
                return
            original = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]
            counter = self

            def _bootstrap_inner(thread: threading.Thread) -> None:
                try:
                    if not thread.name.startswith("conctools-"):  # the program's threads only
                        counter.started += 1  # approximate under races, like any unlocked counter
                    counter.peak = max(counter.peak, threading.active_count())
                except Exception:
                    pass
                original(thread)

            self.original = original
            threading.Thread._bootstrap_inner = _bootstrap_inner  # type: ignore[attr-defined]

    def disable(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0 and self.original is not None:
                threading.Thread._bootstrap_inner = self.original  # type: ignore[attr-defined]
                self.original = None


_thread_starts = _ThreadStarts()


# The lines of /proc/self/status the sampler reads, and their slot in its counts.
_STATUS = {b"Threads:": 0, b"voluntary_ctxt_switches:": 1, b"nonvoluntary_ctxt_switches:": 2}


class _ProcSelf:
    """This process's figures from ``/proc/self``, as psutil reads them on Linux (same files, same
    fields): CPU time, RSS (``statm``), threads and context switches (``status``), open fds.

    Read without releasing the GIL where it can (``ctypes`` calls into libc, as the GIL monitor reads
    ``/proc``): each ``open``, ``read`` and ``close`` of a file object, and every entry ``os.listdir``
    reads, releases it, and taking it back from a thread that runs Python waits for the switch interval
    (5 ms) and makes that thread stop and wait in turn. A sample took ~10 such hand-overs (~50 ms) while
    the program computed (issue 12); now none, or one ``stat`` where the kernel counts a process's
    descriptors (Linux 6.2+: the size of ``/proc/self/fd``, in constant time)."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._reader: Any = None
        try:
            from conctools._threadstate import StateReader

            reader = StateReader()
            self._reader = reader if reader.holds_gil else None
        except Exception:  # no ctypes: the files are read the usual way
            _log.debug("conctools: /proc read through os calls", exc_info=True)
        self._fd_size = os.stat("/proc/self/fd").st_size > 0
        self.read()  # fails here (no /proc) rather than at every sample

    def read(self) -> tuple[float, int, int, int, int, int]:
        """(CPU seconds, RSS bytes, threads, fds, voluntary and involuntary context switches)."""
        times = os.times()
        rss = int(self._file(b"/proc/self/statm").split()[1]) * self._page
        counts = [0, 0, 0]
        for line in self._file(b"/proc/self/status").splitlines():
            slot = _STATUS.get(line.split(None, 1)[0] if line else b"")
            if slot is not None:
                counts[slot] = int(line.split()[1])
        return times.user + times.system, rss, counts[0], self._fds(), counts[1], counts[2]

    def _file(self, path: bytes) -> bytes:
        data = self._reader.read_file(path) if self._reader is not None else None
        if data is None:
            with open(path, "rb") as f:
                data = f.read()
        return data

    def _fds(self) -> int:
        """The process's open descriptors (the reader's own, while it counts, left out)."""
        if self._fd_size:
            return os.stat("/proc/self/fd").st_size
        n = self._reader.count_entries(b"/proc/self/fd") if self._reader is not None else None
        return (n if n is not None else len(os.listdir("/proc/self/fd"))) - 1


def _psutil_read(proc: Any) -> tuple[float, int, int, int, int, int]:
    with proc.oneshot():
        times = proc.cpu_times()
        rss = int(proc.memory_info().rss)
        threads = int(proc.num_threads())
        fds = int(proc.num_fds()) if hasattr(proc, "num_fds") else int(proc.num_handles())
        switches = proc.num_ctx_switches()
    return float(times.user + times.system), rss, threads, fds, int(switches.voluntary), int(switches.involuntary)


def _this_process() -> Any:
    """What the sampler reads: ``/proc/self`` on Linux, else a ``psutil.Process``."""
    if os.path.isdir("/proc/self/fd"):
        try:
            return _ProcSelf()
        except (OSError, ValueError, IndexError):
            pass
    import psutil

    return psutil.Process()


class ResourceSampler:
    """Samples this process on a daemon thread; a context manager.

    ``interval_s`` must be positive. Every sample becomes a ``ResourceSampleEvent`` in
    ``recorder`` (the current one by default) and feeds :meth:`summary`.
    """

    def __init__(
        self,
        interval_s: float = DEFAULT_INTERVAL_S,
        *,
        recorder: Recorder | None = None,
        max_points: int = DEFAULT_MAX_POINTS,
        section: bool = True,
    ) -> None:
        if not interval_s > 0 or interval_s == float("inf"):
            raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s!r}")
        if max_points < 2:
            raise ValueError(f"max_points must be at least 2, got {max_points}")
        self.interval_s = float(interval_s)
        self.max_points = max_points
        self.section = section
        self._recorder = recorder
        self._rec: Recorder | None = None
        # A plain lock held while running: stop() releases it, which wakes the sampler at once
        # (threading.Event is off limits inside conctools: trace_locks() may have patched it).
        self._stop = wait_lock()
        self._state = _thread.allocate_lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()  # the process whose sampler thread this is (see stop)
        self._process: Any = None
        self.count = 0
        self._series: list[dict[str, Any]] = []
        self._stride = 1
        self._skipped = 0
        self._cpu_sum = 0.0
        self._cpu_max = 0.0
        self._rss_max = 0
        self._rss_min = 0
        self._threads_max = 0
        self._fds_max = 0
        self._first: ResourceSampleEvent | None = None
        self._last: ResourceSampleEvent | None = None
        self._cpu_mark: tuple[float, float] | None = None  # (monotonic s, CPU s) of the last measured point
        self._cpu_start: tuple[float, float] | None = None
        self._cpu_end: tuple[float, float] | None = None
        self._cpu_last_percent = 0.0
        self._starts_at_start = 0
        self._threads_started = 0

    @property
    def running(self) -> bool:
        """True while the sampler thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> ResourceSampler:
        """Take a first sample and start the sampler thread (a no-op when already running)."""
        if self._thread is not None:
            return self
        self._rec = self._recorder if self._recorder is not None else get_recorder()
        self._process = _this_process()
        self._pid = os.getpid()
        self._stop.acquire()
        if self.section:
            self._rec.add_section("resources", self.summary)
        _thread_starts.enable()
        self._starts_at_start = _thread_starts.started
        _thread_starts.peak = 0
        self.sample()
        self._thread = internal_thread(self._run, THREAD_NAME)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Take a last sample and stop the thread (waits for it, at most a few seconds)."""
        thread = self._thread
        if thread is None:
            return
        if self._pid != os.getpid():
            # A forked child unwinding through its parent's sampler (os.fork, then sys.exit): the
            # thread stayed in the parent, which may have held the sampler's lock at the fork, and
            # its process is the parent. The child's own sampler is another instance: forget this one.
            self._thread = None
            return
        self._stop.release()
        thread.join(timeout=5.0)
        self._thread = None
        self.sample()
        with self._state:
            self._threads_started = self._live_starts()
            self._threads_max = max(self._threads_max, _thread_starts.peak)
        _thread_starts.disable()

    def __enter__(self) -> ResourceSampler:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        # acquire(timeout) returns True only when stop() released the lock.
        while not self._stop.acquire(timeout=self.interval_s):
            self.sample()
        self._stop.release()

    def sample(self) -> ResourceSampleEvent | None:
        """Take one sample now and record it; ``None`` if psutil could not read the process."""
        proc = self._process
        rec = self._rec
        if proc is None or rec is None:
            return None
        try:
            now = time.monotonic()
            cpu_s, rss, threads, fds, voluntary, involuntary = (
                proc.read() if isinstance(proc, _ProcSelf) else _psutil_read(proc)
            )
            cpu, measured = self._cpu_percent(now, cpu_s)
            me = threading.current_thread()
            event = ResourceSampleEvent(
                ts_ns=time.monotonic_ns(),
                thread_id=me.ident or 0,
                thread_name=me.name,
                cpu_percent=cpu,
                rss_bytes=rss,
                num_threads=threads,
                num_fds=fds,
                ctx_switches_voluntary=voluntary,
                ctx_switches_involuntary=involuntary,
            )
        except Exception:  # a vanished /proc entry or a denied read must not break the program
            _log.debug("conctools: resource sample failed", exc_info=True)
            return None
        rec.record(event)
        with self._state:
            self._add(event, measured)
        return event

    def _live_starts(self) -> int:
        return max(0, _thread_starts.started - self._starts_at_start)

    def _cpu_percent(self, now: float, cpu_s: float) -> tuple[float, bool]:
        """The CPU percentage since the last measured point, and whether it is a new measurement
        (too short a window repeats the last one; the first sample only sets the mark)."""
        with self._state:
            if self._cpu_start is None:
                self._cpu_start = (now, cpu_s)
            mark = self._cpu_mark
            if mark is None or now - mark[0] >= MIN_CPU_WINDOW_S:
                self._cpu_mark = (now, cpu_s)
            if mark is None or now - mark[0] < MIN_CPU_WINDOW_S:
                return self._cpu_last_percent, False
            self._cpu_last_percent = max(0.0, (cpu_s - mark[1]) / (now - mark[0]) * 100.0)
            self._cpu_end = (now, cpu_s)
            return self._cpu_last_percent, True

    def _add(self, e: ResourceSampleEvent, measured: bool = True) -> None:
        self.count += 1
        if self._first is None:
            self._first = e
            self._rss_min = e.rss_bytes
        self._last = e
        self._cpu_sum += e.cpu_percent
        if measured:
            self._cpu_max = max(self._cpu_max, e.cpu_percent)
        self._rss_max = max(self._rss_max, e.rss_bytes)
        self._rss_min = min(self._rss_min, e.rss_bytes)
        self._threads_max = max(self._threads_max, e.num_threads)
        self._fds_max = max(self._fds_max, e.num_fds)
        # Keep every stride-th sample; when the series is full, thin it by half.
        if self._skipped + 1 < self._stride:
            self._skipped += 1
            return
        self._skipped = 0
        self._series.append(e.point())
        if len(self._series) >= self.max_points:
            self._series = self._series[::2]
            self._stride *= 2

    def __str__(self) -> str:
        """The resources section of the report (``print(sampler)``)."""
        from conctools.reporting.summary import describe

        return describe(self)

    def summary(self) -> dict[str, Any]:
        """The JSON-able ``resources`` section: peaks, means, deltas and the thinned series."""
        running = self._thread is not None
        with self._state:
            first, last, count = self._first, self._last, self.count
            out: dict[str, Any] = {
                "interval_s": self.interval_s,
                "samples": count,
                "series": list(self._series),
            }
            if first is None or last is None:
                return out
            start, end = self._cpu_start, self._cpu_end
            if start is not None and end is not None and end[0] > start[0]:
                cpu_mean = (end[1] - start[1]) / (end[0] - start[0]) * 100.0  # the run's CPU time / wall time
            else:
                cpu_mean = self._cpu_sum / count
            out.update(
                {
                    "cpu_percent_mean": cpu_mean,
                    "cpu_percent_max": self._cpu_max,
                    "rss_bytes_min": self._rss_min,
                    "rss_bytes_max": self._rss_max,
                    "rss_bytes_last": last.rss_bytes,
                    "num_threads_max": max(self._threads_max, _thread_starts.peak if running else 0),
                    "threads_started": self._live_starts() if running else self._threads_started,
                    "num_fds_max": self._fds_max,
                    "ctx_switches_voluntary": last.ctx_switches_voluntary - first.ctx_switches_voluntary,
                    "ctx_switches_involuntary": last.ctx_switches_involuntary - first.ctx_switches_involuntary,
                    "span_s": (last.ts_ns - first.ts_ns) / 1e9,
                }
            )
        return out


def sample_resources(
    interval_s: float = DEFAULT_INTERVAL_S,
    *,
    recorder: Recorder | None = None,
    max_points: int = DEFAULT_MAX_POINTS,
) -> ResourceSampler:
    """A :class:`ResourceSampler` to use as a context manager (or ``start()``/``stop()``).

    >>> with sample_resources(interval_s=0.05) as sampler:
    ...     pass
    >>> sampler.count >= 2
    True
    """
    return ResourceSampler(interval_s, recorder=recorder, max_points=max_points)
