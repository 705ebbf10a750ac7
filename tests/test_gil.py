"""The GIL monitor on real threads, and the "CPU-bound threads" section and bottleneck verdict.

Workloads run until the monitor has taken enough samples (never for a fixed time), and bounds are
generous: the machine has 2 cores shared with other work, so exact figures and rankings belong in
``benchmarks/bench_gil.py``, not here. What the tests pin down: CPU-bound threads are reported with
the advice and the function to move; I/O-bound threads, idle pools and C code that releases the
GIL are never reported.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import re
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import pytest

import conctools
from conctools import gil as gil_module
from conctools.events import GilSampleEvent, event_from_dict
from conctools.gil import THREAD_NAME, GilMonitor, ThreadGilStats, live_summary, watch_gil
from conctools.recorder import Recorder, Snapshot
from conctools.reporting import gil_text, render_json, render_text
from conctools.reporting.gil_text import console_text, format_gil, format_verdict, headline, matters, speedup
from conctools.reporting.html import render_html
from conctools.reporting.trace import trace_events

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread states come from /proc")

# ---- workloads ------------------------------------------------------------------------------


class Stop(Protocol):
    """What the workloads read to know when to stop: ``stop[0]``."""

    def __getitem__(self, index: int) -> bool: ...


def crunch(stop: Stop) -> int:
    """CPU-bound Python code: arithmetic in a loop, no call that releases the GIL."""
    total = 0
    while not stop[0]:
        for i in range(10_000):
            total += i * i % 7
    return total


def sleeper(stop: Stop) -> None:
    while not stop[0]:
        time.sleep(0.02)


def hasher(stop: Stop) -> None:
    data = b"x" * (8 << 20)
    while not stop[0]:
        hashlib.sha256(data).digest()  # releases the GIL for buffers above 2 KiB


def compressor(stop: Stop) -> None:
    data = os.urandom(1 << 20) * 2
    while not stop[0]:
        zlib.compress(data, 6)  # releases the GIL while it compresses


def socket_reader(stop: Stop) -> None:
    """Waits in recv() on a socket that a peer feeds every 20 ms."""
    a, b = socket.socketpair()
    a.settimeout(0.5)
    feeder = threading.Thread(target=_feed, args=(b, stop), name="feeder")
    feeder.start()
    try:
        with a:
            while not stop[0]:
                try:
                    a.recv(4096)
                except TimeoutError:
                    pass
    finally:
        feeder.join()


def _feed(sock: socket.socket, stop: Stop) -> None:
    with sock:
        while not stop[0]:
            time.sleep(0.02)
            sock.sendall(b"ping")


def file_io(stop: Stop, path: Path) -> None:
    chunk = b"y" * (1 << 20)
    while not stop[0]:
        with open(path, "wb") as f:
            f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        with open(path, "rb") as f:
            f.read()


class Until:
    """A stop flag the workload threads read as ``stop[0]``: true once the monitor took ``samples``
    samples (or after ``timeout_s``), so that no polling thread of the test competes for the GIL."""

    def __init__(self, monitor: GilMonitor | None = None, samples: int = 40, timeout_s: float = 60.0) -> None:
        self.monitor = monitor
        self.samples = samples
        self.deadline = time.monotonic() + timeout_s
        self.flag = False

    def __getitem__(self, index: int) -> bool:
        if self.flag:
            return True
        if (self.monitor is not None and self.monitor.samples >= self.samples) or time.monotonic() > self.deadline:
            self.flag = True
        return self.flag

    def __setitem__(self, index: int, value: bool) -> None:
        self.flag = value


@contextmanager
def threads(*targets: tuple[str, Callable[..., Any], tuple[Any, ...]], stop: Any = None) -> Iterator[Any]:
    """Start named threads running ``target(stop, *args)``; stop and join them on exit."""
    stop = stop if stop is not None else [False]
    started = [threading.Thread(target=fn, args=(stop, *args), name=name) for name, fn, args in targets]
    for t in started:
        t.start()
    try:
        yield stop
    finally:
        stop[0] = True
        for t in started:
            t.join(60)


def measure(monitor: GilMonitor, samples: int = 40, timeout_s: float = 60.0) -> None:
    """Wait (polling, not sleeping a fixed time) until ``monitor`` took ``samples`` samples."""
    deadline = time.monotonic() + timeout_s
    while monitor.samples < samples:
        assert time.monotonic() < deadline, f"only {monitor.samples} samples in {timeout_s} s"
        time.sleep(0.05)


def run_workload(*targets: tuple[str, Callable[..., Any], tuple[Any, ...]], samples: int = 40) -> dict[str, Any]:
    """The monitor's summary of a workload measured while it runs. The threads stop themselves once
    the monitor has ``samples`` samples; the test's own thread only waits in join()."""
    monitor = GilMonitor(recorder=Recorder())
    until = Until(monitor, samples)
    with monitor:
        started = [threading.Thread(target=fn, args=(until, *args), name=name) for name, fn, args in targets]
        for t in started:
            t.start()
        for t in started:
            t.join(90)
    assert monitor.samples >= samples, f"only {monitor.samples} samples"
    return monitor.summary()


def by_name(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in summary["threads"]}


def share(t: dict[str, Any], *keys: str) -> float:
    return sum(t[k] for k in keys) / t["wall_s"]


