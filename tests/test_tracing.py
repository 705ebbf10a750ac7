"""@traced / traced(): transparency, naming, nesting, outcomes and logging."""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conctools
from conctools import SpanEvent, traced
from conctools.recorder import Recorder


def spans(rec: Recorder) -> list[SpanEvent]:
    return rec.snapshot().of_kind(SpanEvent)


def by_name(rec: Recorder) -> dict[str, SpanEvent]:
    return {s.name: s for s in spans(rec)}


class TestTransparency:
    """The wrapped callable behaves exactly like the original."""

    def test_metadata_preserved(self) -> None:
        """__name__, __qualname__, __doc__, __wrapped__ and the signature survive."""

        def original(a: int, b: str = "x", *args: Any, c: float, **kw: Any) -> str:
            """Docstring."""
            return b

        wrapped = traced(original)
        assert wrapped.__name__ == "original"
        assert wrapped.__qualname__ == original.__qualname__
        assert wrapped.__doc__ == "Docstring."
        assert wrapped.__wrapped__ is original
        assert inspect.signature(wrapped) == inspect.signature(original)

    def test_kind_predicates_preserved(self) -> None:
        """Coroutine, generator and async-generator functions stay what they were."""

        async def coro() -> None: ...

        def gen() -> Iterator[int]:
            yield 1

        async def agen() -> AsyncIterator[int]:
            yield 1

        def plain() -> None: ...

        assert inspect.iscoroutinefunction(traced(coro))
        assert inspect.isgeneratorfunction(traced(gen))
        assert inspect.isasyncgenfunction(traced(agen))
        for wrapped in (traced(plain), traced("x")(plain)):
            assert not inspect.iscoroutinefunction(wrapped)
            assert not inspect.isgeneratorfunction(wrapped)

    @settings(max_examples=60, deadline=None)
    @given(
        args=st.lists(st.one_of(st.integers(), st.text(), st.none(), st.floats(allow_nan=False)), max_size=4),
        kwargs=st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), st.integers(), max_size=3),
    )
    def test_any_arguments_pass_through(self, args: list[Any], kwargs: dict[str, int]) -> None:
        """Any positional and keyword arguments reach the function and its result comes back."""

        @traced(log_args=True)
        def echo(*a: Any, **k: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
            return a, k

        assert echo(*args, **kwargs) == (tuple(args), kwargs)

    @settings(max_examples=40, deadline=None)
    @given(exc_type=st.sampled_from([ValueError, KeyError, RuntimeError, OSError, ZeroDivisionError, SystemExit]))
    def test_any_exception_is_the_same_object(self, exc_type: type[BaseException]) -> None:
        """The very exception object raised inside propagates, traceback intact."""
        raised = exc_type("boom")

        @traced
        def fail() -> None:
            raise raised

        with pytest.raises(exc_type) as info:
            fail()
        assert info.value is raised
        names = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
        assert "fail" in names

    def test_methods_classmethods_staticmethods(self, recorder: Recorder) -> None:
        """Decorating methods of every kind keeps binding semantics."""

        class Shop:
            factor = 3

            @traced
            def price(self, n: int) -> int:
                return n * self.factor

            @traced
            @classmethod
            def make(cls) -> Shop:
                return cls()

            @classmethod
            @traced
            def make2(cls) -> Shop:
                return cls()

            @traced
            @staticmethod
            def tax(n: int) -> int:
                return n + 1

        shop = Shop.make()
        assert isinstance(shop, Shop)
        assert isinstance(Shop.make2(), Shop)
        assert shop.price(2) == 6
        assert Shop.tax(1) == 2 and shop.tax(1) == 2
        names = {s.name for s in spans(recorder)}
        assert {
            "TestTransparency.test_methods_classmethods_staticmethods.<locals>.Shop.price",
            "TestTransparency.test_methods_classmethods_staticmethods.<locals>.Shop.make",
            "TestTransparency.test_methods_classmethods_staticmethods.<locals>.Shop.tax",
        } <= names

    def test_generator_protocol(self, recorder: Recorder) -> None:
        """send(), throw() and close() reach the inner generator; the return value is kept."""
        log: list[Any] = []

        @traced("gen")
        def gen() -> Iterator[int]:
            try:
                got = yield 1
                log.append(got)
                try:
                    yield 2
                except KeyError as e:
                    log.append(("caught", e.args[0]))
                    yield 3
                yield 4
            finally:
                log.append("finally")

        g = gen()
        assert next(g) == 1
        assert g.send("hello") == 2
        assert g.throw(KeyError("k")) == 3
        g.close()
        assert log == ["hello", ("caught", "k"), "finally"]

        @traced
        def returns() -> Iterator[int]:
            yield 1
            return 99

        def outer() -> Iterator[int]:
            result = yield from returns()
            log.append(result)

        assert list(outer()) == [1]
        assert log[-1] == 99
        assert by_name(recorder)["gen"].outcome == "ok"

    def test_generator_error_outcome(self, recorder: Recorder) -> None:
        """An exception escaping a generator is its span's outcome."""

        @traced("bad_gen")
        def bad() -> Iterator[int]:
            yield 1
            raise ValueError("x")

        with pytest.raises(ValueError):
            list(bad())
        span = by_name(recorder)["bad_gen"]
        assert (span.outcome, span.exc_type) == ("raised", "ValueError")

    def test_async_generator_protocol(self, recorder: Recorder) -> None:
        """asend(), athrow() and aclose() reach the inner async generator."""
        log: list[Any] = []

        @traced("agen")
        async def agen() -> AsyncIterator[int]:
            try:
                got = yield 1
                log.append(got)
                try:
                    yield 2
                except KeyError:
                    log.append("caught")
                    yield 3
                yield 4
            finally:
                log.append("finally")

        async def main() -> None:
            g = agen()
            assert await g.asend(None) == 1
            assert await g.asend("v") == 2
            assert await g.athrow(KeyError("k")) == 3
            await g.aclose()
            assert [x async for x in agen()] == [1, 2, 4]

        asyncio.run(main())
        assert log[:3] == ["v", "caught", "finally"]
        assert all(s.outcome == "ok" for s in spans(recorder) if s.name == "agen")


class TestSpans:
    """What each span records: names, outcomes, durations, threads and tasks."""

    def test_outcomes(self, recorder: Recorder) -> None:
        """ok, raised ExcType and cancelled are told apart."""

        @traced("ok")
        def ok() -> int:
            return 1

        @traced("boom")
        def boom() -> None:
            raise KeyError("x")

        @traced("sleepy")
        async def sleepy() -> None:
            await asyncio.sleep(10)

        async def cancel_it() -> None:
            task = asyncio.create_task(sleepy())
            await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        ok()
        with pytest.raises(KeyError):
            boom()
        asyncio.run(cancel_it())
        got = by_name(recorder)
        assert (got["ok"].outcome, got["ok"].exc_type) == ("ok", None)
        assert (got["boom"].outcome, got["boom"].exc_type) == ("raised", "KeyError")
        assert got["sleepy"].outcome == "cancelled"
        stats = {s.name: s for s in recorder.snapshot().spans}
        assert stats["boom"].errors == 1 and stats["sleepy"].cancelled == 1

    def test_thread_names(self, recorder: Recorder) -> None:
        """Each span carries the name of the thread that ran it."""

        @traced("in_thread")
        def work() -> None:
            pass

        threads = [threading.Thread(target=work, name=f"worker-{i}") for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        names = sorted(s.thread_name for s in spans(recorder) if s.name == "in_thread")
        assert names == ["worker-0", "worker-1", "worker-2"]

    def test_task_names_and_durations(self, recorder: Recorder) -> None:
        """Async spans name their task and measure awaited time."""

        @traced("fetch")
        async def fetch() -> None:
            await asyncio.sleep(0.05)

        async def main() -> None:
            await asyncio.gather(
                asyncio.create_task(fetch(), name="fetch-a"), asyncio.create_task(fetch(), name="fetch-b")
            )

        asyncio.run(main())
        got = [s for s in spans(recorder) if s.name == "fetch"]
        assert sorted(s.task_name or "" for s in got) == ["fetch-a", "fetch-b"]
        assert all(0.04 <= s.duration_s < 5 for s in got)

    def test_sync_span_inside_task_names_task(self, recorder: Recorder) -> None:
        """A sync traced call made from a coroutine carries the task name."""

        @traced("sync_in_task")
        def helper() -> None:
            pass

        async def main() -> None:
            helper()

        asyncio.run(main())
        assert by_name(recorder)["sync_in_task"].task_name is not None

    def test_block_forms(self, recorder: Recorder) -> None:
        """with and async with traced() record spans; an unnamed block is named by its site."""
        with traced("block") as span:
            assert conctools.current_span() == (span.span_id, "block")
        assert conctools.current_span() is None

        async def main() -> None:
            async with traced("ablock"):
                await asyncio.sleep(0)

        asyncio.run(main())
        with traced():
            pass
        got = by_name(recorder)
        assert "block" in got and "ablock" in got
        assert any(n.startswith("test_tracing.py:") for n in got)

    def test_block_exception_outcome(self, recorder: Recorder) -> None:
        """An exception leaving a block is recorded and not swallowed."""
        with pytest.raises(ZeroDivisionError), traced("div"):
            _ = 1 / 0
        assert by_name(recorder)["div"].exc_type == "ZeroDivisionError"

    def test_same_block_object_in_many_threads(self, recorder: Recorder) -> None:
        """One traced() object entered concurrently from threads keeps spans apart."""
        block = traced("shared")
        barrier = threading.Barrier(4)

        def run() -> None:
            with block:
                barrier.wait()

        threads = [threading.Thread(target=run) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = [s for s in spans(recorder) if s.name == "shared"]
        assert len(got) == 4 and len({s.span_id for s in got}) == 4


class TestNesting:
    """Parent spans follow the context across calls, awaits, tasks and threads."""

    def test_sync_nesting(self, recorder: Recorder) -> None:
        """A traced call inside another names it as parent."""

        @traced("inner")
        def inner() -> None:
            pass

        @traced("outer")
        def outer() -> None:
            inner()

        outer()
        got = by_name(recorder)
        assert got["inner"].parent_id == got["outer"].span_id
        assert got["outer"].parent_id is None

    def test_nesting_across_tasks_and_to_thread(self, recorder: Recorder) -> None:
        """create_task and asyncio.to_thread inherit the span they were started in."""

        @traced("in_thread")
        def blocking() -> None:
            pass

        @traced("child")
        async def child() -> None:
            await asyncio.sleep(0)

        @traced("parent")
        async def parent() -> None:
            await asyncio.create_task(child())
            await asyncio.to_thread(blocking)

        asyncio.run(parent())
        got = by_name(recorder)
        assert got["child"].parent_id == got["parent"].span_id
        assert got["in_thread"].parent_id == got["parent"].span_id
        assert got["in_thread"].thread_name != got["parent"].thread_name

    def test_generator_spans_do_not_leak_into_consumer(self, recorder: Recorder) -> None:
        """Code between a generator's yields is not parented to the generator's span."""

        @traced("consumer_step")
        def step() -> None:
            pass

        @traced("producer")
        def produce() -> Iterator[int]:
            yield 1
            yield 2

        for _ in produce():
            step()
        got = spans(recorder)
        assert all(s.parent_id is None for s in got if s.name == "consumer_step")


class TestLogging:
    """Per-call log lines on the conctools.traced logger."""

    def test_debug_line_names_span_thread_task_duration_outcome(self, caplog: pytest.LogCaptureFixture) -> None:
        """At DEBUG each call logs its name, thread, task, duration with unit and outcome."""

        @traced("logged")
        async def logged() -> None:
            await asyncio.sleep(0)

        async def main() -> None:
            await asyncio.create_task(logged(), name="the-task")

        with caplog.at_level(logging.DEBUG, logger="conctools.traced"):
            asyncio.run(main())
        (record,) = [r for r in caplog.records if r.name == "conctools.traced"]
        msg = record.getMessage()
        assert "logged ok in " in msg
        assert "thread 'MainThread'" in msg and "task 'the-task'" in msg
        assert any(unit in msg for unit in ("ns", "µs", "ms", " s"))
        assert record.span == "logged" and record.outcome == "ok"  # type: ignore[attr-defined]

    def test_silent_below_level(self, caplog: pytest.LogCaptureFixture, recorder: Recorder) -> None:
        """With the logger above DEBUG nothing is logged but the span is recorded."""

        @traced("quiet")
        def quiet() -> None:
            pass

        with caplog.at_level(logging.INFO, logger="conctools.traced"):
            quiet()
        assert not [r for r in caplog.records if r.name == "conctools.traced"]
        assert "quiet" in by_name(recorder)

    def test_threshold_logs_only_slow_calls_at_warning(self, caplog: pytest.LogCaptureFixture) -> None:
        """threshold_s logs calls slower than it at WARNING, and only those."""
        import time

        @traced("maybe_slow", threshold_s=0.05)
        def maybe_slow(delay: float) -> None:
            time.sleep(delay)

        with caplog.at_level(logging.DEBUG, logger="conctools.traced"):
            maybe_slow(0)
            maybe_slow(0.1)
        records = [r for r in caplog.records if r.name == "conctools.traced"]
        assert len(records) == 1
        assert records[0].levelno == logging.WARNING
        assert "over 50 ms" in records[0].getMessage()

    def test_log_args_are_truncated(self, caplog: pytest.LogCaptureFixture) -> None:
        """log_args shows the arguments, shortened by reprlib."""

        @traced("args", log_args=True)
        def f(data: str, n: int = 0) -> None:
            pass

        with caplog.at_level(logging.DEBUG, logger="conctools.traced"):
            f("x" * 10_000, n=3)
        msg = caplog.records[-1].getMessage()
        assert "n=3" in msg and len(msg) < 400

    def test_hostile_repr_does_not_break_call(self) -> None:
        """An argument whose __repr__ raises does not break the traced call."""

        class Evil:
            def __repr__(self) -> str:
                raise RuntimeError("no repr")

        @traced(log_args=True)
        def f(x: Evil) -> int:
            return 7

        assert f(Evil()) == 7

    def test_level_by_name_and_bad_values(self) -> None:
        """level accepts names; a bad level or negative threshold is a clear error."""
        assert traced("x", level="info").level == logging.INFO
        with pytest.raises(ValueError, match="unknown logging level"):
            traced("x", level="LOUD")
        with pytest.raises(ValueError, match="non-negative"):
            traced("x", threshold_s=-1)
        with pytest.raises(TypeError):
            traced(42)  # type: ignore[call-overload]

    def test_context_filter_fills_task_name_and_span(self) -> None:
        """ContextFilter makes %(taskName)s and %(span)s usable in any format."""
        import io

        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.addFilter(conctools.ContextFilter())
        handler.setFormatter(logging.Formatter("%(taskName)s|%(span)s|%(message)s"))
        log = logging.getLogger("test.contextfilter")
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
        try:

            async def main() -> None:
                with traced("phase"):
                    log.info("inside")

            asyncio.run(main())
            log.info("outside")
        finally:
            log.removeHandler(handler)
        lines = stream.getvalue().splitlines()
        assert lines[0].endswith("|phase|inside") and not lines[0].startswith("None")
        assert lines[1] == "None|None|outside"


class TestNeverBreaksTheProgram:
    """A failing recorder or sink is logged, never raised into user code."""

    def test_broken_sink_is_removed(self, recorder: Recorder, caplog: pytest.LogCaptureFixture) -> None:
        """A sink that raises is logged and removed; the traced call still returns."""
        calls = []

        def bad_sink(event: conctools.Event) -> None:
            calls.append(event)
            raise RuntimeError("sink down")

        recorder.add_sink(bad_sink)

        @traced("with_sink")
        def f() -> int:
            return 5

        assert f() == 5
        assert f() == 5
        assert len(calls) == 1
        assert "sink down" in caplog.text

    def test_recursion_limit_safe(self) -> None:
        """Deep traced recursion behaves like the undecorated function (RecursionError)."""

        @traced
        def deep(n: int) -> int:
            return n if n == 0 else deep(n - 1)

        assert deep(50) == 0
        with pytest.raises(RecursionError):
            deep(sys.getrecursionlimit() * 2)
