"""Every way `conctools dump` cannot do its job is one line and exit status 2, never a traceback
or a hang: a dead process, one without an agent, a stale socket, an impostor, a garbled answer,
a process that stops answering, another user's process, bad input, --attach before 3.14."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._dump_helpers import ROOT, Program, conctools, one_line_error, run_under_conctools
from tests._dump_helpers import agent_env as agent_env  # the fixture
from tests.test_console_access import other_user as other_user  # the fixture: a throwaway user

ENABLED = (
    "import sys, conctools\n"
    "conctools.enable_dump()\n"
    "print('started', flush=True)\n"
    "sys.stdin.read()\n"  # until the test closes stdin or kills it
)
PLAIN = "import sys\nprint('started', flush=True)\nsys.stdin.read()\n"
# A fake agent: listens where the agent of process PID would (its own pid for "self"), answers REPLY (hex).
FAKE = (
    "import os, socket, sys\n"
    "directory, pid, reply = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])\n"
    "pid = os.getpid() if pid == 'self' else int(pid)\n"
    "os.makedirs(directory, mode=0o700, exist_ok=True)\n"
    "path = os.path.join(directory, f'dump-{pid}.sock')\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "s.bind(path)\n"
    "os.chmod(path, 0o600)\n"
    "s.listen()\n"
    "print('started', flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.recv(4096)\n"
    "    c.sendall(reply)\n"
    "    c.close()\n"
)


def _start(code: str, env: dict[str, str], *args: str) -> Program:
    program = Program([sys.executable, "-c", code, *args], env)
    program.out.wait_for(r"^started", timeout=60)
    return program


class TestProcesses:
    """Processes that cannot be dumped, each said in one line."""

    def test_dead_process(self, agent_env: dict[str, str]) -> None:
        """A PID that no longer runs."""
        ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        pid = int(ended.stdout)
        assert one_line_error(conctools("dump", str(pid), env=agent_env)) == f"conctools dump: error: no process {pid}"
        assert one_line_error(conctools("top", str(pid), env=agent_env)) == f"conctools top: error: no process {pid}"

    def test_process_not_started_with_conctools(self, agent_env: dict[str, str]) -> None:
        """A plain Python process: how to start it so that dump works."""
        program = _start(PLAIN, agent_env)
        try:
            line = one_line_error(conctools("dump", str(program.pid), env=agent_env))
            assert line.startswith(f"conctools dump: error: process {program.pid} (python -c ")
            assert "has no conctools agent: start it with `conctools run SCRIPT.py`" in line
            assert "conctools.enable_dump()" in line
            assert program.proc.poll() is None
        finally:
            program.stop()

    def test_run_without_the_agent(self, agent_env: dict[str, str]) -> None:
        """`conctools run --no-dump-agent`: no socket, and the dump says how to get one."""
        program = run_under_conctools("dump_healthy.py", agent_env, "--no-dump-agent")
        try:
            line = one_line_error(conctools("dump", str(program.pid), env=agent_env))
            assert "has no conctools agent: start it with `conctools run SCRIPT.py`" in line
            assert not list(Path(agent_env["CONCTOOLS_CONSOLE_DIR"]).glob("dump-*.sock"))
        finally:
            program.stop()

    def test_stale_socket(self, agent_env: dict[str, str]) -> None:
        """A socket file that nobody listens on any more (its agent was killed)."""
        from conctools.agent.location import agent_dir

        program = _start(PLAIN, agent_env)
        try:
            path = agent_dir(create=True) / f"dump-{program.pid}.sock"
            left = socket.socket(socket.AF_UNIX)
            left.bind(str(path))
            os.chmod(path, 0o600)
            left.close()  # as a killed process leaves it: the file, no listener
            line = one_line_error(conctools("dump", str(program.pid), env=agent_env))
            assert line == (
                f"conctools dump: error: process {program.pid} has a stale conctools socket ({path}): nothing "
                "listens on it any more (the process that made it was killed, or this pid was reused)"
            )
        finally:
            program.stop()

    def test_socket_served_by_another_process(self, agent_env: dict[str, str]) -> None:
        """A socket named after one process but served by another: not trusted (the kernel says who)."""
        target = _start(PLAIN, agent_env)
        directory = agent_env["CONCTOOLS_CONSOLE_DIR"]
        impostor = _start(FAKE, agent_env, directory, str(target.pid), b'{"schema": "conctools.dump/1"}'.hex())
        try:
            line = one_line_error(conctools("dump", str(target.pid), env=agent_env))
            assert line.startswith(
                f"conctools dump: error: the conctools socket of process {target.pid} is served by process "
                f"{impostor.pid}: not trusting it"
            )
        finally:
            impostor.stop()
            target.stop()

    @pytest.mark.parametrize(
        ("reply", "expected"),
        [
            ("\x00\x01{not json", "garbled answer from process {pid}: not JSON"),
            ('["a", "list"]', "garbled answer from process {pid}: not a JSON object"),
            ('{"schema": "conctools.dump/1", "process": {"pid": 1}}', "it does not say it is process {pid}"),
            ('{"schema": "something/9"}', "schema 'something/9', expected 'conctools.dump/1'"),
            ("", "process {pid} closed the connection without answering"),
        ],
    )
    def test_garbled_answers(self, agent_env: dict[str, str], reply: str, expected: str) -> None:
        """Whatever comes back that is not the agent's answer."""
        fake = _start(FAKE, agent_env, agent_env["CONCTOOLS_CONSOLE_DIR"], "self", reply.encode("latin-1").hex())
        try:
            line = one_line_error(conctools("dump", str(fake.pid), env=agent_env))
            assert line.startswith("conctools dump: error: ")
            assert expected.format(pid=fake.pid) in line
        finally:
            fake.stop()

    def test_process_that_stops_answering(self, agent_env: dict[str, str]) -> None:
        """A stopped process (SIGSTOP): the dump gives up after --timeout; once resumed, it answers."""
        program = _start(ENABLED, agent_env)
        try:
            assert conctools("dump", str(program.pid), env=agent_env).returncode == 0
            os.kill(program.pid, signal.SIGSTOP)
            started = time.monotonic()
            line = one_line_error(conctools("dump", str(program.pid), "--timeout", "1", env=agent_env))
            took = time.monotonic() - started
            assert line.startswith(f"conctools dump: error: process {program.pid} did not answer within 1 s")
            assert took < 30  # bounded by --timeout (plus the interpreter's start), never a hang
            top = one_line_error(conctools("top", str(program.pid), "--timeout", "1", env=agent_env))
            assert "did not answer within 1 s" in top
            os.kill(program.pid, signal.SIGCONT)
            done = conctools("dump", str(program.pid), env=agent_env)
            assert done.returncode == 0 and f"conctools dump of process {program.pid}" in done.stdout
            assert program.proc.poll() is None
        finally:
            os.kill(program.pid, signal.SIGCONT)
            program.stop()


