"""The ``dump``, ``top`` and ``ps`` subcommands, and ``conctools run --no-dump-agent``.

Kept apart from ``cli.py`` (which registers them with one call): each handler imports what it
needs when it runs. Every failure is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from conctools._typing import Any
from conctools.cli import UsageError, _positive_int, positive_seconds

__all__ = ["add_agent_commands", "add_run_options", "apply_run_options"]

DEFAULT_TIMEOUT_S = 10.0
_PS_TIMEOUT_S = 2.0


def add_agent_commands(sub: Any) -> None:
    """Register ``dump``, ``top`` and ``ps`` on the ``conctools`` subparsers."""
    dump = sub.add_parser(
        "dump",
        help="every thread, task, lock, wait and cycle of a running process, without stopping it",
        usage="conctools dump PID [--json] [--out FILE] [--timeout SECONDS] [--attach]",
    )
    dump.add_argument("pid", type=_positive_int, metavar="PID", help="the process (see `conctools ps`)")
    dump.add_argument("--json", action="store_true", help="the same as JSON (schema: docs/dump-schema.md)")
    dump.add_argument("--out", type=Path, metavar="FILE", help="write to FILE instead of stdout")
    dump.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"give up when the process has not answered in SECONDS (default {DEFAULT_TIMEOUT_S:g})",
    )
    dump.add_argument(
        "--attach",
        action="store_true",
        help="load the agent first into a process not started with conctools (CPython 3.14+, sys.remote_exec)",
    )
    dump.set_defaults(handler=_dump_command)

    top = sub.add_parser(
        "top",
        help="a live view of a running process: threads and tasks by state, lock waits, stalls, CPU",
        usage="conctools top PID [--interval SECONDS] [--iterations N] [--timeout SECONDS]",
    )
    top.add_argument("pid", type=_positive_int, metavar="PID", help="the process (see `conctools ps`)")
    top.add_argument(
        "--interval", type=positive_seconds, default=1.0, metavar="SECONDS", help="refresh every SECONDS (default 1)"
    )
    top.add_argument(
        "-n", "--iterations", type=_positive_int, metavar="N", help="stop after N screens (default: until q or Ctrl-C)"
    )
    top.add_argument(
        "--timeout",
        type=positive_seconds,
        default=5.0,
        metavar="SECONDS",
        help="give up when the process has not answered in SECONDS (default 5)",
    )
    top.set_defaults(handler=_top_command)

    ps = sub.add_parser("ps", help="your processes that `conctools dump` and `top` can look into")
    ps.add_argument("--json", action="store_true", help="as JSON: one object per process")
    ps.set_defaults(handler=_ps_command)


def _write(text: str, out: Path | None, command: str) -> None:
    if out is None:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:  # `conctools dump PID | head`: the reader had enough
            _silence_stdout()
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{command}: error: --out {str(out)!r}: cannot write it: {exc.strerror or exc}") from None
    print(f"{command}: wrote {out}", file=sys.stderr)


def _silence_stdout() -> None:
    """Point the closed stdout at /dev/null: the interpreter's last flush at exit must not fail."""
    import contextlib
    import os

    with contextlib.suppress(Exception):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _dump_command(ns: argparse.Namespace) -> int:
    from conctools.agent.client import ask
    from conctools.agent.location import AgentError

    if ns.out is not None and ns.out.is_dir():
        raise UsageError(f"conctools dump: error: --out {str(ns.out)!r} is a directory, not a file")
    try:
        if ns.attach:
            from conctools.agent.attach import attach

            attach(ns.pid, ns.timeout)
        document = ask(ns.pid, "dump", timeout_s=ns.timeout)
    except AgentError as exc:
        raise UsageError(f"conctools dump: error: {exc}") from None
    if ns.json:
        import json

        from conctools.reporting._safe import neutralise_json

        # Compact: a dump of 10,000 tasks is megabytes (`| python -m json.tool` indents it).
        text = neutralise_json(json.dumps(document, separators=(",", ":"), ensure_ascii=False)) + "\n"
    else:
        from conctools.reporting.dump_text import render_dump

        text = render_dump(document)
    _write(text, ns.out, "conctools dump")
    return 0


def _top_command(ns: argparse.Namespace) -> int:
    from conctools.agent.location import AgentError
    from conctools.agent.top import run_top

    try:
        return run_top(ns.pid, interval_s=ns.interval, iterations=ns.iterations, timeout_s=ns.timeout)
    except AgentError as exc:
        raise UsageError(f"conctools top: error: {exc}") from None


def _ps_rows() -> list[dict[str, Any]]:
    from conctools.agent.client import ask, command_of
    from conctools.agent.location import AgentError, listed_pids

    rows = []
    for pid in listed_pids():
        try:
            process = ask(pid, "hello", timeout_s=_PS_TIMEOUT_S)["process"]
            rows.append({**process, "answering": True})
        except AgentError as exc:
            if str(exc).startswith("no process"):  # it ended while we listed
                continue
            rows.append({"pid": pid, "command": command_of(pid), "answering": False, "problem": str(exc)})
    return rows


def _ps_command(ns: argparse.Namespace) -> int:
    from conctools.reporting._safe import neutralise
    from conctools.reporting._table import table

    rows = _ps_rows()
    if ns.json:
        import json

        from conctools.reporting._safe import neutralise_json

        _write(neutralise_json(json.dumps(rows, indent=1, ensure_ascii=False)) + "\n", None, "conctools ps")
        return 0
    if not rows:
        print(
            "conctools ps: no process of yours can be dumped (`conctools run`, `conctools serve` and "
            "conctools.enable_dump() make one that can)",
            file=sys.stderr,
        )
        return 0
    lines = []
    for row in rows:
        started = row.get("started_wall")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
        program = row.get("command", "?") if row.get("answering") else f"{row.get('command', '?')}  (not answering)"
        lines.append((row.get("pid"), when, row.get("python", "?"), program))
    _write(neutralise(table(("pid", "started", "python", "program"), lines, right=(0,))) + "\n", None, "conctools ps")
    return 0


def add_run_options(run: Any) -> None:
    """``conctools run --no-dump-agent``."""
    run.add_argument(
        "--no-dump-agent",
        action="store_true",
        help="do not start the agent that `conctools dump/top PID` ask (on by default; only your user reaches it)",
    )


def apply_run_options(ns: argparse.Namespace, options: Any) -> None:
    """Copy the agent flag into ``options`` (a ``RunOptions``)."""
    options.dump_agent = not ns.no_dump_agent
