"""The pytest plugin, driven end to end: each inner suite runs in its own pytest subprocess."""

from __future__ import annotations

import re
import sys
import time

import pytest

pytest_plugins = ["pytester"]

# Heavy plugins that have nothing to do with these runs stay out, so each subprocess starts in
# about a second (the Locust plugin alone costs several); one test keeps them all on.
QUIET = ("-p", "no:locust", "-p", "no:benchmark", "-p", "no:hypothesispytest", "-p", "no:cacheprovider")
INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
{extra}
"""


def run(pytester: pytest.Pytester, *args: str, ini: str = "", timeout: float = 60) -> pytest.RunResult:
    """Run pytest on the files in ``pytester``'s directory, in a subprocess, with ``args``."""
    pytester.makeini(INI.format(extra=ini))
    return pytester.runpytest_subprocess(*QUIET, *args, timeout=timeout)


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """``{test name: PASSED|FAILED|ERROR ...}`` from a ``-rA`` summary."""
    found: dict[str, str] = {}
    for line in result.outlines:
        m = re.match(r"(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) \S+?\.py::(\S+)", line)
        if m:
            found[m.group(2)] = found.get(m.group(2), "") + m.group(1)
    return found


class TestInert:
    """Off (no flag, ini or marker) the plugin does nothing at all; on, it puts back all it changed."""

    def test_registered_as_pytest11_entry_point(self) -> None:
        """The installed distribution declares the plugin, so pytest loads it with no conftest line."""
        from importlib.metadata import entry_points

        found = {ep.name: ep.value for ep in entry_points(group="pytest11")}
        assert found.get("conctools") == "conctools.pytest_plugin"

    def test_off_by_default_nothing_patched_nothing_started(self, pytester: pytest.Pytester) -> None:
        """A leaking, loop-blocking test passes, the stdlib stays untouched, no conctools thread runs, and
        conctools_recorder is a fresh recorder made current for the test."""
        pytester.makepyfile(
            test_inert="""
            import asyncio, signal, sys, threading, time
            import asyncio.runners

            def originals():
                return (threading.Lock, asyncio.Lock, asyncio.events._set_running_loop,
                        asyncio.runners._cancel_all_tasks, sys.getprofile(), sys.gettrace())

            ORIGINALS = originals()

            def test_blocks_and_leaks():
                async def main():
                    time.sleep(0.3)
                asyncio.run(main())
                threading.Thread(target=time.sleep, args=(2,), daemon=True).start()

            def test_fixture_gives_a_fresh_current_recorder(conctools_recorder):
                import conctools
                assert conctools.get_recorder() is conctools_recorder
                assert conctools_recorder.snapshot().counts == {}

            def test_untouched():
                assert not [t for t in threading.enumerate() if t.name.startswith("conctools-")]
                assert originals() == ORIGINALS
                for signum in signal.valid_signals():
                    handler = signal.getsignal(signum)
                    assert "conctools" not in (getattr(handler, "__module__", None) or ""), signum
            """
        )
        result = run(pytester, "-rA")
        result.assert_outcomes(passed=3)
        assert "conctools" not in result.stdout.str().replace("conctools-0", "")

    def test_marker_switches_on_one_test_only(self, pytester: pytest.Pytester) -> None:
        """A marked test is checked; its unmarked neighbour is not."""
        pytester.makepyfile(
            test_marked="""
            import threading, time, pytest

            @pytest.mark.conctools
            def test_marked_leaks():
                threading.Thread(target=time.sleep, args=(3,), daemon=True, name="marked-leak").start()

            def test_unmarked_leaks():
                threading.Thread(target=time.sleep, args=(3,), daemon=True, name="unmarked-leak").start()
            """
        )
        result = run(pytester, "-rA")
        assert outcomes(result) == {"test_marked_leaks": "PASSEDERROR", "test_unmarked_leaks": "PASSED"}
        result.stdout.fnmatch_lines(["*Leaked threads (1)*", "*thread 'marked-leak'*"])
        assert "unmarked-leak" not in result.stdout.str()

    def test_everything_restored_after_each_test(self, pytester: pytest.Pytester) -> None:
        """With --conctools, factories and hooks are the stdlib's again between tests (seen from a test with
        the marker off), and after the session the signal handler and watchdog thread are gone too."""
        pytester.makeconftest(
            """
            import asyncio, asyncio.runners, atexit, signal, sys, threading

            def state():
                handlers = [s for s in signal.valid_signals()
                            if "conctools" in (getattr(signal.getsignal(s), "__module__", None) or "")]
                threads = [t.name for t in threading.enumerate() if t.name.startswith("conctools-")]
                return (threading.Lock, asyncio.Lock, asyncio.events._set_running_loop,
                        asyncio.runners._cancel_all_tasks, sys.getprofile(), sys.gettrace(), handlers, threads)

            BEFORE = state()
            atexit.register(lambda: print("RESTORED" if state() == BEFORE else f"LEFT {state()} != {BEFORE}"))
            """
        )
        pytester.makepyfile(
            test_restore="""
            import asyncio, threading, pytest

            def test_locks_and_loops():
                with threading.Lock():
                    asyncio.run(asyncio.sleep(0))

            @pytest.mark.conctools(enabled=False)
            def test_off_in_between():
                from conftest import BEFORE, state
                now = state()
                assert now[:6] == BEFORE[:6]

            def test_again():
                asyncio.run(asyncio.sleep(0))
            """
        )
        result = run(pytester, "-rA", "--conctools")
        result.assert_outcomes(passed=3)
        result.stdout.fnmatch_lines(["RESTORED"])


