"""One client's session, once it got in: the command loop and the ``console`` REPL pumps.

Two shapes of session share the commands:

- ``telnet``: prompt_toolkit over telnet, as aiomonitor's own (line editing, completion,
  Ctrl-D to leave). ``telnet HOST PORT`` and ``conctools console`` on a terminal use it.
- ``plain`` (``nc``) and ``script`` (``conctools console`` with stdin not a terminal): lines
  in, text out, no escape sequences, no telnet negotiation. ``script`` also echoes each
  command after the prompt, so the output reads as a transcript.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import traceback
from collections.abc import Iterator
from contextvars import ContextVar, copy_context
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click
from aiomonitor.context import command_done, current_monitor, current_stdout
from aiomonitor.termui.commands import monitor_cli
from aiomonitor.termui.completion import ClickCompleter
from prompt_toolkit import PromptSession
from prompt_toolkit.application.current import create_app_session
from prompt_toolkit.contrib.telnet.server import TelnetConnection
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.input.base import Input
from prompt_toolkit.output.base import Output
from prompt_toolkit.output.plain_text import PlainTextOutput

from conctools.console.plain import AsyncEvent
from conctools.console.repl import ReplChannel

if TYPE_CHECKING:
    from conctools.console.monitor import ConsoleMonitor

__all__ = [
    "LineSource",
    "Session",
    "StreamOut",
    "current_session",
    "interact_plain",
    "interact_telnet",
    "pump_plain",
    "pump_telnet",
    "run_command",
]

_LOOP_POLL_S = 0.5  # how often a REPL pump checks that the program's loop still exists


@dataclass(slots=True)
class Session:
    """A connected client: its mode, where its output goes, and (plain modes) its lines."""

    mode: str  # "telnet", "plain" or "script"
    out: Any  # a text stream: aiomonitor's commands write to it
    peer: str
    lines: LineSource | None = None
    app_input: Input | None = None
    app_output: Output | None = None
    columns: int = 120
    extra: dict[str, Any] = field(default_factory=dict)


current_session: ContextVar[Session] = ContextVar("conctools_console_session")


class StreamOut:
    """A text stream over an asyncio ``StreamWriter`` (plain modes): writes never block, the
    transport buffers them; :meth:`drain` waits until the client took them."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def write(self, text: str) -> int:
        if not self._writer.is_closing():
            self._writer.write(text.encode("utf-8", "replace"))
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._writer.drain()


