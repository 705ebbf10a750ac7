"""Validation order, --help defaults and wording a new user tripped over (issue 18, items 19 and 20)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

TIMEOUT = 60


def conctools(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conctools", *args], capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd
    )


class TestValidationOrder:
    """Bad values are refused before anything starts, in one line, exit 2."""

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["demo", "--users", "2000"], "at most 1000 users, got 2000"),
            (["loadtest", "--users", "5000"], "at most 1000 users, got 5000"),
            (["loadtest", "--duration", "-1"], "must be more than 0 seconds, got '-1'"),
            (["loadtest", "--duration", "0"], "must be more than 0 seconds, got '0'"),
            (["demo", "--duration", "7200"], "at most 3600 seconds (an hour)"),
            (["run", "--profile-clock", "cpu", "x.py"], "--profile-clock needs --profile"),
        ],
    )
    def test_refused_at_once(self, tmp_path: Path, args: list[str], message: str) -> None:
        """One line naming the problem, exit 2, and nothing started (the demo writes no folder)."""
        (tmp_path / "x.py").write_text("print('ran')\n")
        started = time.monotonic()
        result = conctools(*args, cwd=tmp_path)
        assert result.returncode == 2
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stdout == "" and not (tmp_path / "build").exists()
        assert time.monotonic() - started < 30  # the demo used to start its server first

    def test_loadtest_says_connection_refused(self, tmp_path: Path) -> None:
        """Nothing listening at the target: "connection refused" before any load, not 100% failures."""
        import socket

        with socket.socket() as s:  # a port nobody listens on: bound, never listening
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            result = conctools("loadtest", "--host", f"http://127.0.0.1:{port}", "--duration", "1", cwd=tmp_path)
        assert result.returncode == 2
        assert "connection refused" in result.stderr and len(result.stderr.strip().splitlines()) == 1

    @pytest.mark.parametrize(
        ("command", "defaults"),
        [
            ("run", ["default 100000", "--out DIR", "(default: none)"]),
            ("loadtest", ["default build/loadtest", "default 1", "default: all at once"]),
            ("demo", ["default build/demo", "default 1", "default 20"]),
        ],
    )
    def test_help_shows_defaults(self, command: str, defaults: list[str]) -> None:
        """--capacity, --out, --processes and --spawn-rate say their defaults."""
        out = " ".join(conctools(command, "--help").stdout.split())
        for text in defaults:
            assert text in out, (text, out)


class TestServeInterrupted:
    """Ctrl-C stops `conctools serve` with status 130 and no traceback, early or late."""

    def test_ctrl_c_while_starting(self, tmp_path: Path) -> None:
        """Ctrl-C arriving while the server starts (here: while aiohttp is imported, the longest part of the
        start): 130 and one line, no traceback."""
        pytest.importorskip("aiohttp")
        code = textwrap.dedent(
            """
            import sys
            class CtrlC:  # Ctrl-C lands exactly while aiohttp is imported
                def find_spec(self, name, path=None, target=None):
                    if name == "aiohttp":
                        raise KeyboardInterrupt
            sys.meta_path.insert(0, CtrlC())
            from conctools.cli import main
            sys.exit(main(["serve", "--port", "0", "--no-console"]))
            """
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode == 130, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1

    def test_ctrl_c_while_listening(self, tmp_path: Path) -> None:
        """Ctrl-C once it listens: the report is written and the status is 130 (it used to be 0)."""
        pytest.importorskip("aiohttp")
        proc = subprocess.Popen(
            [sys.executable, "-m", "conctools", "serve", "--port", "0", "--no-console", "--out", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert "listening on" in proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=TIMEOUT)
        assert "Traceback" not in stderr, stderr
        assert proc.returncode == 130, stderr
        assert json.loads((tmp_path / "report.json").read_text())["meta"]["command"].startswith("conctools")


class TestWording:
    """Plurals and sentences as a person reads them."""

    def test_one_inversion_one_heartbeat_one_waiting_thread(self, tmp_path: Path) -> None:
        """ "1 potential deadlock", "1 heartbeat", and a single thread waiting on an Event is not "all 1
        thread(s) ... only another waiting one could release"."""
        from conctools.reporting.locks_text import lock_order_section
        from conctools.reporting.loop_text import slow_callbacks_section

        script = tmp_path / "one.py"
        script.write_text("import threading\nthreading.Event().wait()\n")
        result = conctools("run", "--deadlock-timeout", "1", "--sample-interval", "0", str(script))
        assert result.returncode == 87, result.stderr
        assert "thread(s)" not in result.stderr and "all 1 " not in result.stderr
        assert "the only thread waits forever on something nothing left running will do" in result.stderr
        from conctools.events import LockOrderEdge, LockOrderEvent
        from conctools.recorder import Recorder

        edge = LockOrderEdge(from_lock="a", to_lock="b", from_site="x.py:1", to_site="x.py:2", thread_name="T")
        back = LockOrderEdge(from_lock="b", to_lock="a", from_site="x.py:3", to_site="x.py:4", thread_name="U")
        import dataclasses

        snap = dataclasses.replace(
            Recorder().snapshot(),
            events=(LockOrderEvent(ts_ns=1, thread_id=1, thread_name="T", cycle=("a", "b"), edges=(edge, back)),),
            sections={
                "slow_callbacks": {
                    "sites": [],
                    "stalls": 0,
                    "loop_lag": {"count": 1, "p50_s": 0.001, "p99_s": 0.001, "max_s": 0.001},
                }
            },
        )
        assert "(1 potential deadlock)" in (lock_order_section(snap, False) or "")
        lag = slow_callbacks_section(snap, False) or ""
        assert "1 heartbeat)" in lag, lag

    def test_json_error_position(self, tmp_path: Path) -> None:
        """A JSON error whose message ends in "at" does not read "at at line 1"."""
        bad = tmp_path / "report.json"
        bad.write_text('{"meta": "unterminated')
        result = conctools("report", str(bad))
        assert result.returncode == 2 and "at at" not in result.stderr and "line 1" in result.stderr

    def test_untimed_wait_interrupted_is_not_a_timeout(self) -> None:
        """An untimed Condition wait that ends by an exception (a signal handler raising, as conctools'
        interrupt does) is not counted as "timed out"; a timed wait that times out is."""
        import threading

        from conctools.locks import lock_table, trace_locks
        from conctools.recorder import use_recorder

        class Interrupted(Exception):
            pass

        def handler(signum: int, frame: object) -> None:
            raise Interrupted

        main = threading.main_thread().ident or 0
        with use_recorder(), trace_locks():
            untimed = threading.Condition()
            timed = threading.Condition()
            previous = signal.signal(signal.SIGUSR1, handler)
            try:
                timer = threading.Timer(0.1, signal.pthread_kill, (main, signal.SIGUSR1))
                timer.start()
                with untimed, pytest.raises(Interrupted):
                    untimed.wait()
                timer.join()
                with timed:
                    timed.wait(0.05)
            finally:
                signal.signal(signal.SIGUSR1, previous)
            rows = [r for r in lock_table() if r["kind"] == "Condition" and "test_cli_wording" in r["created_at"]]
        counts = sorted((r["contentions"], r["timeouts"]) for r in rows)
        assert counts == [(1, 0), (1, 1)], rows


def test_examples_pipeline_docstring_is_true() -> None:
    """examples/pipeline.py does not claim `make demo` runs it (the demo runs the sample server)."""
    text = (Path(__file__).resolve().parent.parent / "examples" / "pipeline.py").read_text()
    assert "make demo" not in text.split('"""')[1]
    assert "make demo" not in textwrap.dedent(text).splitlines()[0]