SETTINGS_PROBE = """
import pytest

def _show(rec):
    s = rec.meta.get("conctools_settings")
    print("SETTINGS", s and (s["deadlock_timeout_s"], s["loop_threshold_s"], s["leak_check"]))

def test_plain(conctools_recorder):
    _show(conctools_recorder)

@pytest.mark.conctools(deadlock_timeout=3, loop_threshold=0.3, leak_check=True)
def test_marked(conctools_recorder):
    _show(conctools_recorder)

@pytest.mark.conctools(enabled=False)
def test_marked_off(conctools_recorder):
    _show(conctools_recorder)
"""


class TestSettings:
    """Every setting is a flag, an ini key and a marker argument: marker > flag > ini > default."""

    def test_defaults(self, pytester: pytest.Pytester) -> None:
        """--conctools alone: 10 s deadlock timeout, 0.1 s loop threshold, leak check on."""
        pytester.makepyfile(test_settings=SETTINGS_PROBE)
        result = run(pytester, "-s", "--conctools")
        result.assert_outcomes(passed=3)
        result.stdout.fnmatch_lines(["*SETTINGS (10.0, 0.1, True)*", "*SETTINGS (3.0, 0.3, True)*", "*SETTINGS None*"])

    def test_ini_then_flag_then_marker(self, pytester: pytest.Pytester) -> None:
        """The ini sets, the flag overrides the ini, the marker overrides both."""
        pytester.makepyfile(test_settings=SETTINGS_PROBE)
        ini = "\n".join(
            [
                "conctools = true",
                "conctools_deadlock_timeout = 7",
                "conctools_loop_threshold = 0.7",
                "conctools_leak_check = false",
            ]
        )
        by_ini = run(pytester, "-s", ini=ini)
        by_ini.stdout.fnmatch_lines(["*SETTINGS (7.0, 0.7, False)*", "*SETTINGS (3.0, 0.3, True)*", "*SETTINGS None*"])
        by_flag = run(
            pytester,
            "-s",
            "--conctools-deadlock-timeout=5",
            "--conctools-loop-threshold",
            "0.5",
            "--conctools-leak-check",
            ini=ini,
        )
        by_flag.stdout.fnmatch_lines(["*SETTINGS (5.0, 0.5, True)*", "*SETTINGS (3.0, 0.3, True)*", "*SETTINGS None*"])
        off = run(pytester, "-s", "--conctools-off", ini=ini)
        off.stdout.fnmatch_lines(["*SETTINGS None*", "*SETTINGS (3.0, 0.3, True)*", "*SETTINGS None*"])

    @pytest.mark.parametrize(
        ("args", "ini", "message"),
        [
            (
                ("--conctools-deadlock-timeout", "-1"),
                "",
                "*argument --conctools-deadlock-timeout: must be a non-negative*",
            ),
            (("--conctools-loop-threshold", "soon"), "", "*argument --conctools-loop-threshold: expected a number*"),
            ((), "conctools_deadlock_timeout = -2", "*ini option conctools_deadlock_timeout: must be a non-negative*"),
            ((), "conctools_loop_threshold = nan", "*ini option conctools_loop_threshold: must be a non-negative*"),
        ],
    )
    def test_bad_values_are_usage_errors(
        self, pytester: pytest.Pytester, args: tuple[str, ...], ini: str, message: str
    ) -> None:
        """A negative, non-numeric or NaN setting stops pytest with one clear line (exit 4)."""
        pytester.makepyfile(test_nothing="def test_nothing(): pass")
        result = run(pytester, "--conctools", *args, ini=ini)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([message])
        assert "Traceback" not in result.stderr.str()

    def test_bad_marker_fails_setup(self, pytester: pytest.Pytester) -> None:
        """A marker with a bad value or an unknown argument fails that test's setup, with the reason."""
        pytester.makepyfile(
            test_marker="""
            import pytest

            @pytest.mark.conctools(deadlock_timeout=-1)
            def test_negative(): pass

            @pytest.mark.conctools(timeout=1)
            def test_unknown(): pass

            def test_fine(): pass
            """
        )
        result = run(pytester, "-rA")
        assert outcomes(result) == {"test_negative": "ERROR", "test_unknown": "ERROR", "test_fine": "PASSED"}
        result.stdout.fnmatch_lines(
            [
                "*@pytest.mark.conctools: deadlock_timeout: must be a non-negative number of seconds*",
                "*@pytest.mark.conctools: unknown argument 'timeout'*",
            ]
        )


