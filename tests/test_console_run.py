"""`conctools run --console` and `conctools.console.attach()` (issue 20): the console on any program,
reached over a raw telnet socket and through `conctools console`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conctools.console import attach
from tests._console_helpers import WAIT_FOR_FILE, ConsoleProgram, console_client, read_secret


@pytest.fixture(autouse=True)
def console_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test keeps its consoles' secret files in a private directory of its own."""
    path = tmp_path / "consoles"
    monkeypatch.setenv("CONCTOOLS_CONSOLE_DIR", str(path))
    return path


@pytest.fixture
def program(tmp_path: Path) -> Iterator[list[ConsoleProgram]]:
    """Programs started by the test; killed if the test leaves them running."""
    started: list[ConsoleProgram] = []
    yield started
    for prog in started:
        prog.kill()


BLOCKED = (
    WAIT_FOR_FILE
    + """
import asyncio, sys, threading, time
import conctools

jobs = conctools.Lock(name="jobs-lock")

async def holder():
    lock = asyncio.Lock()
    async with lock:
        await asyncio.sleep(3600)

async def main():
    asyncio.create_task(holder(), name="holder-task")
    await asyncio.sleep(0.05)
    with jobs:
        print("blocking the loop", flush=True)
        wait_for("unblock")  # a blocking call on the loop: the loop is stuck here
    print("loop free", flush=True)
    wait_async = asyncio.to_thread(wait_for, "finish")
    await wait_async

asyncio.run(main())
sys.exit(3)
"""
)


