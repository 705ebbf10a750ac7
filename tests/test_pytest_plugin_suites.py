"""The pytest plugin on small copies of what six real test suites do (janus, asgiref, aiologic,
aiorwlock, filelock, python-diskcache): no false alarm on their healthy patterns, and the real
problems still found, each reported the way a person reads it."""

from __future__ import annotations

import re

import pytest

pytest_plugins = ["pytester"]

QUIET = ("-p", "no:locust", "-p", "no:benchmark", "-p", "no:hypothesispytest", "-p", "no:cacheprovider")
INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
"""

# aiologic's `spawn`: a session fixture (parametrized, so made again per parameter) whose executor
# starts its worker thread on first use, during a test, and stops it in the fixture's teardown.
LAZY_EXECUTOR = """
import queue, threading
import pytest


class LazyExecutor:
    def __init__(self, name, stop_on_close=True):
        self.name = name
        self.stop_on_close = stop_on_close
        self.thread = None
        self.jobs = queue.Queue()

    def run(self, fn):
        if self.thread is None:  # started lazily: by the first test that uses it
            self.thread = threading.Thread(target=self._work, name=self.name, daemon=not self.stop_on_close)
            self.thread.start()
        done = queue.Queue()
        self.jobs.put((fn, done))
        return done.get()

    def _work(self):
        while (job := self.jobs.get()) is not None:
            fn, done = job
            done.put(fn())

    def close(self):
        if self.thread is not None and self.stop_on_close:
            self.jobs.put(None)
            self.thread.join()


@pytest.fixture(scope="session", params=range(10))
def spawn(request):
    executor = LazyExecutor(f"lazy-worker-{request.param}")
    yield executor
    executor.close()


@pytest.fixture(scope="session")
def leaky():
    executor = LazyExecutor("never-stopped", stop_on_close=False)
    yield executor
    executor.close()  # does not stop the worker (a daemon: the interpreter still exits)
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    pytester.makeini(INI)
    return pytester.runpytest_subprocess(*QUIET, "-rA", "--conctools", *args, timeout=120)


def session_seconds(result: pytest.RunResult) -> float:
    m = re.search(r" in (\d+\.\d+)s", result.stdout.str())
    assert m, result.stdout.str()
    return float(m.group(1))


class TestLazySessionWorkers:
    """aiologic: a worker a session fixture starts lazily is the fixture's, not the test's (60 false
    alarms, and a 1 s grace wait each, before)."""

    def test_lazily_started_worker_is_not_the_tests_leak(self, pytester: pytest.Pytester) -> None:
        """Ten fixture instances, each starting its worker in a test and stopping it at teardown: all pass,
        without a grace wait per test."""
        pytester.makeconftest(LAZY_EXECUTOR)
        pytester.makepyfile(
            test_lazy="""
            def test_first(spawn):
                assert spawn.run(lambda: 6 * 7) == 42

            def test_second(spawn):
                assert spawn.run(lambda: "again") == "again"
            """
        )
        result = run(pytester)
        result.assert_outcomes(passed=20)
        assert "Leaked" not in result.stdout.str()
        # Before: ten tests each waited out the 1 s grace period for a thread that was not leaking.
        assert session_seconds(result) < 10.0

    def test_lazily_started_loop_and_its_listener_task(self, pytester: pytest.Pytester) -> None:
        """aiologic's asyncio executor: a session fixture's worker thread runs a loop whose listener task
        waits for work; both start in the first test and end at the fixture's teardown: no leak."""
        pytester.makeconftest(
            """
            import asyncio, threading
            import pytest

            class LoopExecutor:
                def __init__(self):
                    self.thread = None
                    self.loop = None
                    self.listener = None

                def _run(self, ready):
                    self.loop = asyncio.new_event_loop()
                    self.inbox = asyncio.Queue()
                    self.listener = self.loop.create_task(self._listen(), name="listener")
                    self.loop.call_soon(ready.set)
                    self.loop.run_until_complete(self.listener)
                    self.loop.close()

                async def _listen(self):
                    while (job := await self.inbox.get()) is not None:
                        job()

                def submit(self, fn):
                    if self.thread is None:  # started lazily, by the first test that uses it
                        ready = threading.Event()
                        self.thread = threading.Thread(target=self._run, args=(ready,), name="loop-worker")
                        self.thread.start()
                        ready.wait(10)
                    done = threading.Event()
                    self.loop.call_soon_threadsafe(self.inbox.put_nowait, lambda: (fn(), done.set()))
                    assert done.wait(10)

                def close(self):
                    if self.thread is not None:
                        self.loop.call_soon_threadsafe(self.inbox.put_nowait, None)
                        self.thread.join()

            @pytest.fixture(scope="session")
            def executor():
                ex = LoopExecutor()
                yield ex
                ex.close()
            """
        )
        pytester.makepyfile(
            test_loop_worker="""
            def test_first(executor):
                executor.submit(lambda: None)

            def test_second(executor):
                executor.submit(lambda: None)
            """
        )
        result = run(pytester)
        result.assert_outcomes(passed=2)
        assert "Leaked" not in result.stdout.str()

    def test_worker_still_running_after_its_fixture_is_torn_down_is_reported(self, pytester: pytest.Pytester) -> None:
        """A fixture that does not stop its lazily started worker: reported at that fixture's teardown,
        naming the fixture and the test the worker started in, not as the test's own leak."""
        pytester.makeconftest(LAZY_EXECUTOR)
        pytester.makepyfile(
            test_leaky="""
            def test_uses_it(leaky):
                assert leaky.run(lambda: 1) == 1

            def test_last():
                pass
            """
        )
        result = run(pytester)
        assert result.ret == 1
        out = result.stdout.str()
        # Torn down at the end of the session: in the teardown of the session's last test.
        result.stdout.fnmatch_lines(
            [
                "*ERROR at teardown of test_last*",
                "*Leaked threads (1): still running 1 s after the teardown of fixture 'leaky' (session scope)*",
                "*thread 'never-stopped'*",
                "*started during test_leaky.py::test_uses_it*",
            ]
        )
        assert "after the test ended" not in out  # not the test's own leak

    def test_thread_of_a_test_that_uses_no_wider_fixture_is_still_a_leak(self, pytester: pytest.Pytester) -> None:
        """The rule is about wider fixtures the test uses: a test that uses none still fails at once."""
        pytester.makepyfile(
            test_plain="""
            import threading

            def test_leaks():
                stop = threading.Event()
                threading.Thread(target=stop.wait, name="left-running", daemon=True).start()
            """
        )
        result = run(pytester)
        result.assert_outcomes(passed=1, errors=1)
        result.stdout.fnmatch_lines(["*Leaked threads (1): still running 1 s after the test ended*", "*left-running*"])


