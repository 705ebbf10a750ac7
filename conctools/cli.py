"""The ``conctools`` command line.

``conctools run [options] script.py [args]`` and ``conctools run [options] -m module [args]``
run a program unchanged under conctools and report. Bad input gets one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from conctools import __version__
from conctools._typing import NoReturn

__all__ = ["EXIT_USAGE", "main"]

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message}")

    def _get_formatter(self) -> argparse.HelpFormatter:
        # The width argparse's formatter finds with shutil.get_terminal_size(), without importing shutil
        # (and zlib, bz2, lzma: ~4 ms of every `conctools run`'s start-up; add_argument makes a formatter).
        return self.formatter_class(prog=self.prog, width=_terminal_columns() - 2)  # type: ignore[call-arg]


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``: ``$COLUMNS``, else standard output's terminal, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def non_negative_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number of seconds, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds > 0."""
    try:
        value = non_negative_seconds(text)
    except argparse.ArgumentTypeError:
        value = -1.0 if text.strip().startswith("-") else float("nan")
        if value != -1.0:
            raise
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text!r}")
    return value


def _report_command(ns: argparse.Namespace) -> int:
    """``conctools report``: re-render a saved run; a bad file is one line and exit 2."""
    from conctools.reporting import load_json, render_text
    from conctools.reporting.html import write_html
    from conctools.reporting.trace import write_trace

    paths = []
    for path in ns.report_json:
        if path.is_dir() and (path / "report.json").is_file():  # `conctools report out/` means out/report.json
            path = path / "report.json"
        paths.append(path)
    path = paths[0]
    try:
        snapshots = [load_json(p) for p in paths]
    except ValueError as exc:
        raise UsageError(f"conctools report: error: {exc}") from None
    snapshot = snapshots[0]
    if len(snapshots) > 1:  # several processes, runs or machines: one report, a section per process
        from conctools.children.merge import merge_snapshots

        try:
            snapshot = merge_snapshots(snapshots, [str(p) for p in paths])
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise UsageError(f"conctools report: error: cannot merge the reports ({exc})") from None
    if ns.out is not None:
        check_out_dir(ns.out, "conctools report")
    try:
        if ns.out is not None:
            from conctools.runner import write_reports

            written = write_reports(snapshot, ns.out)
            print(f"conctools: wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
        if ns.html is not None:
            write_html(snapshot, ns.html)
            print(f"conctools: wrote {ns.html}", file=sys.stderr)
        if ns.trace is not None:
            write_trace(snapshot, ns.trace)
            print(f"conctools: wrote {ns.trace}", file=sys.stderr)
        from conctools.exporters.wiring import report_exports, wants_exports

        problem = report_exports(ns, snapshot) if wants_exports(ns) else None  # --otel, --pprof, --speedscope
        if problem is not None:
            raise UsageError(problem)
        if ns.text or (ns.html is None and ns.trace is None and ns.out is None and not wants_exports(ns)):
            sys.stdout.write(render_text(snapshot))
    except OSError as exc:
        raise UsageError(f"conctools report: error: cannot write: {exc}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        # Loading checks the shape of the file, not every value: a hand-edited one may still be off.
        raise UsageError(f"conctools report: error: {path}: corrupt conctools report ({exc!r})") from None
    return 0


def _build_parser(only_run: bool = False) -> _Parser:
    """The whole command line; with ``only_run``, just ``run`` (what ``conctools run`` needs at start-up)."""
    parser = _Parser(prog="conctools", description="Find and explain concurrency problems in Python programs.")
    parser.add_argument("--version", action="version", version=f"conctools {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    run = sub.add_parser(
        "run",
        help="run a script or module under conctools and report",
        usage="conctools run [options] (script.py | -m module) [args ...]",
    )
    run.add_argument("-m", dest="module", metavar="MODULE", help="run a library module as a script")
    run.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="also write report.txt, report.json, trace.json and report.html to DIR (default: none)",
    )
    run.add_argument(
        "--capacity",
        type=_positive_int,
        default=100_000,
        metavar="N",
        help="events kept in memory for the report (default 100000; recurring kinds are capped lower: "
        "spans at the latest 4096 plus the slowest per name)",
    )
    run.add_argument("--no-report", action="store_true", help="do not print the summary to stderr")
    run.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log conctools' lines (every traced call at DEBUG) to stderr",
    )
    run.add_argument("--profile", action="store_true", help="profile every thread and task with yappi")
    run.add_argument(
        "--profile-clock",
        choices=["wall", "cpu"],
        default=None,
        help="the profile's clock, with --profile (default: wall)",
    )
    run.add_argument(
        "--sample-interval",
        type=non_negative_seconds,
        default=0.5,
        metavar="SECONDS",
        help="sample CPU, memory, threads and fds every SECONDS (0: off; default 0.5)",
    )
    run.add_argument(
        "--deadlock-timeout",
        type=non_negative_seconds,
        default=10.0,
        metavar="SECONDS",
        help="report a deadlock or hang after SECONDS without progress, and exit 86/87 (0: off; default 10)",
    )
    run.add_argument(
        "--loop-threshold",
        type=non_negative_seconds,
        default=0.1,
        metavar="SECONDS",
        help="report event-loop callbacks that block the loop longer than SECONDS (0: off; default 0.1)",
    )
    run.add_argument(
        "--detect-blocking",
        action="store_true",
        help="report time.sleep, blocking socket/file calls and thread waits made on an event loop's thread",
    )
    run.add_argument(
        "--no-trace-locks",
        action="store_true",
        help="do not replace threading/asyncio locks with traced ones (no lock table, no lock-order check)",
    )
    run.add_argument(
        "--no-lock-order",
        action="store_true",
        help="trace locks but do not check lock order (no lock-order inversion reports)",
    )
    run.add_argument(
        "--lock-wait-threshold",
        type=non_negative_seconds,
        default=0.001,
        metavar="SECONDS",
        help="record lock waits of at least SECONDS as events with their site (every wait is counted in the "
        "lock table; the first few per site are recorded whatever their length; 0: every wait; default 0.001)",
    )
    run.add_argument(
        "--no-gil",
        action="store_true",
        help="do not sample thread states for GIL waits and CPU-bound threads (no bottleneck verdict)",
    )
    run.add_argument(
        "--no-follow-children",
        action="store_true",
        help="observe this process only (default: Python child processes run under the same options, one report)",
    )
    from conctools._servecli import add_run_console_options

    add_run_console_options(run)  # --console, --console-host, --console-port, --allow-remote-console
    from conctools.exporters.wiring import add_report_options, add_run_options

    add_run_options(run)  # --otel
    from conctools.agent.commands import add_run_options as add_agent_run_options

    add_agent_run_options(run)  # --no-dump-agent
    if only_run:
        return parser
    report = sub.add_parser(
        "report",
        help="re-render saved report.json files (several: merged into one) as text, HTML or a Perfetto trace",
        usage="conctools report DIR/report.json [MORE.json ...] [--out DIR] [--html PATH] [--trace PATH] [--text] "
        "[--otel] [--pprof DIR] [--speedscope FILE]",
    )
    report.add_argument(
        "report_json",
        type=Path,
        nargs="+",
        metavar="REPORT_JSON",
        help="a report.json written by conctools run; several are merged into one report, a section per process",
    )
    report.add_argument(
        "--out", type=Path, metavar="DIR", help="write report.txt, report.json, trace.json and report.html to DIR"
    )
    report.add_argument("--html", type=Path, metavar="PATH", help="write the HTML report to PATH")
    report.add_argument("--trace", type=Path, metavar="PATH", help="write the Chrome/Perfetto trace to PATH")
    report.add_argument("--text", action="store_true", help="print the text report (the default with no other output)")
    add_report_options(report)  # --otel, --pprof DIR, --speedscope FILE
    report.set_defaults(handler=_report_command)
    # Other commands: sub.add_parser(...).set_defaults(handler=fn), fn(namespace) -> exit status.
    from conctools._servecli import add_server_commands

    add_server_commands(sub)  # serve, loadtest, demo
    from conctools.agent.commands import add_agent_commands

    add_agent_commands(sub)  # dump, top, ps
    return parser


