"""A live console in a running program: aiomonitor's commands plus conctools' own, that only
the program's own user can open.

>>> console = conctools.console.attach()      # doctest: +SKIP  (or start(loop), or conctools run --console)
$ conctools console PID                       # finds the port and the secret, opens the session
conctools >>> locks

Commands added to aiomonitor's (``help``, ``ps``, ``where``, ``cancel``, ``stacktrace``,
``console``, ...), each a small click command on aiomonitor's command group:

``locks``      the lock table (acquisitions, contentions, waits) and who holds / waits now
``deadlocks``  wait-for cycles and lock-order inversions found so far
``slow``       the slow-callback table, with the stack that blocked the loop
``threads``    every thread's stack, by name
``resources``  a psutil reading of the process now, and the sampler's summary
``profile``    ``profile start [--clock wall|cpu]``, ``profile stop``, ``profile top [N]``
``gil``        CPU-bound threads and GIL waits (the running GIL monitor's, or a 1 s measurement)
``loops``      the program's event loops; ``use N`` picks the one ``ps``/``where``/``console`` use

Who gets in (:mod:`conctools.console.access`): aiomonitor listens on plain TCP where every
local user can reach it and run Python as the program's user (``console``), and its web UI
can cancel tasks unauthenticated. Here the console listens on loopback TCP (the telnet
workflow stays) behind a secret drawn at each start, written to a 0600 file in a 0700
directory that only the user can read; a connection must send it as its first line before
anything else, not even a prompt, is sent; on Linux another user's socket is refused even
with the secret. Refusals are logged on the ``conctools.console`` logger and slowed down.
A non-loopback address needs ``allow_remote=True`` (``--allow-remote-console``), warns, and
still asks for the secret. The REPL has no port at all (a socket pair), and the web UI is
off unless asked for, then behind the same secret.

Closing: ``aiomonitor.Monitor.close()`` hangs forever when a client is inside ``console``:
it joins its UI thread, which waits for the REPL server's shutdown on the monitored loop,
the very loop that close() blocks. Here nothing waits on the program's loop without a
bound: the REPL's socket pair is closed from the console's side, and the REPL ends when the
program's loop next runs (or with it). :meth:`ConsoleMonitor.close` returns within ~2 s
from any thread; :meth:`ConsoleMonitor.aclose` closes from a coroutine.

This is a wiring module: it reads the recorder, the lock registry and the reporters.
"""

from __future__ import annotations

from conctools import _lazy, _typing

if _typing.TYPE_CHECKING:
    from conctools._net import is_loopback
    from conctools.console.access import ConsoleError
    from conctools.console.launch import attach, start
    from conctools.console.monitor import DEFAULT_CONSOLE_PORT, DEFAULT_PORT, DEFAULT_WEBUI_PORT, ConsoleMonitor

# Imported on first use: `conctools console PID` (the client) needs neither aiomonitor nor prompt_toolkit.
_LAZY = {
    "is_loopback": "conctools._net",
    "ConsoleError": "conctools.console.access",
    "attach": "conctools.console.launch",
    "start": "conctools.console.launch",
    **dict.fromkeys(
        ("DEFAULT_CONSOLE_PORT", "DEFAULT_PORT", "DEFAULT_WEBUI_PORT", "ConsoleMonitor"), "conctools.console.monitor"
    ),
}


def __getattr__(name: str) -> _typing.Any:
    return _lazy.load(__name__, globals(), _LAZY, name)


def __dir__() -> list[str]:
    return _lazy.names(globals(), _LAZY)


__all__ = [
    "DEFAULT_CONSOLE_PORT",
    "DEFAULT_PORT",
    "DEFAULT_WEBUI_PORT",
    "ConsoleError",
    "ConsoleMonitor",
    "attach",
    "is_loopback",
    "start",
]
