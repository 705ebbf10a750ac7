"""The C fast path of @traced (conctools._ctracing) and the pure-Python one behind it.

tests/test_tracing.py runs against whichever path this interpreter uses (the C one wherever it
builds); here the tracing suites run again in a subprocess with ``CONCTOOLS_PURE_PYTHON=1``. The
classes below the build checks hold on both paths: the coroutine protocol of a traced async
function (send, throw, close, cancellation, garbage collection, never-awaited warnings), what
introspection sees (task stacks, await chains, ``inspect``), binding, pickling, weak references,
exact counts under threads and eviction, and failures of the recorder that never reach the
caller. The last class checks the C fold of span aggregates against the Python one.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import pickle
import platform
import shutil
import subprocess
import sys
import sysconfig
import threading
import traceback
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conctools
from conctools import SpanEvent, recorder, taskdump, tracing
from conctools.recorder import Recorder, use_recorder
from conctools.taskdump import dump_tasks
from tests.conftest import ROOT

CAN_BUILD = (
    platform.python_implementation() == "CPython"
    and not sysconfig.get_config_var("Py_GIL_DISABLED")
    and any(shutil.which(cc) for cc in ("cc", "gcc", "clang"))
    and not os.environ.get("CONCTOOLS_PURE_PYTHON")
)
SUITES = ("tests/test_tracing.py", "tests/test_ctracing.py")


def spans(rec: Recorder) -> list[SpanEvent]:
    return rec.snapshot().of_kind(SpanEvent)


def only(rec: Recorder, name: str) -> SpanEvent:
    (span,) = [s for s in spans(rec) if s.name == name]
    return span


@conctools.traced("sleeper")
async def sleeper(delay: float = 10.0) -> str:
    await asyncio.sleep(delay)
    return "woke"


@conctools.traced("two_steps")
async def two_steps() -> int:
    await asyncio.sleep(0)
    return 2


class _Pause:
    """An awaitable that suspends once, with no event loop needed (to drive coroutines by hand)."""

    def __await__(self) -> Iterator[None]:
        yield


@conctools.traced
def module_level(x: int) -> int:
    """Pickled by reference."""
    return x + 1


class TestBuild:
    @pytest.mark.skipif(
        not CAN_BUILD,
        reason="pure Python expected here (no C compiler, not CPython with a GIL, or CONCTOOLS_PURE_PYTHON)",
    )
    def test_the_extension_was_built_and_is_in_use(self) -> None:
        """Where a compiler exists the install builds _ctracing (a silent fallback would hide a broken build)."""
        assert tracing.SPEEDUPS
        assert type(module_level).__name__ == "TracedFunction"
        coro = sleeper(0)
        assert type(coro).__name__ == "TracedCoroutine"
        coro.close()
        assert recorder._cfold is not None

    @pytest.mark.slow
    @pytest.mark.timeout(600)
    @pytest.mark.skipif(bool(os.environ.get("CONCTOOLS_PURE_PYTHON")), reason="this run is the pure-Python one")
    def test_pure_python_path_passes_the_same_suites(self) -> None:
        """CONCTOOLS_PURE_PYTHON=1 switches to the Python wrappers; the tracing suites pass on them."""
        env = {**os.environ, "CONCTOOLS_PURE_PYTHON": "1"}
        probe = subprocess.run(
            [sys.executable, "-c", "import conctools.tracing as t; print(t.SPEEDUPS, type(t.traced(len)).__name__)"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert probe.stdout.split() == ["False", "function"], probe.stderr
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SUITES],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        assert " passed" in proc.stdout


_WRAPPED_BEFORE_ASYNCIO = """
import sys
import conctools
from conctools.recorder import use_recorder
from conctools import SpanEvent

@conctools.traced("sync_step")
def sync_step():
    return 1

@conctools.traced("async_step")
async def async_step():
    return sync_step()

assert "asyncio" not in sys.modules, "conctools imported asyncio"
import asyncio

async def main():
    await asyncio.create_task(async_step(), name="late-task")

with use_recorder() as rec:
    asyncio.run(main())
    print(sorted((s.name, s.task_name) for s in rec.snapshot().of_kind(SpanEvent)))
