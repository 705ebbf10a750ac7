"""Open the console: on a given loop (:func:`start`), or for the whole process, following
whichever loop the program runs (:func:`attach`, ``conctools run --console``)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from conctools._log import get_logger
from conctools._net import is_loopback
from conctools.console.access import ConsoleError
from conctools.console.monitor import DEFAULT_PORT, ConsoleMonitor
from conctools.recorder import Recorder

__all__ = ["attach", "console_for_run", "start"]

_log = get_logger("conctools.console")


def _check_host(host: str, port: int, allow_remote: bool, stacklevel: int) -> None:
    if is_loopback(host):
        return
    if not allow_remote:
        raise ConsoleError(
            f"refusing to open the console on non-loopback address {host!r}: it runs arbitrary Python; "
            "allow it explicitly with allow_remote=True (--allow-remote-console)"
        )
    message = (
        f"the conctools console on {host}:{port} runs arbitrary Python and is reachable from the network "
        "(it still asks for the secret)"
    )
    warnings.warn(message, RuntimeWarning, stacklevel=stacklevel + 1)
    _log.warning("conctools: %s", message)


def start(
    loop: asyncio.AbstractEventLoop,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    webui_port: int | None = None,
    console_port: int | None = None,
    allow_remote: bool = False,
    locals: dict[str, Any] | None = None,
    recorder: Recorder | None = None,
) -> ConsoleMonitor:
    """Open the console on ``loop`` (``ps``, ``where``, ``console`` use it; ``use N`` picks another).

    Only this user gets in: the console asks each connection for a secret that it writes to a
    0600 file in a private directory (see :mod:`conctools.console.access`); ``conctools console
    PID`` finds it. ``port=0`` picks a free port (``.port`` tells which). Raises
    :class:`ConsoleError` for a non-loopback ``host`` unless ``allow_remote`` (then it warns and
    still asks for the secret), and when it cannot listen. ``webui_port``: also serve aiomonitor's
    web UI there, behind the same secret (off by default). ``console_port`` is accepted for
    compatibility and unused: the REPL has no port. Stop it with ``close()`` (or ``await
    aclose()`` from a coroutine on ``loop``).
    """
    return _open(loop, host, port, webui_port, allow_remote, locals, recorder)


def attach(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    webui_port: int | None = None,
    allow_remote: bool = False,
    locals: dict[str, Any] | None = None,
    recorder: Recorder | None = None,
) -> ConsoleMonitor:
    """Open the console for this process, from any thread, with or without a running loop.

    The task commands follow whichever event loop the program runs (several loops: ``loops``
    lists them, ``use N`` picks one); the thread- and lock-level commands work without any.
    Same access rules and arguments as :func:`start`.

    >>> console = conctools.console.attach(port=0)   # doctest: +SKIP
    >>> print(console.where())                       # doctest: +SKIP
    conctools: console on 127.0.0.1:41234 (pid 4242): `conctools console 4242`, ...
    >>> console.close()                              # doctest: +SKIP
    """
    return _open(None, host, port, webui_port, allow_remote, locals, recorder)


def _open(
    loop: asyncio.AbstractEventLoop | None,
    host: str,
    port: int,
    webui_port: int | None,
    allow_remote: bool,
    locals: dict[str, Any] | None,
    recorder: Recorder | None,
) -> ConsoleMonitor:
    _check_host(host, port, allow_remote, stacklevel=3)
    monitor = ConsoleMonitor(loop, recorder=recorder, host=host, termui_port=port, webui_port=webui_port, locals=locals)
    monitor.start()
    return monitor


@contextlib.contextmanager
def console_for_run(
    host: str, port: int, *, allow_remote: bool = False, recorder: Recorder | None = None
) -> Iterator[ConsoleMonitor]:
    """``conctools run --console``: attach, say on stderr where it listens, close at the end."""
    monitor = attach(host, port, allow_remote=allow_remote, recorder=recorder)
    try:
        print(monitor.where(), file=sys.stderr, flush=True)
        yield monitor
    finally:
        monitor.close()
