"""aiomonitor's :class:`~aiomonitor.monitor.Monitor`, made safe and made to follow the program.

What it changes (see :mod:`conctools.console` for the why):

- its own listening socket behind :mod:`conctools.console.access`'s gate instead of
  prompt_toolkit's open telnet server; the secret file lives as long as the console;
- no web UI unless ``webui_port`` is given, and then behind the same secret;
- the monitored loop is chosen at each command (:class:`~conctools.console.loops.LoopChooser`):
  a given loop, or whichever the program runs; the REPL has no port (socket pair);
- its own thread (``conctools-console``) runs its own plain selector loop, which conctools'
  loop monitor and task dumps leave out, and made of plain primitives;
- :meth:`close` always returns within ~2 s, even with a client inside ``console``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from aiomonitor.monitor import Monitor

from conctools._context import _plain_event, current_frames, internal_thread
from conctools._log import get_logger
from conctools.console.access import ConsoleError, FailureBrake, remove_secret, write_secret
from conctools.console.loops import LoopChooser
from conctools.console.server import ConsoleServer, bind
from conctools.recorder import Recorder, get_recorder

__all__ = [
    "CLOSE_TIMEOUT_S",
    "DEFAULT_CONSOLE_PORT",
    "DEFAULT_PORT",
    "DEFAULT_WEBUI_PORT",
    "LOOP_COMMANDS",
    "PROBE_TIMEOUT_S",
    "RUNNING_LOOP_COMMANDS",
    "ConsoleError",
    "ConsoleMonitor",
    "safe",
]

_log = get_logger("conctools.console")

DEFAULT_PORT = 20101  # aiomonitor's telnet UI
DEFAULT_WEBUI_PORT = 20102  # aiomonitor's web UI: off unless a webui_port is given
DEFAULT_CONSOLE_PORT = 20103  # aiomonitor's REPL port: unused, the REPL is reached through a socket pair
CLOSE_TIMEOUT_S = 1.2  # every wait while closing is bounded: close() returns within 2 s
PROBE_TIMEOUT_S = 1.0  # a loop that does not run a callback within this is called blocked
# aiomonitor's commands that read the chosen loop, and those that need it to run callbacks.
LOOP_COMMANDS = frozenset({"ps", "where", "stacktrace", "cancel", "console"})
RUNNING_LOOP_COMMANDS = frozenset({"cancel", "console"})
_FOLLOW: Any = type("_Follow", (), {"__repr__": lambda self: "<follow the running loop>"})()


class _ConsoleLoop(asyncio.SelectorEventLoop):
    """The console's own loop: conctools' loop monitor and task dumps skip it (it is not the
    program's), and it is always a plain selector loop, whatever loop policy the program set."""

    _conctools_own = True

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        """An error in the console's own loop (a client's connection reset mid-session, a session's task
        failing) is the console's, not the program's: logged by conctools at DEBUG, never printed to the
        program's stdout or stderr (asyncio's default handler logs it as an error, which a program's
        logging would show; prompt_toolkit's printed it and then waited for ENTER on the program's stdin)."""
        _log.debug("conctools console: %s", context.get("message", "error"), exc_info=context.get("exception"))


def safe(text: str) -> str:
    """``text`` with control and bidirectional-override characters escaped (names and code come
    from the program; they must not drive the reader's terminal)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def _blocked_at(tid: int | None) -> str:
    """Where thread ``tid`` is now, in the program's code: its innermost line and, when it differs,
    the callback the loop runs (``prog.py:6 in wait: ..., called from prog.py:20 in main: ...``)."""
    if tid is None:
        return ""
    frame = current_frames().get(tid)
    if frame is None:
        return ""
    from conctools._context import is_conctools_frame

    innermost = outermost = None
    f: Any = frame
    while f is not None:
        filename = f.f_code.co_filename
        if filename == _EVENTS_PY and f.f_code.co_name == "_run":
            break  # the loop's own frames start here: the callback is above
        stdlib = (filename.startswith(_STDLIB) and "-packages" not in filename) or filename.startswith("<frozen")
        if not stdlib and not is_conctools_frame(filename):
            innermost = innermost or f
            outermost = f
        f = f.f_back
    if innermost is None or outermost is None:
        return ""
    text = _frame_text(innermost)
    return safe(text if outermost is innermost else f"{text}, called from {_frame_text(outermost)}")


def _frame_text(frame: Any) -> str:
    import linecache

    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
    code = f": {line}" if line else ""
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} in {frame.f_code.co_name}{code}"


_EVENTS_PY = asyncio.events.__file__
_STDLIB = os.path.dirname(os.__file__) + os.sep


class ConsoleMonitor(Monitor):  # type: ignore[misc]
    """aiomonitor's :class:`~aiomonitor.monitor.Monitor` behind conctools' gate, following the
    program's loops, with conctools' commands and a close that always returns.

    ``loop=None`` follows whichever loop the program runs (see :func:`conctools.console.attach`).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        *,
        recorder: Recorder | None = None,
        host: str = "127.0.0.1",
        termui_port: int = DEFAULT_PORT,
        webui_port: int | None = None,
        locals: dict[str, Any] | None = None,
        console_enabled: bool = True,
        **ignored: Any,
    ) -> None:
        self._auto_program = locals is None or "program" not in locals
        super().__init__(
            loop if loop is not None else _FOLLOW,
            host=host,
            termui_port=termui_port,
            webui_port=webui_port or 0,
            console_port=0,
            console_enabled=console_enabled,
            hook_task_factory=False,
            locals=locals,
        )
        self.prompt = "conctools >>> "
        self.recorder = recorder
        self.profile_session: Any = None
        self.webui_enabled = webui_port is not None
        self.secret_path: Path | None = None
        self.brake = FailureBrake()
        self.server: ConsoleServer | None = None
        self.webui_port: int | None = None
        self._secret = ""
        self._listener: Any = None
        self._closing = False
        self._ui_error: BaseException | None = None
        self._repls: set[Any] = set()
        self._process: Any = None
        # aiomonitor made these from the threading module, which trace_locks() may have patched.
        self._ui_started = _plain_event()
        self._ui_thread = internal_thread(self._ui_main, "conctools-console")

    # -- the loop the commands use -------------------------------------------------------------
    @property  # type: ignore[override]
    def _monitored_loop(self) -> Any:
        chooser: LoopChooser | None = self.__dict__.get("_chooser")
        return chooser.current if chooser is not None else None

    @_monitored_loop.setter
    def _monitored_loop(self, value: Any) -> None:
        self.__dict__["_chooser"] = LoopChooser(self._is_own_loop, pinned=None if value is _FOLLOW else value)

    @property  # type: ignore[override]
    def _event_loop_thread_id(self) -> int | None:
        loop = self._monitored_loop
        return self.loops.thread_of(loop) if loop is not None else None

    @_event_loop_thread_id.setter
    def _event_loop_thread_id(self, value: Any) -> None:
        pass

    @property
    def loops(self) -> LoopChooser:
        """The program's loops, numbered, and the one the task commands use."""
        chooser: LoopChooser = self.__dict__["_chooser"]
        return chooser

    def _is_own_loop(self, loop: asyncio.AbstractEventLoop) -> bool:
        return bool(getattr(loop, "_conctools_own", False))

    async def loop_problem(self, command: str) -> str | None:
        """Why ``command`` cannot run now (no loop, a closed one, a blocked one), or ``None``."""
        if command not in LOOP_COMMANDS:
            return None
        loop = self.loops.refresh()
        if loop is None:
            return (
                f"`{command}` needs an event loop, and the program runs none right now (`loops` lists them). "
                "threads, locks, deadlocks, slow, resources and profile work without one."
            )
        number = self.loops.number_of(loop)
        if loop.is_closed():
            return f"`{command}`: event loop #{number} is closed (`loops` lists the running ones, `use auto` follows)."
        if command == "stacktrace" and self.loops.thread_of(loop) is None:
            return f"`stacktrace`: the thread running event loop #{number} is not known; `threads` shows every thread."
        if command not in RUNNING_LOOP_COMMANDS:
            return None
        if not loop.is_running():
            return f"`{command}` needs event loop #{number} to run, and it is stopped."
        if await self._responds(loop):
            return None
        tid = self.loops.thread_of(loop)
        where = _blocked_at(tid)
        at = f", at {where}" if where else ""
        return (
            f"`{command}` needs event loop #{number} to run a callback, and it has not for {PROBE_TIMEOUT_S:.1f} s: "
            f"it is blocked{at}. threads, where, ps, locks and slow answer while it is blocked; "
            f"try `{command}` again once it is free."
        )

    async def _responds(self, loop: asyncio.AbstractEventLoop) -> bool:
        here = asyncio.get_running_loop()
        answered = here.create_future()

        def answer() -> None:  # on the program's loop: never raises into it
            with contextlib.suppress(RuntimeError):
                here.call_soon_threadsafe(_resolve, answered)

        try:
            loop.call_soon_threadsafe(answer)
            await asyncio.wait_for(answered, PROBE_TIMEOUT_S)
        except (TimeoutError, RuntimeError):
            return False
        return True

    def repl_locals(self) -> dict[str, Any]:
        """The namespace of the ``console`` REPL (kept between sessions)."""
        if self._auto_program:
            self.console_locals["program"] = sys.modules.get("__main__")
        self.console_locals.setdefault("monitor", self)
        namespace: dict[str, Any] = self.console_locals
        return namespace

    def process(self) -> Any:
        """This process as a ``psutil.Process``, made once when the console starts (its RLock is
        then a plain one: ``conctools run --console`` starts the console before tracing locks)."""
        if self._process is None:
            import psutil

            self._process = psutil.Process()
        return self._process

    def current_recorder(self) -> Recorder:
        """The recorder the commands read (the given one, else the current one)."""
        return self.recorder if self.recorder is not None else get_recorder()

    def intro(self) -> str:
        """What a client reads once it got in."""
        loop = self.loops.refresh()
        if loop is None:
            state = "no event loop running (thread and lock commands work)"
        else:
            try:
                tasks = len(asyncio.all_tasks(loop))
            except Exception:
                tasks = 0
            state = f"event loop #{self.loops.number_of(loop)}, {tasks} task{'s' if tasks != 1 else ''}"
        return f"\nconctools console, pid {os.getpid()}: {state}\nType help for the commands, exit to leave.\n"

    @property
    def closing(self) -> bool:
        """True once :meth:`close` began."""
        return self._closing

    @property
    def port(self) -> int:
        """The port the console listens on (the one chosen by the OS for port 0)."""
        port: int = self.__dict__["_termui_port"]
        return port

    def where(self) -> str:
        """One line: where the console listens and how to reach it."""
        pid = os.getpid()
        return (
            f"conctools: console on {self._host}:{self.port} (pid {pid}): `conctools console {pid}`, "
            f"or telnet/nc {self._host} {self.port} and send the first line of {self.secret_path} first"
        )

    # -- starting ------------------------------------------------------------------------------
    def start(self) -> None:
        """Listen, write the secret file, start the console thread; :class:`ConsoleError` if it cannot."""
        if self.__dict__["_started"] or self.__dict__["_closed"]:
            raise ConsoleError("a console can be started once")
        from conctools.console import commands  # noqa: F401  # conctools' commands on aiomonitor's group

        with contextlib.suppress(Exception):
            self.process()

        self._listener = bind(self._host, self._termui_port)
        self.__dict__["_termui_port"] = self._listener.getsockname()[1]
        try:
            self._secret, self.secret_path = write_secret(os.getpid(), self._host, self._termui_port)
        except (OSError, ConsoleError) as exc:
            self._listener.close()
            raise ConsoleError(f"cannot write the console's secret: {exc}") from None
        self._started = True
        self._original_task_factory = None
        _forget_in_forked_children(self)
        self._ui_thread.start()
        self._ui_started.wait()
        if self._ui_error is not None:
            self._closed = True
            self._listener.close()
            remove_secret(self.secret_path)
            raise ConsoleError(f"cannot open the console on {self._host}:{self.port}: {self._ui_error}")

    def _ui_main(self) -> None:
        loop = _ConsoleLoop()
        try:
            loop.run_until_complete(self._ui_main_async())
        except BaseException as exc:
            if not self._ui_started.is_set():
                self._ui_error = exc
            else:
                _log.exception("conctools console: the console thread failed")
        finally:
            self._ui_started.set()
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.wait(pending, timeout=CLOSE_TIMEOUT_S / 2))
            finally:
                loop.close()

    async def _ui_main_async(self) -> None:
        loop = asyncio.get_running_loop()
        self._ui_loop = loop
        self._ui_forever_future = loop.create_future()
        self.server = ConsoleServer(self, self._listener, self._secret, self.brake)
        webui: Any = None
        if self.webui_enabled:
            from conctools.console.webui import start_webui

            webui = await start_webui(self, self._host, self._webui_port, self._secret, self.brake)
            addresses = webui.addresses
            self.webui_port = addresses[0][1] if addresses else self._webui_port
        self.server.start()
        self._ui_started.set()
        try:
            await self._ui_forever_future
        except asyncio.CancelledError:
            pass
        finally:
            for channel in list(self._repls):
                channel.close()
            termui = [t for t in self._termui_tasks if not t.done()]
            for task in termui:
                task.cancel()
            await self.server.close(CLOSE_TIMEOUT_S / 2)
            if termui:
                await asyncio.wait(termui, timeout=CLOSE_TIMEOUT_S / 4)
            if webui is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(webui.cleanup(), CLOSE_TIMEOUT_S / 4)

    # -- closing -------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the console and join its thread, within ~2 s even with a client inside ``console``.

        Nothing here waits on the program's loop: call it from anywhere, its loop's thread included.
        """
        if not self._started or self._closed:
            return
        self._closing = True
        with contextlib.suppress(RuntimeError, AttributeError):
            self._ui_loop.call_soon_threadsafe(self._ui_forever_future.cancel)
        if threading.current_thread() is not self._ui_thread:
            deadline = time.monotonic() + CLOSE_TIMEOUT_S
            self._ui_thread.join(CLOSE_TIMEOUT_S)
            if self._ui_thread.is_alive():
                with contextlib.suppress(RuntimeError):
                    self._ui_loop.call_soon_threadsafe(self._cancel_ui_tasks)
                self._ui_thread.join(max(0.1, deadline + 0.6 - time.monotonic()))
            if self._ui_thread.is_alive():
                _log.warning("conctools console: the console thread did not stop in time; leaving it (daemon)")
        self._closed = True
        _open_consoles.discard(self)
        if self.secret_path is not None:
            remove_secret(self.secret_path)
        self._stop_profile()

    async def aclose(self) -> None:
        """Close from a coroutine on the program's loop, which keeps running meanwhile."""
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
        for task in asyncio.all_tasks(self._ui_loop):
            if task is not asyncio.current_task():
                task.cancel()

    def _stop_profile(self) -> None:
        session, self.profile_session = self.profile_session, None
        if session is not None and session.running:
            with contextlib.suppress(Exception):
                session.stop()


_open_consoles: weakref.WeakSet[ConsoleMonitor] = weakref.WeakSet()


def _close_listeners_in_child() -> None:
    # A forked child (multiprocessing's fork, os.fork) has no console thread: it must not keep
    # the console's port open, or clients would queue on it after the parent is gone.
    for monitor in list(_open_consoles):
        with contextlib.suppress(Exception):
            monitor._listener.close()
        monitor._closed = True
    _open_consoles.clear()


def _forget_in_forked_children(monitor: ConsoleMonitor) -> None:
    if not _open_consoles and not _fork_hook[0] and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_close_listeners_in_child)
        _fork_hook[0] = True
    _open_consoles.add(monitor)


_fork_hook = [False]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
