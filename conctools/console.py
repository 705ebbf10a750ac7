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
``gil``        CPU-bound threads and GIL waits (the running GIL monitor's, or a 1 s measurement)

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

import _thread
import asyncio
import contextlib
import logging
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import click
from aiomonitor import console as _aioconsole_glue
from aiomonitor.context import command_done
from aiomonitor.monitor import Monitor
from aiomonitor.termui.commands import auto_async_command_done, auto_command_done, custom_help_option, monitor_cli
from prompt_toolkit.application.current import get_app_session

from conctools._context import internal_thread
from conctools._net import is_loopback
from conctools.recorder import Recorder, Snapshot, get_recorder

__all__ = [
    "DEFAULT_CONSOLE_PORT",
    "DEFAULT_PORT",
    "DEFAULT_WEBUI_PORT",
    "ConsoleError",
    "ConsoleMonitor",
    "is_loopback",
    "start",
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


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# ---- commands ---------------------------------------------------------------------------
# Output goes through click.echo, which aiomonitor routes to the connected client.


def _monitor(ctx: click.Context) -> Any:
    return ctx.obj


def _recorder_of(ctx: click.Context) -> Recorder:
    monitor = _monitor(ctx)
    if isinstance(monitor, ConsoleMonitor):
        return monitor.current_recorder()
    return get_recorder()


def _sections(snapshot: Snapshot, priorities: tuple[int, ...]) -> list[str]:
    """The text report's sections at these priorities (deadlocks 10, lock order 20, hangs 30,
    slow callbacks 40, locks 45, profile 60, resources 70)."""
    from conctools.reporting.text import render_sections

    return render_sections(snapshot, priorities=lambda p: p in priorities)


def _echo_sections(ctx: click.Context, priorities: tuple[int, ...], empty: str) -> None:
    snapshot = _recorder_of(ctx).snapshot()
    parts = _sections(snapshot, priorities)
    click.echo("\n\n".join(parts) if parts else empty)


def _live_lock_rows() -> list[str]:
    """Who holds and who waits on each traced primitive right now (from the wait registry)."""
    try:
        from conctools import registry
    except ImportError:
        return []
    now = time.monotonic_ns()
    lines = []
    for state in registry.primitives():
        if not state.holders and not state.waiters:
            continue
        held = ", ".join(f"{p.who} at {p.site} for {(now - p.since_ns) / 1e9:.3f}s" for p in state.holders) or "-"
        lines.append(f"  {state.name} ({state.kind}): held by {held}")
        for p in state.waiters:
            lines.append(f"      waiting: {p.who} at {p.site} for {(now - p.since_ns) / 1e9:.3f}s")
    return lines


_Command = TypeVar("_Command", bound=Callable[..., None])


def _command(name: str, *params: Any) -> Callable[[_Command], _Command]:
    """Register ``fn`` as console command ``name`` on aiomonitor's group, the way its own are built
    (click parameters, ``--help``, and the "command done" signal the session waits for)."""

    def register(fn: _Command) -> _Command:
        cmd: Any = auto_command_done(fn)
        cmd = custom_help_option(cmd)
        for param in reversed(params):
            cmd = param(cmd)
        monitor_cli.command(name=name)(cmd)
        return fn

    return register


@_command("locks")
def do_locks(ctx: click.Context) -> None:
    """Lock table: holders, waiters, waits"""
    live = _live_lock_rows()
    click.echo("Held or awaited now:\n" + ("\n".join(live) if live else "  nothing is held or awaited"))
    click.echo("")
    _echo_sections(ctx, (45,), "No lock statistics yet (no traced lock was contended or none is traced).")


@_command("deadlocks")
def do_deadlocks(ctx: click.Context) -> None:
    """Deadlock cycles and lock-order inversions so far"""
    _echo_sections(ctx, (10, 20, 30), "No deadlock, lock-order inversion or hang found so far.")


@_command("slow")
def do_slow(ctx: click.Context) -> None:
    """Slow callbacks (loop stalls) with their stacks"""
    _echo_sections(ctx, (40,), "No slow callback recorded so far.")


@_command("threads")
def do_threads(ctx: click.Context) -> None:
    """Every thread's stack, by name"""
    frames = sys._current_frames()
    threads = sorted(threading.enumerate(), key=lambda t: (t is not threading.main_thread(), t.name))
    for t in threads:
        frame = frames.get(t.ident or -1)
        flags = " daemon" if t.daemon else ""
        click.echo(f'Thread "{t.name}" (id {t.ident}{flags}):')
        if frame is None:
            click.echo("  (no Python frame)")
            continue
        click.echo("".join("  " + line for line in traceback.format_stack(frame)).rstrip("\n"))
        click.echo("")


@_command("resources")
def do_resources(ctx: click.Context) -> None:
    """Process resources now (psutil) and the sampler's summary"""
    try:
        import psutil

        proc = psutil.Process()
        with proc.oneshot():
            mem = proc.memory_info()
            ctx_sw = proc.num_ctx_switches()
            fds = proc.num_fds() if hasattr(proc, "num_fds") else -1
            threads = proc.num_threads()
        cpu = proc.cpu_percent(interval=0.1)
        from conctools._units import format_bytes

        click.echo(
            f"Now: cpu {cpu:.1f}%  rss {format_bytes(mem.rss)}  threads {threads}  fds {fds}  "
            f"ctx switches {ctx_sw.voluntary} voluntary / {ctx_sw.involuntary} involuntary"
        )
    except Exception as exc:
        click.echo(f"Now: psutil reading failed: {exc}")
    parts = _sections(_recorder_of(ctx).snapshot(), (70,))
    if parts:
        click.echo("")
        click.echo("\n\n".join(parts))


@_command(
    "profile",
    click.argument("action", type=click.Choice(["start", "stop", "top"])),
    click.option("--clock", type=click.Choice(["wall", "cpu"]), default="wall", help="profile clock (start)"),
    click.option("-n", "limit", type=int, default=20, help="functions to show (stop, top)"),
)
def do_profile(ctx: click.Context, action: str, clock: str, limit: int) -> None:
    """Profile the process with yappi: start | stop | top"""
    monitor = _monitor(ctx)
    try:
        from conctools.profiling import Profile, ProfileError
    except ImportError:
        click.echo("conctools.profiling is not available")
        return
    session = getattr(monitor, "profile_session", None)
    if action == "start":
        if session is not None and session.running:
            click.echo("a profile is already running: 'profile stop' first")
            return
        new = Profile(clock, recorder=_recorder_of(ctx))  # type: ignore[arg-type]
        try:
            new.start()
        except ProfileError as exc:
            click.echo(str(exc))
            return
        monitor.profile_session = new
        click.echo(f"profiling every thread ({clock} clock); 'profile stop' to see the top functions")
    elif action == "stop":
        if session is None or not session.running:
            click.echo("no profile is running: 'profile start' first")
            return
        session.stop()
        click.echo(f"profiled {session.duration_s:.2f}s")
        click.echo(session.top(limit))
    else:
        if session is None:
            click.echo("no profile yet: 'profile start', then 'profile stop'")
        elif session.running:
            click.echo("a profile is running: 'profile stop' shows its top functions")
        else:
            click.echo(session.top(limit))


@_command(
    "gil",
    click.option("--seconds", type=float, default=1.0, help="how long to measure when no GIL monitor runs"),
)
def do_gil(ctx: click.Context, seconds: float) -> None:
    """CPU-bound threads: GIL waits, cores used, the bottleneck"""
    from conctools.gil import live_summary
    from conctools.reporting.gil_text import console_text

    click.echo(console_text(live_summary(_recorder_of(ctx), seconds)))


# ---- ``console`` with a bounded teardown (aiomonitor's own, plus server bookkeeping) ---------
_original_console = monitor_cli.commands.get("console")


def do_console(ctx: click.Context) -> None:
    """Switch to async Python REPL"""
    self = _monitor(ctx)
    if not isinstance(self, ConsoleMonitor):
        if _original_console is not None and _original_console.callback is not None:
            # aiomonitor's callback is wrapped by click.pass_context: call the wrapped function.
            inner = getattr(_original_console.callback, "__wrapped__", _original_console.callback)
            inner(ctx)
        return
    if not self._console_enabled:
        click.echo("Python console is disabled for this session!")
        command_done.get().set()
        return

    async def _console(ctx: click.Context) -> None:
        app_session = get_app_session()
        server = await _aioconsole_glue.start(self._host, self._console_port, self.console_locals, self._monitored_loop)
        with self._servers_lock:
            self._repl_servers.add(server)
        try:
            await _aioconsole_glue.proxy(app_session.input, app_session.output, self._host, self._console_port)
        finally:
            await self._release_repl_server(server)
            click.echo("The console session is closed.")

    # Spawned on the UI loop; it sets aiomonitor's "command done" signal when the session ends.
    console_session: Any = auto_async_command_done(_console)
    task = self._ui_loop.create_task(console_session(ctx))
    self._termui_tasks.add(task)


_registered: Any = custom_help_option(do_console)
monitor_cli.command(name="console")(_registered)
