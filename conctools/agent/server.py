"""The agent: a ``conctools-agent`` thread that answers ``conctools dump``, ``top`` and ``ps``.

It listens on a Unix socket that only the process's user can reach (see
:mod:`conctools.agent.location`), checks each peer's user with the kernel (``SO_PEERCRED``),
reads one question from a fixed list and answers it (:mod:`conctools.agent.protocol`). One
connection at a time, each bounded in time and size; between connections the thread sleeps in
``epoll`` (no polling). Because it is a thread of its own it answers while every other thread is
blocked, and because it only reads (copies of the registry, frames, tasks) it cannot change,
block or break the program. An answer that fails to build is an error reply, never an exception
into the program.

Lifetime: :func:`enable_dump` starts one agent per process (idempotent); it closes at exit
(``atexit``) and removes its socket. A forked child does not inherit it: the child closes its
copy of the listening socket, and the parent keeps answering. A process killed without exiting
leaves a stale socket that the next agent removes, and that clients recognise.
"""

from __future__ import annotations

import _thread
import atexit
import contextlib
import os
import selectors
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from conctools._context import internal_thread
from conctools._imports import import_in_background
from conctools._log import get_logger
from conctools._typing import Any
from conctools.agent.location import MAX_SOCKET_PATH, AgentError, agent_dir, remove_stale
from conctools.agent.protocol import MAX_REQUEST_BYTES, encode, parse_request
from conctools.recorder import Recorder, get_recorder

__all__ = ["THREAD_NAME", "DumpAgent", "agent_while", "current_agent", "enable_dump"]

_log = get_logger("conctools.agent")

THREAD_NAME = "conctools-agent"
_READ_TIMEOUT_S = 2.0  # a client must send its question this fast
_WRITE_TIMEOUT_S = 10.0  # and take the answer at least this fast: a stuck reader cannot hold the agent
_SEND = getattr(socket, "MSG_NOSIGNAL", 0)


def _peer_credentials(conn: socket.socket) -> tuple[int, int] | None:
    """``(pid, uid)`` of the connected peer, from the kernel (Linux); ``None`` elsewhere."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", raw)
    except (OSError, struct.error):
        return None
    return pid, uid


class DumpAgent:
    """The agent of this process (use :func:`enable_dump`; one per process).

    ``path`` is its socket; ``close()`` stops it and removes the socket. ``answer(question)``
    builds the reply document in the caller's thread (the same the socket would send).
    """

    def __init__(self, recorder: Recorder | None = None) -> None:
        self.recorder = recorder
        self.pid = os.getpid()
        self.path: Path | None = None
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._closing = False
        self.answered = 0

    @property
    def running(self) -> bool:
        """True while the agent thread serves."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._closing

    def start(self) -> DumpAgent:
        """Listen and start the ``conctools-agent`` thread; :class:`AgentError` when it cannot."""
        directory = agent_dir(create=True)
        remove_stale(directory)
        final = directory / f"dump-{self.pid}.sock"
        if len(os.fsencode(final)) > MAX_SOCKET_PATH:
            raise AgentError(
                f"the socket path {final} is too long for a Unix socket: set CONCTOOLS_CONSOLE_DIR shorter"
            )
        # Bound under a private name, made 0600, listening, then renamed into place: a client never
        # finds the socket half-made, and nobody else could reach it in between (the directory is 0700).
        # (os.urandom(4).hex() is secrets.token_hex(4), without importing secrets at start-up.)
        temporary = directory / f".dump-{self.pid}-{os.urandom(4).hex()}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(os.fspath(temporary))
            os.chmod(temporary, 0o600)
            listener.listen(8)
            os.replace(temporary, final)
        except OSError as exc:
            listener.close()
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise AgentError(f"cannot listen on {final}: {exc.strerror or exc}") from None
        listener.setblocking(False)
        self._listener = listener
        self.path = final
        self._wake_r, self._wake_w = os.pipe()
        self._thread = internal_thread(self._serve, THREAD_NAME)
        self._thread.start()
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop answering, remove the socket and wait for the thread (idempotent)."""
        if self._closing:
            return
        self._closing = True
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        if self.path is not None and os.getpid() == self.pid:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        self._release()

    def _release(self) -> None:
        """Close the sockets and the wake pipe (not the socket file: see :meth:`close`)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = -1

    def forget_after_fork(self) -> None:
        """In a forked child: close the inherited descriptors, leave the parent's socket alone."""
        self._closing = True
        self._thread = None
        self._release()

    # ---- the thread ----
    def _serve(self) -> None:
        listener = self._listener
        if listener is None:
            return
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(listener, selectors.EVENT_READ)
                selector.register(self._wake_r, selectors.EVENT_READ)
                # The answers' imports wait until the program has run for _PRELOAD_AFTER_S, or the first
                # question: a short program (most of a test suite's runs) never pays for them.
                preload_at: float | None = time.monotonic() + _PRELOAD_AFTER_S
                while not self._closing:
                    timeout = None if preload_at is None else max(0.0, preload_at - time.monotonic())
                    ready = selector.select(timeout)
                    if preload_at is not None and (not ready or time.monotonic() >= preload_at):
                        preload_at = None
                        _preload()
                    for key, _ in ready:
                        if key.fileobj is listener and not self._closing:
                            if preload_at is not None:
                                preload_at = None
                                _preload()
                            self._accept(listener)
        except Exception:
            if not self._closing:
                _log.exception("conctools: the dump agent stopped")

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            _log.debug("conctools: agent accept failed", exc_info=True)
            return
        with conn:
            try:
                self._converse(conn)
            except Exception:
                _log.debug("conctools: agent conversation failed", exc_info=True)

    def _converse(self, conn: socket.socket) -> None:
        conn.setblocking(True)
        try:  # read first, whoever it is: a socket closed with its request unread resets the answer
            line: bytes | None = self._read_line(conn)
            problem = ""
        except ValueError as exc:
            line, problem = None, str(exc)
        peer = _peer_credentials(conn)
        if peer is not None and peer[1] != os.geteuid():
            _log.warning("conctools: dump agent refused pid %d of another user (uid %d)", peer[0], peer[1])
            self._send(conn, {"error": "refused: only the process's own user may ask"})
            return
        try:
            if line is None:
                raise ValueError(problem)
            question = parse_request(line)
        except ValueError as exc:
            self._send(conn, {"error": str(exc)})
            return
        self._send(conn, self.answer(question))
        self.answered += 1

    @staticmethod
    def _read_line(conn: socket.socket) -> bytes:
        deadline = time.monotonic() + _READ_TIMEOUT_S
        data = b""
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ValueError("no question within the time allowed")
            conn.settimeout(remaining)
            try:
                chunk = conn.recv(MAX_REQUEST_BYTES)
            except TimeoutError:
                raise ValueError("no question within the time allowed") from None
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REQUEST_BYTES:
                raise ValueError("the request is too long")
        return data.split(b"\n", 1)[0]

    @staticmethod
    def _send(conn: socket.socket, document: Any) -> None:
        conn.settimeout(_WRITE_TIMEOUT_S)
        payload = encode(document)
        view = memoryview(payload)
        while view:
            sent = conn.send(view[: 1 << 20], _SEND)
            view = view[sent:]

    # ---- answers ----
    def answer(self, question: str) -> dict[str, Any]:
        """The reply document to ``question`` (``hello``, ``dump`` or ``top``); never raises."""
        from conctools.agent import dump

        recorder = self.recorder if self.recorder is not None else get_recorder()
        builders = {"hello": dump.build_hello, "dump": dump.build_dump, "top": dump.build_top}
        builder = builders.get(question)
        if builder is None:
            return {"error": f"unknown question {question!r}"}
        try:
            return builder(recorder)
        except Exception as exc:
            _log.debug("conctools: agent answer to %r failed", question, exc_info=True)
            return {"error": f"the {question} failed inside the process: {type(exc).__name__}: {exc}"}


