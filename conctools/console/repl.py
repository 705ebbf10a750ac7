"""The ``console`` command's Python REPL: aioconsole on the program's loop, reached through a
socket pair.

aiomonitor serves its REPL on a second TCP port (20103) that any local user could connect to
while a session is inside ``console``. Here the REPL has no listening socket at all: the
console makes a connected :func:`socket.socketpair`, gives one end to an aioconsole
``AsynchronousConsole`` started on the program's loop, and pumps the client's lines through
the other end. Nothing ever waits on the program's loop without a bound, so closing never
hangs (aiomonitor's ``Monitor.close()`` does, with a client inside ``console``): the console
closes its end, and the REPL sees end-of-file the next time the loop runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from typing import Any

from aioconsole import AsynchronousConsole  # type: ignore[import-untyped]

from conctools.console.plain import AsyncEvent

__all__ = ["REPL_TASK_NAME", "ReplChannel", "open_repl"]

REPL_TASK_NAME = "conctools-console-repl"
_BANNER = (
    "Python {version} REPL on the program's event loop (await works here).\n"
    "`program` is the program's __main__ module. Ctrl-D (or exit()) returns to the console.\n"
)
_ps1_users = [0]


class _Console(AsynchronousConsole):  # type: ignore[misc]
    """aioconsole's console that leaves when its task is cancelled: aioconsole swallows a
    cancellation that arrives while user code runs, which would keep ``asyncio.run`` waiting
    for this task at the program's end."""

    async def raw_input(self, prompt: str = "") -> str:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        line: str = await super().raw_input(prompt)
        return line


async def _serve(sock: socket.socket, locals: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
    """Run on the program's loop: one REPL over ``sock`` until end-of-file or cancellation."""
    reader, writer = await asyncio.open_connection(sock=sock)
    added_ps1 = not hasattr(sys, "ps1")
    _ps1_users[0] += 1
    try:
        console = _Console(streams=(reader, writer), locals=locals, loop=loop)
        banner = _BANNER.format(version=sys.version.split()[0])
        await console.interact(banner=banner, stop=False, handle_sigint=False)
    finally:
        _ps1_users[0] -= 1
        if added_ps1 and _ps1_users[0] == 0:
            # aioconsole sets sys.ps1/ps2, which some programs read as "interactive mode".
            for name in ("ps1", "ps2"):
                with contextlib.suppress(AttributeError):
                    delattr(sys, name)
        with contextlib.suppress(Exception):  # the loop may be closed already (it stopped with the REPL in it)
            writer.close()


class ReplChannel:
    """The console's end of a REPL: a stream pair on the console's loop, and the REPL's task."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, loop: asyncio.AbstractEventLoop):
        self.reader = reader
        self.writer = writer
        self.loop = loop

    def close(self) -> None:
        """Close our end: the REPL gets end-of-file when its loop next runs."""
        with contextlib.suppress(Exception):
            self.writer.close()

    def loop_gone(self) -> bool:
        """True when the program's loop can no longer run the REPL (closed)."""
        try:
            return bool(self.loop.is_closed())
        except Exception:
            return True


async def open_repl(loop: asyncio.AbstractEventLoop, locals: dict[str, Any], timeout_s: float) -> ReplChannel:
    """Start a REPL on the program's ``loop`` and connect to it from the running (console) loop.

    :class:`TimeoutError` when ``loop`` did not start it within ``timeout_s`` (it is blocked);
    :class:`RuntimeError` when ``loop`` is closed.
    """
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    here = asyncio.get_running_loop()
    started = AsyncEvent()

    def begin() -> None:  # on the program's loop: never raises into it
        try:
            loop.create_task(_serve(theirs, locals, loop), name=REPL_TASK_NAME)
        except Exception:
            theirs.close()
        with contextlib.suppress(RuntimeError):
            here.call_soon_threadsafe(started.set)

    try:
        loop.call_soon_threadsafe(begin)
    except RuntimeError:
        ours.close()
        theirs.close()
        raise
    try:
        await asyncio.wait_for(started.wait(), timeout_s)
    except TimeoutError:
        # begin() may still run later: the REPL then meets a closed peer and ends at once.
        ours.close()
        raise
    reader, writer = await asyncio.open_connection(sock=ours)
    return ReplChannel(reader, writer, loop)
