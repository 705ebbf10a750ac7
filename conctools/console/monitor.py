"""aiomonitor's :class:`~aiomonitor.monitor.Monitor` with conctools' commands and a close that
always returns (see :mod:`conctools.console`)."""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import logging
from typing import Any

from aiomonitor.monitor import Monitor

from conctools._context import internal_thread
from conctools.recorder import Recorder, get_recorder

__all__ = [
    "CLOSE_TIMEOUT_S",
    "DEFAULT_CONSOLE_PORT",
    "DEFAULT_PORT",
    "DEFAULT_WEBUI_PORT",
    "ConsoleError",
    "ConsoleMonitor",
]

_log = logging.getLogger("conctools.console")

DEFAULT_PORT = 20101  # aiomonitor's telnet UI
DEFAULT_WEBUI_PORT = 20102
DEFAULT_CONSOLE_PORT = 20103  # aiomonitor's Python REPL (reached through the ``console`` command)
CLOSE_TIMEOUT_S = 1.2  # every wait while closing is bounded: close() returns within 2 s


class ConsoleError(Exception):
    """The console cannot start as asked (a non-loopback host without ``allow_remote``)."""


class ConsoleMonitor(Monitor):  # type: ignore[misc]
    """aiomonitor's :class:`~aiomonitor.monitor.Monitor` with conctools commands and a close
    that always returns (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, recorder: Recorder | None = None, **kwargs: Any) -> None:
        super().__init__(loop, **kwargs)
        self.prompt = "conctools >>> "
        self.recorder = recorder
        self.profile_session: Any = None
        self._ui_thread.name = "conctools-console"
        self._repl_servers: set[asyncio.AbstractServer] = set()
        self._servers_lock = _thread.allocate_lock()  # a plain lock: conctools' own are never traced
        self._closing = False
        self._ui_error: BaseException | None = None

    def start(self) -> None:
        """Start the UI thread; :class:`ConsoleError` if it cannot listen (aiomonitor would wait forever)."""
        super().start()
        if self._ui_error is not None:
            self._closed = True
            error = self._ui_error
            raise ConsoleError(f"cannot open the console on {self._host}:{self._termui_port}: {error}")

    def _ui_main(self) -> None:
        # aiomonitor's start() waits for this thread to signal "started" without a timeout; a
        # failed bind would kill the thread first and hang start() forever.
        try:
            super()._ui_main()
        except BaseException as exc:
            self._ui_error = exc
            self._ui_started.set()

    def current_recorder(self) -> Recorder:
        """The recorder the commands read (the given one, else the current one)."""
        return self.recorder if self.recorder is not None else get_recorder()

    # ---- closing ----
    def close(self) -> None:
        """Stop the console and join its thread, within ~2 s even with a client inside ``console``."""
        if not self._started or self._closed:
            return
        self._closing = True
        loop = self._monitored_loop
        loop_here = asyncio._get_running_loop() is loop
        if loop_here or not loop.is_running():
            # Nobody else can run the monitored loop while we hold it: close the REPL servers
            # here, synchronously, instead of letting the UI thread wait for the loop.
            self._close_repl_servers_here()
        try:
            self._ui_loop.call_soon_threadsafe(self._ui_forever_future.cancel)
        except RuntimeError:  # the UI loop already ended
            pass
        with contextlib.suppress(Exception):
            self._monitored_loop.set_task_factory(self._original_task_factory)
        self._ui_thread.join(0.5)
        if self._ui_thread.is_alive():
            # Something in the UI still waits on the monitored loop (a ``cancel`` in flight):
            # cancel the UI's tasks once more, which abandons that wait.
            with contextlib.suppress(RuntimeError):
                self._ui_loop.call_soon_threadsafe(self._cancel_ui_tasks)
            self._ui_thread.join(CLOSE_TIMEOUT_S)  # 0.5 + 1.2 s: within the promised 2 s
        if self._ui_thread.is_alive():
            _log.warning("conctools: the console thread did not stop in time; leaving it (daemon)")
        self._closed = True
        self._stop_profile()

    async def aclose(self) -> None:
        """Close from a coroutine on the monitored loop, which keeps running meanwhile."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def run() -> None:
            try:
                self.close()
            finally:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_resolve, done)

        internal_thread(run, "conctools-console-close").start()
        await done

    def _cancel_ui_tasks(self) -> None:
        for task in list(self._termui_tasks):
            task.cancel()

    def _close_repl_servers_here(self) -> None:
        with self._servers_lock:
            servers, self._repl_servers = list(self._repl_servers), set()
        for server in servers:
            with contextlib.suppress(Exception):
                server.close()

    def _stop_profile(self) -> None:
        session, self.profile_session = self.profile_session, None
        if session is not None and session.running:
            with contextlib.suppress(Exception):
                session.stop()

    async def _release_repl_server(self, server: asyncio.AbstractServer) -> None:
        """End a ``console`` session's REPL server (runs on the UI loop, never waits unbounded)."""
        with self._servers_lock:
            if server not in self._repl_servers:
                return  # close() already closed it
            self._repl_servers.discard(server)
        loop = self._monitored_loop
        if not loop.is_running():  # nobody runs the loop: closing its server from here cannot race
            with contextlib.suppress(Exception):
                server.close()
            return

        async def _close() -> None:
            server.close()
            # 3.12+ waits here for open connections: bounded, the proxy has closed its side.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT_S)

        try:
            future = asyncio.run_coroutine_threadsafe(_close(), loop)
            await asyncio.wait_for(asyncio.wrap_future(future), CLOSE_TIMEOUT_S)
        except (TimeoutError, RuntimeError):
            _log.warning("conctools: the monitored loop did not close the console's REPL server in time")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
