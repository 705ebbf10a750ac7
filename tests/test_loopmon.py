"""The event-loop monitor on real loops with real stalls: culprits, aggregates, blocking calls, `conctools run`."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

import conctools
from conctools import loopmon
from conctools.events import BlockingCallEvent, Frame, SlowCallbackEvent, event_from_dict
from conctools.loopmon import LoopMonitor, culprit_of, monitor_all_loops, watch_loop
from conctools.loopmon.segments import Sample, cut_segments, partition_runs
from conctools.recorder import Recorder, Snapshot
from conctools.reporting import render_text
from conctools.reporting.loop_text import slow_callbacks_section

HERE = __file__
THRESHOLD = 0.1


def stalls(rec: Recorder) -> list[SlowCallbackEvent]:
    """The sampled stalls (on a loaded machine the loop thread itself may be starved past the
    threshold; such stalls are recorded without samples and are not what these tests look for)."""
    return [e for e in rec.snapshot().of_kind(SlowCallbackEvent) if e.samples]


def line_of(fn: Callable[..., Any], text: str) -> int:
    """The line number of the first line of ``fn`` containing ``text``."""
    import inspect

    lines, start = inspect.getsourcelines(fn)
    for i, line in enumerate(lines):
        if text in line:
            return start + i
    raise AssertionError(f"{text!r} not in {fn}")


def spin(seconds: float) -> int:
    """A plain CPU loop (no sleep, no I/O) for ``seconds``."""
    n = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += 1
    return n


async def sleepy_coroutine() -> None:
    time.sleep(0.4)  # the blocking line


def blocking_callback() -> None:
    time.sleep(0.4)


def run_monitored(main: Callable[[], Coroutine[Any, Any, Any]], **options: Any) -> Any:
    async def wrapper() -> Any:
        async with watch_loop(threshold_s=options.pop("threshold_s", THRESHOLD), **options):
            return await main()

    return asyncio.run(wrapper())


class TestStallCulprits:
    def test_time_sleep_in_a_coroutine(self, recorder: Recorder) -> None:
        """A time.sleep in a task: the event names the task, points at the sleep line, measures the stall."""

        async def main() -> None:
            await asyncio.create_task(sleepy_coroutine(), name="sleepy")

        run_monitored(main)
        [event] = stalls(recorder)
        assert event.task_name == "sleepy"
        assert "sleepy_coroutine" in event.callback
        assert event.culprit is not None
        assert event.culprit.site == f"{HERE}:{line_of(sleepy_coroutine, 'time.sleep')}"
        assert event.culprit.line == "time.sleep(0.4)  # the blocking line"
        assert 0.25 <= event.duration_s < 3.0
        assert event.threshold_s == THRESHOLD
        assert event.samples and event.detected_after_s is not None
        assert event.detected_after_s < event.duration_s
        assert event.task_created_at == f"{HERE}:{line_of(main, 'create_task')}"

    def test_cpu_loop_in_a_plain_function(self, recorder: Recorder) -> None:
        """A CPU loop in a plain function called from a coroutine: the culprit is inside that function."""

        async def main() -> None:
            spin(0.4)

        run_monitored(main)
        [event] = stalls(recorder)
        assert event.culprit is not None
        assert event.culprit.function == "spin"
        assert event.culprit.filename == HERE
        assert event.duration_s >= 0.3
        assert any(f.function == "main" for f in event.samples[0])

    def test_blocking_plain_callback(self, recorder: Recorder) -> None:
        """A blocking call_soon callback (no task): the culprit is the callback's sleep line."""

        async def main() -> None:
            asyncio.get_running_loop().call_soon(blocking_callback)
            await asyncio.sleep(0.05)

        run_monitored(main)
        [event] = stalls(recorder)
        assert event.task_name is None
        assert "blocking_callback" in event.callback
        assert event.culprit is not None
        assert event.culprit.site == f"{HERE}:{line_of(blocking_callback, 'time.sleep')}"

    def test_builtin_callback_has_no_culprit_frame(self, recorder: Recorder) -> None:
        """``call_soon(time.sleep, 0.4)`` has no Python frame of its own: the callback itself is named."""

        async def main() -> None:
            asyncio.get_running_loop().call_soon(time.sleep, 0.4)
            await asyncio.sleep(0.05)

        run_monitored(main)
        [event] = stalls(recorder)
        assert event.culprit is None
        assert event.callback == "callback time.sleep(0.4)"

    def test_short_stalls_are_not_reported(self, recorder: Recorder) -> None:
        """Blocks shorter than the threshold cost nothing and are not reported."""

        async def main() -> None:
            for _ in range(5):
                time.sleep(0.01)
                await asyncio.sleep(0)

        run_monitored(main, threshold_s=0.2)
        assert stalls(recorder) == []

    def test_no_false_report_while_work_runs_in_threads(self, recorder: Recorder) -> None:
        """Sleeping and CPU work in asyncio.to_thread / an executor never counts as a stall."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            await asyncio.gather(
                asyncio.to_thread(time.sleep, 0.4),
                asyncio.to_thread(spin, 0.4),
                loop.run_in_executor(None, time.sleep, 0.3),
                asyncio.sleep(0.4),
            )

        run_monitored(main, threshold_s=0.1)
        assert stalls(recorder) == []
        lag = recorder.snapshot().sections["slow_callbacks"]["loop_lag"]
        assert lag["count"] > 0

    def test_stall_in_progress_when_the_monitor_stops(self, recorder: Recorder) -> None:
        """A stall still running when the monitor stops is recorded with its duration so far."""

        async def main() -> int:
            async with watch_loop(threshold_s=THRESHOLD) as monitor:
                time.sleep(0.3)
            return monitor.stalls

        assert asyncio.run(main()) == 1
        [event] = stalls(recorder)
        assert event.duration_s >= 0.25

    def test_long_stall_is_sampled_repeatedly(self, recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
        """A long stall gets several stack samples, bounded by max_samples. The stall lasts until the
        monitor has looked 12 times (more than max_samples), not a fixed time: a starved monitor
        thread (2 busy cores) looks less often, never wrongly."""
        looks: list[int] = []
        take_sample = LoopMonitor._take_sample

        def counted(self: LoopMonitor, *args: Any) -> None:
            looks.append(1)
            take_sample(self, *args)

        monkeypatch.setattr(LoopMonitor, "_take_sample", counted)

        async def main() -> None:
            deadline = time.monotonic() + 20
            while len(looks) < 12 and time.monotonic() < deadline:
                time.sleep(0.01)  # blocks the loop throughout

        run_monitored(main, sample_interval_s=0.02, max_samples=8)
        assert len(looks) >= 12
        [event] = stalls(recorder)
        assert 3 <= len(event.samples) <= 8


class TestAggregates:
    def test_stalls_grouped_by_site(self, recorder: Recorder) -> None:
        """Several stalls at one line form one ranked row with count, total, max and p99."""

        async def main() -> None:
            for _ in range(3):
                time.sleep(0.25)  # repeated site
                await asyncio.sleep(0.05)
            spin(0.25)
            await asyncio.sleep(0.05)

        run_monitored(main)
        section = recorder.snapshot().sections["slow_callbacks"]
        assert section["stalls"] >= 4
        top = section["sites"][0]
        assert top["site"] == f"{HERE}:{line_of(main, 'repeated site')}"
        assert top["count"] == 3
        assert top["total_s"] >= 0.6 and top["max_s"] <= top["total_s"]
        assert top["p99_s"] <= top["max_s"]
        assert section["sites"][1]["function"] == "spin"
        json.dumps(section)  # JSON-able

    def test_text_section_ranks_sites_and_shows_the_stack(self, recorder: Recorder) -> None:
        """The text report shows the ranked table, the task and the blocking line."""

        async def main() -> None:
            await asyncio.create_task(sleepy_coroutine(), name="sleepy")
            await asyncio.sleep(0.1)  # a few heartbeats for the loop-lag line

        run_monitored(main)
        text = render_text(recorder.snapshot())
        assert "Slow callbacks: the event loop was blocked " in text
        assert "'sleepy'" in text
        assert "time.sleep(0.4)  # the blocking line" in text
        assert "Loop lag" in text

    def test_section_from_events_alone(self, recorder: Recorder) -> None:
        """A snapshot with events but no section (an old or trimmed report) still renders the table."""

        async def main() -> None:
            time.sleep(0.4)

        run_monitored(main)
        snap = recorder.snapshot()
        bare = Snapshot.from_dict({**snap.to_dict(), "sections": {}})
        text = slow_callbacks_section(bare, False)
        assert text is not None and "test_loopmon.py" in text and "main" in text

    def test_events_round_trip_json(self, recorder: Recorder) -> None:
        """SlowCallbackEvent (and its samples) survive the JSON round trip."""

        async def main() -> None:
            time.sleep(0.4)

        run_monitored(main)
        [event] = stalls(recorder)
        assert event_from_dict(json.loads(json.dumps(event.to_dict()))) == event


class TestLoopsAndThreads:
    def test_stall_in_a_loop_in_another_thread(self, recorder: Recorder) -> None:
        """A loop running in a non-main thread: the stall is attributed to that thread."""

        async def main() -> None:
            time.sleep(0.4)

        worker = threading.Thread(target=lambda: run_monitored(main), name="loop-worker")
        worker.start()
        worker.join(20)
        [event] = stalls(recorder)
        assert event.thread_name == "loop-worker"
        assert event.thread_id == worker.ident

    def test_two_loops_at_once(self, recorder: Recorder) -> None:
        """Two loops in two threads stall at the same time: each stall is found, on its own loop."""
        barrier = threading.Barrier(2)

        async def first() -> None:
            barrier.wait(5)
            time.sleep(0.4)  # first loop blocks here

        async def second() -> None:
            barrier.wait(5)
            spin(0.4)

        threads = [threading.Thread(target=run_monitored, args=(fn,), name=fn.__name__) for fn in (first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        events = {e.thread_name: e for e in stalls(recorder)}
        assert set(events) == {"first", "second"}
        assert events["first"].loop_id != events["second"].loop_id
        assert events["first"].culprit is not None and events["first"].culprit.function == "first"
        assert events["second"].culprit is not None and events["second"].culprit.function == "spin"

    def test_monitor_started_from_another_thread(self, recorder: Recorder) -> None:
        """LoopMonitor(loop).start() from outside the loop's thread watches it all the same."""
        loop = asyncio.new_event_loop()
        runner = threading.Thread(target=loop.run_forever, name="outside-loop")
        runner.start()
        monitor = LoopMonitor(loop, threshold_s=THRESHOLD)
        try:
            monitor.start()
            time.sleep(0.1)
            asyncio.run_coroutine_threadsafe(sleepy_coroutine(), loop).result(10)
            deadline = time.monotonic() + 5
            while monitor.stalls == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            monitor.stop()
            loop.call_soon_threadsafe(loop.stop)
            runner.join(5)
            loop.close()
        [event] = stalls(recorder)
        assert event.thread_name == "outside-loop"
        assert event.culprit is not None and event.culprit.function == "sleepy_coroutine"

    def test_same_loop_is_not_watched_twice(self, recorder: Recorder) -> None:
        """A second monitor on an already watched loop stays passive: one stall, one event."""

        async def main() -> None:
            async with watch_loop(threshold_s=THRESHOLD) as inner:
                time.sleep(0.3)
            return inner.stalls

        assert run_monitored(main) == 0
        assert len(stalls(recorder)) == 1

    def test_stop_restores_the_task_factory(self) -> None:
        """The creation-site task factory is removed on stop; a user's own factory keeps working."""
        made: list[str] = []

        def user_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            made.append(getattr(coro, "__qualname__", "?"))
            return asyncio.Task(coro, loop=loop, **kwargs)

        async def main() -> None:
            loop = asyncio.get_running_loop()
            loop.set_task_factory(user_factory)
            async with watch_loop(threshold_s=1.0):
                assert loop.get_task_factory() is not user_factory
                await loop.create_task(asyncio.sleep(0), name="x")
            assert loop.get_task_factory() is user_factory

        asyncio.run(main())
        assert "sleep" in made

    def test_bad_threshold(self) -> None:
        """A non-positive threshold is refused with a plain sentence."""
        with pytest.raises(ValueError, match="threshold_s must be more than 0"):
            LoopMonitor(threshold_s=0)

    def test_uvloop(self, recorder: Recorder) -> None:
        """On uvloop the stall is found and points at the blocking line too."""
        uvloop = pytest.importorskip("uvloop")

        async def main() -> None:
            await asyncio.create_task(sleepy_coroutine(), name="uv-sleepy")

        async def wrapper() -> None:
            async with watch_loop(threshold_s=THRESHOLD):
                await main()

        uvloop.run(wrapper())
        [event] = stalls(recorder)
        assert event.task_name == "uv-sleepy"
        assert event.culprit is not None and event.culprit.function == "sleepy_coroutine"
        assert event.duration_s >= 0.2


