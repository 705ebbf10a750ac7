"""The aiomonitor console with conctools' commands, driven over a real telnet socket."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conctools.console import ConsoleError, ConsoleMonitor, is_loopback, start
from conctools.recorder import Recorder
from tests._console_helpers import WHERE, TelnetClient, console_client, read_secret


@pytest.fixture(autouse=True)
def console_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test keeps its consoles' secret files in a private directory of its own."""
    path = tmp_path / "consoles"
    monkeypatch.setenv("CONCTOOLS_CONSOLE_DIR", str(path))
    return path


class LoopInThread:
    """An event loop running in its own thread, with the console started in it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="app-loop", daemon=True)
        self.thread.start()

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn`` in the loop's thread and return its result."""

        async def run() -> Any:
            return fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def app_loop() -> Iterator[LoopInThread]:
    """A running loop in a thread."""
    lt = LoopInThread()
    try:
        yield lt
    finally:
        lt.stop()


def _start(lt: LoopInThread, recorder: Recorder | None = None) -> tuple[ConsoleMonitor, int]:
    monitor = lt.call(start, lt.loop, port=0, recorder=recorder, locals={"answer": 42})
    return monitor, monitor.port


def _client(monitor: ConsoleMonitor) -> TelnetClient:
    """A telnet client that authenticated with the monitor's secret."""
    assert monitor.secret_path is not None
    return TelnetClient(monitor.port, read_secret(monitor.secret_path))


