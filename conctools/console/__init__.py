"""A live console on a running event loop: aiomonitor's commands plus conctools' own.

>>> console = start(loop, port=20101)   # doctest: +SKIP
$ telnet 127.0.0.1 20101                 # or: python -m aiomonitor.cli -p 20101
conctools >>> locks

Commands added to aiomonitor's (``help``, ``ps``, ``where``, ``cancel``, ``stacktrace``,
``console``, ...), each a small click command on aiomonitor's command group:

``locks``      the lock table (acquisitions, contentions, waits) and who holds / waits now
``deadlocks``  wait-for cycles and lock-order inversions found so far
``slow``       the slow-callback table, with the stack that blocked the loop
``threads``    every thread's stack, by name
``resources``  a psutil reading of the process now, and the sampler's summary
``profile``    ``profile start [--clock wall|cpu]``, ``profile stop``, ``profile top [N]``

Security: the console runs arbitrary Python in the process (aiomonitor's ``console``
command). :func:`start` binds 127.0.0.1 by default and refuses any non-loopback address
unless ``allow_remote=True`` (then it warns).

Closing: ``aiomonitor.Monitor.close()`` hangs forever when a client is inside ``console``.
Why: ``close()`` runs in the monitored loop's thread and blocks it in ``join()`` on the UI
thread; the UI thread, while tearing the session down, schedules the REPL server's shutdown
*onto the monitored loop* (``run_coroutine_threadsafe``) from a ``finally`` block and waits
for it, which can never run, and the task cancellation that ends the session has already
been consumed by then. This module's ``console`` command registers its REPL server with the
monitor; :meth:`ConsoleMonitor.close` closes those servers itself when it runs in (or
instead of) the monitored loop, so the UI thread has nothing left to wait for, and a second
cancellation bounds any other wait on the monitored loop. :meth:`ConsoleMonitor.aclose`
closes from a helper thread while the loop keeps running, the cleanest way from a coroutine.

This is a wiring module: it reads the recorder, the lock registry and the reporters.
"""

from __future__ import annotations

from conctools._net import is_loopback
from conctools.console import commands as _commands  # registers conctools' commands on aiomonitor's group
from conctools.console.launch import start
from conctools.console.monitor import (
    DEFAULT_CONSOLE_PORT,
    DEFAULT_PORT,
    DEFAULT_WEBUI_PORT,
    ConsoleError,
    ConsoleMonitor,
)

__all__ = [
    "DEFAULT_CONSOLE_PORT",
    "DEFAULT_PORT",
    "DEFAULT_WEBUI_PORT",
    "ConsoleError",
    "ConsoleMonitor",
    "is_loopback",
    "start",
]

del _commands