class TestLeaks:
    """Threads and asyncio tasks still running after the test fail it at teardown."""

    def test_leaked_thread_and_tasks(self, pytester: pytest.Pytester) -> None:
        """A leaked thread and a task still pending on a loop that outlives the test are reported; tasks
        left for asyncio.run or pytest-asyncio's runner to cancel are not (they are done before the test
        ends: asgiref's and filelock's suites); clean tests pass."""
        pytester.makepyfile(
            test_leaks="""
            import asyncio, threading, time
            import pytest

            def test_leaks_thread():
                stop = threading.Event()
                threading.Thread(target=stop.wait, name="forgotten-worker", daemon=True).start()

            async def forever():
                await asyncio.sleep(3600)

            def test_leaks_task_in_asyncio_run():
                async def main():
                    asyncio.create_task(forever(), name="orphan-run")
                    await asyncio.sleep(0)
                asyncio.run(main())

            @pytest.mark.asyncio
            async def test_leaks_task_in_pytest_asyncio():
                asyncio.create_task(forever(), name="orphan-async")
                await asyncio.sleep(0)

            @pytest.mark.asyncio(loop_scope="module")
            async def test_leaks_task_on_a_module_loop():
                asyncio.create_task(forever(), name="orphan-module")
                await asyncio.sleep(0)

            def test_joined_thread_is_fine():
                t = threading.Thread(target=time.sleep, args=(0.05,))
                t.start()
                t.join()

            def test_thread_finishing_after_the_test_is_fine():
                threading.Thread(target=time.sleep, args=(0.2,)).start()

            @pytest.mark.asyncio
            async def test_awaited_task_is_fine():
                await asyncio.create_task(asyncio.sleep(0.01))

            @pytest.mark.conctools(leak_check=False)
            def test_leak_check_off():
                threading.Thread(target=time.sleep, args=(2,), daemon=True).start()
            """
        )
        result = run(pytester, "-rA", "--conctools")
        assert outcomes(result) == {
            "test_leaks_thread": "PASSEDERROR",
            "test_leaks_task_in_asyncio_run": "PASSED",
            "test_leaks_task_in_pytest_asyncio": "PASSED",
            "test_leaks_task_on_a_module_loop": "PASSEDERROR",
            "test_joined_thread_is_fine": "PASSED",
            "test_thread_finishing_after_the_test_is_fine": "PASSED",
            "test_awaited_task_is_fine": "PASSED",
            "test_leak_check_off": "PASSED",
        }
        result.stdout.fnmatch_lines(
            [
                "*ERROR at teardown of test_leaks_thread*",
                "*Leaked threads (1): still running*",
                "*thread 'forgotten-worker' (daemon=True) running Event.wait*",
                "*ERROR at teardown of test_leaks_task_on_a_module_loop*",
                "*Leaked asyncio tasks (1): still pending after the test ended*",
                "*Task 'orphan-module' [[]pending[]] forever*",
                "*test_leaks.py:9 in forever*",
                "*await asyncio.sleep(3600)*",
                "*conctools summary*",
            ]
        )
        assert "orphan-run" not in result.stdout.str() and "orphan-async" not in result.stdout.str()

    def test_tasks_left_for_the_runner_to_cancel_with_strict_tasks(self, pytester: pytest.Pytester) -> None:
        """With --conctools-strict-tasks, tasks asyncio.run / pytest-asyncio cancel fail the test, worded as such."""
        pytester.makepyfile(
            test_strict="""
            import asyncio
            import pytest

            async def forever():
                await asyncio.sleep(3600)

            def test_left_to_asyncio_run():
                async def main():
                    asyncio.create_task(forever(), name="orphan-run")
                    await asyncio.sleep(0)
                asyncio.run(main())

            @pytest.mark.asyncio
            async def test_left_to_pytest_asyncio():
                asyncio.create_task(forever(), name="orphan-async")
                await asyncio.sleep(0)

            @pytest.mark.conctools(strict_tasks=False)
            def test_marker_switches_it_off():
                test_left_to_asyncio_run()
            """
        )
        result = run(pytester, "-rA", "--conctools", "--conctools-strict-tasks")
        assert outcomes(result) == {
            "test_left_to_asyncio_run": "PASSEDERROR",
            "test_left_to_pytest_asyncio": "PASSEDERROR",
            "test_marker_switches_it_off": "PASSED",
        }
        result.stdout.fnmatch_lines(
            [
                "*ERROR at teardown of test_left_to_asyncio_run*",
                "*Tasks left for the runner to cancel (1): still pending when asyncio.run*",
                "*Task 'orphan-run' [[]pending[]] forever*",
                "*test_strict.py:5 in forever*",
                "*ERROR at teardown of test_left_to_pytest_asyncio*",
                "*Task 'orphan-async'*",
            ]
        )
        assert "Leaked asyncio tasks" not in result.stdout.str()

    def test_wider_scoped_fixtures_may_outlive_the_test(self, pytester: pytest.Pytester) -> None:
        """Threads and tasks a module-scoped fixture or loop starts are not the test's leaks."""
        pytester.makepyfile(
            test_scoped="""
            import asyncio, threading
            import pytest, pytest_asyncio

            @pytest.fixture(scope="module")
            def server():
                stop = threading.Event()
                t = threading.Thread(target=stop.wait, name="module-server")
                t.start()
                yield t
                stop.set()
                t.join()

            @pytest_asyncio.fixture(scope="module", loop_scope="module")
            async def ticker():
                task = asyncio.create_task(asyncio.sleep(3600), name="module-ticker")
                yield task
                task.cancel()

            def test_one(server):
                assert server.is_alive()

            def test_two(server):
                assert server.is_alive()

            @pytest.mark.asyncio(loop_scope="module")
            async def test_three(ticker):
                assert not ticker.done()

            @pytest.mark.asyncio(loop_scope="module")
            async def test_four(ticker):
                assert not ticker.done()

            @pytest.mark.asyncio(loop_scope="module")
            async def test_default_executor_of_a_module_loop(ticker):
                await asyncio.to_thread(sum, range(10))  # its worker lives as long as the loop
            """
        )
        result = run(pytester, "-rA", "--conctools")
        result.assert_outcomes(passed=5)