class TestSecurity:
    """The console binds loopback only unless told otherwise."""

    def test_is_loopback(self) -> None:
        """Loopback addresses and localhost are loopback; others are not."""
        assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
        assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.com")

    def test_non_loopback_refused(self) -> None:
        """A non-loopback host raises ConsoleError with a one-line message, no thread started."""
        loop = asyncio.new_event_loop()
        try:
            with pytest.raises(ConsoleError, match="allow_remote") as info:
                start(loop, host="0.0.0.0", port=0)
            assert "\n" not in str(info.value)
        finally:
            loop.close()

    def test_allow_remote_warns(self, app_loop: LoopInThread) -> None:
        """``allow_remote=True`` opens it anyway, with a warning."""
        with pytest.warns(RuntimeWarning, match="arbitrary Python"):
            monitor = app_loop.call(start, app_loop.loop, host="0.0.0.0", port=0, allow_remote=True)
        monitor.close()

    def test_serve_refuses_remote_console(self) -> None:
        """``conctools serve --console-host 0.0.0.0`` is a one-line error, exit 2."""
        proc = subprocess.run(
            [sys.executable, "-m", "conctools", "serve", "--port", "0", "--console-host", "0.0.0.0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "--allow-remote-console" in proc.stderr

    def test_busy_port_is_an_error_not_a_hang(self) -> None:
        """A telnet port already in use raises ConsoleError (aiomonitor would fail silently or hang)."""
        loop = asyncio.new_event_loop()
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            try:
                with pytest.raises(ConsoleError, match="in use"):
                    start(loop, port=port)
            finally:
                loop.close()


class TestServeConsole:
    """``conctools serve`` starts the console by default and stops everything on SIGTERM."""

    def test_serve_with_console_then_sigterm(self, tmp_path: Path) -> None:
        """The served app answers, the console (with the secret) shows its locks, SIGTERM writes the report."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "conctools", "serve", "--port", "0", "--console-port", "0",
             "--out", str(tmp_path), "--no-report"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().split("listening on ", 1)[1].split()[0]
            where = WHERE.search(proc.stdout.readline())
            assert where is not None and int(where.group("pid")) == proc.pid
            port = int(where.group("port"))
            with urllib.request.urlopen(url + "/counter", data=b"", timeout=10) as resp:
                assert json.loads(resp.read()) == {"count": 1}
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                raw.sendall(b"locks\r\n")  # no secret: refused, no prompt
                raw.settimeout(15)
                assert raw.recv(100) == b"conctools console: refused\r\n"
            client = TelnetClient(port, read_secret(where.group("path")))
            try:
                client.read_until("conctools >>>")
                client.command("locks", "Held or awaited now")
                client.command("ps", "Task ID")
            finally:
                client.close()
            through_cli = console_client(proc.pid, "locks\nps\n")
            assert through_cli.returncode == 0, through_cli.stderr
            assert "Held or awaited now" in through_cli.stdout and "Task ID" in through_cli.stdout
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert (tmp_path / "report.json").exists() and (tmp_path / "report.txt").exists()
        spans = json.loads((tmp_path / "report.json").read_text())["spans"]
        assert "POST /counter" in {s["name"] for s in spans}


def _wait_for_waiter(name: str) -> None:
    """Block until the wait registry shows someone waiting on the traced primitive ``name``."""
    from conctools import registry

    deadline = time.monotonic() + 10
    while not any(p.name == name and p.waiters for p in registry.primitives()):
        assert time.monotonic() < deadline, f"nobody waits on {name!r}"
        time.sleep(0.01)


async def _hold_a_lock() -> None:
    """On the app loop: task 'holder' keeps a traced lock for a while, task 'waiter' waits on it."""
    from conctools import aio

    lock = aio.Lock(name="held-in-test")
    release = asyncio.Event()

    async def holder() -> None:
        async with lock:
            await asyncio.wait_for(release.wait(), 8)

    async def waiter() -> None:
        async with lock:
            pass

    h = asyncio.create_task(holder(), name="holder")
    await asyncio.sleep(0.01)
    w = asyncio.create_task(waiter(), name="waiter")
    await asyncio.sleep(3)
    release.set()
    await asyncio.gather(h, w)


class TestCommands:
    """Every conctools command over a real telnet connection."""

    def test_an_error_in_the_consoles_loop_stays_the_consoles(
        self, app_loop: LoopInThread, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
    ) -> None:
        """An error in the console's own loop (a client's connection reset mid-session; here a raising
        callback) while a session sits at its prompt: nothing reaches the program's stdout, stderr or
        logging above DEBUG, and that session and later clients go on. prompt_toolkit made the loop's
        exception handler its own for each prompt: it printed "Unhandled exception in event loop" to the
        process's stdout and waited for ENTER on its stdin (a served app whose stdout nobody read blocked
        its console thread in that print: `conctools console PID` hung)."""
        monitor, _port = _start(app_loop)
        first = _client(monitor)
        try:
            first.read_until("conctools >>>")

            def boom() -> None:
                raise ConnectionResetError(104, "Connection reset by peer (a test)")

            with caplog.at_level(logging.INFO):
                monitor._ui_loop.call_soon_threadsafe(boom)
                first.command("locks", "Held or awaited now")  # the session still answers
                second = _client(monitor)  # and so does the next client
                try:
                    second.read_until("conctools >>>")
                    second.command("ps", "Task ID")
                finally:
                    second.close()
            out, err = capfd.readouterr()
            assert "Unhandled exception" not in out + err and "Connection reset" not in out + err
            assert not [r for r in caplog.records if "Connection reset" in r.getMessage() + str(r.exc_info)]
            assert "Unhandled exception" not in first.text + second.text
        finally:
            first.close()
            monitor.close()

    def test_every_command(self, app_loop: LoopInThread, recorder: Recorder) -> None:
        """help, locks, deadlocks, slow, threads, resources, profile start/top/stop all answer."""
        monitor, _port = _start(app_loop, recorder)
        client = _client(monitor)
        try:
            client.read_until("conctools >>>")
            help_text = client.command("help", "Commands")
            client.read_until("where", start=len(client.text) - len(help_text))
            for name in ("locks", "deadlocks", "slow", "threads", "resources", "profile", "ps", "console"):
                assert name in client.text
            client.command("locks", "Held or awaited now")
            holder_and_waiter = asyncio.run_coroutine_threadsafe(_hold_a_lock(), app_loop.loop)
            try:
                _wait_for_waiter("held-in-test")
                locks = client.command("locks", "waiting: task 'waiter'")
                assert "held-in-test (aio.Lock): held by task 'holder'" in locks
            finally:
                holder_and_waiter.result(10)
            client.command("deadlocks", "so far")
            from conctools.loopmon import LoopMonitor

            monitor_of_loop = LoopMonitor(app_loop.loop, threshold_s=0.05).start()
            try:
                app_loop.call(time.sleep, 0.2)  # a stall on the app loop
                deadline = time.monotonic() + 10
                while not recorder.snapshot().counts.get("slow_callback"):
                    assert time.monotonic() < deadline, "the stall was not recorded"
                    time.sleep(0.02)
                client.command("slow", "blocked 1 time")
            finally:
                monitor_of_loop.stop()
            threads = client.command("threads", 'Thread "conctools-console"')
            client.read_until('Thread "app-loop"', start=len(client.text) - len(threads))
            client.command("resources", "rss")
            client.command("profile start", "profiling every thread")
            client.command("profile top", "profile is running")
            client.command("profile stop", "profiled")
            client.command("profile stop", "no profile is running")
            client.command("ps", "Task ID")
        finally:
            client.close()
            monitor.close()


class TestClose:
    """Closing always completes, even with a client inside ``console``."""

    def test_close_without_clients(self, app_loop: LoopInThread) -> None:
        """close() with nobody connected returns promptly and stops the thread."""
        monitor, _ = _start(app_loop)
        started = time.monotonic()
        monitor.close()
        assert time.monotonic() - started < 5
        assert not any(t.name == "conctools-console" and t.is_alive() for t in threading.enumerate())

    # "stopped loop" leaves the REPL's task pending in a loop the test then closes: when the collector
    # finalizes its coroutine chain, CPython may close the outer coroutine while the inner one is being
    # finalized ("coroutine already executing", an unraisable error, seen once in CI). close() itself is
    # what is tested here; the noise is noted on issue 12 for the console.
    @pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
    @pytest.mark.parametrize("where", ["loop thread", "stopped loop", "other thread", "aclose"])
    def test_close_with_client_inside_console(self, where: str) -> None:
        """With a client in ``console``, close() completes in under 2 s from wherever it is called."""
        lt = LoopInThread()
        monitor, _port = _start(lt)
        client = _client(monitor)
        try:
            client.read_until("conctools >>>")
            client.enter_console()
            started = time.monotonic()
            if where == "loop thread":
                lt.call(monitor.close)
            elif where == "stopped loop":
                lt.loop.call_soon_threadsafe(lt.loop.stop)
                lt.thread.join(10)
                started = time.monotonic()
                monitor.close()
            elif where == "other thread":
                monitor.close()
            else:
                asyncio.run_coroutine_threadsafe(monitor.aclose(), lt.loop).result(10)
            elapsed = time.monotonic() - started
            assert elapsed < 2.0, f"close took {elapsed:.2f}s"
            assert monitor.closed
        finally:
            client.close()
            monitor.close()
            if lt.thread.is_alive():
                lt.stop()
            else:
                lt.loop.close()
        assert not any(t.name == "conctools-console" and t.is_alive() for t in threading.enumerate())
