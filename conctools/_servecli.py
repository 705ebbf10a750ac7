"""The ``serve``, ``loadtest``, ``demo`` and ``console`` subcommands of the ``conctools`` command.

Kept apart from ``cli.py`` so that ``conctools run`` never imports aiohttp, aiomonitor or
the load-test machinery: each handler imports what it needs when it runs. Bad input is a
one-line error (``UsageError``, exit status 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from conctools._typing import Any
from conctools.cli import UsageError, _positive_int, positive_seconds

__all__ = ["add_run_console_options", "add_server_commands", "apply_run_console_options"]


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port between 0 and 65535, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _users(text: str) -> int:
    from conctools.loadtest import MAX_USERS  # here: `conctools run` parses its options without it

    value = _positive_int(text)
    if value > MAX_USERS:
        raise argparse.ArgumentTypeError(f"at most {MAX_USERS} users, got {value}")
    return value


def _duration(text: str) -> float:
    from conctools.loadtest import MAX_DURATION_S

    value = positive_seconds(text)
    if value > MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"at most {MAX_DURATION_S:g} seconds (an hour), got {text!r}")
    return value


def add_server_commands(sub: Any) -> None:
    """Register ``serve``, ``loadtest``, ``demo`` and ``console`` on the ``conctools`` subparsers."""
    from conctools.loadtest import MAX_USERS

    serve = sub.add_parser("serve", help="run the sample async server, instrumented, with the console")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0 picks a free one)")
    serve.add_argument(
        "--bugs",
        nargs="?",
        const="all",
        default=None,
        metavar="NAMES",
        help="switch on the seeded bugs: all (no value) or a comma list of blocking, contention, inversion, "
        "blocking-db, pool-hog, n-plus-one",
    )
    serve.add_argument(
        "--db",
        metavar="URL",
        help="the orders database: postgresql://... (asyncpg), sqlite:///PATH or a file path "
        "(default: orders.sqlite3 in --out DIR, else a temporary file)",
    )
    serve.add_argument("--no-instrument", action="store_true", help="plain stdlib primitives, no conctools")
    serve.add_argument("--no-console", action="store_true", help="do not start the aiomonitor console")
    serve.add_argument("--no-gil", action="store_true", help="instrumented, but without the GIL monitor")
    serve.add_argument("--console-host", default="127.0.0.1", help="console address (default 127.0.0.1)")
    serve.add_argument("--console-port", type=_port, default=20101, help="console telnet port (default 20101)")
    serve.add_argument(
        "--allow-remote-console", action="store_true", help="allow a non-loopback --console-host (runs any Python)"
    )
    serve.add_argument(
        "--loop-threshold",
        type=positive_seconds,
        default=0.1,
        metavar="SECONDS",
        help="report loop stalls longer than this (default 0.1)",
    )
    serve.add_argument(
        "--deadlock-timeout",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="report deadlocks/hangs after this long (default 10)",
    )
    serve.add_argument("--duration", type=positive_seconds, metavar="SECONDS", help="stop after SECONDS")
    serve.add_argument(
        "--out", type=Path, metavar="DIR", help="write the report files to DIR when it stops (default: none)"
    )
    serve.add_argument("--no-report", action="store_true", help="do not print the summary to stderr at exit")
    serve.set_defaults(handler=_serve_command)

    load = sub.add_parser("loadtest", help="load a server with Locust (a separate, bounded process)")
    load.add_argument("--host", default=None, help="target URL (default http://127.0.0.1:8080; loopback unless given)")
    load.add_argument(
        "--users", type=_users, default=10, metavar="N", help=f"simulated users, at most {MAX_USERS} (default 10)"
    )
    load.add_argument(
        "--spawn-rate", type=_positive_float, metavar="R", help="users started per second (default: all at once)"
    )
    load.add_argument(
        "--duration", type=_duration, default=10.0, metavar="SECONDS", help="run time, at most an hour (default 10)"
    )
    load.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        metavar="K",
        help="Locust worker processes on this machine (default 1: no master/worker split)",
    )
    role = load.add_mutually_exclusive_group()
    role.add_argument(
        "--master",
        action="store_true",
        help="run Locust's master: it waits for --expect-workers workers (other machines) and writes the results",
    )
    role.add_argument(
        "--worker", action="store_true", help="run one Locust worker of the master at --master-host (--master-port)"
    )
    load.add_argument("--expect-workers", type=_positive_int, metavar="N", help="with --master: workers to wait for")
    load.add_argument(
        "--master-host", default=None, metavar="HOST", help="with --worker: the master's host (default 127.0.0.1)"
    )
    load.add_argument(
        "--master-port", type=_port, default=5557, metavar="PORT", help="the master's port (default 5557, Locust's)"
    )
    load.add_argument(
        "--master-bind-host",
        default=None,
        metavar="HOST",
        help="with --master: where workers reach it (default 127.0.0.1; name an interface to accept other machines)",
    )
    load.add_argument(
        "--out", type=Path, default=Path("build/loadtest"), metavar="DIR", help="result files (default build/loadtest)"
    )
    load.add_argument("--locustfile", type=Path, metavar="PATH", help="Locust users (default loadtests/locustfile.py)")
    load.set_defaults(handler=_loadtest_command)

    demo = sub.add_parser("demo", help="serve with the seeded bugs, load it with Locust, report what was found")
    demo.add_argument(
        "--duration", type=_duration, default=30.0, metavar="SECONDS", help="load time, at most an hour (default 30)"
    )
    demo.add_argument(
        "--users", type=_users, default=20, metavar="N", help=f"simulated users, at most {MAX_USERS} (default 20)"
    )
    demo.add_argument(
        "--processes", type=_positive_int, default=1, metavar="K", help="Locust worker processes (default 1)"
    )
    demo.add_argument(
        "--out", type=Path, default=Path("build/demo"), metavar="DIR", help="the report folder (default build/demo)"
    )
    demo.add_argument(
        "--deadlock-timeout",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="the server's deadlock/hang timeout (default 10)",
    )
    demo.set_defaults(handler=_demo_command)

    console = sub.add_parser(
        "console",
        help="open the live console of one of your processes (conctools run --console, serve, attach())",
        usage="conctools console [PID] [--port N]",
    )
    console.add_argument(
        "pid", nargs="?", type=_positive_int, metavar="PID", help="the process (default: the only one)"
    )
    console.add_argument("--port", type=_port, metavar="N", help="the console's port (when PID has several, or no PID)")
    console.set_defaults(handler=_console_command)


def _serve_command(ns: argparse.Namespace) -> int:
    try:
        from conctools.server.app import ServerOptions, parse_bugs
        from conctools.server.instruments import InstrumentOptions
        from conctools.server.serve import ServeConfig, serve
    except ImportError as exc:
        raise UsageError(f"conctools serve: error: {exc.name} is missing: pip install 'conctools[server]'") from None
    try:
        bugs = parse_bugs(ns.bugs)
    except ValueError as exc:
        raise UsageError(f"conctools serve: error: --bugs: {exc}") from None
    import shlex

    from conctools.server.db import check_database_url

    try:
        check_database_url(ns.db)
    except ValueError as exc:
        raise UsageError(f"conctools serve: error: --db: {exc}") from None
    config = ServeConfig(
        host=ns.host,
        port=ns.port,
        server=ServerOptions(
            bugs=bugs,
            instrument=not ns.no_instrument,
            prewarm=True,
            db=ns.db,
            db_dir=ns.out,
            instruments=InstrumentOptions(
                loop_threshold_s=ns.loop_threshold, deadlock_timeout_s=ns.deadlock_timeout, gil=not ns.no_gil
            ),
        ),
        console=not ns.no_console,
        console_host=ns.console_host,
        console_port=ns.console_port,
        allow_remote_console=ns.allow_remote_console,
        out_dir=ns.out,
        duration_s=ns.duration,
        report=not ns.no_report,
        command="conctools " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["serve"] else "conctools serve",
    )
    console_errors: tuple[type[Exception], ...] = ()  # ``except ()`` catches nothing
    if config.console:
        try:
            from conctools.console import ConsoleError
        except ImportError as exc:
            raise UsageError(
                f"conctools serve: error: the console needs {exc.name}: pip install 'conctools[console]', "
                "or pass --no-console"
            ) from None
        console_errors = (ConsoleError,)
    try:
        return serve(config)
    except KeyboardInterrupt:  # Ctrl-C before the server's own handler was in place
        print("conctools serve: interrupted", file=sys.stderr)
        return 130
    except console_errors as exc:
        raise UsageError(f"conctools serve: error: {exc}") from None
    except OSError as exc:
        raise UsageError(f"conctools serve: error: cannot listen: {exc.strerror or exc}") from None


def _loadtest_command(ns: argparse.Namespace) -> int:
    from conctools.loadtest import LoadTestError, LoadTestOptions, run_loadtest

    options = LoadTestOptions(
        users=ns.users,
        spawn_rate=ns.spawn_rate,
        duration_s=ns.duration,
        processes=ns.processes,
        out_dir=ns.out,
        locustfile=ns.locustfile,
    )
    if ns.host is not None:
        options.host = ns.host
        options.allow_remote = True
    options.role = "master" if ns.master else "worker" if ns.worker else "standalone"
    options.expect_workers = ns.expect_workers or 0
    options.master_port = ns.master_port
    if ns.master_host is not None:
        if not ns.worker:
            raise UsageError("conctools loadtest: error: --master-host goes with --worker")
        options.master_host = ns.master_host
    if ns.master_bind_host is not None:
        if not ns.master:
            raise UsageError("conctools loadtest: error: --master-bind-host goes with --master")
        options.master_bind_host = ns.master_bind_host
    try:
        result = run_loadtest(options)
    except LoadTestError as exc:
        raise UsageError(f"conctools loadtest: error: {exc}") from None
    if options.role == "worker":
        print(f"conctools loadtest: worker ended (exit {result.returncode}); wrote {result.files[0]}")
        return 0 if result.returncode == 0 else 1
    if result.summary is None:
        tail = result.output.strip().splitlines()[-1:] or ["no output"]
        print(f"conctools loadtest: locust wrote no stats (exit {result.returncode}): {tail[0]}", file=sys.stderr)
        return 1
    print(result.summary.format())
    print(f"conctools loadtest: wrote {', '.join(str(p) for p in result.files)}")
    return 0 if result.returncode == 0 else 1


def _demo_command(ns: argparse.Namespace) -> int:
    from conctools.demo import DemoError, DemoOptions, run_demo

    options = DemoOptions(
        duration_s=ns.duration,
        users=ns.users,
        processes=ns.processes,
        out_dir=ns.out,
        deadlock_timeout_s=ns.deadlock_timeout,
    )
    try:
        return run_demo(options)
    except DemoError as exc:
        raise UsageError(f"conctools demo: error: {exc}") from None


def _console_command(ns: argparse.Namespace) -> int:
    from conctools.console.access import ConsoleError
    from conctools.console.client import run_client

    try:
        return run_client(ns.pid, ns.port)
    except KeyboardInterrupt:
        return 130
    except ConsoleError as exc:
        raise UsageError(f"conctools console: error: {exc}") from None


def add_run_console_options(run: Any) -> None:
    """``conctools run --console [--console-host H] [--console-port N] [--allow-remote-console]``."""
    run.add_argument(
        "--console",
        action="store_true",
        help="open the live console (aiomonitor's and conctools' commands) while the program runs; "
        "`conctools console PID` opens a session",
    )
    run.add_argument("--console-host", default=None, metavar="HOST", help="console address (default 127.0.0.1)")
    run.add_argument(
        "--console-port", type=_port, default=None, metavar="N", help="console port (default 20101; 0 picks a free one)"
    )
    run.add_argument(
        "--allow-remote-console",
        action="store_true",
        help="allow a non-loopback --console-host (it runs any Python; the secret is still required)",
    )


def apply_run_console_options(ns: argparse.Namespace, options: Any) -> None:
    """Copy the console flags into ``options`` (a ``RunOptions``); a flag without ``--console``,
    a refused host or a missing aiomonitor is a usage error."""
    if not ns.console:
        for flag, given in (
            ("--console-host", ns.console_host is not None),
            ("--console-port", ns.console_port is not None),
            ("--allow-remote-console", ns.allow_remote_console),
        ):
            if given:
                raise UsageError(f"conctools run: error: {flag} needs --console")
        return
    from conctools._net import is_loopback

    host = ns.console_host if ns.console_host is not None else "127.0.0.1"
    if not is_loopback(host) and not ns.allow_remote_console:
        raise UsageError(
            f"conctools run: error: refusing to open the console on non-loopback address {host!r} "
            "(it runs arbitrary Python): add --allow-remote-console to allow it"
        )
    try:
        import conctools.console.launch  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            f"conctools run: error: the console needs {exc.name}: pip install 'conctools[console]'"
        ) from None
    options.console = True
    options.console_host = host
    options.console_port = ns.console_port if ns.console_port is not None else 20101
    options.allow_remote_console = ns.allow_remote_console
