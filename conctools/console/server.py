"""The console's listening socket and its gate: a connection gets a session only after it
passed :mod:`conctools.console.access`'s checks, and nothing (not even a prompt) is sent before.

The first line a client sends is ``SECRET [MODE]``. ``MODE`` is ``telnet`` (prompt_toolkit's
telnet session, as aiomonitor's), ``plain`` (lines in, text out: ``nc``) or ``script`` (plain,
echoing each command); without it a line ending in CR LF, as ``telnet`` sends, means
``telnet`` and a bare LF means ``plain``. Telnet option bytes before the line are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import struct
from typing import TYPE_CHECKING

from prompt_toolkit.contrib.telnet.server import TelnetConnection
from prompt_toolkit.input import create_pipe_input

from conctools._log import get_logger
from conctools.console.access import ConsoleError, FailureBrake, peer_uid, secret_matches
from conctools.console.plain import AsyncEvent
from conctools.console.session import interact_plain, interact_telnet

if TYPE_CHECKING:
    from conctools.console.monitor import ConsoleMonitor

__all__ = ["AUTH_TIMEOUT_S", "MODES", "ConsoleServer", "bind"]

_log = get_logger("conctools.console")

AUTH_TIMEOUT_S = 10.0  # a connection that sends no secret line within this is closed
NEGOTIATION_TIMEOUT_S = 5.0  # a telnet session whose client never answers the terminal-type question
MAX_UNAUTHENTICATED = 8  # connections waiting to authenticate at once; more are closed at once
MAX_LINE = 512
SEND_TIMEOUT_S = 10  # a telnet client that stops reading cannot block the console for longer
MODES = ("telnet", "plain", "script")
REFUSAL = b"conctools console: refused\r\n"
LINGER_S = 1.0  # how long a refused connection is read from before it is closed
_IAC, _SB, _SE = 255, 250, 240


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0: any free one); :class:`ConsoleError` if not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        listener = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ConsoleError(f"cannot open the console on {host}:{port}: {exc.strerror or exc}") from None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(16)
        listener.setblocking(False)
    except OSError as exc:
        listener.close()
        raise ConsoleError(f"cannot open the console on {host}:{port}: {exc.strerror or exc}") from None
    return listener


def _first_line(data: bytes) -> tuple[bytes, bytes, bool] | None:
    """``(line, bytes after it, ended by CR)`` once ``data`` holds a whole first line, else
    ``None``. Telnet commands before the end of the line are skipped."""
    line = bytearray()
    i = 0
    while i < len(data):
        b = data[i]
        if b == _IAC:
            if i + 1 >= len(data):
                return None
            cmd = data[i + 1]
            if cmd == _IAC:  # an escaped 255 byte
                line.append(_IAC)
                i += 2
            elif cmd == _SB:  # a subnegotiation, up to IAC SE
                end = data.find(bytes([_IAC, _SE]), i + 2)
                if end < 0:
                    return None
                i = end + 2
            elif 251 <= cmd <= 254:  # WILL, WONT, DO, DONT and their option
                if i + 2 >= len(data):
                    return None
                i += 3
            else:
                i += 2
            continue
        if b in (13, 10):
            by_cr = b == 13
            rest = data[i + 1 :]
            if by_cr and rest[:1] in (b"\n", b"\0"):
                rest = rest[1:]
            return bytes(line), rest, by_cr
        line.append(b)
        i += 1
        if len(line) > MAX_LINE:
            raise ValueError("the first line is too long")
    return None


class ConsoleServer:
    """Accepts connections on ``listener`` (on the console's loop) and admits the owner only."""

    def __init__(self, monitor: ConsoleMonitor, listener: socket.socket, secret: str, brake: FailureBrake) -> None:
        self.monitor = monitor
        self.listener = listener
        self._secret = secret
        self.brake = brake
        self.refusals = 0
        self._waiting = 0  # connections not yet authenticated
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start accepting (call on the console's loop)."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.listener, self._accept)

    async def close(self, timeout_s: float) -> None:
        """Stop accepting, end every session (each says goodbye), within ``timeout_s``."""
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.listener)
        self.listener.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)

    def _accept(self) -> None:
        try:
            conn, address = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            _log.warning("conctools console: accept failed: %s", exc)
            return
        peer = _peer_text(address)
        if self._waiting >= MAX_UNAUTHENTICATED:
            self._refuse(conn, peer, "too many connections waiting to authenticate", count=False)
            with contextlib.suppress(OSError):
                conn.close()
            return
        assert self._loop is not None
        task = self._loop.create_task(self._serve(conn, peer, address), name="conctools-console-session")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refuse(self, conn: socket.socket, peer: str, reason: str, *, count: bool = True) -> None:
        """Log the refusal and count it (the brake); the caller then turns the connection away."""
        if count:
            self.brake.failed()
            self.refusals += 1
        slowed = self.brake.penalty_s()
        note = f"; further attempts slowed down to one per {slowed:.2f} s" if slowed else ""
        _log.warning("conctools console: refused a connection from %s: %s%s", peer, reason, note)

    async def _turn_away(self, conn: socket.socket) -> None:
        """Send the refusal and close; what the client already sent is read first, since closing a
        socket with unread data resets the connection, and the client would lose the refusal."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            await asyncio.wait_for(loop.sock_sendall(conn, REFUSAL), LINGER_S)
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(LINGER_S):
                drained = 0
                while drained < 1 << 16:
                    chunk = await loop.sock_recv(conn, 4096)
                    if not chunk:
                        break
                    drained += len(chunk)

    async def _serve(self, conn: socket.socket, peer: str, address: object) -> None:
        try:
            conn.setblocking(False)
            self._waiting += 1
            try:
                admitted = await self._authenticate(conn, peer)
            finally:
                self._waiting -= 1
            if admitted is None:
                return
            mode, rest = admitted
            if mode == "telnet":
                await self._telnet(conn, address, rest)
            else:
                await self._plain(conn, peer, mode, rest)
        except asyncio.CancelledError:
            pass
        except Exception:
            _log.exception("conctools console: session with %s failed", peer)
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    async def _authenticate(self, conn: socket.socket, peer: str) -> tuple[str, bytes] | None:
        """``(mode, bytes after the secret line)`` for the owner; ``None`` once refused."""
        uid = peer_uid(conn)
        if uid is not None and uid != os.geteuid():
            # Told apart by the kernel, not by a guess: no need to slow the owner down for it.
            self._refuse(conn, peer, f"the connecting process belongs to another user (uid {uid})", count=False)
            await self._turn_away(conn)
            return None
        wait_s = self.brake.reserve_s()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        loop = asyncio.get_running_loop()
        data = b""
        try:
            async with asyncio.timeout(AUTH_TIMEOUT_S):
                while (found := _first_line(data)) is None:
                    chunk = await loop.sock_recv(conn, 256)
                    if not chunk:
                        raise ConnectionError("closed")
                    data += chunk
        except TimeoutError:
            self._refuse(conn, peer, f"no secret within {AUTH_TIMEOUT_S:.0f} s")
            await self._turn_away(conn)
            return None
        except ConnectionError:
            self._refuse(conn, peer, "closed before sending the secret")
            await self._turn_away(conn)
            return None
        except ValueError as exc:
            self._refuse(conn, peer, str(exc))
            await self._turn_away(conn)
            return None
        line, rest, by_cr = found
        words = line.split()
        given = words[0] if words else b""
        if not secret_matches(self._secret, given):
            self._refuse(conn, peer, "wrong or missing secret" if given else "no secret")
            await self._turn_away(conn)
            return None
        self.brake.succeeded()
        mode = words[1].decode("ascii", "replace").lower() if len(words) > 1 else ("telnet" if by_cr else "plain")
        if mode not in MODES:
            mode = "plain"
        _log.info("conctools console: %s got in (%s session)", peer, mode)
        return mode, rest

    async def _telnet(self, conn: socket.socket, address: object, rest: bytes) -> None:
        # prompt_toolkit's telnet connection sends with blocking send(): bound how long one may block.
        conn.setblocking(True)
        with contextlib.suppress(OSError, struct.error):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", SEND_TIMEOUT_S, 0))
        loop = asyncio.get_running_loop()
        with create_pipe_input() as vt100_input:
            connection = TelnetConnection(
                conn,
                address,  # type: ignore[arg-type]
                functools.partial(interact_telnet, self.monitor),
                None,  # type: ignore[arg-type]  # the server: only stored
                encoding="utf-8",
                style=None,
                vt100_input=vt100_input,
                enable_cpr=True,
            )
            connection._ready = AsyncEvent()  # its own is made by asyncio.Event, maybe a traced one
            if rest:
                connection.feed(rest)
            run = loop.create_task(connection.run_application(), name="conctools-console-telnet")
            try:
                await asyncio.wait_for(asyncio.shield(connection._ready.wait()), NEGOTIATION_TIMEOUT_S)
            except TimeoutError:
                run.cancel()
                with contextlib.suppress(BaseException):
                    await run
                with contextlib.suppress(OSError):
                    conn.send(
                        b"conctools console: no telnet negotiation; send 'SECRET plain' for a plain-text session\r\n"
                    )
                return
            try:
                await asyncio.shield(run)
            except asyncio.CancelledError:
                run.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(run, 2.0)
                raise
            except (EOFError, KeyboardInterrupt):
                pass

    async def _plain(self, conn: socket.socket, peer: str, mode: str, rest: bytes) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 16)
        if rest:
            reader.feed_data(rest)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=conn)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        try:
            await interact_plain(self.monitor, reader, writer, mode, peer)
        finally:
            writer.close()


def _peer_text(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in str(host) else f"{host}:{address[1]}"
    return str(address)