class TestMonitorAllLoops:
    def test_every_loop_that_starts_is_watched(self, recorder: Recorder) -> None:
        """Loops started by asyncio.run in the main thread and in a thread are watched, then unhooked."""

        async def main() -> None:
            await asyncio.create_task(sleepy_coroutine(), name=f"in-{threading.current_thread().name}")

        with monitor_all_loops(THRESHOLD):
            worker = threading.Thread(target=asyncio.run, args=(main(),), name="worker")
            worker.start()
            asyncio.run(main())
            worker.join(20)
        assert {e.task_name for e in stalls(recorder)} == {"in-worker", "in-MainThread"}
        assert asyncio.events._set_running_loop is loopmon._original_set_running_loop

    def test_one_watchdog_per_loop_across_runs(self, recorder: Recorder) -> None:
        """Many run_until_complete calls on one loop share one watchdog, which exits when the loop closes."""

        def watchdogs() -> int:
            return sum(1 for t in threading.enumerate() if t.name == "conctools-loopmon")

        with monitor_all_loops(THRESHOLD):
            loop = asyncio.new_event_loop()
            try:
                for _ in range(50):
                    loop.run_until_complete(asyncio.sleep(0))
                assert watchdogs() == 1
                loop.run_until_complete(sleepy_coroutine())
            finally:
                loop.close()
            deadline = time.monotonic() + 5
            while watchdogs() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert watchdogs() == 0
        assert len(stalls(recorder)) == 1

    def test_a_slow_monitor_start_is_not_a_stall(self, recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
        """The watchdog's thread starts, then the loop's thread waits 0.3 s for a CPU before start()
        returns (a busy machine): no stall is blamed on the hook, nor on a late first heartbeat;
        the program's own stall right after is still found, at its line."""
        from conctools.loopmon import monitor as monitor_module

        real_internal_thread = monitor_module.internal_thread

        def slow_to_return(target: Callable[[], object], name: str) -> threading.Thread:
            thread = real_internal_thread(target, name)
            start = thread.start

            def start_then_wait_for_a_cpu() -> None:
                start()
                time.sleep(0.3)  # the watchdog runs while the loop's thread is still in start()

            thread.start = start_then_wait_for_a_cpu  # type: ignore[method-assign]
            return thread

        monkeypatch.setattr(monitor_module, "internal_thread", slow_to_return)

        async def quick() -> None:
            await asyncio.sleep(0.01)

        with monitor_all_loops(THRESHOLD):
            asyncio.run(quick())
        run_monitored(quick)  # a monitor started inside a callback
        assert recorder.snapshot().of_kind(SlowCallbackEvent) == [], render_text(recorder.snapshot())
        with monitor_all_loops(THRESHOLD):
            asyncio.run(sleepy_coroutine())
        [event] = stalls(recorder)
        assert event.culprit is not None and event.culprit.function == "sleepy_coroutine"
        assert event.culprit.lineno == line_of(sleepy_coroutine, "time.sleep(0.4)")

    def test_uvloop_loops_are_watched(self, recorder: Recorder) -> None:
        """A uvloop loop started inside monitor_all_loops is watched; the hook is removed after."""
        uvloop = pytest.importorskip("uvloop")
        with monitor_all_loops(THRESHOLD):
            uvloop.run(sleepy_coroutine())
        assert "run_forever" not in vars(uvloop.Loop)
        [event] = stalls(recorder)
        assert event.culprit is not None and event.culprit.function == "sleepy_coroutine"


class TestBlockingCalls:
    def test_known_blocking_calls_on_the_loop_thread(self, recorder: Recorder) -> None:
        """time.sleep, a blocking socket and a thread wait on the loop thread are reported at the call site."""
        lines: dict[str, int] = {}

        async def main() -> None:
            time.sleep(0.01)
            lines["sleep"] = _here()
            a, b = socket.socketpair()
            with a, b:
                a.sendall(b"x")
                b.recv(1)
                lines["recv"] = _here()
            done = threading.Event()
            threading.Timer(0.05, done.set).start()
            done.wait(5)
            lines["wait"] = _here()

        run_monitored(main, threshold_s=1.0, detect_blocking=True)
        events = {e.call: e for e in recorder.snapshot().of_kind(BlockingCallEvent)}
        assert events["time.sleep"].site == f"{HERE}:{lines['sleep'] - 1}"
        assert events["socket.recv"].site == f"{HERE}:{lines['recv'] - 1}"
        assert events["threading.Event.wait"].site == f"{HERE}:{lines['wait'] - 1}"
        assert events["threading.Event.wait"].duration_s >= 0.03
        assert (events["time.sleep"].task_name or "").startswith("Task-")
        assert "threading.Condition.wait" not in events  # Event.wait -> Condition.wait is one report
        table = recorder.snapshot().sections["slow_callbacks"]["blocking_calls"]
        assert {b["call"] for b in table} >= {"time.sleep", "socket.recv", "socket.sendall"}
        assert "Blocking calls on an event loop's thread" in render_text(recorder.snapshot())

    def test_no_false_positives_from_threads_and_async_sockets(self, recorder: Recorder) -> None:
        """Blocking calls in to_thread / executors and the loop's own non-blocking sockets are not reported."""

        async def main() -> None:
            await asyncio.to_thread(time.sleep, 0.05)
            ev = threading.Event()
            threading.Timer(0.02, ev.set).start()
            await asyncio.to_thread(ev.wait, 5)
            server = await asyncio.start_server(_echo, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"ping\n")
            assert await reader.readline() == b"ping\n"
            writer.close()
            await writer.wait_closed()
            server.close()
            await server.wait_closed()

        run_monitored(main, threshold_s=1.0, detect_blocking=True)
        assert recorder.snapshot().of_kind(BlockingCallEvent) == []

    def test_waits_the_stdlib_makes_on_purpose_are_not_reported(self, recorder: Recorder) -> None:
        """asyncio's join of its executor's shutdown thread, and waits asked not to block, are not blocking calls.

        However long a busy machine makes them: the join once made every `asyncio.run` under
        `conctools run --detect-blocking` report a second blocking call.
        """
        import queue

        def slow_exit(frame: Any, event: str, arg: Any) -> None:
            if event == "return" and frame.f_code.co_name == "_do_shutdown":
                time.sleep(0.05)  # descheduled after resolving the future asyncio awaits, before it ends

        def hold(lock: Any, held: threading.Event) -> None:
            with lock:
                held.set()
                time.sleep(0.05)

        async def held_by_a_thread(lock: Any) -> threading.Thread:
            held = threading.Event()
            thread = threading.Thread(target=hold, args=(lock, held))
            thread.start()
            await asyncio.to_thread(held.wait, 5)
            return thread

        async def main() -> None:
            sem = threading.Semaphore(0)
            thread = await held_by_a_thread(sem._cond)
            assert not sem.acquire(timeout=0)  # waits ~50 ms for the semaphore's own lock
            await asyncio.to_thread(thread.join)
            q: queue.Queue[int] = queue.Queue()
            thread = await held_by_a_thread(q.mutex)
            with pytest.raises(queue.Empty):
                q.get(False)
            await asyncio.to_thread(thread.join)
            threading.setprofile(slow_exit)
            try:
                await asyncio.get_running_loop().shutdown_default_executor()
            finally:
                threading.setprofile(None)

        run_monitored(main, threshold_s=1.0, detect_blocking=True)
        assert [(e.call, e.site) for e in recorder.snapshot().of_kind(BlockingCallEvent)] == []

    def test_patches_are_restored(self) -> None:
        """Every function patched for detection is the original again after the monitor stops."""
        before = (time.sleep, threading.Event.wait, socket.socket.recv)

        async def main() -> None:
            assert time.sleep is not before[0]

        run_monitored(main, detect_blocking=True)
        assert (time.sleep, threading.Event.wait, socket.socket.recv) == before
        assert "recv" not in vars(socket.socket)


class TestCulpritOf:
    def test_prefers_program_code_over_libraries(self) -> None:
        """The culprit is the innermost frame outside the stdlib and site-packages, within the callback."""
        import asyncio.events as ev

        stack = (
            Frame(filename=socket.__file__, lineno=1, function="recv"),
            Frame(filename="/srv/app/handlers.py", lineno=12, function="handle"),
            Frame(filename=ev.__file__, lineno=80, function="_run"),
            Frame(filename="/srv/app/main.py", lineno=3, function="<module>"),
        )
        culprit = culprit_of(stack)
        assert culprit is not None and culprit.site == "/srv/app/handlers.py:12"
        assert culprit_of(stack[2:]) is None  # only loop frames and the outer program: no culprit


class TestPublicSurface:
    def test_exported(self) -> None:
        """watch_loop, LoopMonitor and dump_tasks are part of the public surface."""
        for name in ("watch_loop", "LoopMonitor", "dump_tasks", "TaskInfo", "monitor_all_loops"):
            assert name in conctools.__all__ and hasattr(conctools, name)


def _here() -> int:
    return sys._getframe(1).f_lineno


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.readline())
    await writer.drain()
    writer.close()