def snapshot_of(summary: dict[str, Any], **sections: Any) -> Snapshot:
    rec = Recorder()
    snap = rec.snapshot()
    return Snapshot(
        started_ns=snap.started_ns,
        started_wall=snap.started_wall,
        taken_ns=snap.taken_ns,
        events=(),
        counts={},
        dropped=0,
        spans=(),
        sections={"gil": summary, **sections},
        meta={"pid": os.getpid()},
    )


# ---- calibration: known workloads -------------------------------------------------------------


@linux_only
class TestCpuBoundThreads:
    """Threads running Python code at the same time wait for the GIL, and the report says so."""

    def test_two_cpu_bound_threads(self) -> None:
        """Two crunching threads each wait for the GIL a good part of the time; the section names them,
        the function to move, ProcessPoolExecutor and the cores; the verdict says CPU-bound in threads."""
        summary = run_workload(("crunch-0", crunch, ()), ("crunch-1", crunch, ()))
        assert summary["method"] == "proc"
        rows = by_name(summary)
        for name in ("crunch-0", "crunch-1"):
            assert 0.2 < share(rows[name], "gil_wait_s") < 0.8, rows[name]  # truth: 0.5
            assert rows[name]["entry"] == "crunch"
            assert rows[name]["hot"][0]["function"] == "crunch"
        text = format_gil(summary)
        assert text is not None
        first = text.splitlines()[0]
        assert re.match(r"CPU-bound threads: (2|2 to \d) threads wanted the GIL at the same time for ", first), first
        assert f"of {summary['cores']} core" in first
        assert "run `crunch` in a ProcessPoolExecutor" in text
        assert "crunch-0" in text and "crunch-1" in text
        assert "total += i * i % 7" in text  # the hottest line, quoted
        verdict = format_verdict(summary)
        assert verdict is not None and verdict.startswith("Bottleneck: CPU-bound Python code in threads: use processes")

    def test_four_cpu_bound_threads(self) -> None:
        """Four crunching threads each wait most of the time (truth: 75%)."""
        names = [f"crunch-{i}" for i in range(4)]
        summary = run_workload(*((n, crunch, ()) for n in names), samples=50)
        rows = by_name(summary)
        for name in names:
            assert share(rows[name], "gil_wait_s") > 0.4, rows[name]
        assert matters(summary)
        assert summary["gil_wait_s"] > summary["wall_s"]  # several threads waited at once

    def test_one_cpu_bound_thread_is_not_contention(self) -> None:
        """One crunching thread has the GIL to itself: no section, and the verdict says CPU-bound in
        Python (one thread), not threads waiting for the GIL."""
        summary = run_workload(("crunch-0", crunch, ()))
        row = by_name(summary)["crunch-0"]
        assert share(row, "gil_wait_s") < 0.25, row
        assert share(row, "python_s", "cpu_wait_s") > 0.5, row  # on a busy machine it also waits for a CPU
        assert format_gil(summary) is None
        verdict = format_verdict(summary)
        assert verdict is not None and verdict.startswith("Bottleneck: CPU-bound in Python:")

    def test_mix_names_the_cpu_bound_function(self) -> None:
        """CPU-bound and sleeping threads together: the advice is about the CPU-bound function."""
        summary = run_workload(
            ("crunch-0", crunch, ()), ("crunch-1", crunch, ()), ("sleep-0", sleeper, ()), ("sleep-1", sleeper, ())
        )
        rows = by_name(summary)
        for name in ("crunch-0", "crunch-1"):
            assert share(rows[name], "gil_wait_s") > 0.2, rows[name]
        for name in ("sleep-0", "sleep-1"):
            assert share(rows[name], "sleep_s", "gil_wait_s") > 0.5, rows[name]
            assert rows[name]["entry"] in ("sleeper", None)
        text = format_gil(summary)
        assert text is not None and "run `crunch` in a ProcessPoolExecutor" in text

    def test_thread_pool_advice(self) -> None:
        """CPU-bound work in a ThreadPoolExecutor: the advice swaps the pool for a ProcessPoolExecutor."""
        stop = [False]
        monitor = GilMonitor(recorder=Recorder())
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(crunch, stop) for _ in range(2)]
            with monitor:
                measure(monitor)
            stop[0] = True
            for f in futures:
                f.result(30)
        summary = monitor.summary()
        workers = [t for t in summary["threads"] if t["name"].startswith("ThreadPoolExecutor")]
        assert len(workers) == 2 and all(t["pool"] == "ThreadPoolExecutor" for t in workers)
        text = format_gil(summary)
        assert text is not None
        assert "`crunch` runs in a ThreadPoolExecutor; a ProcessPoolExecutor has the same interface" in text

    def test_asyncio_to_thread_advice(self) -> None:
        """CPU-bound work sent to asyncio.to_thread: the advice says to_thread does not make it parallel."""
        stop = [False]
        monitor = GilMonitor(recorder=Recorder())

        async def main() -> None:
            jobs = [asyncio.create_task(asyncio.to_thread(crunch, stop)) for _ in range(2)]
            await asyncio.to_thread(measure, monitor)
            stop[0] = True
            await asyncio.gather(*jobs)

        with monitor:
            asyncio.run(main())
        summary = monitor.summary()
        assert any(t["pool"] == "asyncio" for t in summary["threads"])
        text = format_gil(summary)
        assert text is not None
        assert "`crunch` runs in the event loop's default thread pool" in text
        assert "to_thread does not make CPU-bound code parallel" in text