class TestStuck:
    """Deadlocks and hangs fail the test within the timeout, with the report, and the suite goes on."""

    def test_hang_without_cycle_fails_and_next_test_runs(self, pytester: pytest.Pytester) -> None:
        """A thread waiting forever on an Event, joined by the test: a hang report, then the next test runs."""
        pytester.makepyfile(
            test_hang="""
            import threading

            def test_waits_forever():
                never = threading.Event()
                t = threading.Thread(target=never.wait, name="event-waiter")
                t.start()
                t.join()

            def test_next():
                assert True
            """
        )
        started = time.monotonic()
        result = run(pytester, "-rA", "--conctools", "--conctools-deadlock-timeout", "1")
        elapsed = time.monotonic() - started
        assert outcomes(result) == {"test_waits_forever": "FAILED", "test_next": "PASSED"}
        result.stdout.fnmatch_lines(
            [
                "*conctools: hang: *",
                "*conctools report (call)*",
                "*thread 'MainThread'*",
                "*t.join()*",
                "*thread 'event-waiter'*",
                "*conctools summary*",
                "*test_hang.py::test_waits_forever: hang:*",
            ]
        )
        # The stuck non-daemon thread neither hangs the run nor holds up the interpreter's exit.
        assert result.ret == pytest.ExitCode.TESTS_FAILED
        assert elapsed < 45

    def test_thread_deadlock_fails_and_next_test_runs(self, pytester: pytest.Pytester) -> None:
        """Two threads taking two locks in opposite orders: the deadlock report, then the next tests run."""
        pytester.makepyfile(
            test_deadlock="""
            import threading

            def test_deadlock():
                a, b = threading.Lock(), threading.Lock()
                a_taken, b_taken = threading.Barrier(2), None

                def one():
                    with a:
                        a_taken.wait()
                        with b:
                            pass

                def two():
                    with b:
                        a_taken.wait()
                        with a:
                            pass

                t1 = threading.Thread(target=one, name="first")
                t2 = threading.Thread(target=two, name="second")
                t1.start(); t2.start()
                t1.join(); t2.join()

            def test_next():
                assert True

            def test_main_thread_in_the_cycle():
                a, b = threading.Lock(), threading.Lock()
                ready = threading.Event()

                def other():
                    with b:
                        ready.set()
                        with a:
                            pass

                with a:
                    threading.Thread(target=other, name="other", daemon=True).start()
                    ready.wait()
                    with b:
                        pass

            def test_last():
                assert True
            """
        )
        result = run(pytester, "-rA", "--conctools", "--conctools-deadlock-timeout", "1")
        assert outcomes(result) == {
            "test_deadlock": "FAILED",
            "test_next": "PASSED",
            "test_main_thread_in_the_cycle": "FAILED",
            "test_last": "PASSED",
        }
        result.stdout.fnmatch_lines(
            [
                "*conctools: deadlock: *",
                "*conctools report (call)*",
                "*thread 'first'*",
                "*thread 'second'*",
                "*test_deadlock.py:*",
            ]
        )
        result.stdout.fnmatch_lines(["*test_main_thread_in_the_cycle: deadlock:*thread 'MainThread'*"])

    def test_task_deadlock_fails_and_next_test_runs(self, pytester: pytest.Pytester) -> None:
        """Two tasks taking two asyncio locks in opposite orders, in pytest-asyncio and in asyncio.run."""
        pytester.makepyfile(
            test_task_deadlock="""
            import asyncio
            import pytest

            async def cross():
                a, b = asyncio.Lock(), asyncio.Lock()
                both = asyncio.Event()

                async def one():
                    async with a:
                        await both.wait()
                        async with b:
                            pass

                async def two():
                    async with b:
                        both.set()
                        async with a:
                            pass

                await asyncio.gather(asyncio.create_task(one(), name="one"), asyncio.create_task(two(), name="two"))

            @pytest.mark.asyncio
            async def test_async_deadlock():
                await cross()

            def test_next():
                assert True

            def test_sync_deadlock():
                asyncio.run(cross())

            def test_last():
                assert True
            """
        )
        result = run(pytester, "-rA", "--conctools", "--conctools-deadlock-timeout", "1")
        assert outcomes(result) == {
            "test_async_deadlock": "FAILED",
            "test_next": "PASSED",
            "test_sync_deadlock": "FAILED",
            "test_last": "PASSED",
        }
        result.stdout.fnmatch_lines(["*conctools: deadlock: *task 'one'*", "*async with*"])

    def test_task_hang_fails_and_next_test_runs(self, pytester: pytest.Pytester) -> None:
        """A task awaiting an Event nobody sets, in asyncio.run: a hang report, then the next test runs."""
        pytester.makepyfile(
            test_task_hang="""
            import asyncio

            async def waits_forever():
                await asyncio.Event().wait()

            def test_task_hang():
                asyncio.run(waits_forever())

            def test_next():
                assert True
            """
        )
        result = run(pytester, "-rA", "--conctools", "--conctools-deadlock-timeout", "1", timeout=60)
        assert outcomes(result) == {"test_task_hang": "FAILED", "test_next": "PASSED"}
        result.stdout.fnmatch_lines(["*conctools: hang: *", "*task 'Task-*", "*await asyncio.Event().wait()*"])


