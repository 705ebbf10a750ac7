"""``conctools console [PID | --port N]``: open the console of one of this user's processes.

It finds the console's port and secret in the user's private directory, sends the secret,
and then either drives a telnet session on the terminal (raw mode, window size, terminal
type: no ``stty`` dance, Ctrl-] leaves) or, when stdin is not a terminal, sends stdin's
lines as commands and prints the plain-text answers (for scripts and tests)::

    $ printf 'locks\\nthreads\\n' | conctools console 4242

Only the standard library: it needs neither aiomonitor nor prompt_toolkit.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import struct
import sys
import threading
from typing import BinaryIO

from conctools.console.access import ConsoleAddress, ConsoleError, find_consoles, read_secret

__all__ = ["EXIT_REFUSED", "check_own_process", "find_console", "run_client"]

EXIT_REFUSED = 1
_REFUSAL = b"conctools console: refused"
_IAC, _DONT, _DO, _WONT, _WILL, _SB, _SE = 255, 254, 253, 252, 251, 250, 240
_ECHO, _SGA, _TTYPE, _NAWS, _LINEMODE = 1, 3, 24, 31, 34
_QUIT = 0x1D  # Ctrl-]


def _owner_of(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def check_own_process(pid: int, action: str = "open its console") -> None:
    """:class:`ConsoleError` unless ``pid`` is a live process of this user (``action`` says what
    only its owner may do: ``"dump it"``)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise ConsoleError(f"no process {pid}") from None
    except PermissionError:
        raise ConsoleError(f"process {pid} belongs to another user: only its owner can {action}") from None
    owner = _owner_of(pid)
    if owner is not None and owner != os.geteuid():
        raise ConsoleError(f"process {pid} belongs to another user: only its owner can {action}")


def find_console(pid: int | None = None, port: int | None = None) -> ConsoleAddress:
    """The console to open; :class:`ConsoleError` with a one-line reason when there is none."""
    if pid is not None:
        check_own_process(pid)
    found = find_consoles(pid=pid, port=port)
    if len(found) == 1:
        return found[0]
    if not found:
        if pid is not None:
            on = f" on port {port}" if port is not None else ""
            raise ConsoleError(
                f"process {pid} has no conctools console{on} "
                "(start it with `conctools run --console` or conctools.console.attach())"
            )
        if port is not None:
            raise ConsoleError(f"no conctools console of yours listens on port {port}")
        raise ConsoleError("no conctools console of yours is running")
    listed = ", ".join(f"pid {a.pid} port {a.port}" for a in found)
    raise ConsoleError(f"several consoles ({listed}): name one with PID and/or --port N")


def _connect(address: ConsoleAddress, host: str) -> socket.socket:
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    try:
        sock = socket.create_connection((host, address.port), timeout=10)
    except OSError as exc:
        raise ConsoleError(f"cannot reach the console of pid {address.pid} on {host}:{address.port}: {exc}") from None
    sock.settimeout(None)
    return sock


def run_client(
    pid: int | None = None,
    port: int | None = None,
    *,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    terminal: bool | None = None,
) -> int:
    """Open the console and run the session; returns the exit status (1: refused)."""
    address = find_console(pid, port)
    secret, host = read_secret(address.path)
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout.buffer
    if terminal is None:
        terminal = _isatty(stdin) and _isatty(stdout)
    sock = _connect(address, host)
    try:
        if terminal:
            sock.sendall(f"{secret} telnet\r\n".encode())
            return _TerminalSession(sock, stdin, stdout).run()
        sock.sendall(f"{secret} script\n".encode())
        return _script_session(sock, stdin, stdout, address)
    finally:
        sock.close()


def _isatty(stream: BinaryIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _refused(address: ConsoleAddress) -> int:
    print(f"conctools console: the console of pid {address.pid} refused the connection", file=sys.stderr)
    return EXIT_REFUSED


def _script_session(sock: socket.socket, stdin: BinaryIO, stdout: BinaryIO, address: ConsoleAddress) -> int:
    """Send stdin's lines, end with a half-close, print what comes back until the console closes."""

    def send_lines() -> None:
        try:
            while True:
                line = stdin.readline()
                if not line:
                    break
                sock.sendall(line if line.endswith(b"\n") else line + b"\n")
        except OSError:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send_lines, name="conctools-console-client", daemon=True)
    sender.start()
    head = _read_more(sock, len(_REFUSAL))  # the greeting, or the refusal
    if not head or head.startswith(_REFUSAL):
        return _refused(address)
    stdout.write(head)
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            break
        stdout.write(data)
        stdout.flush()
    stdout.flush()
    return 0