class TestTasksLeftForTheRunner:
    """asgiref, filelock: tasks asyncio.run or pytest-asyncio's runner cancel are done before the test ends."""

    def test_gather_abandoned_by_an_exception(self, pytester: pytest.Pytester) -> None:
        """asgiref's server test: gather(server, client) left by an exception; the runner cancels the server."""
        pytester.makepyfile(
            test_gather="""
            import asyncio
            import pytest

            class Done(Exception):
                pass

            async def serve():
                while True:
                    await asyncio.sleep(0.05)

            async def client():
                await asyncio.sleep(0.01)
                raise Done

            @pytest.mark.asyncio
            async def test_server_in_pytest_asyncio():
                try:
                    await asyncio.gather(serve(), client())
                except Done:
                    pass

            def test_server_in_asyncio_run():
                async def main():
                    try:
                        await asyncio.gather(serve(), client())
                    except Done:
                        pass
                asyncio.run(main())
            """
        )
        result = run(pytester)
        result.assert_outcomes(passed=2)
        assert "Leaked" not in result.stdout.str()


class TestLockTablesPerTest:
    """janus: a lock created on the same line in several tests is counted per test."""

    def test_counts_only_the_current_test(self, pytester: pytest.Pytester) -> None:
        """1000 acquisitions in one test, 1 in the next: the second test's table says 1."""
        pytester.makepyfile(
            test_counts="""
            import threading

            def make_lock():
                return threading.Lock()

            def test_many(conctools_locks):
                lock = make_lock()
                for _ in range(1000):
                    with lock:
                        pass
                rows = [r for r in conctools_locks() if r["created_at"].endswith("test_counts.py:4")]
                assert [r["acquisitions"] for r in rows] == [1000]

            def test_once(conctools_locks):
                lock = make_lock()
                with lock:
                    pass
                rows = [r for r in conctools_locks() if r["created_at"].endswith("test_counts.py:4")]
                assert [r["acquisitions"] for r in rows] == [1]
            """
        )
        run(pytester).assert_outcomes(passed=2)

    def test_report_section_counts_only_the_failing_test(self, pytester: pytest.Pytester) -> None:
        """The lock table in a failure's report is the failing test's."""
        pytester.makepyfile(
            test_report="""
            import asyncio, threading, time

            def make_lock():
                return threading.Lock()

            def test_many():
                lock = make_lock()
                for _ in range(1000):
                    with lock:
                        pass

            def test_blocks():
                lock = make_lock()
                with lock:
                    pass
                async def main():
                    time.sleep(0.3)
                asyncio.run(main())
            """
        )
        result = run(pytester)
        result.assert_outcomes(passed=1, failed=1)
        rows = [line.split() for line in result.outlines if line.strip().startswith("test_report.py:4 ")]
        assert rows and rows[0][1:3] == ["Lock", "1"], result.stdout.str()


class TestCulpritLine:
    """janus: a stall inside a library called from a test also names the test's own line."""

    def test_first_line_names_the_tests_call(self, pytester: pytest.Pytester) -> None:
        """The innermost line is the library's; the failure's first line adds the test file's line."""
        pytester.makepyfile(
            blocking_lib="""
            import time

            def put(item):
                time.sleep(0.3)  # the library blocks
            """,
            test_calls="""
            import asyncio
            import blocking_lib

            def helper():
                blocking_lib.put(1)

            def test_calls_a_blocking_library():
                async def main():
                    helper()
                asyncio.run(main())
            """,
        )
        result = run(pytester)
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(
            ["conctools: blocked event loop: * at blocking_lib.py:4 (called from test_calls.py:5)"]
        )

    def test_no_addition_when_the_culprit_is_the_tests_own_line(self, pytester: pytest.Pytester) -> None:
        """A stall at the test's own line is named once."""
        pytester.makepyfile(
            test_own="""
            import asyncio, time

            def test_blocks():
                async def main():
                    time.sleep(0.3)
                asyncio.run(main())
            """
        )
        result = run(pytester)
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["conctools: blocked event loop: * at test_own.py:5"])
        assert "called from" not in result.stdout.str()