# How long the agent waits before it imports what its answers need (unless asked first). The imports
# take ~40 ms of the GIL from the program (issue 12: a 1-3 s program paid 1.5-4% of its run for them);
# a person asks for a dump seconds into a run at the earliest, and an answer imports what it lacks.
_PRELOAD_AFTER_S = 3.0


def _preload() -> None:
    """Import what the answers need, in the agent's thread, _PRELOAD_AFTER_S after it started or
    before its first answer, whichever comes first: from then on the agent never imports while it
    answers, so a program thread stuck inside an import cannot block it. (Deferred from the
    start for issue 12's start-up target: an empty script's run ends long before.)"""
    try:
        import_in_background(_PRELOADED)
    except Exception:  # the answer imports what it needs itself
        _log.debug("conctools: the agent could not preload its answers' modules", exc_info=True)
    try:
        import_in_background(["psutil"])
    except ImportError:  # the CPU and memory figures say they are unknown
        pass


# Modules the answers import, some from inside functions: the lock ordinals of the deadlock graph,
# the events' str(), the JSON cleaner for NaN.
_PRELOADED = (
    "conctools._lockname",
    "conctools.agent.dump",
    "conctools.deadlock",
    "conctools.reporting",
    "conctools.reporting.jsonreport",
    "conctools.reporting.summary",
)


_agent_lock = _thread.allocate_lock()
_agent: list[DumpAgent | None] = [None]


def current_agent() -> DumpAgent | None:
    """The running agent of this process, if any."""
    agent = _agent[0]
    return agent if agent is not None and agent.pid == os.getpid() and agent.running else None


def enable_dump(recorder: Recorder | None = None) -> DumpAgent:
    """Let ``conctools dump PID``, ``conctools top PID`` and ``conctools ps`` look inside this
    process: start its agent (once; later calls return the same one).

    The agent reads ``recorder`` (the current one when ``None``, as it is when asked), answers
    only this user and never runs code. It stops at exit, or with ``close()``. Raises
    :class:`~conctools.agent.AgentError` when it cannot listen (an unsafe directory).

    >>> agent = conctools.enable_dump()    # doctest: +SKIP
    >>> agent.path                         # doctest: +SKIP
    PosixPath('/run/user/1000/conctools/dump-4242.sock')
    """
    with _agent_lock:
        agent = current_agent()
        if agent is not None:
            if recorder is not None:
                agent.recorder = recorder
            return agent
        agent = DumpAgent(recorder).start()
        _agent[0] = agent
        return agent


@contextlib.contextmanager
def agent_while(recorder: Recorder | None = None) -> Iterator[DumpAgent | None]:
    """An agent for the block (``conctools run``, ``conctools serve``): started on entry, closed on
    exit. A failure to start is one line on stderr and no agent, never the program's end."""
    try:
        agent: DumpAgent | None = enable_dump(recorder)
    except AgentError as exc:
        try:
            print(f"conctools: no dump agent: {exc}", file=sys.stderr, flush=True)
        except Exception:
            pass
        agent = None
    try:
        yield agent
    finally:
        if agent is not None:
            agent.close()


def _close_at_exit() -> None:
    agent = current_agent()
    if agent is not None:
        agent.close(timeout_s=1.0)


def _after_fork_in_child() -> None:
    global _agent_lock
    _agent_lock = _thread.allocate_lock()  # a lock held by another thread at fork stays held: start afresh
    agent = _agent[0]
    _agent[0] = None
    if agent is not None:
        agent.forget_after_fork()


atexit.register(_close_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
