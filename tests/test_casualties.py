"""Threads, tasks and pool jobs that end with an exception are noted with what they were using,
without changing what the program prints or how it runs."""

from __future__ import annotations

import asyncio
import gc
import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from conctools import casualties
from conctools.events import FailureEvent
from conctools.loopmon import monitor_all_loops
from conctools.recorder import Recorder


def crash_with(jobs: queue.Queue[int]) -> None:
    jobs.get_nowait()  # raises queue.Empty: the queue is empty


class TestThreads:
    """A thread that dies is noted; Python's own hook still reports it; the hook is restored."""

    def test_a_dying_thread_is_noted_with_its_line_and_queue(self, recorder: Recorder) -> None:
        """The failure names the thread, the exception, its line and the queue it used; the hook
        that was there before still gets the exception."""
        jobs: queue.Queue[int] = queue.Queue()
        seen: list[str] = []
        before = threading.excepthook
        threading.excepthook = lambda args: seen.append(args.thread.name if args.thread else "?")
        try:
            casualties.install(recorder)
            try:
                t = threading.Thread(target=crash_with, args=(jobs,), name="consumer-7")
                t.start()
                t.join()
            finally:
                casualties.uninstall()
            assert not getattr(threading.excepthook, "_conctools", False)
        finally:
            threading.excepthook = before
        assert seen == ["consumer-7"]  # the program's (here: the test's) own hook still ran
        [failure] = [e for e in recorder.snapshot().of_kind(FailureEvent) if e.thread_name == "consumer-7"]
        assert failure.exc_type == "Empty"
        assert failure.site == f"test_casualties.py:{crash_with.__code__.co_firstlineno + 1}"
        assert [f.function for f in failure.stack[:3]] == ["get", "get_nowait", "crash_with"]
        assert failure.objects == (f"queue.Queue at {id(jobs):#x}",)
        assert casualties.failures_touching([jobs])[-1] == failure
        assert casualties.failures_touching([queue.Queue()]) == []

    def test_nested_installs_restore_the_original_hook_once(self) -> None:
        """install() nests: only the last uninstall() restores threading.excepthook."""
        before = threading.excepthook
        casualties.install()
        casualties.install()
        casualties.uninstall()
        assert getattr(threading.excepthook, "_conctools", False)
        casualties.uninstall()
        assert threading.excepthook is before


class TestTasksAndJobs:
    """Tasks dropped unretrieved and pool jobs whose future holds the exception are noted too."""

    def test_a_task_dropped_unretrieved_is_noted_and_asyncio_still_logs_it(
        self, recorder: Recorder, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The loop's exception handler is chained: asyncio's own message is unchanged."""
        events: asyncio.Queue[int] = asyncio.Queue()

        async def consumer(q: asyncio.Queue[int]) -> None:
            item = await q.get()
            print(1 // item)

        async def main() -> None:
            asyncio.get_running_loop().create_task(consumer(events), name="divider")
            events.put_nowait(0)
            for _ in range(5):
                await asyncio.sleep(0)
            gc.collect()  # drop the dead task now: asyncio reports it from its finalizer

        with caplog.at_level(logging.ERROR, logger="asyncio"), monitor_all_loops(threshold_s=1.0, recorder=recorder):
            asyncio.run(main())
        assert "Task exception was never retrieved" in caplog.text
        [failure] = [e for e in recorder.snapshot().of_kind(FailureEvent) if e.task_name == "divider"]
        assert failure.exc_type == "ZeroDivisionError"
        assert failure.stack[0].function == "consumer"
        assert failure.objects == (f"asyncio.Queue at {id(events):#x}",)

    def test_the_handler_is_removed_when_the_loop_is_left(self) -> None:
        """A loop whose monitor stopped gets its previous exception handler back."""

        def mine(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
            pass

        async def main() -> object:
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(mine)
            with monitor_all_loops(threshold_s=1.0):
                undo = casualties.watch_loop_failures(loop)
                assert getattr(loop.get_exception_handler(), "_conctools", False)
                undo()
            return loop.get_exception_handler()

        assert asyncio.run(main()) is mine

    def test_a_failed_pool_job_is_found_from_its_future(self, recorder: Recorder) -> None:
        """A job's exception lives in its future (the worker survives): failed_jobs() finds it."""
        ready = threading.Event()

        def export() -> None:
            ready.wait(0)
            raise RuntimeError("disk full")

        with ThreadPoolExecutor(max_workers=1) as pool:
            job = pool.submit(export)
            job.exception()  # wait for it (its state is FINISHED, its exception kept)
            found = [f for f in casualties.failed_jobs() if f.job == "export()"]
        assert found and found[0].who == "pool job export()"
        assert found[0].message == "disk full" and found[0].site.startswith("test_casualties.py:")