@linux_only
class TestNoFalseAlarm:
    """I/O-bound threads, idle pools and C code that releases the GIL get no CPU-bound section."""

    def test_io_bound_threads(self, tmp_path: Path) -> None:
        """Sockets, sleeps and file I/O: no section, little GIL wait, and an I/O-bound verdict."""
        summary = run_workload(
            ("recv", socket_reader, ()),
            ("sleep-0", sleeper, ()),
            ("sleep-1", sleeper, ()),
            ("file", file_io, (tmp_path / "data.bin",)),
        )
        assert format_gil(summary) is None
        rows = by_name(summary)
        for name in ("recv", "sleep-0", "sleep-1", "file"):
            assert share(rows[name], "gil_wait_s") < 0.2, rows[name]
        assert share(rows["recv"], "io_s") > 0.5, rows["recv"]
        assert share(rows["sleep-0"], "sleep_s") > 0.5, rows["sleep-0"]
        verdict = format_verdict(summary)
        assert verdict is not None
        assert verdict.startswith("Bottleneck: I/O-bound: threads or asyncio are the right tool;"), verdict

    def test_idle_pool(self) -> None:
        """A thread pool waiting for work: its workers are idle, and nothing is CPU-bound."""
        monitor = GilMonitor(recorder=Recorder())
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(abs, range(8)))
            with monitor:
                measure(monitor, 30)
        summary = monitor.summary()
        workers = [t for t in summary["threads"] if t["name"].startswith("ThreadPoolExecutor")]
        assert workers and all(share(t, "idle_s") > 0.8 for t in workers), workers
        assert format_gil(summary) is None
        verdict = format_verdict(summary) or ""
        assert "CPU-bound" not in verdict

    @pytest.mark.parametrize("work", [hasher, compressor], ids=["hashlib", "zlib"])
    def test_c_code_that_releases_the_gil(self, work: Callable[[Stop], None]) -> None:
        """Two threads in hashlib / zlib on large buffers run in parallel: no section, C-code time."""
        summary = run_workload(("c-0", work, ()), ("c-1", work, ()))
        assert format_gil(summary) is None
        rows = by_name(summary)
        for name in ("c-0", "c-1"):
            assert share(rows[name], "native_s", "cpu_wait_s") > 0.5, rows[name]
            assert share(rows[name], "gil_wait_s") < 0.25, rows[name]

    def test_c_calls_ending_while_the_sampler_holds_the_gil(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The sampler's own hold on the GIL stretched (a loaded machine preempting it): hashers whose
        calls end meanwhile are found at the GIL, yet the kernel saw them on a CPU; no section."""
        monkeypatch.setattr(gil_module, "RECHECK_US", 8000)  # each sample holds the GIL ~8 ms
        summary = run_workload(("c-0", hasher, ()), ("c-1", hasher, ()))
        assert format_gil(summary) is None, format_gil(summary)
        for name in ("c-0", "c-1"):
            row = by_name(summary)[name]
            assert share(row, "gil_wait_s") < 0.25, row
        verdict = format_verdict(summary) or ""
        assert "CPU-bound Python code in threads" not in verdict


# ---- the monitor as an API ----------------------------------------------------------------------


class TestWatchGil:
    """watch_gil() as a context manager and a decorator, and the monitor's thread."""

    def test_public_names(self) -> None:
        """watch_gil and GilMonitor are exported by conctools."""
        assert conctools.watch_gil is watch_gil and conctools.GilMonitor is GilMonitor
        assert {"watch_gil", "GilMonitor"} <= set(conctools.__all__)

    def test_import_stays_lazy(self) -> None:
        """`import conctools` does not load the GIL monitor; `conctools.watch_gil` does."""
        code = (
            "import sys, conctools;"
            "assert 'conctools.gil' not in sys.modules;"
            "assert conctools.watch_gil.__module__ == 'conctools.gil' and 'conctools.gil' in sys.modules"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr

    def test_named_daemon_thread_and_section(self, recorder: Recorder) -> None:
        """The sampler is daemon 'conctools-gil', publishes the 'gil' section, and stops on exit."""
        with watch_gil() as monitor:
            mine = [t for t in threading.enumerate() if t.name == THREAD_NAME]
            assert len(mine) == 1 and mine[0].daemon
            assert monitor.running
        assert not monitor.running
        assert not [t for t in threading.enumerate() if t.name.startswith("conctools-gil")]
        section = recorder.snapshot().sections["gil"]
        assert section["running"] is False and section["samples"] >= 2
        assert section["cores"] >= 1

    def test_sync_decorator_preserves_behaviour(self, recorder: Recorder) -> None:
        """@watch_gil keeps return values, exceptions and the signature; each call is measured."""

        @watch_gil
        def work(x: int, *, y: int = 1) -> int:
            if x < 0:
                raise ValueError("negative")
            return x + y

        assert work(2, y=3) == 5
        with pytest.raises(ValueError, match="negative"):
            work(-1)
        assert inspect.signature(work).parameters.keys() == {"x", "y"}
        assert isinstance(work.gil, GilMonitor)  # type: ignore[attr-defined]
        assert not work.gil.running  # type: ignore[attr-defined]
        assert "gil" in recorder.snapshot().sections

    def test_async_decorator(self, recorder: Recorder) -> None:
        """@watch_gil(interval_s=...) on a coroutine function keeps it one."""

        @watch_gil(interval_s=0.005)
        async def work() -> str:
            await asyncio.sleep(0.01)
            return "done"

        assert inspect.iscoroutinefunction(work)
        assert asyncio.run(work()) == "done"

    def test_nested_call_joins_the_running_monitor(self, recorder: Recorder) -> None:
        """A call while the monitor runs does not restart it (its counts survive)."""
        monitor = GilMonitor()

        @monitor
        def inner() -> int:
            return monitor.samples

        with monitor:
            measure(monitor, 3)
            before = inner()
            assert monitor.running and monitor.samples >= before >= 3

    def test_sampled_less_often_while_one_thread_runs(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """After QUIET_SAMPLES samples that found at most one thread running, the sampler waits
        QUIET_SLOWDOWN times its interval (each sample stops the running thread: issue 12); the first
        sample that finds two threads running brings the interval back."""
        monitor = GilMonitor(0.01)
        found = [1] * 12 + [2] + [0] * 3  # threads each sample finds running
        waits: list[float] = []

        class Stop:
            def acquire(self, timeout: float) -> bool:
                waits.append(timeout)
                return len(waits) > len(found)

            def release(self) -> None:
                pass

        samples = iter(found)

        def sample() -> None:
            monitor._last_running = next(samples)

        monkeypatch.setattr(monitor, "_stop", Stop())
        monkeypatch.setattr(monitor, "_sample_safely", sample)
        monitor._run()
        slow = gil_module.QUIET_SLOWDOWN * 0.01
        quiet = gil_module.QUIET_SAMPLES
        assert waits == pytest.approx([0.01] * quiet + [slow] * 3 + [0.01] * (len(found) + 1 - quiet - 3))

    def test_bad_interval(self) -> None:
        """A non-positive or infinite interval is a ValueError naming the value."""
        for bad in (0, -1, float("inf"), float("nan")):
            with pytest.raises(ValueError, match="interval_s"):
                GilMonitor(bad)

    @linux_only
    def test_threads_and_events(self, recorder: Recorder) -> None:
        """threads() gives frozen per-thread records; windows become GilSampleEvents that round-trip JSON."""
        with threads(("crunch-0", crunch, ()), ("crunch-1", crunch, ())), watch_gil() as monitor:
            deadline = time.monotonic() + 60
            while not recorder.snapshot().of_kind(GilSampleEvent):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        rows = {t.name: t for t in monitor.threads()}
        assert isinstance(rows["crunch-0"], ThreadGilStats)
        assert rows["crunch-0"].cpu_s > 0 and rows["crunch-0"].alive  # still running when the monitor stopped
        event = recorder.snapshot().of_kind(GilSampleEvent)[0]
        assert event.thread_name == THREAD_NAME and event.window_s > 0 and event.threads_wanting >= 0
        assert event_from_dict(event.to_dict()) == event

    @linux_only
    def test_short_lived_threads_are_bounded(self, recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
        """Hundreds of short threads: finished ones past MAX_THREADS fold into one row; nothing raises."""
        monkeypatch.setattr(gil_module, "MAX_THREADS", 5)
        with watch_gil(interval_s=0.002) as monitor:
            for batch in range(6):
                release = threading.Event()
                batch_threads = [
                    threading.Thread(target=release.wait, name=f"short-{batch}-{i}", args=(30,)) for i in range(5)
                ]
                for t in batch_threads:
                    t.start()
                measure(monitor, monitor.samples + 3)  # each thread is seen in at least two samples
                release.set()
                for t in batch_threads:
                    t.join()
            measure(monitor, monitor.samples + 2)
        rows = monitor.threads()
        assert len(rows) <= 5 + 2  # five finished threads, the folded row, the main thread
        folded = [r for r in rows if r.threads > 1]
        assert len(folded) == 1 and folded[0].name == "(25 finished threads)", rows
        assert monitor._failures == 0

    @linux_only
    @pytest.mark.skipif(not hasattr(threading.Thread, "_set_native_id"), reason="threading sets no native_id")
    def test_thread_sampled_while_it_starts_is_measured(self, recorder: Recorder) -> None:
        """A thread sampled between getting its ident and its kernel id (threading sets them one after
        the other) is measured once it runs: its kernel id, its CPU time and its wait for the GIL."""
        in_window, leave_window = threading.Event(), threading.Event()

        class Starting(threading.Thread):
            def _set_native_id(self) -> None:  # held open: the window a busy machine may leave open
                in_window.set()
                leave_window.wait(30)
                super()._set_native_id()  # type: ignore[misc]

        with watch_gil() as monitor:
            stop = Until(monitor, samples=10**9, timeout_s=60)  # stopped by the test
            late = Starting(target=crunch, args=(stop,), name="crunch-late")
            starter = threading.Thread(target=late.start, name="starter")  # start() waits for the window
            with threads(("crunch-0", crunch, ()), stop=stop):
                starter.start()
                assert in_window.wait(30)
                assert late.ident is not None and late.native_id is None
                measure(monitor, monitor.samples + 3)  # sampled while it has no kernel id
                leave_window.set()
                starter.join(30)
                measure(monitor, monitor.samples + 20)
                stop[0] = True
                late.join(30)
        rows = {t.name: t for t in monitor.threads()}
        assert rows["crunch-late"].native_id == late.native_id, rows["crunch-late"]
        assert rows["crunch-late"].cpu_s > 0 and rows["crunch-late"].unknown_s == 0, rows["crunch-late"]
        assert rows["crunch-late"].gil_wait_s > 0 and rows["crunch-0"].gil_wait_s > 0, rows

    def test_one_costly_sample_does_not_stop_the_sampling(self, recorder: Recorder) -> None:
        """One sample that costs 60 ms of CPU (a full garbage collection of a big program may run in
        the sampler's thread) leaves the sampling pace as it was: it is not paused for 12 s."""
        monitor = GilMonitor()
        sample = monitor._sample
        costly = threading.Event()

        def sample_with_a_collection() -> None:
            sample()
            if threading.current_thread().name == THREAD_NAME and not costly.is_set():
                until = time.thread_time() + 0.06
                while time.thread_time() < until:
                    pass
                costly.set()

        monitor._sample = sample_with_a_collection  # type: ignore[method-assign]
        with monitor:
            assert costly.wait(30)
            after = monitor.samples
            measure(monitor, after + 10, timeout_s=6.0)  # paced by that one sample: 12 s to the next

    @linux_only
    def test_free_threaded_build_reports_parallelism_only(
        self, recorder: Recorder, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A guard for 3.13t: with sys._is_gil_enabled() false, no GIL waits and the section says the GIL is off."""
        monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
        summary = run_workload(("crunch-0", crunch, ()), ("crunch-1", crunch, ()))
        assert summary["gil_enabled"] is False
        assert all(t["gil_wait_s"] == 0 for t in summary["threads"])
        text = format_gil(summary, force=True)
        assert text is not None and "the GIL is off (free-threaded build)" in text
        assert "ProcessPoolExecutor" not in text

    def test_live_summary_measures_when_nothing_runs(self) -> None:
        """The console's view: a short measurement of its own, recording nothing anywhere."""
        rec = Recorder()
        data = live_summary(rec, 0.1)
        assert data["samples"] >= 2 and data["running"] is False
        assert "gil" not in rec.snapshot().sections
        assert console_text(data).endswith(f"measured over {gil_text.format_duration(data['wall_s'])}")

    def test_live_summary_reads_the_running_monitor(self, recorder: Recorder) -> None:
        """With a monitor running for the recorder, the console reads it (and says it runs)."""
        with watch_gil() as monitor:
            measure(monitor, 3)
            data = live_summary(recorder, 5.0)
            assert data["running"] is True
            assert "(the monitor is running)" in console_text(data)


_FRAMES_UNDER_GC = """
import gc, sys, threading
from conctools._threadstate import current_frames
read = current_frames if sys.argv[1] == "safe" else sys._current_frames
for threshold in range(1, 12):  # some threshold starts a collection inside the call
    gc.collect()
    gc.set_threshold(threshold)
    local = threading.local(); cycle = [local]; cycle.append(cycle); del local, cycle  # garbage for it
    (lambda: read())()  # a fresh frame: the call makes a frame object for it
    gc.set_threshold(700)
print("done", gc.isenabled())
gc.disable()
read()
print("still off", not gc.isenabled())
"""


class TestCurrentFrames:
    """Reading every thread's stack never hangs the process (CPython gh-106883 on 3.11)."""

    def test_no_deadlock_when_a_collection_starts_inside(self, tmp_path: Path) -> None:
        """A garbage collection that frees a threading.local while the stacks are read: the plain
        sys._current_frames() hangs 3.11 for good; conctools' reader finishes, and leaves the
        collector as it found it (on, or off)."""
        script = tmp_path / "frames_under_gc.py"
        script.write_text(_FRAMES_UNDER_GC)
        safe = subprocess.run(
            [sys.executable, str(script), "safe"], capture_output=True, text=True, timeout=60, cwd=ROOT
        )
        assert safe.returncode == 0, safe.stderr
        assert safe.stdout.split("\n")[:2] == ["done True", "still off True"]
        if sys.version_info < (3, 12):  # the scenario is the real one: without the guard, 3.11 hangs
            with pytest.raises(subprocess.TimeoutExpired):
                subprocess.run([sys.executable, str(script), "raw"], capture_output=True, timeout=5, cwd=ROOT)


# ---- the reporter, on known data ----------------------------------------------------------------


def crafted(**overrides: Any) -> dict[str, Any]:
    """A ``gil`` section as the monitor writes it: four threads crunching in 2 s on 2 cores."""
    threads_ = [
        {
            "name": f"worker-{i}",
            "thread_id": i,
            "native_id": i,
            "alive": False,
            "threads": 1,
            "wall_s": 2.0,
            "cpu_s": 0.5,
            "runqueue_s": 0.0,
            "python_s": 0.5,
            "gil_wait_s": 1.5,
            "native_s": 0.0,
            "cpu_wait_s": 0.0,
            "io_s": 0.0,
            "sleep_s": 0.0,
            "sync_s": 0.0,
            "idle_s": 0.0,
            "unknown_s": 0.0,
            "samples": 100,
            "entry": "crunch",
            "pool": None,
            "loop": False,
            "hot": [
                {
                    "filename": "/app/seed.py",
                    "lineno": 9,
                    "function": "crunch",
                    "line": "total += i * i",
                    "python_samples": 100,
                    "native_samples": 0,
                }
            ],
        }
        for i in range(4)
    ]
    data: dict[str, Any] = {
        "gil_enabled": True,
        "method": "proc",
        "running": False,
        "interval_s": 0.01,
        "samples": 100,
        "wall_s": 2.0,
        "cpu_s": 2.0,
        "monitor_cpu_s": 0.01,
        "parallelism": 1.0,
        "cores": 2,
        "cpu_count": 2,
        "wanted_s": 2.0,
        "contended_s": 0.74,
        "running_together_s": 0.0,
        "concurrency": {"4": 0.74},
        "gil_wait_s": 6.0,
        "threads": threads_,
    }
    data.update(overrides)
    return data


class TestReporter:
    """Pure text from known data: wording, advice, thresholds, safety."""

    def test_headline_and_advice_read_like_the_issue(self) -> None:
        """The sentence a person reads, with the function and the gain."""
        data = crafted()
        assert (
            headline(data) == "4 threads wanted the GIL at the same time for 740 ms; the program used 1.0 of 2 cores."
        )
        text = format_gil(data)
        assert text is not None
        assert (
            "CPU-bound Python code in threads runs one thread at a time: run `crunch` in a ProcessPoolExecutor"
            " (up to 1.2x faster here), or use code that releases the GIL." in text
        )

    def test_speedup_is_amdahl_over_the_cores(self) -> None:
        """Four threads wanting the GIL all the time on 2 cores: up to 2x; on 8 cores, up to 4x."""
        assert speedup(crafted(contended_s=2.0, concurrency={"4": 2.0})) == pytest.approx(2.0)
        assert speedup(crafted(contended_s=2.0, concurrency={"4": 2.0}, cores=8)) == pytest.approx(4.0)
        assert speedup(crafted(concurrency={})) == 1.0

    def test_one_core_says_processes_would_not_help(self) -> None:
        """With a CPU affinity of one core, no "faster with processes" promise."""
        text = format_gil(crafted(cores=1))
        assert text is not None and "may use only 1 core" in text and "faster here" not in text

    def test_silent_below_the_thresholds(self) -> None:
        """A little contention is no section (but the console can still show it)."""
        small = crafted(contended_s=0.05, concurrency={"2": 0.05})
        assert format_gil(small) is None and not matters(small)
        forced = console_text(small)
        assert "no GIL contention worth acting on" in forced and "ProcessPoolExecutor" not in forced

    def test_verdicts(self) -> None:
        """Each bottleneck gets its line: I/O, C code, locks, a blocked loop."""
        base = crafted(contended_s=0.0, concurrency={}, gil_wait_s=0.0)

        def with_thread(**fields: float) -> dict[str, Any]:
            row = {**base["threads"][0], "python_s": 0.0, "gil_wait_s": 0.0, "wall_s": 2.0, **fields}
            return dict(base, threads=[row])

        io = format_verdict(with_thread(io_s=1.84, python_s=0.16))
        assert io is not None and io.splitlines()[0] == (
            "Bottleneck: I/O-bound: threads or asyncio are the right tool; 92% of thread time waited on I/O or sleeps."
        )
        native = format_verdict(with_thread(native_s=1.9, python_s=0.1))
        assert native is not None and native.startswith("Bottleneck: CPU-bound in C code that releases the GIL: 95%")
        sync = format_verdict(with_thread(sync_s=1.5, python_s=0.5))
        assert sync is not None and sync.startswith("Bottleneck: waiting on locks, queues and futures: 75%")
        loop_data = with_thread(python_s=1.8, io_s=0.2)
        loop_data["threads"][0]["loop"] = True
        blocked = format_verdict(loop_data, snapshot_of(loop_data, slow_callbacks={"sites": [{"total_s": 1.5}]}))
        assert blocked is not None and blocked.startswith(
            "Bottleneck: a blocked event loop: callbacks held it for 1.50 s"
        )
        idle = with_thread(idle_s=2.0)
        assert format_verdict(idle) is None  # nothing but waiting for others: nothing to judge
        # A parent that joined its child for 5.5 s after 81 ms of starting it (CI, a busy machine):
        # the 81 ms are no bottleneck of a program that was idle otherwise.
        parent = dict(with_thread(io_s=0.081, idle_s=4.9), wall_s=5.53)
        assert format_verdict(parent) is None
        assert format_verdict(dict(parent, wall_s=1.2)) is not None  # 7% of its run: judged

    def test_free_threaded_wording(self) -> None:
        """GIL off: the headline says so and reports parallelism only."""
        data = crafted(gil_enabled=False, running_together_s=1.5, parallelism=1.9)
        assert matters(data)
        assert headline(data).startswith("the GIL is off (free-threaded build): threads ran Python at the same time")
        assert "1.9 of 2 cores" in headline(data)

    def test_hostile_names_are_neutralised(self) -> None:
        """Thread names with terminal escapes or bidi overrides are escaped in text; HTML stays inert."""
        data = crafted()
        data["threads"][0]["name"] = "evil\x1b[31m\u202e<img src=x onerror=alert(1)>"
        text = format_gil(data)
        assert text is not None and "\x1b" not in text and "\u202e" not in text and "\\x1b[31m" in text
        page = render_html(snapshot_of(data))
        assert "<img src=x" not in page

    def test_reports_carry_the_section(self) -> None:
        """Text (verdict first, then the section), JSON, HTML and the trace's counter tracks."""
        data = crafted()
        snap = snapshot_of(data)
        text = render_text(snap)
        body = text.split("=" * 78)[-1].lstrip("\n")
        # The ranked findings come first (the GIL's among them), then the verdict.
        assert body.startswith("Findings (1, worst first)\n  1. [HIGH] CPU-bound threads: 4 threads wanted the GIL")
        after_findings = body.split("\n\n", 1)[1]
        assert after_findings.startswith("Bottleneck: CPU-bound Python code in threads: use processes;")
        assert "CPU-bound threads: 4 threads wanted the GIL" in text
        assert '"gil_enabled": true' in render_json(snap)
        assert "CPU-bound threads: 4 threads wanted the GIL" in render_html(snap)
        rec = Recorder()
        rec.record(
            GilSampleEvent(
                ts_ns=rec.started_ns + 250_000_000,
                thread_id=1,
                thread_name=THREAD_NAME,
                window_s=0.25,
                threads_wanting=3.9,
                threads_waiting=2.9,
                cores_used=1.0,
            )
        )
        counters = [e for e in trace_events(rec.snapshot()) if e["ph"] == "C"]
        assert {"name": "GIL: threads", "args": {"wanting": 3.9, "waiting": 2.9}}.items() <= counters[0].items()
        assert counters[1]["name"] == "Cores used" and counters[1]["args"] == {"cores": 1.0}


# ---- conctools run, the example, the console -------------------------------------------------------


def conctools_run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conctools", "run", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@linux_only
class TestRun:
    """`conctools run` has the monitor on by default; --no-gil switches it off."""

    def test_example_shows_the_section_and_the_advice(self) -> None:
        """The seed-style example in threads: the verdict, the section, the pool and the function."""
        result = conctools_run("examples/cpu_threads_vs_processes.py", "threads")
        assert result.returncode == 0, result.stderr
        assert "ThreadPoolExecutor: 4 x crunch" in result.stdout
        report = result.stderr
        # (On failure, the report's head: the verdict and the time breakdown it was taken on.)
        assert "Bottleneck: CPU-bound Python code in threads: use processes;" in report, report[:3000]
        assert re.search(r"CPU-bound threads: (\d|\d to \d) threads wanted the GIL at the same time for ", report), (
            report[:3000]
        )
        assert "`crunch` runs in a ThreadPoolExecutor; a ProcessPoolExecutor has the same interface" in report
        assert "examples/cpu_threads_vs_processes.py:25 (" in report  # the hottest line: the loop body
        # The ranked findings name it first; then the verdict; then the section itself.
        assert report.index("Findings") < report.index("Bottleneck:") < report.index("\nCPU-bound threads: ")

    def test_example_with_processes_has_no_cpu_bound_threads(self) -> None:
        """The same work in a ProcessPoolExecutor: no CPU-bound threads section, and the process pool's own
        helper threads (waiting on their pipes) do not make the verdict call the program I/O-bound."""
        result = conctools_run("examples/cpu_threads_vs_processes.py", "processes")
        assert result.returncode == 0, result.stderr
        assert "ProcessPoolExecutor: 4 x crunch" in result.stdout
        assert "CPU-bound threads" not in result.stderr
        assert "I/O-bound" not in result.stderr

    def test_no_gil_flag(self, tmp_path: Path) -> None:
        """--no-gil: no section, no verdict, no 'gil' in report.json."""
        result = conctools_run("--no-gil", "--out", str(tmp_path), "examples/cpu_threads_vs_processes.py", "threads")
        assert result.returncode == 0, result.stderr
        assert "CPU-bound threads" not in result.stderr and "Bottleneck:" not in result.stderr
        assert '"gil"' not in (tmp_path / "report.json").read_text()

    def test_io_bound_program(self, tmp_path: Path) -> None:
        """Threads sleeping and waiting on sockets: an I/O-bound verdict, no CPU-bound section."""
        script = tmp_path / "io_threads.py"
        script.write_text(
            "import socket, threading, time\n"
            "def fetch():\n"
            "    a, b = socket.socketpair()\n"
            "    for _ in range(25):\n"
            "        b.send(b'x'); a.recv(1); time.sleep(0.02)\n"
            "ts = [threading.Thread(target=fetch) for _ in range(4)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
        )
        result = conctools_run(str(script))
        assert result.returncode == 0, result.stderr
        assert "Bottleneck: I/O-bound: threads or asyncio are the right tool;" in result.stderr
        assert "CPU-bound threads" not in result.stderr


@linux_only
class TestPytestPlugin:
    """A test whose threads fight over the GIL gets the section and a summary line."""

    def test_section_and_summary(self, pytester: pytest.Pytester) -> None:
        """Two crunching threads in a test: 'conctools: CPU-bound threads' in the summary and the report."""
        pytester.makepyfile(
            test_crunch="""
            import threading, time

            def crunch(stop):
                # A fixed amount of CPU work (not of wall time): on a busy machine the threads still
                # want the GIL together for as long as they compute.
                total = 0
                while time.thread_time() < 1.0:
                    for i in range(10_000):
                        total += i * i % 7

            def test_threads():
                stop = []
                ts = [threading.Thread(target=crunch, args=(stop,)) for _ in range(2)]
                [t.start() for t in ts]
                [t.join() for t in ts]

            def test_quiet():
                time.sleep(0.2)
            """
        )
        pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
        quiet = ("-p", "no:locust", "-p", "no:benchmark", "-p", "no:hypothesispytest", "-p", "no:cacheprovider")
        result = pytester.runpytest_subprocess("--conctools", "-rA", *quiet, timeout=120)
        result.assert_outcomes(passed=2)
        out = result.stdout.str()
        assert "conctools: CPU-bound threads" in out
        assert re.search(r"test_crunch.py::test_threads: CPU-bound threads: .*wanted the GIL at the same time", out)
        assert "test_quiet: CPU-bound" not in out
        assert "run `crunch` in a ProcessPoolExecutor" in out


@linux_only
class TestConsole:
    """The live console's `gil` command."""

    def test_gil_command(self, recorder: Recorder) -> None:
        """`gil` answers over telnet with the measurement (a fresh one when no monitor runs)."""
        sys.path.insert(0, str(Path(__file__).parent))
        try:
            from test_console import LoopInThread, _client, _start
        finally:
            sys.path.pop(0)
        app_loop = LoopInThread()
        try:
            monitor, _port = _start(app_loop, recorder)
            client = _client(monitor)  # the console lets in only who has its secret
            try:
                client.read_until("conctools >>>")
                out = client.command("gil --seconds 0.2", "measured over")
                assert "CPU-bound threads" in out
            finally:
                client.close()
                monitor.close()
        finally:
            app_loop.stop()


class TestBlockedThreadStateCache:
    """A blocked thread's state is judged once per wait, and a new wait is judged again."""

    def test_same_function_and_line_from_another_caller_is_another_wait(self) -> None:
        """Frames are reused at the same address: the key must tell ``Thread.start()``'s wait in
        ``Event.wait`` from ``Future.result()``'s (the same innermost code and offset, other callers)."""

        release = threading.Event()

        def wait_here() -> None:
            release.wait()

        def from_start() -> None:
            wait_here()

        def from_result() -> None:
            wait_here()

        workers = [threading.Thread(target=f, daemon=True) for f in (from_start, from_result)]
        for t in workers:
            t.start()
        try:
            deadline = time.monotonic() + 10
            while True:  # until both block in the same Condition.wait line
                frames = sys._current_frames()
                tops = [frames.get(t.ident or 0) for t in workers]
                if all(
                    f is not None and f.f_code.co_name == "wait" and "threading" in f.f_code.co_filename for f in tops
                ):
                    break
                assert time.monotonic() < deadline, "the threads did not block"
                time.sleep(0.01)
            first, second = tops
            assert first is not None and second is not None
            assert (first.f_code, first.f_lasti) == (second.f_code, second.f_lasti)
            assert gil_module._stack_key(first) == gil_module._stack_key(first)  # the same wait, looked at twice
            assert gil_module._stack_key(first) != gil_module._stack_key(second)
        finally:
            release.set()
            for t in workers:
                t.join(10)


class TestPoolShutdownIsIdle:
    """``with multiprocessing.Pool()`` ends in ``terminate()``, whose ``_help_stuff_finish`` takes the call
    queue's read lock: an idle worker holds it while it waits for a job, until the pool's handlers send the
    workers their sentinels. That wait is the pool's shutdown, other processes' and threads' doing: idle, as a
    join, never a lock wait that could make the verdict "waiting on locks" (a CI run saw 100 ms of it)."""

    @pytest.mark.parametrize(("function", "state"), [("_help_stuff_finish", "idle"), ("_pick_a_lock", "sync")])
    def test_a_wait_in_the_pools_shutdown(self, function: str, state: str) -> None:
        lock = threading.Lock()
        lock.acquire()
        namespace: dict[str, Any] = {}
        # A function of that name in multiprocessing/pool.py's place, blocked in a C lock as the real one is.
        source = f"def {function}(lock):\n    lock.acquire()\n    lock.release()\n"
        filename = os.path.join(os.path.dirname(threading.__file__), "multiprocessing", "pool.py")
        exec(compile(source, filename, "exec"), namespace)
        user = threading.Thread(target=lambda: namespace[function](lock), daemon=True)
        user.start()
        try:
            deadline = time.monotonic() + 10
            while True:
                frame = sys._current_frames().get(user.ident or 0)
                if frame is not None and frame.f_code.co_name == function:
                    break
                assert time.monotonic() < deadline, "the thread did not block"
                time.sleep(0.01)
            monitor = gil_module.GilMonitor()
            track = gil_module._Track(user, user.ident or 0, user.native_id or 0, user.name)
            assert gil_module.STATES[monitor._wait_kind(track, frame)] == state
        finally:
            lock.release()
            user.join(10)
