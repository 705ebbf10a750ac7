"""Helpers shared by the console tests: a minimal telnet client, a program run under
``conctools run --console`` with its streams read as they come, and ``conctools console``."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IAC, DONT, DO, WONT, WILL, SB, SE = 255, 254, 253, 252, 251, 250, 240
TTYPE, NAWS = 24, 31
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Za-z0-9]|\x1b[=>]|\r")
REFUSAL = b"conctools console: refused\r\n"
WHERE = re.compile(
    r"console on (?P<host>\S+):(?P<port>\d+) \(pid (?P<pid>\d+)\).* the first line of (?P<path>\S+) first"
)


def read_secret(path: str | Path) -> str:
    """The secret in a console's secret file (its first line)."""
    return Path(path).read_text().splitlines()[0]


def recv_all(sock: socket.socket, timeout: float = 15.0) -> bytes:
    """Everything the peer sends until it closes (``AssertionError`` if it does not in time)."""
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"the connection was not closed; got {data!r}") from None
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


class TelnetClient:
    """A minimal telnet client that answers prompt_toolkit's TTYPE/NAWS negotiation and its
    cursor position requests; with ``secret``, it authenticates first (a CR LF line: telnet mode)."""

    def __init__(self, port: int, secret: str | None = None, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.text = ""
        self._pending = b""
        if secret is not None:
            self.sock.sendall(secret.encode() + b"\r\n")

    def _feed(self, data: bytes) -> None:
        data = self._pending + data
        self._pending = b""
        out = bytearray()
        i = 0
        while i < len(data):
            b = data[i]
            if b != IAC:
                out.append(b)
                i += 1
                continue
            if i + 1 >= len(data):
                self._pending = data[i:]
                break
            cmd = data[i + 1]
            if cmd in (DO, DONT, WILL, WONT):
                if i + 2 >= len(data):
                    self._pending = data[i:]
                    break
                opt = data[i + 2]
                if cmd == DO and opt == TTYPE:
                    self.sock.sendall(bytes([IAC, WILL, TTYPE]))
                elif cmd == DO and opt == NAWS:
                    self.sock.sendall(bytes([IAC, WILL, NAWS, IAC, SB, NAWS, 0, 200, 0, 50, IAC, SE]))
                i += 3
            elif cmd == SB:
                end = data.find(bytes([IAC, SE]), i)
                if end < 0:
                    self._pending = data[i:]
                    break
                if data[i + 2] == TTYPE:
                    self.sock.sendall(bytes([IAC, SB, TTYPE, 0]) + b"VT100" + bytes([IAC, SE]))
                i = end + 2
            else:
                i += 2
        for _ in range(bytes(out).count(b"\x1b[6n")):
            self.sock.sendall(b"\x1b[1;1R")
        self.text += _ANSI.sub("", out.decode("utf-8", "replace"))

    def read_until(self, marker: str, timeout: float = 15.0, start: int = 0) -> str:
        """Read until ``marker`` appears after offset ``start``; returns the text after ``start``."""
        deadline = time.monotonic() + timeout
        while marker not in self.text[start:]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{marker!r} not seen; got:\n{self.text[start:][-2000:]}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise AssertionError(f"connection closed before {marker!r}; got:\n{self.text[start:][-2000:]}")
            self._feed(data)
        return self.text[start:]

    def read_to_end(self, timeout: float = 15.0) -> str:
        """Read until the console closes the connection; returns everything read."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"the console did not close the connection; got:\n{self.text[-2000:]}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                return self.text
            if not data:
                return self.text
            self._feed(data)

    def command(self, line: str, expect: str, timeout: float = 15.0) -> str:
        """Type ``line`` + Enter; wait for ``expect`` and the next prompt; return the text."""
        mark = len(self.text)
        self.sock.sendall(line.encode() + b"\r")
        out = self.read_until(expect, timeout, mark)
        self.read_until("conctools >>>", timeout, mark + out.index(expect))
        return self.text[mark:]

    def enter_console(self) -> None:
        """``console``, then prove the REPL answers (keys typed before its prompt is up are dropped)."""
        mark = len(self.text)
        self.sock.sendall(b"console\r")
        self.read_until("Ctrl-D", start=mark)
        for _ in range(20):
            mark = len(self.text)
            self.sock.sendall(b"6 * 7\r")
            try:
                self.read_until("42", timeout=1.5, start=mark)
                return
            except AssertionError:
                continue
        raise AssertionError(f"the REPL never answered:\n{self.text[-1000:]}")

    def close(self) -> None:
        self.sock.close()


def console_client(
    pid: int | None, commands: str, *extra: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``conctools console [PID] [extra...]`` with ``commands`` on stdin (script mode)."""
    args = [sys.executable, "-m", "conctools", "console", *([str(pid)] if pid is not None else []), *extra]
    return subprocess.run(args, input=commands, capture_output=True, text=True, timeout=timeout, env=env)


class _Lines:
    """Collects a stream's lines in a thread so a test can wait for one without blocking forever."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True, name="test-reader")
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first line matching ``pattern`` (a regex), waiting for it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    match = regex.search(line)
                    if match is not None:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    raise AssertionError(f"no line matching {pattern!r}; got:\n{''.join(self.lines)[-3000:]}")
                self._cond.wait(remaining)

    def text(self) -> str:
        self._thread.join(30)
        return "".join(self.lines)


class ConsoleProgram:
    """``conctools run --console --console-port 0 [extra] script.py`` in a subprocess.

    The script waits for files the test creates (:meth:`release`) and prints marks on stdout
    (:meth:`wait_stdout`): every wait is on an event, never on time.
    """

    def __init__(self, tmp: Path, source: str, *extra: str, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.script = tmp / "prog.py"
        self.script.write_text(source)
        self.env = env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conctools", "run", "--console", "--console-port", "0", *extra, str(self.script)],
            cwd=tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.stdout = _Lines(self.proc.stdout)
        self.stderr = _Lines(self.proc.stderr)
        where = self.stderr.wait_for(WHERE.pattern)
        self.host = where.group("host")
        self.port = int(where.group("port"))
        self.pid = int(where.group("pid"))
        self.secret_path = Path(where.group("path"))

    def secret(self) -> str:
        return read_secret(self.secret_path)

    def wait_stdout(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        return self.stdout.wait_for(pattern, timeout)

    def release(self, name: str) -> None:
        (self.tmp / name).touch()

    def console(self, commands: str) -> str:
        """Run ``commands`` through ``conctools console PID``; returns its stdout (exit 0 asserted)."""
        done = console_client(self.pid, commands, env=self.env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def telnet(self) -> TelnetClient:
        client = TelnetClient(self.port, self.secret())
        client.read_until("conctools >>>")
        return client

    def finish(self, timeout: float = 60.0) -> tuple[int, str, str]:
        """Wait for the program to end: (exit status, stdout, stderr)."""
        try:
            status = self.proc.wait(timeout)
        finally:
            self.kill()
        return status, self.stdout.text(), self.stderr.text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


WAIT_FOR_FILE = '''
import os, time
def wait_for(name):
    """Wait until the test creates the file ``name`` (polls; the test never sleeps)."""
    while not os.path.exists(name):
        time.sleep(0.02)
'''
