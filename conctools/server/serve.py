"""``conctools serve``: run the sample server, with the console, until a signal or a duration.

This is a wiring module: it runs the server (a producer of events) and writes the reports.
On exit (SIGINT, SIGTERM or ``--duration``) it stops cleanly, prints the brief report to
stderr and, with ``--out DIR``, writes the report files there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from conctools.recorder import Recorder, use_recorder
from conctools.server.app import ServerOptions, create_app

__all__ = ["ServeConfig", "serve"]


@dataclass(slots=True, kw_only=True)
class ServeConfig:
    """What ``conctools serve`` was asked to do."""

    host: str = "127.0.0.1"
    port: int = 8080
    server: ServerOptions = field(default_factory=ServerOptions)
    console: bool = True
    console_host: str = "127.0.0.1"
    console_port: int = 20101  # 0: a free port (the REPL has no port; aiomonitor's web UI stays off)
    allow_remote_console: bool = False
    out_dir: Path | None = None
    duration_s: float | None = None
    report: bool = True
    command: str = "conctools serve"
    dump_agent: bool = True  # `conctools dump/top PID` can look inside (conctools.agent)


def check_console_host(config: ServeConfig) -> None:
    """Raise :class:`~conctools.console.ConsoleError` before anything starts if the console host is refused."""
    if not config.console:
        return
    from conctools._net import is_loopback
    from conctools.console import ConsoleError

    if not is_loopback(config.console_host) and not config.allow_remote_console:
        raise ConsoleError(
            f"refusing to open the console on non-loopback address {config.console_host!r} "
            "(it runs arbitrary Python): add --allow-remote-console to allow it"
        )


def serve(config: ServeConfig) -> int:
    """Serve until SIGINT/SIGTERM or ``duration_s``; report; return the exit status (130 after
    Ctrl-C, as a shell expects; 0 after SIGTERM or the duration, the ways a server is stopped)."""
    check_console_host(config)
    recorder = Recorder()
    recorder.meta.update({"command": config.command, "bugs": sorted(config.server.bugs)})
    stopped_by: list[int] = []
    agent: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if config.dump_agent:
        from conctools.agent.server import agent_while

        agent = agent_while(recorder)
    try:
        with use_recorder(recorder), agent:
            asyncio.run(_serve(config, recorder, stopped_by))
    except KeyboardInterrupt:  # Ctrl-C while starting, before the loop's handler was in place
        stopped_by.append(signal.SIGINT)
    from conctools.runner import RunOptions, finish_report

    finish_report(recorder, RunOptions(out_dir=config.out_dir, report=config.report))
    return 130 if signal.SIGINT in stopped_by else 0


def _announce_agent() -> None:
    """Say how to look inside while it runs, when its dump agent is on."""
    from conctools.agent import current_agent

    if current_agent() is not None:
        pid = os.getpid()
        print(f"conctools serve: `conctools dump {pid}` and `conctools top {pid}` look inside (pid {pid})", flush=True)


async def _serve(config: ServeConfig, recorder: Recorder, stopped_by: list[int] | None = None) -> None:
    loop = asyncio.get_running_loop()
    app = create_app(config.server)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    console: Any = None
    stop = asyncio.Event()

    def stop_by(signum: int) -> None:
        if stopped_by is not None:
            stopped_by.append(signum)
        stop.set()

    # The loop's own handlers before "listening on" is printed: a script that reads that line and then
    # sends SIGINT or SIGTERM finds them in place (the signal's number reaches the loop through its wakeup
    # descriptor even while it sleeps in select()). Installed after the line, a SIGINT sent right after it
    # was at times lost under load: asyncio.run's handler never ran and the server went on serving.
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop_by, sig)
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else config.port
        recorder.meta["url"] = f"http://{config.host}:{port}"
        bugs = ", ".join(sorted(config.server.bugs)) or "none"
        print(f"conctools serve: listening on http://{config.host}:{port} (bugs: {bugs})", flush=True)
        if config.console:
            from conctools.console import start

            console = start(
                loop,
                config.console_host,
                config.console_port,
                allow_remote=config.allow_remote_console,
                locals={"app": app, "recorder": recorder},
                recorder=recorder,
            )
            print(
                f"conctools serve: {console.where().removeprefix('conctools: ')} "
                "(commands: help, locks, deadlocks, slow, threads, resources, profile)",
                flush=True,
            )
        _announce_agent()  # after the console's line (scripts read the first two lines)
        try:
            await asyncio.wait_for(stop.wait(), config.duration_s)
        except TimeoutError:
            pass
        print("conctools serve: stopping", file=sys.stderr, flush=True)
    finally:
        if console is not None:
            await console.aclose()
        await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
