"""``conctools top PID``: ask the agent every interval and redraw, like ``top`` and ``py-spy top``.

On a terminal it draws on the alternate screen, cut to the terminal's width, and reads keys
without waiting for Enter: ``q`` quits (Ctrl-C too); the terminal is restored however it ends.
When stdout is not a terminal it writes plain frames one after another (no escape sequences),
``--iterations N`` of them or until interrupted. The view itself is a pure reporter
(:func:`conctools.reporting.top_text.render_top`).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from conctools.agent.client import ask
from conctools.agent.location import AgentError
from conctools.console.access import _alive
from conctools.reporting.top_text import render_top

__all__ = ["run_top"]

_ENTER = "\x1b[?1049h\x1b[?25l"  # the alternate screen, cursor hidden
_LEAVE = "\x1b[?25h\x1b[?1049l"
_HOME_CLEAR = "\x1b[H\x1b[2J"


@contextlib.contextmanager
def _keys(stream: TextIO) -> Iterator[int | None]:
    """The terminal's file descriptor in cbreak mode (keys without Enter, no echo), restored after;
    ``None`` when ``stream`` is not a terminal."""
    try:
        fd = stream.fileno()
        interactive = os.isatty(fd)
    except (AttributeError, ValueError, OSError):
        interactive = False
    if not interactive:
        yield None
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _quit_pressed(fd: int | None, wait_s: float) -> bool:
    """Wait up to ``wait_s`` for a key; True for ``q``."""
    deadline = time.monotonic() + wait_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if fd is None:
            time.sleep(remaining)
            return False
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            key = os.read(fd, 1)
            if key in (b"q", b"Q") or not key:
                return True


def run_top(
    pid: int,
    *,
    interval_s: float = 1.0,
    iterations: int | None = None,
    timeout_s: float = 5.0,
    out: TextIO | None = None,
    keys: TextIO | None = None,
) -> int:
    """Show the view until ``q``, Ctrl-C, ``iterations`` frames or the process's end; the exit
    status (0). A process that cannot be asked at the start raises :class:`AgentError`."""
    out = out if out is not None else sys.stdout
    keys = keys if keys is not None else sys.stdin
    previous: dict[str, Any] | None = None
    doc = ask(pid, "top", timeout_s=timeout_s)  # before the screen changes: a failure is one plain line
    terminal = _isatty(out)
    shown = 0
    with _keys(keys) if terminal else contextlib.nullcontext() as fd:
        if terminal:
            out.write(_ENTER)
        try:
            while True:
                if terminal:
                    width = shutil.get_terminal_size().columns
                    out.write(_HOME_CLEAR + render_top(doc, previous, width=width, hint="   (q quits)"))
                else:
                    out.write(("\n" if shown else "") + render_top(doc, previous))
                out.flush()
                shown += 1
                if iterations is not None and shown >= iterations:
                    return 0
                if _quit_pressed(fd, interval_s):
                    return 0
                previous = doc
                try:
                    doc = ask(pid, "top", timeout_s=timeout_s)
                except AgentError:
                    if not _alive(pid):
                        if terminal:
                            out.write(_LEAVE)
                            terminal = False
                        print(f"conctools top: process {pid} has ended", file=sys.stderr)
                        return 0
                    raise
        except KeyboardInterrupt:
            return 0
        finally:
            if terminal:
                out.write(_LEAVE)
                out.flush()


def _isatty(stream: TextIO) -> bool:
    with contextlib.suppress(AttributeError, ValueError):  # no isatty, or closed
        return bool(stream.isatty())
    return False