class TestInversion:
    """A lock-order inversion fails the test even though this run did not deadlock."""

    def test_inversion_reported(self, pytester: pytest.Pytester) -> None:
        """A then B in one thread, B then A in another (never at the same time): the lockdep-style report."""
        pytester.makepyfile(
            test_inversion="""
            import threading

            def test_inversion():
                a, b = threading.Lock(), threading.Lock()
                def ab():
                    with a:
                        with b:
                            pass
                def ba():
                    with b:
                        with a:
                            pass
                for target in (ab, ba):
                    t = threading.Thread(target=target)
                    t.start()
                    t.join()

            def test_consistent_order():
                a, b = threading.Lock(), threading.Lock()
                for _ in range(2):
                    with a:
                        with b:
                            pass
            """
        )
        result = run(pytester, "-rA", "--conctools")
        assert outcomes(result) == {"test_inversion": "FAILED", "test_consistent_order": "PASSED"}
        result.stdout.fnmatch_lines(["*conctools: lock-order inversion:*", "*test_inversion.py:*"])


BLOCKING = """
import asyncio, time
import pytest

def test_sync_asyncio_run():
    async def main():
        time.sleep(0.5)
    asyncio.run(main())

@pytest.mark.asyncio
async def test_pytest_asyncio():
    time.sleep(0.5)

@pytest.mark.asyncio
async def test_clean():
    await asyncio.sleep(0.01)

@pytest.mark.conctools(loop_threshold=2)
def test_threshold_from_marker():
    asyncio.run(asyncio.sleep(0))
    async def main():
        time.sleep(0.3)
    asyncio.run(main())
"""


