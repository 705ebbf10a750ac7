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
