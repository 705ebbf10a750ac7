"""What in-code APIs hand back reads as the report does: str() of result objects, conctools.report()
(issue 18, item 16)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import conctools
from conctools.events import DeadlockEvent
from conctools.recorder import Recorder


@pytest.fixture
def recorder() -> Recorder:
    with conctools.use_recorder() as rec:
        yield rec


class TestReadableResults:
    """print() of each result object is the matching part of the text report, not a dataclass repr."""

    def test_watch_loop_monitor(self, recorder: Recorder) -> None:
        """str(monitor) after watch_loop: its stall, the blocking line and the task."""

        async def main() -> conctools.LoopMonitor:
            async with conctools.watch_loop(threshold_s=0.05) as monitor:
                time.sleep(0.2)  # the blocking line
                await asyncio.sleep(0)
            return monitor

        text = str(asyncio.run(main()))
        assert text.startswith("Loop monitor (threshold 50 ms): 1 stall")
        assert "time.sleep(0.2)  # the blocking line" in text and "Blocked at" in text

    def test_profile_decorator_result(self) -> None:
        """@conctools.profile: the session is func.profile, and print() of it is the top table."""
        pytest.importorskip("yappi")

        @conctools.profile
        def crunch() -> int:
            return sum(range(50_000))

        crunch()
        text = str(crunch.profile)  # type: ignore[attr-defined]
        assert text.startswith("Top ") and "crunch" in text

    def test_on_deadlock_print_reads_as_the_report(self, recorder: Recorder) -> None:
        """on_deadlock=print prints jstack's shape, naming both threads and locks, not DeadlockEvent(...)."""
        found: list[DeadlockEvent] = []
        a, b = conctools.Lock(name="accounts"), conctools.Lock(name="audit")
        both = threading.Barrier(2)

        def one(first: conctools.Lock, second: conctools.Lock) -> None:
            first.acquire()
            both.wait()
            with second:
                pass
            try:
                first.release()
            except RuntimeError:
                pass

        t1 = threading.Thread(target=one, args=(a, b), name="transfer", daemon=True)
        t2 = threading.Thread(target=one, args=(b, a), name="audit", daemon=True)
        with conctools.watch_deadlocks(timeout_s=0.3, on_deadlock=found.append):
            t1.start()
            t2.start()
            deadline = time.monotonic() + 30
            while not found and time.monotonic() < deadline:
                time.sleep(0.02)
            a.release()  # break it
            t1.join(30)
            t2.join(30)
        assert found
        text = str(found[0])
        assert text.startswith("Found one Python-level deadlock")
        assert "thread 'transfer'" in text and "Lock 'audit'" in text and "DeadlockEvent(" not in text

    def test_resource_sampler(self) -> None:
        """print(sampler) is the resources section."""
        with conctools.sample_resources(interval_s=0.01, recorder=Recorder()) as sampler:
            time.sleep(0.05)
        assert str(sampler).startswith("Resources (")


class TestReport:
    """conctools.report(): the text report of the current recorder, from code."""

    def test_report_of_the_current_recorder(self, recorder: Recorder) -> None:
        """Spans recorded in the block are in conctools.report(); brief and a given recorder work too."""

        @conctools.traced("checkout")
        def checkout() -> None:
            pass

        checkout()
        text = conctools.report()
        assert "checkout" in text and text.startswith("=")
        assert "checkout" in conctools.report(recorder, brief=True)
        assert "checkout" not in conctools.report(Recorder())