class TestBlockedLoop:
    """A test that blocks its event loop fails with the slow-callback report and the blocking line."""

    def test_blocked_loop(self, pytester: pytest.Pytester) -> None:
        """asyncio.run in a sync test and a pytest-asyncio test both fail on the ``time.sleep`` line."""
        pytester.makepyfile(test_blocking=BLOCKING)
        result = run(pytester, "-rA", "--conctools")
        assert outcomes(result) == {
            "test_sync_asyncio_run": "FAILED",
            "test_pytest_asyncio": "FAILED",
            "test_clean": "PASSED",
            "test_threshold_from_marker": "PASSED",
        }
        result.stdout.fnmatch_lines(
            [
                "*conctools: blocked event loop: Task * for 0.5* s at *test_blocking.py:6",
                "*conctools report (call)*",
                "*time.sleep(0.5)*",
                "*conctools: blocked event loop: Task * for 0.5* s at *test_blocking.py:11",
            ]
        )

    @pytest.mark.parametrize("mode", ["strict", "auto"])
    def test_every_loop_scope(self, pytester: pytest.Pytester, mode: str) -> None:
        """Function, class, module and session loops: clean tests pass, blocking ones fail, in both modes."""
        mark = "" if mode == "auto" else "@pytest.mark.asyncio(loop_scope={scope!r})"
        body = ["import asyncio, time", "import pytest", ""]
        for scope in ("function", "class", "module", "session"):
            deco = mark.format(scope=scope) if mark else f"@pytest.mark.asyncio(loop_scope={scope!r})"
            body += [
                f"class Test{scope.title()}:",
                f"    {deco}",
                "    async def test_clean(self):",
                "        await asyncio.sleep(0.01)",
                f"    {deco}",
                "    async def test_blocks(self):",
                "        time.sleep(0.4)",
                "",
            ]
        pytester.makepyfile(test_scopes="\n".join(body))
        result = run(pytester, "-rA", "--conctools", ini=f"asyncio_mode = {mode}")
        assert outcomes(result) == {
            f"Test{scope.title()}::{name}": ("PASSED" if name == "test_clean" else "FAILED")
            for scope in ("function", "class", "module", "session")
            for name in ("test_clean", "test_blocks")
        }
        assert result.stdout.str().count("conctools report (call)") == 4


