"""Ask a process's agent one question, or say in one line why not.

Every way this can fail is an :class:`~conctools.agent.AgentError` with one line a person can
act on, never a traceback and never a hang: no such process; another user's process; a process
without an agent (how to start it so that it has one); a stale socket nobody listens on; a
socket served by some other process; no answer within the timeout (a stopped process, or one
whose threads never let go of the GIL); an answer that is not the agent's JSON.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from conctools.agent.location import AgentError, agent_dir, check_socket, socket_path
from conctools.agent.process import program_words
from conctools.agent.protocol import DUMP_SCHEMA, HELLO_SCHEMA, MAX_REPLY_BYTES, TOP_SCHEMA
from conctools.console.access import ConsoleError
from conctools.console.client import check_own_process

__all__ = ["DEFAULT_TIMEOUT_S", "ask", "check_process", "command_of", "how_to_enable"]

DEFAULT_TIMEOUT_S = 10.0
_SCHEMAS = {"hello": HELLO_SCHEMA, "dump": DUMP_SCHEMA, "top": TOP_SCHEMA}


def check_process(pid: int) -> None:
    """:class:`AgentError` unless ``pid`` is a live process of this user."""
    try:
        check_own_process(pid, "dump it")
    except ConsoleError as exc:
        raise AgentError(str(exc)) from None


def command_of(pid: int) -> str:
    """The command line of ``pid`` as a person typed it (``?`` when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = [w.decode("utf-8", "replace") for w in f.read().split(b"\0") if w]
        return program_words(words) or "?"
    except OSError:
        return "?"


def how_to_enable(pid: int) -> str:
    """The one line for a process without an agent: how to start it so that ``dump`` works."""
    command = command_of(pid)
    line = (
        f"process {pid} ({command}) has no conctools agent: start it with `conctools run SCRIPT.py` "
        "(or `conctools run -m MODULE`), or call conctools.enable_dump() in it"
    )
    if hasattr(sys, "remote_exec"):
        line += f"; or load one now with `conctools dump --attach {pid}` (needs the rights to debug it)"
    return line


def _connect(pid: int, path: Path, timeout_s: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(max(0.05, timeout_s))
    try:
        sock.connect(os.fspath(path))
    except FileNotFoundError:
        sock.close()
        raise AgentError(how_to_enable(pid)) from None
    except ConnectionRefusedError:
        sock.close()
        raise AgentError(
            f"process {pid} has a stale conctools socket ({path}): nothing listens on it any more "
            "(the process that made it was killed, or this pid was reused)"
        ) from None
    except TimeoutError:
        sock.close()
        raise AgentError(f"process {pid} did not take the connection within {timeout_s:g} s") from None
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EAGAIN:  # the agent's backlog is full: it has stopped accepting
            raise AgentError(f"process {pid} is not answering (its agent accepts no more connections)") from None
        raise AgentError(f"cannot reach the agent of process {pid}: {exc.strerror or exc}") from None
    option = getattr(socket, "SO_PEERCRED", None)
    if option is not None:
        try:
            peer_pid, peer_uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, option, 12))
        except (OSError, struct.error):
            peer_pid, peer_uid = pid, os.geteuid()
        if peer_uid != os.geteuid():
            sock.close()
            raise AgentError(f"the conctools socket of process {pid} is served by another user (uid {peer_uid})")
        if peer_pid != pid:
            sock.close()
            raise AgentError(
                f"the conctools socket of process {pid} is served by process {peer_pid}: not trusting it "
                "(a stale socket whose pid was reused, or a fake)"
            )
    return sock


def _receive(sock: socket.socket, pid: int, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise AgentError(f"garbled answer from process {pid}: more than {MAX_REPLY_BYTES >> 20} MiB")


def ask(pid: int, question: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """The agent of ``pid``'s answer to ``question`` (``hello``, ``dump`` or ``top``), checked:
    its schema, its pid. :class:`AgentError` (one line) for anything else."""
    check_process(pid)
    try:
        path = socket_path(pid, agent_dir(create=False))
    except AgentError as exc:
        if str(exc).startswith("no conctools directory"):  # no agent of this user has ever run
            raise AgentError(how_to_enable(pid)) from None
        raise
    if not os.path.lexists(path):
        raise AgentError(how_to_enable(pid))
    check_socket(path)
    deadline = time.monotonic() + timeout_s
    sock = _connect(pid, path, timeout_s)
    try:
        sock.sendall(json.dumps({"ask": question}).encode() + b"\n")
        raw = _receive(sock, pid, deadline)
    except TimeoutError:
        raise AgentError(
            f"process {pid} did not answer within {timeout_s:g} s (it is stopped, or a thread holds the GIL "
            "and never lets go; py-spy dump can still read its stacks)"
        ) from None
    except ConnectionError as exc:
        raise AgentError(f"process {pid} closed the connection before answering ({exc.strerror or exc})") from None
    except OSError as exc:
        raise AgentError(f"cannot read the answer of process {pid}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    return _check(pid, question, raw)


def _check(pid: int, question: str, raw: bytes) -> dict[str, Any]:
    if not raw:
        raise AgentError(f"process {pid} closed the connection without answering")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AgentError(f"garbled answer from process {pid}: not JSON ({str(exc)[:80]})") from None
    if not isinstance(document, dict):
        raise AgentError(f"garbled answer from process {pid}: not a JSON object")
    error = document.get("error")
    if error is not None:
        raise AgentError(f"process {pid} answered with an error: {str(error)[:200]}")
    if document.get("schema") != _SCHEMAS[question]:
        schema = str(document.get("schema"))[:40]
        raise AgentError(f"garbled answer from process {pid}: schema {schema!r}, expected {_SCHEMAS[question]!r}")
    process = document.get("process")
    if not isinstance(process, dict) or process.get("pid") != pid:
        raise AgentError(f"garbled answer from process {pid}: it does not say it is process {pid}")
    return document