"""


@pytest.mark.parametrize("pure", [False, True], ids=["default", "pure-python"])
def test_wrapped_before_asyncio_is_imported_sees_its_tasks(pure: bool) -> None:
    """A function traced before the program imports asyncio names the task it later runs in, on
    both paths; and importing conctools does not import asyncio (the pure path used to, at import)."""
    env = {k: v for k, v in os.environ.items() if k != "CONCTOOLS_PURE_PYTHON"}
    if pure:
        env["CONCTOOLS_PURE_PYTHON"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", _WRAPPED_BEFORE_ASYNCIO], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[('async_step', 'late-task'), ('sync_step', 'late-task')]", proc.stdout


class TestCoroutineProtocol:
    """A traced async function's coroutine behaves like the coroutine it wraps, and records once."""

    def test_await_returns_and_records_ok(self, recorder: Recorder) -> None:
        """await gives the return value; one span, outcome ok, in the awaiting task."""

        async def main() -> int:
            return await asyncio.create_task(two_steps(), name="stepper")

        assert asyncio.run(main()) == 2
        span = only(recorder, "two_steps")
        assert (span.outcome, span.task_name) == ("ok", "stepper")

    def test_nothing_runs_before_the_first_send(self, recorder: Recorder) -> None:
        """Calling the function only makes the coroutine: no span, no call of the body until awaited."""
        calls: list[int] = []

        @conctools.traced("lazy")
        async def lazy() -> None:
            calls.append(1)

        coro = lazy()
        assert calls == [] and spans(recorder) == []
        asyncio.run(coro)
        assert calls == [1] and only(recorder, "lazy").outcome == "ok"

    def test_bad_arguments_raise_at_the_first_await(self, recorder: Recorder) -> None:
        """Like the async def wrapper: a wrong call is a TypeError when awaited, recorded as raised."""
        coro = two_steps(1, 2, 3)  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            asyncio.run(coro)
        span = only(recorder, "two_steps")
        assert (span.outcome, span.exc_type) == ("raised", "TypeError")

    def test_send_after_the_end_is_an_error(self) -> None:
        """A finished coroutine cannot be awaited again."""
        coro = two_steps()
        assert coro.send(None) is None  # the sleep(0) yield
        with pytest.raises(StopIteration) as stop:
            coro.send(None)
        assert stop.value.value == 2
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            coro.send(None)

    def test_first_send_must_be_none(self) -> None:
        """As for any coroutine, the first value sent must be None."""
        coro = two_steps()
        with pytest.raises(TypeError, match="just-started"):
            coro.send(1)
        coro.close()

    def test_cancellation(self, recorder: Recorder) -> None:
        """Task.cancel() reaches the body; the span is cancelled, the CancelledError propagates."""

        async def main() -> None:
            task = asyncio.create_task(sleeper(), name="doomed")
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        span = only(recorder, "sleeper")
        assert (span.outcome, span.task_name) == ("cancelled", "doomed")

    def test_wait_for_timeout(self, recorder: Recorder) -> None:
        """asyncio.wait_for cancels the traced coroutine on timeout."""

        async def main() -> None:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(sleeper(), 0.01)

        asyncio.run(main())
        assert only(recorder, "sleeper").outcome == "cancelled"

    def test_throw_reaches_the_body(self, recorder: Recorder) -> None:
        """throw() raises at the body's await; it can catch it and go on, or let it out."""
        seen: list[str] = []

        @conctools.traced("catcher")
        async def catcher() -> str:
            try:
                await asyncio.sleep(0)
            except KeyError:
                seen.append("caught")
            return "done"

        coro = catcher()
        coro.send(None)
        with pytest.raises(StopIteration) as stop:
            coro.throw(KeyError("k"))
        assert stop.value.value == "done" and seen == ["caught"]
        assert only(recorder, "catcher").outcome == "ok"

        coro2 = two_steps()
        coro2.send(None)
        with pytest.raises(ValueError, match="v"):
            coro2.throw(ValueError("v"))
        assert [s.exc_type for s in spans(recorder) if s.name == "two_steps"] == ["ValueError"]

    def test_throw_before_start_records_nothing(self, recorder: Recorder) -> None:
        """An exception thrown into a coroutine that never started comes straight back; no span."""
        coro = two_steps()
        with pytest.raises(KeyError):
            coro.throw(KeyError("early"))
        assert spans(recorder) == []

    def test_close_while_suspended(self, recorder: Recorder) -> None:
        """close() runs the body's cleanup and records GeneratorExit, as the async def wrapper does."""
        cleaned: list[bool] = []

        @conctools.traced("closable")
        async def closable() -> None:
            try:
                await _Pause()
            finally:
                cleaned.append(True)

        coro = closable()
        coro.send(None)
        coro.close()
        assert cleaned == [True]
        span = only(recorder, "closable")
        assert (span.outcome, span.exc_type) == ("raised", "GeneratorExit")
        coro.close()  # closing twice is fine

    def test_ignoring_generator_exit_is_an_error(self) -> None:
        """A body that awaits again after GeneratorExit makes close() raise RuntimeError, as CPython's does."""

        @conctools.traced("stubborn")
        async def stubborn() -> None:
            try:
                await asyncio.sleep(0)
            except GeneratorExit:
                await asyncio.sleep(0)

        coro = stubborn()
        coro.send(None)
        with pytest.raises(RuntimeError, match="ignored GeneratorExit"):
            coro.close()

    def test_garbage_collected_while_suspended(self, recorder: Recorder) -> None:
        """A suspended coroutine that is dropped is closed: its finally runs and its span is recorded."""
        cleaned: list[bool] = []

        @conctools.traced("dropped")
        async def dropped() -> None:
            try:
                await _Pause()
            finally:
                cleaned.append(True)

        coro = dropped()
        coro.send(None)
        del coro
        gc.collect()
        assert cleaned == [True]
        assert only(recorder, "dropped").exc_type == "GeneratorExit"

    def test_never_awaited_warns_like_a_coroutine(self, recorder: Recorder) -> None:
        """A coroutine that is never awaited gets CPython's RuntimeWarning, naming the function."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            coro = two_steps()
            del coro
            gc.collect()
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert messages == ["coroutine 'two_steps' was never awaited"]
        assert spans(recorder) == []

    def test_closed_before_start_does_not_warn(self) -> None:
        """close() on a coroutine that never started silences the never-awaited warning, as for any coroutine."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            coro = two_steps()
            coro.close()
            del coro
            gc.collect()
        assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]

    def test_exception_traceback_keeps_the_body(self) -> None:
        """The exception is the very object raised in the body, with the body's frame in its traceback."""
        raised = LookupError("x")

        @conctools.traced("raiser")
        async def raiser() -> None:
            await asyncio.sleep(0)
            raise raised

        with pytest.raises(LookupError) as info:
            asyncio.run(raiser())
        assert info.value is raised
        assert "raiser" in [f.name for f in traceback.extract_tb(info.value.__traceback__)]

    def test_asyncio_accepts_it_everywhere(self) -> None:
        """create_task, gather, wait_for, TaskGroup-free helpers and run() take it as a coroutine."""

        async def main() -> list[Any]:
            results = await asyncio.gather(two_steps(), asyncio.ensure_future(two_steps()))
            results.append(await asyncio.wait_for(two_steps(), 5))
            return results

        coro = two_steps()
        assert asyncio.iscoroutine(coro) and inspect.isawaitable(coro)
        coro.close()
        assert asyncio.run(main()) == [2, 2, 2]