class TestRunConsole:
    """A real program under `conctools run --console`."""

    def test_commands_answer_while_the_loop_is_blocked(self, tmp_path: Path, program: list[ConsoleProgram]) -> None:
        """Over a raw telnet socket: thread- and lock-level commands answer while the loop is blocked; console
        says why it cannot, with the blocking line; once free it works; exit status and report are the program's."""
        prog = ConsoleProgram(tmp_path, BLOCKED, "--out", str(tmp_path / "out"))
        program.append(prog)
        assert prog.host == "127.0.0.1"
        prog.wait_stdout("blocking the loop")
        client = prog.telnet()
        try:
            threads = client.command("threads", 'Thread "MainThread"')
            client.read_until('wait_for("unblock")', start=len(client.text) - len(threads))
            locks = client.command("locks", "jobs-lock")
            # Taken inside the task that blocks the loop: that task is the holder (issue 11, item 2).
            assert re.search(r"jobs-lock \(Lock\): held by task 'Task-\d+' \(thread 'MainThread'\) at prog\.py:", locks)
            assert not re.search(r"jobs-lock .* for \d{3,}\.", locks), locks  # no time since the process started
            client.command("deadlocks", "so far")
            client.command("slow", "Loop lag")
            client.command("resources", "rss")
            client.command("profile start", "profiling every thread")
            client.command("profile stop", "profiled")
            client.command("ps", "holder-task")
            client.command("loops", "* #1  running  'MainThread'")
            blocked = client.command("console", "try `console` again once it is free")
            assert "it is blocked, at prog.py:" in blocked and 'wait_for("unblock")' in blocked
            assert "REPL" not in blocked and "Ctrl-D" not in blocked
            prog.release("unblock")
            prog.wait_stdout("loop free")
            client.enter_console()
            mark = len(client.text)
            client.sock.sendall(b"sorted(t.get_name() for t in asyncio.all_tasks())\r")
            client.read_until("'holder-task'", start=mark)
        finally:
            client.close()
        prog.release("finish")
        status, _out, err = prog.finish()
        assert status == 3, err
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        rows = {row["name"] for row in report["sections"]["locks"]}
        assert "jobs-lock" in rows
        assert not {r for r in rows if re.search(r"aiomonitor|prompt_toolkit|psutil|janus|aiohttp|console", r)}, rows
        stalls = [e for e in report["events"] if e["kind"] == "slow_callback"]
        assert stalls and all("prog.py" in json.dumps(e) for e in stalls)

    def test_two_asyncio_runs_in_a_row(self, tmp_path: Path, program: list[ConsoleProgram]) -> None:
        """The console follows the second loop when the first asyncio.run ended; `use` of the closed one fails."""
        source = (
            WAIT_FOR_FILE
            + """
import asyncio, os

async def phase(n):
    asyncio.current_task().set_name(f"phase-{n}")
    print(f"phase {n}", flush=True)
    while not os.path.exists(f"go-{n}"):
        await asyncio.sleep(0.02)

asyncio.run(phase(1))
asyncio.run(phase(2))
"""
        )
        prog = ConsoleProgram(tmp_path, source)
        program.append(prog)
        prog.wait_stdout("phase 1")
        first = prog.console("loops\nps\n")
        assert "* #1  running  'MainThread'" in first and "phase-1" in first
        prog.release("go-1")
        prog.wait_stdout("phase 2")
        second = prog.console("loops\nps\nuse 1\nconsole\nasyncio.current_task().get_name()\nprogram.phase.__name__\n")
        loops = second.split("conctools >>> loops\n", 1)[1].split("conctools >>> ps", 1)[0]
        assert "* #2  running  'MainThread'" in loops and "#1 " not in loops
        assert "phase-2" in second and "phase-1" not in second
        assert "use: no loop #1" in second
        assert "'conctools-console-repl'" in second
        assert "'phase'" in second  # `program` is the program's __main__ module
        prog.release("go-2")
        status, _out, err = prog.finish()
        assert status == 0, err

    def test_loops_in_threads_and_use(self, tmp_path: Path, program: list[ConsoleProgram]) -> None:
        """Two loops in two threads: `loops` lists both, `use N` picks the one ps and console use."""
        source = (
            WAIT_FOR_FILE
            + """
import asyncio, threading

def serve(name):
    async def main():
        asyncio.current_task().set_name(f"task-{name}")
        print(f"running {name}", flush=True)
        await asyncio.to_thread(wait_for, "stop")
    asyncio.run(main())

threads = [threading.Thread(target=serve, args=(n,), name=f"loop-{n}") for n in "ab"]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""
        )
        prog = ConsoleProgram(tmp_path, source)
        program.append(prog)
        prog.wait_stdout("running a")
        prog.wait_stdout("running b")
        listing = prog.console("loops\n")
        numbers = dict(re.findall(r"#(\d+)\s+running\s+'(loop-[ab])'", listing))
        assert sorted(numbers.values()) == ["loop-a", "loop-b"], listing
        for number, thread in numbers.items():
            name = thread.removeprefix("loop-")
            out = prog.console(f'use {number}\nps\nconsole\n__import__("threading").current_thread().name\n')
            assert f"using loop #{number}" in out and f"task-{name}" in out, out
            assert f"'{thread}'" in out
        prog.release("stop")
        assert prog.finish()[0] == 0

    def test_program_without_a_loop(self, tmp_path: Path, program: list[ConsoleProgram]) -> None:
        """Threads only: threads and locks answer; ps and console say they need a loop."""
        source = (
            WAIT_FOR_FILE
            + """
import threading
guard = threading.Lock()

def work():
    with guard:
        print("holding", flush=True)
        wait_for("stop")

t = threading.Thread(target=work, name="worker")
t.start()
t.join()
"""
        )
        prog = ConsoleProgram(tmp_path, source)
        program.append(prog)
        prog.wait_stdout("holding")
        out = prog.console("threads\nlocks\nps\nconsole\nloops\n")
        assert 'Thread "worker"' in out and "prog.py" in out
        assert re.search(r"prog\.py:\d+ \(Lock\): held by thread 'worker'", out), out
        assert "`ps` needs an event loop, and the program runs none right now" in out
        assert "`console` needs an event loop" in out
        assert "No event loop runs in the program right now" in out
        prog.release("stop")
        assert prog.finish()[0] == 0

    @pytest.mark.parametrize(
        "how", ["uvloop.run", "Runner(loop_factory=uvloop.new_event_loop)", "new_event_loop().run_until_complete"]
    )
    def test_uvloop(self, tmp_path: Path, program: list[ConsoleProgram], how: str) -> None:
        """uvloop (through uvloop.run or asyncio.Runner's loop_factory): found, listed, ps and console work."""
        pytest.importorskip("uvloop", reason="uvloop is not installed")
        run = {
            "uvloop.run": "uvloop.run(main())",
            "Runner(loop_factory=uvloop.new_event_loop)": (
                "with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:\n    runner.run(main())"
            ),
            # No Python frame of the loop on any stack: found through its tasks.
            "new_event_loop().run_until_complete": "uvloop.new_event_loop().run_until_complete(main())",
        }[how]
        source = f"""
import asyncio, os, uvloop

async def main():
    asyncio.current_task().set_name("uv-main")
    print("running", flush=True)
    while not os.path.exists("stop"):
        await asyncio.sleep(0.02)

{run}
"""
        prog = ConsoleProgram(tmp_path, source)
        program.append(prog)
        prog.wait_stdout("running")
        out = prog.console("loops\nps\nstacktrace\nconsole\ntype(asyncio.get_running_loop()).__module__\n")
        # conctools run's loop hooks see uvloop start in every form, so the loop's thread is known.
        assert re.search(r"\* #1\s+running\s+'MainThread'.*uvloop\.Loop", out), out
        assert "uv-main" in out and "'uvloop'" in out
        assert "prog.py" in out.split("conctools >>> stacktrace", 1)[1]
        prog.release("stop")
        assert prog.finish()[0] == 0

    def test_close_with_a_client_inside_console(self, tmp_path: Path, program: list[ConsoleProgram]) -> None:
        """The program ends while a client sits in `console`: it exits with its own status, the client is told."""
        source = """
import asyncio, os, sys

async def main():
    print("running", flush=True)
    while not os.path.exists("stop"):
        await asyncio.sleep(0.02)

asyncio.run(main())
sys.exit(5)
"""
        prog = ConsoleProgram(tmp_path, source, "--no-report")
        program.append(prog)
        prog.wait_stdout("running")
        client = prog.telnet()
        try:
            client.enter_console()
            prog.release("stop")
            status, _out, err = prog.finish(timeout=30)
            assert status == 5, err
            assert "the console closed" in client.read_to_end()
        finally:
            client.close()
        assert not prog.secret_path.exists()

    def test_forked_child_does_not_keep_the_port(self, tmp_path: Path, program: list[ConsoleProgram]) -> None:
        """A child forked by the program does not hold the console's port once the program ended."""
        source = (
            WAIT_FOR_FILE
            + """
import os
child = os.fork()
if child == 0:
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)  # let the test see the program's streams end with the program
    os.dup2(null, 2)
    wait_for("stop")
    os._exit(0)
print("forked", child, flush=True)
"""
        )
        prog = ConsoleProgram(tmp_path, source, "--no-report")
        program.append(prog)
        child = int(prog.wait_stdout(r"forked (\d+)").group(1))
        try:
            assert prog.finish()[0] == 0
            os.kill(child, 0)  # the child still runs
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", prog.port), timeout=10).close()
        finally:
            prog.release("stop")
            with contextlib.suppress(ChildProcessError, ProcessLookupError):
                os.kill(child, 9)

    def test_stderr_line_says_how_to_get_in(self, tmp_path: Path) -> None:
        """One line on stderr: the address, `conctools console PID`, telnet/nc, the secret file (not the secret)."""
        script = tmp_path / "quick.py"
        script.write_text("print('hello')\n")
        done = subprocess.run(
            [sys.executable, "-m", "conctools", "run", "--console", "--console-port", "0", "--no-report", str(script)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0 and done.stdout == "hello\n"
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        pid = re.search(r"\(pid (\d+)\)", lines[0])
        assert pid is not None and f"`conctools console {pid.group(1)}`" in lines[0]
        assert "or telnet/nc 127.0.0.1 " in lines[0] and ".secret first" in lines[0]


class TestRunConsoleErrors:
    """Bad console options: one line, exit 2, the program does not run."""

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--console", "--console-host", "0.0.0.0"], "--allow-remote-console"),
            (["--console", "--console-host", "10.1.2.3"], "refusing to open the console on non-loopback"),
            (["--console-port", "0"], "--console-port needs --console"),
            (["--allow-remote-console"], "--allow-remote-console needs --console"),
            (["--console", "--console-port", "70000"], "between 0 and 65535"),
        ],
    )
    def test_refused(self, tmp_path: Path, args: list[str], message: str) -> None:
        """A public host without --allow-remote-console, a console flag without --console, a bad port."""
        marker = tmp_path / "ran"
        script = tmp_path / "prog.py"
        script.write_text(f"open({str(marker)!r}, 'w').close()\n")
        done = subprocess.run(
            [sys.executable, "-m", "conctools", "run", *args, str(script)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and done.stderr.count("\n") == 1
        assert not marker.exists()

    def test_busy_port(self, tmp_path: Path) -> None:
        """A console port in use: one line, exit 2, the program does not run."""
        import socket

        marker = tmp_path / "ran"
        script = tmp_path / "prog.py"
        script.write_text(f"open({str(marker)!r}, 'w').close()\n")
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            done = subprocess.run(
                [sys.executable, "-m", "conctools", "run", "--console", "--console-port", str(port), str(script)],
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert done.returncode == 2 and "in use" in done.stderr and done.stderr.count("\n") == 1, done.stderr
        assert not marker.exists()

    def test_allow_remote_warns_and_needs_the_secret(self, tmp_path: Path, program: list[ConsoleProgram]) -> None:
        """--allow-remote-console on 0.0.0.0: the warning, then the secret is still required."""
        source = "import os, time\nprint('running', flush=True)\nwhile not os.path.exists('stop'): time.sleep(0.02)\n"
        prog = ConsoleProgram(tmp_path, source, "--console-host", "0.0.0.0", "--allow-remote-console", "--no-report")
        program.append(prog)
        prog.wait_stdout("running")
        prog.stderr.wait_for("reachable from the network")
        import socket

        with socket.create_connection(("127.0.0.1", prog.port), timeout=10) as sock:
            sock.sendall(b"threads\r\n")
            sock.settimeout(15)
            assert sock.recv(100) == b"conctools console: refused\r\n"
        assert "Thread" in prog.console("threads\n")
        prog.release("stop")
        assert prog.finish()[0] == 0


class TestAttach:
    """`conctools.console.attach()` in code, without `conctools run`."""

    def test_attach_without_a_loop_then_with_one(self) -> None:
        """Attached before any loop: thread commands work, ps needs a loop; a loop started later is followed."""
        console = attach(port=0)
        try:
            import os

            assert console.secret_path is not None and read_secret(console.secret_path)
            before = console_client(os.getpid(), "ps\nthreads\n")
            assert "`ps` needs an event loop" in before.stdout and 'Thread "MainThread"' in before.stdout
            started = threading.Event()
            stop = threading.Event()

            async def main() -> None:
                asyncio.current_task().set_name("late-loop-main")  # type: ignore[union-attr]
                started.set()
                while not stop.is_set():
                    await asyncio.sleep(0.02)

            thread = threading.Thread(target=asyncio.run, args=(main(),), name="late-loop")
            thread.start()
            try:
                assert started.wait(10)
                after = console_client(os.getpid(), "loops\nps\n")
                assert "* #1  running  'late-loop'" in after.stdout and "late-loop-main" in after.stdout
            finally:
                stop.set()
                thread.join(10)
        finally:
            console.close()