class LineSource:
    """The client's lines (plain modes); ``None`` at end of input, and for ever after."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self.ended = False

    async def readline(self) -> str | None:
        if self.ended:
            return None
        try:
            raw = await self._reader.readline()
        except (ConnectionError, ValueError):  # ValueError: a line past the reader's limit
            raw = b""
        if not raw:
            self.ended = True
            return None
        return raw.decode("utf-8", "replace").rstrip("\r\n").replace("\x00", "")


def _print_fail(text: str) -> None:
    click.echo(f"✗ {text}")


async def run_command(monitor: ConsoleMonitor, session: Session, line: str) -> bool:
    """Run one console command line; ``False`` when the session should end (``exit``)."""
    try:
        args = shlex.split(line)
    except ValueError as exc:
        _print_fail(str(exc))
        return True
    if not args:
        return True
    name = monitor_cli._aliases.get(args[0], args[0])
    if name == "exit":
        return False
    problem = await monitor.loop_problem(name)
    if problem is not None:
        click.echo(problem)
        return True
    done = AsyncEvent()
    token = command_done.set(done)
    before = set(monitor._termui_tasks)
    try:
        ctx = copy_context()
        ctx.run(
            monitor_cli.main,
            args,
            prog_name="",
            obj=monitor,
            standalone_mode=False,
            max_content_width=session.columns,
        )
        # A command that goes on in a task (console, cancel) is done when its task is: aiomonitor's
        # "command done" event is also set early, by the --help option's callback.
        spawned = [task for task in monitor._termui_tasks if task not in before]
        if spawned:
            await asyncio.wait(spawned)
        else:
            await done.wait()
    except (click.BadParameter, click.UsageError) as exc:
        _print_fail(str(exc))
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        return False  # aiomonitor's `exit` ends a session by raising CancelledError
    except Exception:
        _print_fail(traceback.format_exc())
    finally:
        command_done.reset(token)
    return True


@contextlib.contextmanager
def _bound(monitor: ConsoleMonitor, session: Session) -> Iterator[None]:
    tokens = (current_monitor.set(monitor), current_stdout.set(session.out), current_session.set(session))
    try:
        yield
    finally:
        current_session.reset(tokens[2])
        current_stdout.reset(tokens[1])
        current_monitor.reset(tokens[0])


def _goodbye(monitor: ConsoleMonitor) -> str:
    return "conctools console: the program is ending; the console closed.\n" if monitor.closing else ""


# A session's prompt runs in the program's own event loop: prompt_toolkit must not make the loop's exception
# handler its own (any error in the program's loop, or a console client's connection reset, would open a
# "Press ENTER to continue" prompt on the program's stdin and stall that session and every later one), nor
# take over the program's SIGINT handler while a session is open.
_IN_THE_PROGRAMS_LOOP: dict[str, Any] = {"set_exception_handler": False, "handle_sigint": False}


async def interact_telnet(monitor: ConsoleMonitor, connection: TelnetConnection) -> None:
    """The command loop of a telnet session (prompt_toolkit, as aiomonitor's ``interact``)."""
    await asyncio.sleep(0.1)  # let the window size arrive
    session = Session("telnet", connection.stdout, peer=f"{connection.addr[0]}:{connection.addr[1]}")
    session.columns = max(40, connection.size.columns)
    with _bound(monitor, session):
        print(monitor.intro(), file=connection.stdout)
        prompt_session: PromptSession[str] = PromptSession(
            completer=ClickCompleter(monitor_cli), complete_while_typing=False
        )
        lastcmd = "noop"
        try:
            while True:
                try:
                    line = (
                        await prompt_session.prompt_async(
                            FormattedText([("#5fd7ff bold", monitor.prompt)]), **_IN_THE_PROGRAMS_LOOP
                        )
                    ).strip()
                except KeyboardInterrupt:
                    _print_fail("To terminate, press Ctrl+D or type 'exit'.")
                    continue
                except EOFError:
                    return
                if not line:
                    line = lastcmd  # aiomonitor's habit: Enter repeats the last command
                session.columns = max(40, connection.size.columns)
                if not await run_command(monitor, session, line):
                    return
                lastcmd = "noop" if line.split()[:1] == ["console"] else line
        finally:
            bye = _goodbye(monitor)
            if bye:
                with contextlib.suppress(Exception):
                    connection.stdout.write("\n" + bye)
                    connection.stdout.flush()


async def interact_plain(
    monitor: ConsoleMonitor, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: str, peer: str
) -> None:
    """The command loop of a plain or script session: a line in, its output out, then the prompt."""
    out = StreamOut(writer)
    session = Session(mode, out, peer=peer, lines=LineSource(reader))
    with create_pipe_input() as no_input, _bound(monitor, session):
        output = PlainTextOutput(out)  # type: ignore[arg-type]
        session.app_input, session.app_output = no_input, output
        with create_app_session(input=no_input, output=output):
            try:
                out.write(monitor.intro() + "\n")
                while True:
                    out.write(monitor.prompt)
                    await out.drain()
                    assert session.lines is not None
                    line = await session.lines.readline()
                    if line is None:
                        out.write("\n")
                        break
                    if mode == "script":
                        out.write(line + "\n")
                    if not await run_command(monitor, session, line.strip()):
                        break
            finally:
                out.write(_goodbye(monitor))
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(out.drain(), 2.0)


# -- the ``console`` command's REPL pumps ------------------------------------------------------------


async def pump_telnet(channel: ReplChannel, stdin: Input, stdout: Output) -> None:
    """Telnet session inside ``console``: prompt_toolkit edits each line, which goes to the REPL;
    the REPL's output comes back as is. Ends at Ctrl-D, when the REPL ends, or when the
    program's loop is closed."""
    stdout.write_raw("\r\n")
    stdout.flush()
    ended = AsyncEvent()

    async def receive() -> None:
        try:
            while True:
                data = await channel.reader.read(4096)
                if not data:
                    return
                stdout.write_raw(data.decode("utf-8", "replace"))
                stdout.flush()
        except ConnectionError:
            pass
        finally:
            ended.set()

    async def send() -> None:
        prompt_session: PromptSession[str] = PromptSession(input=stdin, output=stdout)
        try:
            while not channel.reader.at_eof():
                try:
                    line = await prompt_session.prompt_async("", **_IN_THE_PROGRAMS_LOOP)
                except KeyboardInterrupt:
                    channel.writer.write(b"\x03")
                    continue
                except EOFError:
                    return
                channel.writer.write(line.encode() + b"\n")
                await channel.writer.drain()
        except ConnectionError:
            pass
        finally:
            ended.set()

    await _until_ended(channel, ended, receive(), send())


async def _until_ended(channel: ReplChannel, ended: asyncio.Event, *jobs: Any) -> None:
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(job) for job in jobs]
    try:
        while not ended.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), _LOOP_POLL_S)
            if channel.loop_gone():
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def pump_plain(channel: ReplChannel, session: Session) -> None:
    """Plain or script session inside ``console``: each line goes to the REPL once it shows its
    prompt (so a script's lines meet the prompts they answer); a line with only Ctrl-D
    (``\\x04``), ``exit()`` or the end of the client's input returns to the console."""
    out = session.out
    lines = session.lines
    assert lines is not None
    tail = ""

    async def until_prompt() -> bool:
        """Copy the REPL's output until it shows a prompt; ``False`` when the REPL ended."""
        nonlocal tail
        while True:
            try:
                data = await asyncio.wait_for(channel.reader.read(4096), _LOOP_POLL_S)
            except TimeoutError:
                if channel.loop_gone():
                    return False
                continue
            except ConnectionError:
                return False
            if not data:
                return False
            text = data.decode("utf-8", "replace")
            out.write(text)
            tail = (tail + text)[-8:]
            if tail.endswith((">>> ", "... ")):
                tail = ""
                await out.drain()
                return True

    while await until_prompt():
        line = await lines.readline()
        if line is None or line.strip() == "\x04":
            if line is not None and session.mode == "script":
                out.write("^D\n")
            with contextlib.suppress(Exception):
                channel.writer.write_eof()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until_prompt(), 2.0)  # the REPL's goodbye
            return
        if session.mode == "script":
            out.write(line + "\n")
        channel.writer.write(line.encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await channel.writer.drain()
