"""`conctools run`: programs run unchanged, with a report; bad input is a one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TIMEOUT = 60


def conctools(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conctools", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
        env=env,
    )


def write(path: Path, code: str) -> Path:
    path.write_text(textwrap.dedent(code))
    return path


class TestRunsUnchanged:
    """The program sees what `python script.py` would give it."""

    def test_argv_main_path_and_output(self, tmp_path: Path) -> None:
        """sys.argv, __name__, sys.path[0] and stdout are as under plain python."""
        script = write(
            tmp_path / "show.py",
            """
            import json, sys
            print(json.dumps({"argv": sys.argv, "name": __name__, "path0": sys.path[0], "file": __file__}))
            """,
        )
        plain = subprocess.run(
            [sys.executable, str(script), "a", "--flag", "-m", "x"], capture_output=True, text=True, timeout=TIMEOUT
        )
        ours = conctools("run", str(script), "a", "--flag", "-m", "x")
        assert ours.returncode == 0, ours.stderr
        assert json.loads(ours.stdout) == json.loads(plain.stdout)
        assert "conctools report" in ours.stderr

    @pytest.mark.parametrize(
        ("code", "status", "stderr_has"),
        [
            ("raise SystemExit(3)", 3, None),
            ("import sys; sys.exit(0)", 0, None),
            ("import sys; sys.exit('fatal: bad config')", 1, "fatal: bad config"),
            ("def f():\n    raise ValueError('kaput')\nf()", 1, "ValueError: kaput"),
        ],
    )
    def test_exit_status(self, tmp_path: Path, code: str, status: int, stderr_has: str | None) -> None:
        """Exit statuses, sys.exit messages and tracebacks are as under plain python."""
        script = write(tmp_path / "exit.py", code)
        plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=TIMEOUT)
        ours = conctools("run", str(script))
        assert ours.returncode == plain.returncode == status
        if stderr_has:
            assert stderr_has in ours.stderr
        if "Traceback" in plain.stderr:
            assert "Traceback" in ours.stderr and "in f\n" in ours.stderr
            assert "runpy" not in ours.stderr and "conctools/runner.py" not in ours.stderr

    def test_module_mode(self, tmp_path: Path) -> None:
        """-m runs a module as __main__ with its own argv, from the current directory."""
        pkg = tmp_path / "mypkg"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        write(
            pkg / "tool.py",
            """
            import sys
            import conctools

            @conctools.traced
            def work():
                return 1

            if __name__ == "__main__":
                work()
                print("argv", sys.argv[1:], "main", __name__)
                sys.exit(5)
            """,
        )
        env = dict(os.environ)
        result = conctools("run", "-m", "mypkg.tool", "x", "--out", "y", cwd=tmp_path, env=env)
        assert result.returncode == 5, result.stderr
        assert "argv ['x', '--out', 'y'] main __main__" in result.stdout
        assert "work" in result.stderr

    def test_waits_for_non_daemon_threads_and_reports_their_spans(self, tmp_path: Path) -> None:
        """Spans made by threads still running after main returns are in the report."""
        script = write(
            tmp_path / "late.py",
            """
            import threading, time
            import conctools

            @conctools.traced("late_work")
            def late():
                time.sleep(0.2)

            threading.Thread(target=late, name="late-thread").start()
            """,
        )
        result = conctools("run", "--out", str(tmp_path / "out"), str(script))
        assert result.returncode == 0, result.stderr
        assert "late_work" in result.stderr
        data = json.loads((tmp_path / "out" / "report.json").read_text())
        spans = [e for e in data["events"] if e["kind"] == "span"]
        assert spans[0]["thread_name"] == "late-thread"
        assert (tmp_path / "out" / "report.txt").read_text().startswith("=")

    def test_no_report_and_log_level(self, tmp_path: Path) -> None:
        """--no-report silences the summary; --log-level DEBUG shows every traced call."""
        script = write(
            tmp_path / "quiet.py",
            """
            import conctools
            conctools.traced("step")(lambda: None)()
            """,
        )
        quiet = conctools("run", "--no-report", str(script))
        assert quiet.returncode == 0 and "conctools report" not in quiet.stderr
        loud = conctools("run", "--no-report", "--log-level", "debug", str(script))
        assert "step ok in" in loud.stderr and "MainThread" in loud.stderr

    def test_double_dash_separates_program_args(self, tmp_path: Path) -> None:
        """Everything after the script, even conctools-looking flags, goes to the program."""
        script = write(tmp_path / "a.py", "import sys; print(sys.argv[1:])")
        result = conctools("run", "--no-report", "--", str(script), "--out", "--capacity")
        assert result.stdout.strip() == "['--out', '--capacity']"


class TestBadInput:
    """One line on stderr, exit status 2, no traceback."""

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["run", "missing.py"], "script 'missing.py' not found"),
            (["run"], "give a script to run"),
            (["run", "--bogus", "x.py"], "unrecognized arguments: --bogus"),
            (["run", "--capacity", "-5", "x.py"], "must be positive"),
            (["run", "--capacity", "lots", "x.py"], "expected a whole number"),
            (["run", "-m", "no_such_module_xyz"], "no module named 'no_such_module_xyz'"),
            (["run", "--log-level", "LOUD", "x.py"], "invalid choice"),
            (["frobnicate"], "invalid choice"),
        ],
    )
    def test_one_line_errors(self, args: list[str], message: str) -> None:
        """Each bad input names the problem in one line."""
        result = conctools(*args)
        assert result.returncode == 2
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr

    def test_no_command_prints_help(self) -> None:
        """`conctools` alone prints usage and exits 2."""
        result = conctools()
        assert result.returncode == 2 and "usage" in result.stderr.lower()

    def test_version(self) -> None:
        """--version names the version."""
        result = conctools("--version")
        assert result.returncode == 0 and result.stdout.startswith("conctools ")


CONSOLE_SCRIPT = str(Path(sys.executable).with_name("conctools"))


def console(*args: str, cwd: Path | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    """The installed `conctools` console script, as a user types it (not `python -m conctools`)."""
    return subprocess.run([CONSOLE_SCRIPT, *args], capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd, **kw)  # type: ignore[call-overload,no-any-return]


class TestRunsAsPythonDoes:
    """What a new user found that differed from plain python (issue 18, items 5-10)."""

    def test_module_in_the_current_directory(self, tmp_path: Path) -> None:
        """`conctools run -m pkg.mod` finds a package in the cwd, as `python -m pkg.mod` does."""
        (tmp_path / "localpkg").mkdir()
        (tmp_path / "localpkg" / "__init__.py").write_text("")
        write(tmp_path / "localpkg" / "tool.py", "import sys\nprint('tool ran', sys.argv[1:])\n")
        result = console("run", "--no-report", "-m", "localpkg.tool", "x", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "tool ran ['x']\n"

    def test_argv0_as_typed(self, tmp_path: Path) -> None:
        """sys.argv[0] is what was typed (relative stays relative); __file__ is absolute, as under python."""
        write(tmp_path / "show.py", "import json, sys\nprint(json.dumps([sys.argv, __file__]))\n")
        for typed in ("show.py", "./show.py"):
            plain = subprocess.run(
                [sys.executable, typed, "a"], capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path
            )
            ours = console("run", "--no-report", typed, "a", cwd=tmp_path)
            assert json.loads(ours.stdout) == json.loads(plain.stdout) == [[typed, "a"], f"{tmp_path}/{typed}"]

    @pytest.mark.parametrize("kind", ["file", "unwritable"])
    def test_out_checked_before_the_program_starts(self, tmp_path: Path, kind: str) -> None:
        """A bad --out is one line and exit 2 before the program runs (it used to run, then lose the report)."""
        script = write(tmp_path / "side_effect.py", "open('ran.txt', 'w').write('ran')\n")
        out = tmp_path / "out"
        if kind == "file":
            out.write_text("not a directory")
        else:
            out = Path("/proc/no-such-dir/out")
        result = console("run", "--out", str(out), str(script), cwd=tmp_path)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and "--out" in result.stderr, result.stderr
        assert not (tmp_path / "ran.txt").exists()

    def test_closed_stderr_keeps_the_exit_status(self, tmp_path: Path) -> None:
        """With stderr closed by the reader (`2>&1 | head -1`), the exit status stays the program's."""
        script = write(tmp_path / "hello.py", "print('hello')\n")
        import os as os_module

        read_end, write_end = os_module.pipe()
        os_module.close(read_end)  # nobody reads: every write to stderr fails with EPIPE
        try:
            result = subprocess.run(
                [CONSOLE_SCRIPT, "run", str(script)],
                stdout=subprocess.PIPE,
                stderr=write_end,
                text=True,
                timeout=TIMEOUT,
            )
        finally:
            os_module.close(write_end)
        assert result.stdout == "hello\n"
        assert result.returncode == 0

    def test_sigterm_writes_the_report_then_dies_by_the_signal(self, tmp_path: Path) -> None:
        """SIGTERM: the report on stderr and in --out, then the process ends by SIGTERM, as python would."""
        import signal

        script = write(
            tmp_path / "server.py",
            """
            import threading, time
            lock = threading.Lock()
            with lock:
                print("ready", flush=True)
            time.sleep(60)
            """,
        )
        proc = subprocess.Popen(
            [CONSOLE_SCRIPT, "run", "--out", str(tmp_path / "out"), str(script)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == -signal.SIGTERM
        assert "conctools report" in stderr and "server.py:3" in stderr
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert report["meta"]["exit_status"] == 128 + signal.SIGTERM

    def test_os_exit_writes_what_is_known(self, tmp_path: Path) -> None:
        """A program that ends with os._exit(3): the report and --out files are written, exit status 3;
        a forked child's os._exit writes nothing."""
        script = write(
            tmp_path / "quits.py",
            """
            import multiprocessing, os, threading

            def child():
                pass

            lock = threading.Lock()
            with lock:
                pass
            p = multiprocessing.get_context("fork").Process(target=child)
            p.start()
            p.join()
            print("child exit", p.exitcode, flush=True)
            os._exit(3)
            """,
        )
        result = console("run", "--out", str(tmp_path / "out"), str(script))
        assert result.returncode == 3
        assert result.stdout == "child exit 0\n"
        assert result.stderr.count("conctools report") == 1
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert report["meta"]["exit_status"] == 3
        assert any(row["created_at"].endswith("quits.py:7") for row in report["sections"]["locks"])

    def test_keyboard_interrupt_traceback_has_no_conctools_frames(self, tmp_path: Path) -> None:
        """Ctrl-C's traceback starts in the program, as python's does, and the status is 130."""
        script = write(tmp_path / "ctrl_c.py", "def main():\n    raise KeyboardInterrupt\nmain()\n")
        result = console("run", "--no-report", str(script))
        assert result.returncode == 130
        assert "in main" in result.stderr and "KeyboardInterrupt" in result.stderr
        assert "runner.py" not in result.stderr and "runpy" not in result.stderr

    @pytest.mark.parametrize("form", ["uvloop.run", "uvloop.install", "Runner(loop_factory)"])
    def test_uvloop_loops_are_watched(self, tmp_path: Path, form: str) -> None:
        """A 300 ms stall on a uvloop loop is reported, whichever way the program starts uvloop."""
        pytest.importorskip("uvloop", reason="uvloop is not installed (pip install uvloop)")
        start = {
            "uvloop.run": "uvloop.run(main())",
            "uvloop.install": "uvloop.install()\nasyncio.run(main())",
            "Runner(loop_factory)": "with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:\n    r.run(main())",
        }[form]
        script = write(
            tmp_path / "uv.py",
            "import asyncio, time, uvloop\n\nasync def main():\n    time.sleep(0.3)\n    await asyncio.sleep(0)\n\n"
            + start
            + "\n",
        )
        result = console("run", "--sample-interval", "0", str(script))
        assert result.returncode == 0, result.stderr
        assert "Blocked at" in result.stderr and "uv.py:4: time.sleep(0.3)" in result.stderr, result.stderr


class TestWhatAUserReads:
    """Reports name things the same way every time and hide conctools' own frames (issue 18, items 11, 17)."""

    def test_same_line_locks_are_numbered_by_creation_order(self, tmp_path: Path) -> None:
        """Two locks made on one line: '#1' and '#2' in the deadlock and the lock-order report alike, never an
        address or a serial that depends on how many locks were made before."""
        script = write(
            tmp_path / "pair.py",
            """
            import threading
            unrelated = [threading.Lock() for _ in range(7)]
            pair = [threading.Lock() for _ in range(2)]
            ready = threading.Barrier(2)

            def worker(first, second):
                with first:
                    ready.wait()
                    with second:
                        pass

            t1 = threading.Thread(target=worker, args=(pair[0], pair[1]), name="t1")
            t2 = threading.Thread(target=worker, args=(pair[1], pair[0]), name="t2")
            t1.start(); t2.start(); t1.join(); t2.join()
            """,
        )
        result = console("run", "--deadlock-timeout", "1", "--sample-interval", "0", str(script))
        assert result.returncode == 86, result.stderr
        assert "<0x" not in result.stderr
        assert "waiting for Lock 'pair.py:4 #1'" in result.stderr or "waiting for Lock 'pair.py:4 #2'" in result.stderr
        assert "holds Lock 'pair.py:4 #1'" in result.stderr and "holds Lock 'pair.py:4 #2'" in result.stderr
        # Which edge closes the cycle (and so where the cycle starts) depends on scheduling.
        assert (
            "'pair.py:4 #1' => 'pair.py:4 #2' => 'pair.py:4 #1'" in result.stderr
            or "'pair.py:4 #2' => 'pair.py:4 #1' => 'pair.py:4 #2'" in result.stderr
        ), result.stderr

    def test_profile_without_conctools_wrappers(self, tmp_path: Path) -> None:
        """--profile's table starts with the program's functions; conctools' are counted, not listed."""
        pytest.importorskip("yappi")
        script = write(
            tmp_path / "prof.py",
            """
            import asyncio, conctools

            @conctools.traced
            async def work():
                for _ in range(20):  # far more CPU than the imports before it
                    sum(range(100_000))
                await asyncio.sleep(0.01)

            asyncio.run(work())
            """,
        )
        # The CPU clock: on the wall clock, a busy machine could preempt an import long enough to outrank it.
        result = console("run", "--profile", "--profile-clock", "cpu", "--sample-interval", "0", str(script))
        assert result.returncode == 0, result.stderr
        table = result.stderr.split("Profile (", 1)[1].split("per thread", 1)[0]
        for own in ("traced_coro", "_execute", "_run_file", "run_path", "capture_stack", "conctools/"):
            assert own not in table, table
        assert "prof.py" in table and "conctools functions not shown)" in table

    def test_hang_stack_ends_in_the_program(self, tmp_path: Path) -> None:
        """A hang under `-m`: the stack ends at the program's <module>, not in runpy or the console script."""
        (tmp_path / "hangpkg").mkdir()
        (tmp_path / "hangpkg" / "__init__.py").write_text("")
        write(
            tmp_path / "hangpkg" / "stuck.py",
            "import threading\nnever = threading.Event()\n\ndef main():\n    never.wait()\n\nmain()\n",
        )
        result = console(
            "run", "--deadlock-timeout", "1", "--sample-interval", "0", "-m", "hangpkg.stuck", cwd=tmp_path
        )
        assert result.returncode == 87, result.stderr
        stacks = result.stderr.split("thread 'MainThread'", 1)[1]
        assert "at <module> (" in stacks and "stuck.py:7" in stacks
        assert "runpy" not in stacks and "bin/conctools" not in stacks and "runner.py" not in stacks
        assert "conctools frames not shown)" in stacks

    def test_timer_wait_is_not_placed_in_conctools(self, tmp_path: Path) -> None:
        """--detect-blocking: a Timer's own wait is shown at threading.py, not at conctools' wrapper."""
        script = write(
            tmp_path / "timer.py",
            """
            import asyncio, threading

            async def main():
                done = threading.Event()
                threading.Timer(0.05, done.set).start()
                done.wait(5)

            asyncio.run(main())
            """,
        )
        result = console("run", "--detect-blocking", "--sample-interval", "0", str(script))
        assert result.returncode == 0, result.stderr
        import re

        assert re.search(r"threading\.Event\.wait +\S*timer\.py:7 ", result.stderr), result.stderr
        assert "loopmon.py" not in result.stderr
