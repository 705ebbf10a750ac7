"""conctools' console commands, each a small click command on aiomonitor's command group, and
a ``console`` command whose teardown is bounded (see :mod:`conctools.console`)."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import click
from aiomonitor.context import command_done
from aiomonitor.termui.commands import auto_command_done, custom_help_option, monitor_cli
from prompt_toolkit.application.current import get_app_session

from conctools._context import current_frames
from conctools.console.monitor import PROBE_TIMEOUT_S, ConsoleMonitor, safe
from conctools.console.repl import open_repl
from conctools.console.session import current_session, pump_plain, pump_telnet
from conctools.recorder import Recorder, Snapshot, get_recorder

__all__: list[str] = []

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


def _for(now_ns: int, since_ns: int) -> str:
    """`` for 1.234s``, or nothing when the time is not known (an uncontended take stamps no clock)."""
    return f" for {(now_ns - since_ns) / 1e9:.3f}s" if since_ns > 0 else ""


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
        held = ", ".join(f"{p.who} at {p.site}{_for(now, p.since_ns)}" for p in state.holders) or "-"
        lines.append(safe(f"  {state.name} ({state.kind}): held by {held}"))
        for p in state.waiters:
            lines.append(safe(f"      waiting: {p.who} at {p.site}{_for(now, p.since_ns)}"))
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
    snapshot = _recorder_of(ctx).snapshot()
    parts = _sections(snapshot, (40,))
    from conctools.events import SlowCallbackEvent

    if not snapshot.of_kind(SlowCallbackEvent):  # (the section may still show the loop's lag)
        parts.insert(0, "No slow callback recorded so far.")
    click.echo("\n\n".join(parts))


@_command("threads")
def do_threads(ctx: click.Context) -> None:
    """Every thread's stack, by name"""
    frames = current_frames(own_from=1)
    threads = sorted(threading.enumerate(), key=lambda t: (t is not threading.main_thread(), t.name))
    for t in threads:
        frame = frames.get(t.ident or -1)
        flags = " daemon" if t.daemon else ""
        click.echo(f'Thread "{safe(t.name)}" (id {t.ident}{flags}):')
        if frame is None:
            click.echo("  (no Python frame)")
            continue
        stack = "".join("  " + line for line in traceback.format_stack(frame)).rstrip("\n")
        click.echo("\n".join(safe(line) for line in stack.split("\n")))
        click.echo("")


@_command("resources")
def do_resources(ctx: click.Context) -> None:
    """Process resources now (psutil) and the sampler's summary"""
    try:
        monitor = _monitor(ctx)
        proc = monitor.process() if isinstance(monitor, ConsoleMonitor) else None
        if proc is None:
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


# ---- loops ----------------------------------------------------------------------------------


@_command("loops")
def do_loops(ctx: click.Context) -> None:
    """The program's event loops; * marks the one ps/where/console use"""
    monitor = _monitor(ctx)
    if not isinstance(monitor, ConsoleMonitor):
        click.echo("loops: not a conctools console")
        return
    rows = monitor.loops.table()
    if not rows:
        click.echo("No event loop runs in the program right now. threads, locks, deadlocks, slow, resources")
        click.echo("and profile work without one; ps, where and console wait for one.")
        return
    how = "following the running loop" if monitor.loops.following else "pinned with `use`; `use auto` follows"
    click.echo(f"Event loops ({how}):")
    for row in rows:
        mark = "*" if row.selected else " "
        state = "closed" if row.closed else ("running" if row.running else "stopped")
        thread = repr(row.thread_name) if row.thread_name else "thread ?"
        kind = f"{type(row.loop).__module__}.{type(row.loop).__qualname__}"
        click.echo(f" {mark} #{row.number}  {state:8} {thread:20} {row.tasks:4} tasks  {kind}")


@_command("use", click.argument("which"))
def do_use(ctx: click.Context, which: str) -> None:
    """Use loop N (see `loops`) for ps/where/console; `use auto` follows"""
    monitor = _monitor(ctx)
    if not isinstance(monitor, ConsoleMonitor):
        click.echo("use: not a conctools console")
        return
    if which in ("auto", "follow", "0"):
        loop = monitor.loops.follow()
        where = f"now loop #{monitor.loops.number_of(loop)}" if loop is not None else "no loop runs now"
        click.echo(f"following the running loop ({where})")
        return
    try:
        number = int(which.lstrip("#"))
        monitor.loops.use(number)
    except ValueError:
        click.echo(f"use: expected a loop number or 'auto', got {which!r}")
        return
    except LookupError as exc:
        click.echo(f"use: {exc}")
        return
    click.echo(f"using loop #{number} (`use auto` follows the running loop again)")


# ---- ``console``: a REPL on the program's loop, through a socket pair -------------------------


def do_console(ctx: click.Context) -> None:
    """Switch to async Python REPL on the program's loop"""
    monitor = _monitor(ctx)
    done = command_done.get()
    if not isinstance(monitor, ConsoleMonitor):
        click.echo("console: not a conctools console")
        done.set()
        return
    if not monitor._console_enabled:
        click.echo("Python console is disabled for this session!")
        done.set()
        return
    session = current_session.get(None)
    loop = monitor._monitored_loop

    async def run() -> None:
        try:
            try:
                channel = await open_repl(loop, monitor.repl_locals(), PROBE_TIMEOUT_S)
            except TimeoutError:
                click.echo("console: the program's event loop did not start the REPL in time (it is blocked)")
                return
            except RuntimeError as exc:
                click.echo(f"console: cannot start the REPL on the program's loop: {exc}")
                return
            monitor._repls.add(channel)
            try:
                if session is None or session.mode == "telnet":
                    app_session = get_app_session()
                    await pump_telnet(channel, app_session.input, app_session.output)
                else:
                    await pump_plain(channel, session)
            finally:
                channel.close()
                monitor._repls.discard(channel)
                if channel.loop_gone():
                    click.echo("The program's event loop is closed: the console session is closed.")
                else:
                    click.echo("The console session is closed.")
        finally:
            done.set()

    task = monitor._ui_loop.create_task(run(), name="conctools-console-repl-pump")
    monitor._termui_tasks.add(task)


_registered: Any = custom_help_option(do_console)
monitor_cli.command(name="console")(_registered)
