"""Start the console on a loop: checks the address, then starts :class:`ConsoleMonitor`."""

from __future__ import annotations

import asyncio
import logging
import socket
import warnings
from typing import Any

from conctools._net import is_loopback
from conctools.console.monitor import (
    DEFAULT_CONSOLE_PORT,
    DEFAULT_PORT,
    DEFAULT_WEBUI_PORT,
    ConsoleError,
    ConsoleMonitor,
)
from conctools.recorder import Recorder

__all__ = ["start"]

_log = logging.getLogger("conctools.console")


def _check_port_free(host: str, port: int) -> None:
    """prompt_toolkit's telnet server fails to bind silently (inside a task): check first."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise ConsoleError(f"cannot open the console on {host}:{port}: {exc.strerror or exc}") from None


def start(
    loop: asyncio.AbstractEventLoop,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    webui_port: int = DEFAULT_WEBUI_PORT,
    console_port: int = DEFAULT_CONSOLE_PORT,
    allow_remote: bool = False,
    locals: dict[str, Any] | None = None,
    recorder: Recorder | None = None,
) -> ConsoleMonitor:
    """Start aiomonitor on ``loop`` with conctools' commands; call it from the loop's thread.

    Raises :class:`ConsoleError` for a non-loopback ``host`` unless ``allow_remote`` (the
    console executes arbitrary Python); with ``allow_remote`` it warns instead. Stop it with
    ``close()`` (or ``await aclose()`` from a coroutine on ``loop``).
    """
    if not is_loopback(host):
        if not allow_remote:
            raise ConsoleError(
                f"refusing to open the console on non-loopback address {host!r}: it runs arbitrary Python; "
                "allow it explicitly with allow_remote=True (--allow-remote-console)"
            )
        message = f"the conctools console on {host}:{port} runs arbitrary Python and is reachable from the network"
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        _log.warning("conctools: %s", message)
    _check_port_free(host, port)
    monitor = ConsoleMonitor(
        loop,
        recorder=recorder,
        host=host,
        termui_port=port,
        webui_port=webui_port,
        console_port=console_port,
        locals=locals,
    )
    monitor.start()
    return monitor