def _split_run_argv(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``run``'s argv into conctools options and ``[target, *program args]``.

    Options end at the script path, at ``-m MODULE`` or at ``--``; everything after belongs
    to the program, even if it looks like a conctools option.
    """
    takes_value: set[str] = set()
    for action in parser._actions:
        if action.option_strings and action.nargs != 0:
            takes_value.update(action.option_strings)
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return argv[:i], argv[i + 1 :]
        if token == "-m":
            if i + 1 >= len(argv):
                return argv, []
            return argv[: i + 2], argv[i + 2 :]
        if token.startswith("-m") and len(token) > 2 and not token.startswith("--"):
            return argv[: i + 1], argv[i + 1 :]
        if token.startswith("-") and token != "-":
            if token in takes_value:
                i += 2
                continue
            i += 1
            continue
        return argv[:i], argv[i:]
    return argv, []


def check_out_dir(path: Path, command: str) -> None:
    """Make sure ``--out DIR`` can take the report before anything runs: create it, or one line and exit 2."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"{command}: error: --out {str(path)!r} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{command}: error: --out {str(path)!r}: cannot create it: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{command}: error: --out {str(path)!r}: not writable")


def _run_command(parser: _Parser, run_parser: argparse.ArgumentParser, argv: list[str]) -> int:
    from conctools.runner import RunOptions, run_program  # here: `conctools dump` & co start faster without it

    own, rest = _split_run_argv(run_parser, argv)
    ns = run_parser.parse_args(own)
    if ns.module:
        options = RunOptions(module=ns.module, args=rest)
    else:
        if not rest:
            raise UsageError("conctools run: error: give a script to run, or -m MODULE")
        script, *args = rest
        if not os.path.exists(script):
            raise UsageError(f"conctools run: error: script {script!r} not found")
        if os.path.isdir(script) and not os.path.exists(os.path.join(script, "__main__.py")):
            raise UsageError(f"conctools run: error: {script!r} is a directory without __main__.py")
        options = RunOptions(script=script, args=args)
    options.out_dir = ns.out
    options.capacity = ns.capacity
    options.report = not ns.no_report
    options.log_level = ns.log_level
    options.profile = ns.profile
    if ns.profile_clock is not None and not ns.profile:
        raise UsageError("conctools run: error: --profile-clock needs --profile")
    options.profile_clock = ns.profile_clock or "wall"
    options.sample_interval_s = ns.sample_interval or None
    options.deadlock_timeout_s = ns.deadlock_timeout or None
    options.loop_threshold_s = ns.loop_threshold or None
    options.detect_blocking = ns.detect_blocking
    options.trace_locks = not ns.no_trace_locks
    options.lock_order = not ns.no_lock_order
    options.gil = not ns.no_gil
    options.follow_children = not ns.no_follow_children
    from conctools._servecli import apply_run_console_options

    apply_run_console_options(ns, options)
    from conctools.exporters.wiring import apply_run_options

    problem = apply_run_options(ns, options)  # --otel
    if problem is not None:
        raise UsageError(problem)
    options.lock_wait_threshold_s = ns.lock_wait_threshold
    from conctools.agent.commands import apply_run_options as apply_agent_run_options

    apply_agent_run_options(ns, options)  # --no-dump-agent
    if options.module:
        import importlib.util

        # As `python -m` does: the current directory first (the `conctools` script's own is not).
        saved_path0 = sys.path[0] if sys.path else None
        if sys.path:
            sys.path[0] = os.getcwd()
        try:
            found = importlib.util.find_spec(options.module)
        except (ImportError, ValueError):
            found = None
        finally:
            if saved_path0 is not None:
                sys.path[0] = saved_path0
        if found is None:
            raise UsageError(f"conctools run: error: no module named {options.module!r}")
    if options.out_dir is not None:  # last: the checks above create nothing
        check_out_dir(options.out_dir, "conctools run")
    if options.console:
        from conctools.console.access import ConsoleError

        try:
            return run_program(options)
        except ConsoleError as exc:  # raised before the program starts (a busy port, an unsafe directory)
            raise UsageError(f"conctools run: error: {exc}") from None
    return run_program(options)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``conctools`` command; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser(only_run=bool(args) and args[0] == "run")
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    try:
        if args and args[0] == "run":
            return _run_command(parser, subparsers.choices["run"], args[1:])
        ns = parser.parse_args(args)
        handler = getattr(ns, "handler", None)
        if handler is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        status: int = handler(ns)
        return status
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C while conctools itself starts or stops: no traceback
        print("conctools: interrupted", file=sys.stderr)
        return 130