class TestIntrospection:
    """What tools see of traced functions and their coroutines."""

    def test_task_stack_and_dump_show_the_body(self) -> None:
        """A task running a traced coroutine shows the body's line in dump_tasks() (and get_stack() in C)."""
        seen: dict[str, Any] = {}

        async def main() -> None:
            task = asyncio.create_task(sleeper(), name="sleepy")
            await asyncio.sleep(0.01)
            seen["stack"] = [(f.f_code.co_name, f.f_code.co_filename) for f in task.get_stack()]
            seen["dump"] = [t for t in dump_tasks() if t.name == "sleepy"]
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        asyncio.run(main())
        if tracing.SPEEDUPS:  # the C coroutine shows the body's frame; the async def wrapper shows its own
            assert seen["stack"][-1] == ("sleeper", __file__)
        (info,) = seen["dump"]
        assert info.awaits_kind == "sleep"
        assert [f.function for f in info.stack][-1] == "sleeper"
        assert info.stack[-1].line == "await asyncio.sleep(delay)"

    def test_inspect_kinds(self) -> None:
        """Coroutine functions stay coroutine functions (plain, methods, bound); sync ones do not."""

        class Box:
            @conctools.traced
            async def get(self) -> int:
                return 1

            @conctools.traced
            def put(self) -> int:
                return 2

        for fn in (sleeper, Box.get, Box().get):
            assert inspect.iscoroutinefunction(fn) and asyncio.iscoroutinefunction(fn)
        for fn in (module_level, Box.put, Box().put):
            assert not inspect.iscoroutinefunction(fn) and not inspect.isgeneratorfunction(fn)
        assert str(inspect.signature(Box().get)) == "() -> 'int'"
        assert asyncio.run(Box().get()) == 1 and Box().put() == 2

    def test_pickle_weakref_repr(self) -> None:
        """Module-level traced functions pickle by reference, take weak references and look like functions."""
        assert pickle.loads(pickle.dumps(module_level)) is module_level
        assert weakref.ref(module_level)() is module_level
        assert repr(module_level).startswith("<function module_level at ")
        assert module_level.__doc__ == "Pickled by reference."
        coro = two_steps()
        assert repr(coro).startswith("<coroutine object two_steps at ")
        assert coro.__qualname__ == "two_steps"
        coro.close()

    def test_bound_methods_pass_self_once(self, recorder: Recorder) -> None:
        """obj.method(...), Class.method(obj, ...) and getattr'd bound methods all pass self once."""

        class Counter:
            def __init__(self) -> None:
                self.n = 0

            @conctools.traced("bump")
            def bump(self, by: int = 1) -> int:
                self.n += by
                return self.n

        c = Counter()
        bound = c.bump
        assert c.bump() == 1 and Counter.bump(c, by=2) == 3 and bound(4) == 7
        assert len([s for s in spans(recorder) if s.name == "bump"]) == 3


