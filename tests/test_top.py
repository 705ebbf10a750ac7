"""`conctools top PID`: driven in a real terminal (tmux) where `q` quits, and as plain text when
stdout is not a terminal; `conctools ps` lists what can be dumped."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import time

import pytest

from tests._dump_helpers import ROOT, conctools, dump_until, run_under_conctools
from tests._dump_helpers import agent_env as agent_env  # the fixture

TMUX = shutil.which("tmux")
SKIP_REASON = "tmux is not installed (apt-get install tmux; .ci/run does it)"


class Tmux:
    """A tmux server of this test only (its own socket), one window running a command."""

    def __init__(self, command: str, env: dict[str, str]) -> None:
        assert TMUX is not None
        self.socket = f"ctd-{secrets.token_hex(4)}"
        self.env = env
        self._tmux("new-session", "-d", "-x", "120", "-y", "45", command)

    def _tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert TMUX is not None
        return subprocess.run(
            [TMUX, "-L", self.socket, *args], capture_output=True, text=True, env=self.env, timeout=30, check=False
        )

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "0").stdout

    def wait_for(self, pattern: str, timeout: float = 30.0) -> str:
        """The screen once it matches ``pattern`` (polled: tmux has no event to wait on)."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if re.search(pattern, screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"the screen never showed {pattern!r}; it shows:\n{screen}")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "0", *keys)

    def close(self) -> None:
        self._tmux("kill-server")


@pytest.mark.skipif(TMUX is None, reason=SKIP_REASON)
class TestTopInATerminal:
    """`conctools top` on a terminal: the live view, refreshed, and `q` quits."""

    def test_top_shows_the_deadlocked_tasks_and_q_quits(self, agent_env: dict[str, str]) -> None:
        """Threads and tasks by state, the lock waits with their holders; q leaves, the terminal restored."""
        program = run_under_conctools("dump_abba_tasks.py", agent_env)
        env = {**agent_env, "TERM": "xterm-256color"}
        command = (
            f"{sys.executable} -m conctools top {program.pid} --interval 0.3; echo TOP-EXIT=$?; "
            "printf 'shell is back\\n'; sleep 60"
        )
        tmux = Tmux(f"cd {ROOT} && {command}", env)
        try:
            tmux.wait_for(r"Waits on traced locks now \(most waiters first\)")
            # A refresh that caught the heartbeat task between two sleeps says "1 running": wait for a calm one.
            screen = tmux.wait_for(r"Tasks:    4 \(2 lock, 1 gather, 1 sleep\)")
            assert f"conctools top - pid {program.pid}" in screen and "(q quits)" in screen
            assert "Threads:  2 of the program (" in screen  # the loop's thread and the one reading stdin
            assert re.search(r"aio\.Lock 'dump_abba_tasks\.py:\d+'\s+task '(refresh-cache|write-db)'", screen)
            first = re.search(r"\d\d:\d\d:\d\d", screen)
            assert first is not None
            tmux.wait_for(r"\d\d:\d\d:\d\d(?<!" + first.group(0) + ")")  # refreshed: the clock moved
            tmux.keys("q")
            after = tmux.wait_for(r"TOP-EXIT=0")
            assert "shell is back" in tmux.wait_for("shell is back")
            assert "Waits on traced locks now" not in after  # the alternate screen is gone
            assert program.proc.poll() is None
        finally:
            tmux.close()
            program.stop()


class TestTopAsText:
    """`conctools top` with stdout not a terminal: plain frames, no escape sequences."""

    def test_plain_frames(self, agent_env: dict[str, str]) -> None:
        """-n 2: two frames, the second with the CPU of the interval, no terminal codes."""
        program = run_under_conctools("dump_abba_threads.py", agent_env)
        try:
            dump_until(program.pid, "Found one Python-level deadlock", agent_env)  # the waits are there to see
            done = conctools("top", str(program.pid), "-n", "2", "--interval", "0.2", env=agent_env)
            assert done.returncode == 0, done.stderr
            frames = done.stdout.split(f"conctools top - pid {program.pid}")
            assert len(frames) == 3 and frames[0] == ""
            assert "\x1b" not in done.stdout
            assert "(average since start)" in frames[1] and "(average since start)" not in frames[2]
            assert "Threads:  3 of the program (" in frames[2]
            assert "GIL:      threads wait " in frames[2]  # conctools run's GIL monitor publishes its section
            assert re.search(r"Lock 'dump_abba_threads\.py:\d+'\s+thread '(audit|transfer)'", frames[2])
        finally:
            program.stop()

    def test_top_ends_when_the_process_ends(self, agent_env: dict[str, str]) -> None:
        """The process quits while top watches: one line, exit 0."""
        program = run_under_conctools("dump_healthy.py", agent_env)
        top = subprocess.Popen(
            [sys.executable, "-m", "conctools", "top", str(program.pid), "--interval", "0.2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=agent_env,
            cwd=ROOT,
        )
        try:
            assert top.stdout is not None
            assert top.stdout.readline().startswith(f"conctools top - pid {program.pid}")
            program.send("quit")
            assert program.proc.wait(timeout=30) == 0
            _, err = top.communicate(timeout=30)
            assert top.returncode == 0
            assert err.strip() == f"conctools top: process {program.pid} has ended"
        finally:
            if top.poll() is None:
                top.kill()
                top.communicate()
            program.stop()


class TestPs:
    """`conctools ps` lists this user's dumpable processes."""

    def test_ps_lists_the_running_programs(self, agent_env: dict[str, str]) -> None:
        """pid, start time, Python and the command; nothing once they ended."""
        empty = conctools("ps", env=agent_env)
        assert empty.returncode == 0 and empty.stdout == ""
        assert "no process of yours can be dumped" in empty.stderr
        first = run_under_conctools("dump_healthy.py", agent_env)
        second = run_under_conctools("dump_abba_threads.py", agent_env)
        try:
            done = conctools("ps", env=agent_env)
            assert done.returncode == 0, done.stderr
            lines = done.stdout.splitlines()
            assert lines[0].split() == ["pid", "started", "python", "program"]
            rows = {int(line.split()[0]): line for line in lines[2:]}
            assert set(rows) == {first.pid, second.pid}
            assert rows[first.pid].endswith(
                f"-m conctools run --deadlock-timeout 0 {ROOT}/tests/scripts/dump_healthy.py"
            )
            assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  3\.\d+\.\d+", rows[second.pid])
            as_json = json.loads(conctools("ps", "--json", env=agent_env).stdout)
            assert {row["pid"] for row in as_json} == {first.pid, second.pid}
            assert all(row["answering"] for row in as_json)
        finally:
            first.stop()
            second.stop()
        after = conctools("ps", env=agent_env)
        assert after.stdout == ""  # killed: their sockets are stale, and ps lists live processes only