class TestFixtures:
    """The fixtures expose the current test's recorder, lock table and slow callbacks."""

    def test_fixtures(self, pytester: pytest.Pytester) -> None:
        """Users assert on their recorder, lock table and slow callbacks; clear() makes stalls expected."""
        pytester.makepyfile(
            test_fixtures="""
            import asyncio, time
            import conctools

            def test_recorder_is_current(conctools_recorder):
                assert conctools.get_recorder() is conctools_recorder

            def test_expected_stall(conctools_slow_callbacks):
                async def main():
                    time.sleep(0.3)
                asyncio.run(main())
                assert len(conctools_slow_callbacks) == 1
                stall = conctools_slow_callbacks[0]
                assert stall.duration_s >= 0.25
                assert stall.culprit.line == "time.sleep(0.3)"
                conctools_slow_callbacks.clear()
                assert len(conctools_slow_callbacks) == 0

            def test_no_stall(conctools_slow_callbacks):
                asyncio.run(asyncio.sleep(0.01))
                assert list(conctools_slow_callbacks) == []

            def test_lock_table(conctools_locks):
                import threading
                lock = threading.Lock()
                for _ in range(3):
                    with lock:
                        pass
                rows = [r for r in conctools_locks() if "test_fixtures.py" in r["created_at"]]
                assert [(r["kind"], r["acquisitions"]) for r in rows] == [("Lock", 3)]
            """
        )
        result = run(pytester, "-rA", "--conctools")
        result.assert_outcomes(passed=4)


class TestCoexistence:
    """The plugin lives with the other plugins of the stack, their options and their loops."""

    def test_all_plugins_loaded(self, pytester: pytest.Pytester) -> None:
        """Locust's plugin (``--host``/``-H``), pytest-timeout and pytest-benchmark loaded: no option clash."""
        pytester.makeini(INI.format(extra=""))
        pytester.makepyfile(
            test_all="""
            import asyncio, time

            def test_ok():
                asyncio.run(asyncio.sleep(0))

            def test_blocks():
                async def main():
                    time.sleep(0.3)
                asyncio.run(main())
            """
        )
        result = pytester.runpytest_subprocess(
            "-p", "no:cacheprovider", "--conctools", "--timeout", "30", "-rA", timeout=120
        )
        result.assert_outcomes(passed=1, failed=1)
        result.stdout.fnmatch_lines(["*plugins:*conctools*", "*conctools: blocked event loop*"])


class TestOverhead:
    """A clean suite stays green and fast with the plugin on."""

    def test_two_hundred_trivial_tests(self, pytester: pytest.Pytester) -> None:
        """200 trivial tests, with and without --conctools: all pass; the per-test overhead is printed."""
        pytester.makepyfile(
            test_many="""
            import pytest

            @pytest.mark.parametrize("i", range(200))
            def test_trivial(i):
                assert i >= 0
            """
        )
        durations = {}
        for label, args in (("off", ()), ("on", ("--conctools",))):
            result = run(pytester, "-q", *args)
            result.assert_outcomes(passed=200)
            durations[label] = _session_seconds(result)
        per_test_ms = (durations["on"] - durations["off"]) / 200 * 1000
        sys.stderr.write(
            f"\nconctools pytest plugin: 200 trivial tests in {durations['off']:.2f} s off, "
            f"{durations['on']:.2f} s on: {per_test_ms:.2f} ms per test\n"
        )
        assert durations["on"] < durations["off"] + 200 * 0.1  # generous: 100 ms per test on 2 noisy cores


def _session_seconds(result: pytest.RunResult) -> float:
    """The ``in X.XXs`` that pytest prints for the session (the tests, not the interpreter's start-up)."""
    m = re.search(r" in (\d+\.\d+)s", result.stdout.str())
    assert m, result.stdout.str()
    return float(m.group(1))


def test_readme_example_is_real() -> None:
    """The README section quotes the plugin's flags as they exist."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    if "## pytest plugin" not in readme:
        pytest.skip("README section not written yet")
    section = readme.split("## pytest plugin", 1)[1].split("\n## ", 1)[0]
    known = {
        "--conctools",
        "--conctools-off",
        "--conctools-deadlock-timeout",
        "--conctools-loop-threshold",
        "--conctools-no-leak-check",
        "--conctools-leak-check",
        "--conctools-strict-tasks",
        "--conctools-no-strict-tasks",
    }
    for flag in re.findall(r"--conctools[\w-]*", section):
        assert flag in known, flag