class TestBadInput:
    """Bad command-line input: one line, exit 2."""

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (["dump", "abc"], "argument PID: expected a whole number, got 'abc'"),
            (["dump", "0"], "argument PID: must be positive, got 0"),
            (["dump", "12", "--timeout", "-1"], "argument --timeout: must be more than 0 seconds, got '-1'"),
            (["dump", "12", "--timeout", "nan"], "argument --timeout"),
            (["top", "12", "--interval", "0"], "argument --interval: must be more than 0 seconds"),
            (["top", "12", "-n", "0"], "argument -n/--iterations: must be positive, got 0"),
            (["dump"], "the following arguments are required: PID"),
        ],
    )
    def test_bad_arguments(self, agent_env: dict[str, str], args: list[str], expected: str) -> None:
        """Each one a single line naming the argument."""
        line = one_line_error(conctools(*args, env=agent_env))
        assert expected in line

    def test_out_that_cannot_be_written(self, agent_env: dict[str, str], tmp_path: Path) -> None:
        """--out into a missing directory, or onto a directory."""
        program = _start(ENABLED, agent_env)
        try:
            missing = tmp_path / "no" / "such" / "dump.txt"
            line = one_line_error(conctools("dump", str(program.pid), "--out", str(missing), env=agent_env))
            assert line.startswith(f"conctools dump: error: --out {str(missing)!r}: cannot write it")
            line = one_line_error(conctools("dump", str(program.pid), "--out", str(tmp_path), env=agent_env))
            assert line == f"conctools dump: error: --out {str(tmp_path)!r} is a directory, not a file"
            out = tmp_path / "dump.json"
            done = conctools("dump", str(program.pid), "--json", "--out", str(out), env=agent_env)
            assert done.returncode == 0 and done.stdout == ""
            assert done.stderr.strip() == f"conctools dump: wrote {out}"
            assert json.loads(out.read_text())["process"]["pid"] == program.pid
        finally:
            program.stop()