# -- conctools run, end to end -------------------------------------------------------------------

SERVER_SCRIPT = textwrap.dedent(
    """
    import asyncio, time

    def checksum(n):
        total = 0
        for i in range(n):
            total = (total * 31 + i) % 1_000_003
        return total

    async def handler(i):
        if i == 3:
            time.sleep(0.4)  # BLOCKING LINE
        await asyncio.sleep(0.01)

    async def main():
        await asyncio.gather(*(asyncio.create_task(handler(i), name=f"handler-{i}") for i in range(5)))
        checksum(3_000_000)
        await asyncio.to_thread(time.sleep, 0.3)
        print("served")

    asyncio.run(main())
    """
)


def conctools_run(tmp_path: Path, *args: str, script: str = SERVER_SCRIPT) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "app.py"
    path.write_text(script)
    return subprocess.run(
        [sys.executable, "-m", "conctools", "run", "--sample-interval", "0", *args, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


class TestConctoolsRun:
    def test_report_names_the_task_and_the_blocking_line(self, tmp_path: Path) -> None:
        """`conctools run` prints the stalls: the task, the blocking line, the CPU function; output unchanged."""
        proc = conctools_run(tmp_path, "--loop-threshold", "0.1", "--out", str(tmp_path / "out"))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "served\n"
        assert "Slow callbacks: the event loop was blocked" in proc.stderr
        assert "'handler-3'" in proc.stderr
        assert "time.sleep(0.4)  # BLOCKING LINE" in proc.stderr
        assert "checksum" in proc.stderr
        data = json.loads((tmp_path / "out" / "report.json").read_text())
        sites = data["sections"]["slow_callbacks"]["sites"]
        assert {s["function"] for s in sites} == {"handler", "checksum"}

    def test_detect_blocking_flag(self, tmp_path: Path) -> None:
        """--detect-blocking lists time.sleep at its line, not the to_thread sleep."""
        proc = conctools_run(tmp_path, "--loop-threshold", "0.1", "--detect-blocking")
        assert proc.returncode == 0, proc.stderr
        blocking = proc.stderr[proc.stderr.find("Blocking calls") :]
        assert "Blocking calls on an event loop's thread (1 call)" in proc.stderr, blocking
        assert "time.sleep" in proc.stderr and "app.py:12" in proc.stderr

    def test_zero_threshold_switches_it_off(self, tmp_path: Path) -> None:
        """--loop-threshold 0 disables the monitor."""
        proc = conctools_run(tmp_path, "--loop-threshold", "0")
        assert proc.returncode == 0, proc.stderr
        assert "Slow callbacks" not in proc.stderr

    def test_negative_threshold_is_a_usage_error(self, tmp_path: Path) -> None:
        """A negative --loop-threshold is one line on stderr and exit status 2."""
        proc = conctools_run(tmp_path, "--loop-threshold", "-1")
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and "--loop-threshold" in proc.stderr


class TestBlockingFileCalls:
    """--detect-blocking names blocking file calls on a loop's thread, not only sockets (issue 18, item 12)."""

    def test_fifo_read_on_the_loop_thread(self, recorder: Recorder, tmp_path: Path) -> None:
        """`open(fifo).read()` inside a coroutine is listed at its line; the file object keeps the stdlib's types."""
        import io
        import os

        fifo = str(tmp_path / "fifo")
        os.mkfifo(fifo)
        opened = threading.Event()
        lines: dict[str, int] = {}
        types: dict[str, Any] = {}

        def writer() -> None:
            with open(fifo, "w") as f:
                opened.set()
                time.sleep(0.05)  # the reader on the loop blocks until the writer closes
                f.write("data\n")

        async def main() -> None:
            threading.Thread(target=writer, name="fifo-writer").start()
            with open(fifo) as f:
                types["text"], types["raw"] = type(f), f.buffer.raw
                data = f.read()
                lines["read"] = _here()
            assert data == "data\n"
            with open(HERE, "rb") as b:  # binary, and the usual methods
                assert b.readline().startswith(b'"""')
                b.seek(0)
                assert len(b.read(10)) == 10

        run_monitored(main, threshold_s=5.0, detect_blocking=True)
        assert opened.is_set()
        assert types["text"] is io.TextIOWrapper and isinstance(types["raw"], io.FileIO)
        events = [e for e in recorder.snapshot().of_kind(BlockingCallEvent) if e.call.startswith("file.")]
        assert [e.site for e in events if e.site.endswith(f":{lines['read'] - 1}")], events
        assert all(e.site.startswith(HERE) for e in events)

    def test_files_off_the_loop_are_untouched(self, tmp_path: Path) -> None:
        """Off a loop's thread, open() is the builtin's, even while detection runs."""
        import io

        seen: dict[str, Any] = {}

        async def main() -> None:
            def elsewhere() -> None:
                with open(HERE, "rb") as f:
                    seen["raw"] = type(f.raw)

            await asyncio.to_thread(elsewhere)

        run_monitored(main, detect_blocking=True)
        assert seen["raw"] is io.FileIO


class TestSegments:
    """cut_segments(): a stall cut into one segment per task or callback (and culprit line)."""

    @staticmethod
    def sample(t_ms: int, who: str, line: int, function: str = "handler") -> Sample:
        frame = Frame("app.py", line, function, f"line {line}")
        return Sample(
            t_ns=t_ms * 1_000_000,
            who=("task", who),
            task_name=who,
            callback=f"Task {who!r}",
            created_at=None,
            stack=(frame, Frame("app.py", 99, "main", "")),
            culprit=frame,
        )

    def test_partition_keeps_alternating_lines_together(self) -> None:
        """A CPU loop alternating between two lines is one part; a move to a new line for good splits."""
        assert partition_runs([1, 2, 1, 2, 3, 3]) == [(0, 3), (4, 5)]
        assert partition_runs([]) == []
        assert partition_runs(["a"]) == [(0, 0)]

    def test_two_tasks_two_segments_whose_durations_add_up(self) -> None:
        """Two tasks one after the other: two segments, split halfway between their samples, that
        cover the stall exactly; each segment's samples are its own task's."""
        samples = [self.sample(t, "first", 5) for t in (100, 110, 120)] + [
            self.sample(t, "second", 9) for t in (340, 350, 360)
        ]
        segments = cut_segments(samples, 0, 600_000_000)
        assert [s.first.task_name for s in segments] == ["first", "second"]
        assert segments[0].start_ns == 0 and segments[-1].end_ns == 600_000_000
        assert segments[0].end_ns == segments[1].start_ns == 230_000_000
        assert all(s.task_name == seg.first.task_name for seg in segments for s in seg.samples)
        culprit, stack = segments[1].culprit()
        assert culprit is not None and culprit.lineno == 9 and stack[0] is culprit

    def test_a_short_tail_of_the_same_task_stays_in_its_segment(self) -> None:
        """The few samples a task runs on after its slow call are no segment of their own."""
        samples = [self.sample(t, "main", 7, "checksum") for t in range(100, 300, 10)]
        samples.append(self.sample(300, "main", 18))
        [segment] = cut_segments(samples, 0, 310_000_000, min_part=5)
        culprit, _ = segment.culprit()
        assert culprit is not None and culprit.function == "checksum"

    def test_the_same_task_blocking_on_two_lines_is_two_segments(self) -> None:
        """One task sleeping on one line, then on another (each long): two segments, one per line."""
        samples = [self.sample(t, "t", 5) for t in range(100, 200, 10)]
        samples += [self.sample(t, "t", 6) for t in range(200, 300, 10)]
        segments = cut_segments(samples, 0, 300_000_000, min_part=5)
        assert [s.culprit()[0].lineno for s in segments if s.culprit()[0]] == [5, 6]

    def test_unnamed_tasks_keep_their_names_under_the_monitor(self) -> None:
        """Watching a loop never renames the program's tasks (CPython 3.13.0 renames unnamed tasks
        'None' whenever a task factory is set)."""

        async def main() -> str:
            async with watch_loop(threshold_s=1.0):
                task = asyncio.create_task(asyncio.sleep(0))
                await task
                return task.get_name()

        assert asyncio.run(main()).startswith("Task-")

    def test_a_callback_seen_once_as_the_stall_ends_is_no_segment(self) -> None:
        """A trivial callback caught in one sample (after the first) is not blamed for the stall."""
        samples = [self.sample(t, "sleeper", 5) for t in range(100, 400, 10)]
        samples.append(self.sample(400, "future-callback", 77, "_set_result_unless_cancelled"))
        [segment] = cut_segments(samples, 0, 410_000_000, min_part=5)
        assert segment.first.task_name == "sleeper" and segment.end_ns == 410_000_000

    def test_the_first_sample_alone_still_names_the_culprit(self) -> None:
        """A stall seen once, at its detection, is that callback's."""
        [segment] = cut_segments([self.sample(100, "short", 9)], 0, 120_000_000)
        assert segment.first.task_name == "short"


class TestWatchdogWakeUps:
    def test_a_well_loop_wakes_its_watchdog_rarely_and_a_stall_is_still_caught(self, recorder: Recorder) -> None:
        """With the C extension the watchdog sleeps through a busy loop's heartbeats without the GIL (issue
        12: each wake-up took the GIL from a loop that releases it at every select(0), dozens of futex calls
        in its thread): over ~2.4 s of a loop that never stops, it takes the GIL about once a second, not at
        every deadline the heartbeats push on (~3 a second with a 0.3 s threshold, which a busy machine's
        scheduler does not reach by starving the loop); a stall after that is caught and blamed on its line
        as before, and stop() wakes it at once."""
        from conctools import locks

        if not locks.SPEEDUPS:
            pytest.skip("the C extension is not in use")
        threshold = 0.3
        returns: list[int] = []

        class Counted:
            def __init__(self, cell: Any) -> None:
                self.cell = cell

            def set(self, ns: int) -> None:
                self.cell.set(ns)

            def kick(self) -> None:
                self.cell.kick()

            def wait_silent(self, threshold_ns: int, until_ns: int) -> int:
                r = int(self.cell.wait_silent(threshold_ns, until_ns))
                returns.append(r)
                return r

        async def busy() -> None:
            end = time.monotonic() + 2.4
            while time.monotonic() < end:
                await asyncio.sleep(0)

        looks: list[float] = []  # the watchdog's looks at the loop (it asks is_running() at each)

        async def main() -> tuple[list[int], int, int]:
            loop = asyncio.get_running_loop()
            is_running = loop.is_running

            def counted_is_running() -> bool:
                if threading.current_thread().name == "conctools-loopmon":
                    looks.append(time.monotonic())
                return is_running()

            loop.is_running = counted_is_running  # type: ignore[method-assign]
            monitor = LoopMonitor(threshold_s=threshold, recorder=recorder)
            assert monitor._cell is not None
            monitor._cell = Counted(monitor._cell)
            monitor.start()
            try:
                await asyncio.sleep(0.05)
                del looks[:]
                await asyncio.gather(*(busy() for _ in range(10)))
                during = list(returns)
                n_looks = len(looks)
                time.sleep(0.4)  # the stall
                await asyncio.sleep(0.3)
            finally:
                monitor.stop()
            return during, monitor.stalls, n_looks

        during, n_stalls, n_looks = asyncio.run(main())
        assert during and during.count(1) == 0  # it waited on the heartbeat, never silent while the loop ran
        assert n_looks <= 4, n_looks  # ~1 a second (the idle look), not ~8
        assert n_stalls >= 1
        (stall,) = [e for e in stalls(recorder) if e.duration_s >= threshold]
        assert stall.culprit is not None and stall.culprit.lineno == line_of(main, "time.sleep(0.4)")
        assert returns[-1] == 2  # stop() kicked it
