"""Helpers shared by the dump/top/ps tests: a private agent directory short enough for a Unix
socket, a program run under conctools whose output is read as it comes, and the CLI."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._console_helpers import _Lines

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "tests" / "scripts"


@pytest.fixture
def agent_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """An environment whose private conctools directory is a fresh one of this test (short: a
    socket path must fit in 108 bytes); also set in this process, for in-process agents."""
    parent = Path(tempfile.mkdtemp(prefix="ctd-", dir="/tmp"))
    directory = parent / "d"
    monkeypatch.setenv("CONCTOOLS_CONSOLE_DIR", str(directory))
    env = {**os.environ, "CONCTOOLS_CONSOLE_DIR": str(directory), "PYTHONPATH": str(ROOT)}
    try:
        yield env
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def line_of(path: Path, marker: str) -> int:
    """The line number of the line of ``path`` that carries ``# marker``."""
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if text.rstrip().endswith(f"# {marker}"):
            return number
    raise AssertionError(f"no line marked {marker!r} in {path}")


class Program:
    """A program started as a subprocess (stdin a pipe, stdout and stderr read as they come)."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path = ROOT) -> None:
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group: stop() ends its children too (a server's pool)
        )
        self.out = _Lines(self.proc.stdout)
        self.err = _Lines(self.proc.stderr)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stderr_when_closed(self, timeout: float = 30.0) -> str:
        """Everything the program wrote to stderr, once it closed it (it ended)."""
        err = self.err
        deadline = time.monotonic() + timeout
        with err._cond:
            while not err._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("stderr was not closed in time")
                err._cond.wait(remaining)
            return "".join(err.lines)

    def stop(self) -> None:
        """Kill it and whatever it started (its process group); the readers end at end of file."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=30)
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass


def run_under_conctools(script: str, env: dict[str, str], *options: str) -> Program:
    """``conctools run --deadlock-timeout 0 [options] tests/scripts/SCRIPT``, waiting for its 'started' line."""
    program = Program(
        [sys.executable, "-m", "conctools", "run", "--deadlock-timeout", "0", *options, str(SCRIPTS / script)], env
    )
    try:
        program.out.wait_for(r"^started", timeout=60)
    except AssertionError:
        program.stop()
        raise
    return program


def conctools(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``conctools ARGS`` as a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "conctools", *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )


def dump_until(pid: int, pattern: str, env: dict[str, str], *args: str, timeout: float = 30) -> str:
    """``conctools dump PID`` again until its output matches ``pattern`` (the program gets there)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        done = conctools("dump", str(pid), *args, env=env)
        last = done.stdout + done.stderr
        if done.returncode == 0 and re.search(pattern, done.stdout):
            return done.stdout
        time.sleep(0.2)
    raise AssertionError(f"no dump matched {pattern!r} within {timeout} s; last:\n{last[-3000:]}")


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a command that failed as it should (exit 2, nothing else)."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    return lines[0]