class TestExactCounts:
    """Counts stay exact under threads and while old spans are evicted and folded."""

    def test_threads_and_eviction(self) -> None:
        """8 threads x 3,000 calls (a third raising) into a recorder that keeps 1,000: every one is counted."""

        @conctools.traced("hammered")
        def hammered(i: int) -> int:
            if i % 3 == 0:
                raise ValueError(i)
            return i

        def worker() -> None:
            for i in range(3000):
                try:
                    hammered(i)
                except ValueError:
                    pass

        with use_recorder(Recorder(capacity=1000)) as rec:
            threads = [threading.Thread(target=worker, name=f"hammer-{n}") for n in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            (stats,) = [s for s in rec.snapshot().spans if s.name == "hammered"]
        assert stats.count == 24_000
        assert stats.errors == 8 * 1000

    def test_async_counts(self) -> None:
        """2,000 concurrent traced coroutines: 2,000 spans, each in its own task."""

        async def main() -> None:
            await asyncio.gather(*(asyncio.create_task(two_steps(), name=f"t{i}") for i in range(2000)))

        with use_recorder(Recorder(capacity=500)) as rec:
            asyncio.run(main())
            (stats,) = [s for s in rec.snapshot().spans if s.name == "two_steps"]
            assert len({s.task_name for s in rec.snapshot().of_kind(SpanEvent)}) == 500
        assert stats.count == 2000 and stats.errors == 0


class _BrokenRecorder(Recorder):
    def _after_span(self, shard: Any) -> None:
        raise RuntimeError("recorder down")


class TestNeverBreaksTheProgram:
    """A failing recorder is logged; the traced call's result or exception is untouched."""

    def test_recording_failure_is_logged_not_raised(self, caplog: pytest.LogCaptureFixture) -> None:
        """With a recorder that raises on every span, sync and async calls still return, and it is logged."""
        rec = _BrokenRecorder()
        rec.add_sink(lambda event: None)  # makes every span reach _after_span
        try:
            with use_recorder(rec), caplog.at_level(logging.ERROR, logger="conctools.tracing"):
                assert module_level(1) == 2
                assert asyncio.run(two_steps()) == 2
        finally:
            rec.remove_sink(rec._sinks[0])
        failures = [r for r in caplog.records if "failed to record span" in r.getMessage()]
        assert len(failures) == 2
        assert "recorder down" in caplog.text

    def test_user_exception_survives_a_failing_recorder(self) -> None:
        """When both the call and the recording fail, the caller gets its own exception."""

        @conctools.traced("boom")
        def boom() -> None:
            raise KeyError("mine")

        rec = _BrokenRecorder()
        rec.add_sink(lambda event: None)
        try:
            with use_recorder(rec), pytest.raises(KeyError, match="mine"):
                boom()
        finally:
            rec.remove_sink(rec._sinks[0])


_names = st.sampled_from(["a", "b", "c", "span"])
_outcomes = st.sampled_from(["ok", "raised", "cancelled", "weird"])
_times = st.one_of(st.integers(0, 2**40), st.integers(2**62, 2**70))
_rows = st.lists(
    st.tuples(_times, _times, _names, st.integers(1, 10**6), st.none(), _outcomes, st.none(), st.none(), st.none()),
    max_size=60,
)


@pytest.mark.skipif(recorder._cfold is None, reason="the C fold is not built here")
class TestFold:
    """The C fold of evicted spans adds exactly what the Python fold adds."""

    @settings(max_examples=150, deadline=None)
    @given(rows=_rows, existing=st.booleans())
    def test_same_aggregates_as_python(self, rows: list[tuple[Any, ...]], existing: bool) -> None:
        """Counts, errors, cancellations, totals and maxima agree, from empty or non-empty aggregates."""
        start = {"a": [3, 1, 1, 10**20, 5]} if existing else {}
        by_c = {k: list(v) for k, v in start.items()}
        by_python = {k: list(v) for k, v in start.items()}
        recorder._fold(by_c, list(rows))
        if rows:
            recorder._fold_columns(by_python, list(rows))
        assert by_c == by_python

    @settings(max_examples=150, deadline=None)
    @given(rows=_rows, existing=st.booleans())
    def test_same_histograms_and_longest_as_python(self, rows: list[tuple[Any, ...]], existing: bool) -> None:
        """With histograms and the longest spans asked for, both folds give the same buckets (those of
        bucket_of) and name the same rows as new longest spans."""
        start = {"a": [3, 1, 1, 10**6, 5]} if existing else {}
        hist_start = {"a": {1: 2, 40: 1}} if existing else {}
        by_c = {k: list(v) for k, v in start.items()}
        by_python = {k: list(v) for k, v in start.items()}
        hists_c = {k: dict(v) for k, v in hist_start.items()}
        hists_python = {k: dict(v) for k, v in hist_start.items()}
        beaten_c: list[tuple[str, int]] = []
        beaten_python: list[tuple[str, int]] = []
        recorder._fold(by_c, list(rows), hists_c, beaten_c)
        if rows:
            recorder._fold_columns(by_python, list(rows), hists_python, beaten_python)
        assert by_c == by_python and hists_c == hists_python and beaten_c == beaten_python
        expected: dict[str, dict[int, int]] = {k: dict(v) for k, v in hist_start.items()}
        for row in rows:
            b = recorder.bucket_of(row[1] - row[0])
            expected.setdefault(row[2], {})[b] = expected.get(row[2], {}).get(b, 0) + 1
        assert hists_python == expected
        for name, i in beaten_python:  # the first of the name's longest spans in the chunk
            durations = [r[1] - r[0] if r[2] == name else None for r in rows]
            assert durations.index(max(d for d in durations if d is not None)) == i
        assert {name for name, _ in beaten_python} >= {r[2] for r in rows} - set(start)  # every new name

    def test_unusual_rows_go_to_python(self) -> None:
        """Rows the C fold does not take (floats, short tuples) leave aggs untouched for the Python fold."""
        aggs: dict[str, list[int]] = {}
        assert recorder._cfold is not None
        assert recorder._cfold(aggs, [(0.5, 1.5, "f", 1, None, "ok", None, None, None)]) is False
        assert aggs == {}
        recorder._fold(aggs, [(0.5, 1.5, "f", 1, None, "ok", None, None, None)])
        assert aggs == {"f": [1, 0, 0, 1.0, 1.0]}


@pytest.mark.skipif(tracing._ctracing is None, reason="the C extension is not built here")
class TestSpanChunk:
    """The C chunk of raw spans reads back exactly the tuples written, as the list it replaces would."""

    ROWS = [
        (10, 25, "a", 1, None, "ok", None, None, None),
        (30, 31, "b", 2, 1, "raised", "KeyError", "task-1", "x=1"),
        (2**62, 2**62 + 5, "c", 3, None, "cancelled", None, "t", None),
    ]

    def test_reads_back_as_tuples(self) -> None:
        """len, indexing (negative too), slicing, iteration and clear behave like a list of tuples."""
        chunk = tracing._ctracing.SpanChunk()
        assert not chunk and len(chunk) == 0
        for row in self.ROWS:
            chunk.append(row)
        assert len(chunk) == 3 and chunk[0] == self.ROWS[0] and chunk[-1] == self.ROWS[-1]
        assert chunk[:] == self.ROWS and chunk[1:] == self.ROWS[1:] and chunk[::-1] == self.ROWS[::-1]
        assert list(chunk) == self.ROWS
        with pytest.raises(IndexError):
            chunk[3]
        chunk.clear()
        assert len(chunk) == 0 and list(chunk) == []

    def test_refuses_what_it_cannot_hold(self) -> None:
        """Rows of the wrong shape, non-integer times and non-atomic items are refused, nothing stored."""
        chunk = tracing._ctracing.SpanChunk()
        for bad in [
            (1, 2),
            (1.5, 2, "a", 1, None, "ok", None, None, None),
            (1, 2, ["a"], 1, None, "ok", None, None, None),
        ]:
            with pytest.raises(TypeError):
                chunk.append(bad)
        with pytest.raises(OverflowError):
            chunk.append((2**70, 2**70, "a", 1, None, "ok", None, None, None))
        assert len(chunk) == 0

    def test_fold_reads_rows_directly(self) -> None:
        """The C fold of a SpanChunk adds what the Python fold adds over the same tuples."""
        chunk = tracing._ctracing.SpanChunk()
        for row in self.ROWS * 3:
            chunk.append(row)
        by_c: dict[str, list[int]] = {}
        by_python: dict[str, list[int]] = {}
        recorder._fold(by_c, chunk)
        recorder._fold_columns(by_python, list(self.ROWS * 3))
        assert by_c == by_python
        hists_c: dict[str, dict[int, int]] = {}
        hists_python: dict[str, dict[int, int]] = {}
        beaten_c: list[tuple[str, int]] = []
        beaten_python: list[tuple[str, int]] = []
        recorder._fold({}, chunk, hists_c, beaten_c)
        recorder._fold_columns({}, list(self.ROWS * 3), hists_python, beaten_python)
        assert hists_c == hists_python == {"a": {15: 3}, "b": {1: 3}, "c": {5: 3}}
        assert beaten_c == beaten_python == [("a", 0), ("b", 1), ("c", 2)]


class TestCreationSites:
    """The loop monitor's record of where each task was created stays exact and bounded."""

    def test_many_short_tasks(self) -> None:
        """10,000 short tasks: each live one knows its line, dead ones are purged, none is misnamed."""
        from conctools.loopmon import LoopMonitor

        async def nop() -> None:
            pass

        async def main() -> tuple[str | None, int]:
            async with LoopMonitor(threshold_s=1.0):
                for _ in range(10):
                    await asyncio.gather(*(asyncio.create_task(nop()) for _ in range(1000)))
                keeper = asyncio.create_task(asyncio.sleep(10), name="keeper")
                line = sys._getframe().f_lineno - 1
                await asyncio.sleep(0)
                site = taskdump.creation_site(keeper)
                keeper.cancel()
                assert site == f"{__file__}:{line}"
                return site, len(taskdump._created)

        gc.collect()
        site, size = asyncio.run(main())
        assert site is not None
        assert size < 10_000  # dead tasks' entries were purged along the way
        loop = asyncio.new_event_loop()
        try:
            stranger = asyncio.Future(loop=loop)
            assert taskdump.creation_site(stranger) is None  # no entry, or a dead task's entry of the same id
        finally:
            loop.close()