class TestAttach:
    """`--attach` loads the agent with sys.remote_exec (CPython 3.14+)."""

    @pytest.mark.skipif(hasattr(sys, "remote_exec"), reason="this Python has sys.remote_exec")
    def test_attach_before_314_says_so(self, agent_env: dict[str, str]) -> None:
        """On 3.11-3.13: one line naming what --attach needs."""
        program = _start(PLAIN, agent_env)
        try:
            line = one_line_error(conctools("dump", str(program.pid), "--attach", env=agent_env))
            version = ".".join(map(str, sys.version_info[:3]))
            assert line == (
                "conctools dump: error: --attach needs CPython 3.14 or later (sys.remote_exec, PEP 768); "
                f"this is Python {version}"
            )
            assert program.proc.poll() is None
        finally:
            program.stop()

    def test_attach_on_314_loads_the_agent_and_dumps(self, agent_env: dict[str, str]) -> None:
        """On 3.14: a plain process gets an agent and is dumped, then keeps running."""
        python = shutil.which("python3.14")
        if python is None or subprocess.run([python, "-c", "import sys; sys.remote_exec"]).returncode != 0:
            pytest.skip("--attach needs CPython 3.14 (sys.remote_exec); no python3.14 is installed here")
        env = {**agent_env, "PYTHONPATH": str(ROOT)}
        program = Program([python, "-c", PLAIN], env)
        program.out.wait_for(r"^started", timeout=60)
        try:
            done = subprocess.run(
                [python, "-m", "conctools", "dump", str(program.pid), "--attach"],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            assert f"conctools dump of process {program.pid}" in done.stdout
            assert "thread 'MainThread'" in done.stdout
            assert program.proc.poll() is None
        finally:
            program.stop()


# -- another user --------------------------------------------------------------------------------


def _python_for(user: pwd.struct_passwd) -> str:
    candidates = (os.path.realpath(sys.executable), "/usr/bin/python3")
    for python in candidates:
        try:
            done = subprocess.run(
                [python, "-c", "import conctools.agent"],
                user=user.pw_uid,
                env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                cwd="/",
                capture_output=True,
                timeout=60,
            )
        except OSError:
            continue
        if done.returncode == 0:
            return python
    pytest.skip("no Python interpreter that the other user may run with conctools importable")


class TestOtherUser:
    """Only the process's own user may look inside it."""

    def test_dump_of_another_users_process(self, other_user: pwd.struct_passwd, agent_env: dict[str, str]) -> None:
        """Theirs from here, and ours from theirs: one line, exit 2; the agent itself refuses a foreign peer."""
        python = _python_for(other_user)
        their_env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": "/"}
        theirs = subprocess.Popen(
            [python, "-c", ENABLED],
            user=other_user.pw_uid,
            group=other_user.pw_gid,
            env=their_env,
            cwd="/",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ours = _start(ENABLED, agent_env)
        try:
            assert theirs.stdout is not None and theirs.stdout.readline().strip() == "started"
            line = one_line_error(conctools("dump", str(theirs.pid), env=agent_env))
            assert line == (
                f"conctools dump: error: process {theirs.pid} belongs to another user: only its owner can dump it"
            )
            # Root may open any file, so the agent checks the peer itself, with the kernel's word.
            their_socket = Path(f"/tmp/conctools-{other_user.pw_uid}/dump-{theirs.pid}.sock")
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(10)
                sock.connect(str(their_socket))
                sock.sendall(b'{"ask": "dump"}\n')
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            assert answer == b'{"error":"refused: only the process\'s own user may ask"}'
            # And the other way round: from their account, ours is out of reach.
            os.chmod(Path(agent_env["CONCTOOLS_CONSOLE_DIR"]).parent, 0o755)  # only the 0700 directory guards it
            as_them = subprocess.run(
                [python, "-m", "conctools", "dump", str(ours.pid)],
                user=other_user.pw_uid,
                group=other_user.pw_gid,
                env={**their_env, "CONCTOOLS_CONSOLE_DIR": agent_env["CONCTOOLS_CONSOLE_DIR"]},
                cwd="/",
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert one_line_error(as_them) == (
                f"conctools dump: error: process {ours.pid} belongs to another user: only its owner can dump it"
            )
            probe = (
                "import socket, sys\n"
                "s = socket.socket(socket.AF_UNIX)\n"
                "try:\n"
                "    s.connect(sys.argv[1])\n"
                "except OSError as exc:\n"
                "    print(type(exc).__name__)\n"
            )
            reach = subprocess.run(
                [python, "-c", probe, f"{agent_env['CONCTOOLS_CONSOLE_DIR']}/dump-{ours.pid}.sock"],
                user=other_user.pw_uid,
                group=other_user.pw_gid,
                env=their_env,
                cwd="/",
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert reach.stdout.strip() == "PermissionError", reach
            assert theirs.poll() is None and ours.proc.poll() is None
        finally:
            theirs.kill()
            theirs.wait(timeout=30)
            ours.stop()
            shutil.rmtree(f"/tmp/conctools-{other_user.pw_uid}", ignore_errors=True)