def _read_more(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        try:
            chunk = sock.recv(n - len(out))
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


class _TerminalSession:
    """A telnet client for prompt_toolkit's server on the user's own terminal."""

    def __init__(self, sock: socket.socket, stdin: BinaryIO, stdout: BinaryIO) -> None:
        self.sock = sock
        self.in_fd = stdin.fileno()
        self.out_fd = stdout.fileno()
        self._pending = b""
        self._resized = False
        self._got_anything = False

    def run(self) -> int:
        import termios
        import tty

        saved = termios.tcgetattr(self.in_fd)
        previous = signal.signal(signal.SIGWINCH, self._on_resize) if hasattr(signal, "SIGWINCH") else None
        try:
            tty.setraw(self.in_fd)
            return self._loop()
        finally:
            termios.tcsetattr(self.in_fd, termios.TCSADRAIN, saved)
            if previous is not None:
                signal.signal(signal.SIGWINCH, previous)
            os.write(self.out_fd, b"\r\n")

    def _on_resize(self, signum: int, frame: object) -> None:
        self._resized = True

    def _loop(self) -> int:
        with selectors.DefaultSelector() as selector:
            selector.register(self.sock, selectors.EVENT_READ)
            selector.register(self.in_fd, selectors.EVENT_READ)
            while True:
                if self._resized:
                    self._resized = False
                    self._send_size()
                for key, _ in selector.select(0.5):
                    if key.fileobj is self.sock:
                        data = self.sock.recv(65536)
                        if not data:
                            return 0 if self._got_anything else EXIT_REFUSED
                        if not self._got_anything and data.startswith(_REFUSAL):
                            os.write(self.out_fd, data.replace(b"\r\n", b"") + b"\r\n")
                            return EXIT_REFUSED
                        self._got_anything = True
                        self._feed(data)
                    else:
                        data = os.read(self.in_fd, 1024)
                        if not data or _QUIT in data:
                            return 0
                        self.sock.sendall(data.replace(bytes([_IAC]), bytes([_IAC, _IAC])))

    def _send_size(self) -> None:
        try:
            import fcntl
            import termios

            rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(self.out_fd, termios.TIOCGWINSZ, b"\0" * 8))
        except OSError:
            rows, cols = 24, 80
        size = struct.pack(">HH", cols, rows).replace(bytes([_IAC]), bytes([_IAC, _IAC]))
        self.sock.sendall(bytes([_IAC, _SB, _NAWS]) + size + bytes([_IAC, _SE]))

    def _feed(self, data: bytes) -> None:
        data = self._pending + data
        self._pending = b""
        out = bytearray()
        i = 0
        while i < len(data):
            b = data[i]
            if b != _IAC:
                out.append(b)
                i += 1
                continue
            if i + 1 >= len(data):
                self._pending = data[i:]
                break
            cmd = data[i + 1]
            if cmd == _IAC:
                out.append(_IAC)
                i += 2
            elif cmd in (_DO, _DONT, _WILL, _WONT):
                if i + 2 >= len(data):
                    self._pending = data[i:]
                    break
                self._negotiate(cmd, data[i + 2])
                i += 3
            elif cmd == _SB:
                end = data.find(bytes([_IAC, _SE]), i)
                if end < 0:
                    self._pending = data[i:]
                    break
                if data[i + 2 : i + 4] == bytes([_TTYPE, 1]):  # SEND: tell our terminal type
                    term = os.environ.get("TERM", "xterm").encode("ascii", "replace")
                    self.sock.sendall(bytes([_IAC, _SB, _TTYPE, 0]) + term + bytes([_IAC, _SE]))
                i = end + 2
            else:
                i += 2
        if out:
            os.write(self.out_fd, bytes(out))

    def _negotiate(self, cmd: int, option: int) -> None:
        if cmd == _DO:
            if option in (_TTYPE, _NAWS):
                self.sock.sendall(bytes([_IAC, _WILL, option]))
                if option == _NAWS:
                    self._send_size()
            else:
                self.sock.sendall(bytes([_IAC, _WONT, option]))  # LINEMODE and the rest: no
        elif cmd == _WILL:
            reply = _DO if option in (_ECHO, _SGA) else _DONT
            self.sock.sendall(bytes([_IAC, reply, option]))
