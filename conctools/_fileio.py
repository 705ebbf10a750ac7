"""``open()`` whose file reads and writes can be timed: blocking file calls on an event loop's thread.

A file read goes from ``TextIOWrapper`` / ``BufferedReader`` (C) down to ``FileIO.read``: none of
them can be patched, but ``io.FileIO`` can be subclassed. :func:`open_file` is ``open()`` with
the same arguments, checks and result types (``TextIOWrapper`` over a ``Buffered*`` over a raw
file), whose raw file is a :class:`TimedFileIO`, a ``FileIO`` subclass whose ``read``,
``readinto``, ``readall`` and ``write`` the loop monitor wraps (``set_hooks``) when
``detect_blocking`` is on. Off an event loop's thread it is the builtin ``open`` itself.
"""

from __future__ import annotations

import io
import os
from asyncio.events import _get_running_loop
from collections.abc import Callable
from typing import Any

__all__ = ["TimedFileIO", "open_file", "set_hooks"]

_real_open = io.open
_METHODS = ("read", "readinto", "readall", "write")


class TimedFileIO(io.FileIO):
    """``io.FileIO`` whose reads and writes the loop monitor times (see :func:`set_hooks`)."""


def set_hooks(wrap: Callable[[str, Callable[..., Any]], Callable[..., Any]]) -> None:
    """Route ``TimedFileIO``'s reads and writes through ``wrap(call_name, FileIO_method)``."""
    for name in _METHODS:
        setattr(TimedFileIO, name, wrap(f"file.{name}", getattr(io.FileIO, name)))


def open_file(
    file: Any,
    mode: str = "r",
    buffering: int = -1,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    closefd: bool = True,
    opener: Callable[[str, int], int] | None = None,
) -> Any:
    """``open()``, with a :class:`TimedFileIO` as the raw file when called on an event loop's thread."""
    args = (file, mode, buffering, encoding, errors, newline, closefd, opener)
    if _get_running_loop() is None:
        return _real_open(*args)
    # Anything unusual goes to the builtin, which checks its arguments before it opens anything.
    if not isinstance(mode, str) or not isinstance(buffering, int) or isinstance(file, (int, bool)):
        return _real_open(*args)
    modes = set(mode)
    if modes - set("axrwb+t") or len(mode) > len(modes):
        return _real_open(*args)
    creating, reading, writing, appending = ("x" in modes, "r" in modes, "w" in modes, "a" in modes)
    updating, text, binary = "+" in modes, "t" in modes, "b" in modes
    if (text and binary) or creating + reading + writing + appending != 1:
        return _real_open(*args)
    if binary and (encoding is not None or errors is not None or newline is not None or buffering == 1):
        return _real_open(*args)
    if not binary and buffering == 0:
        return _real_open(*args)
    try:
        path = os.fspath(file)
    except TypeError:
        return _real_open(*args)
    rawmode = "".join(c for c, on in (("x", creating), ("r", reading), ("w", writing), ("a", appending)) if on)
    raw = TimedFileIO(path, rawmode + ("+" if updating else ""), closefd, opener=opener)
    result: Any = raw
    try:
        line_buffering = False
        if buffering == 1 or (buffering < 0 and raw.isatty()):
            buffering = -1
            line_buffering = True
        if buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
            try:
                size = os.fstat(raw.fileno()).st_blksize
            except (OSError, AttributeError):
                pass
            else:
                if size > 1:
                    buffering = size
        if buffering == 0:
            return raw
        buffer: Any
        if updating:
            buffer = io.BufferedRandom(raw, buffering)
        elif creating or writing or appending:
            buffer = io.BufferedWriter(raw, buffering)
        else:
            buffer = io.BufferedReader(raw, buffering)
        result = buffer
        if binary:
            return buffer
        wrapper = io.TextIOWrapper(buffer, io.text_encoding(encoding), errors, newline, line_buffering)
        result = wrapper
        wrapper.mode = mode  # type: ignore[misc]
        return wrapper
    except BaseException:
        result.close()
        raise
