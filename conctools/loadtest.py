"""Run the Locust load test against a server, as a separate, bounded process.

Locust monkey-patches the interpreter with gevent when it is imported, so it never runs in
a process conctools observes: :func:`run_loadtest` starts ``python -m locust`` headless,
waits for it (bounded by the run time plus a grace period), and reads Locust's own result
files back into a :class:`LoadSummary`. Nothing here imports locust.

Bounds: at most :data:`MAX_USERS` users and :data:`MAX_DURATION_S` seconds per run; the
target is loopback unless the caller names another host explicitly (then a warning).
``processes > 1`` uses Locust's own distributed mode (``--processes``: one master, K
workers, on a private loopback port), which is how a load test scales past one core.
Across machines, the same engine: ``role="master"`` (``--master --expect-workers N``) runs
the headless, bounded master, which waits for its N workers, hands them the users and writes
the same files and summary as a one-process run; ``role="worker"`` (``--worker
--master-host HOST``) runs one worker that takes its users and target from that master, and
is bounded too (it is stopped after ``duration_s`` plus a grace period if the master has not
ended it). The master listens on loopback unless its bind host is named explicitly.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conctools._net import free_port, is_loopback

__all__ = [
    "MAX_DURATION_S",
    "MAX_USERS",
    "EndpointStats",
    "LoadSummary",
    "LoadTestError",
    "LoadTestOptions",
    "LoadTestResult",
    "default_locustfile",
    "locust_command",
    "run_loadtest",
]

MAX_USERS = 1000
MAX_DURATION_S = 3600.0
GRACE_S = 30.0  # Locust's own start-up, stop and report writing, on top of the run time


class LoadTestError(Exception):
    """The load test cannot run as asked (bad options, no locust, no locustfile)."""


@dataclass(slots=True, kw_only=True)
class LoadTestOptions:
    """One bounded Locust run."""

    host: str = "http://127.0.0.1:8080"
    users: int = 10
    spawn_rate: float | None = None  # users started per second (default: all within 1 s)
    duration_s: float = 10.0
    processes: int = 1
    out_dir: Path = Path("build/loadtest")
    locustfile: Path | None = None
    allow_remote: bool = False  # set when the user named the host explicitly
    user_classes: tuple[str, ...] = ()  # run only these User classes of the locustfile (default: all)
    role: str = "standalone"  # "master" or "worker": Locust's own distributed mode across machines
    expect_workers: int = 0  # master: wait for this many workers before loading
    master_host: str = "127.0.0.1"  # worker: the master to join
    master_port: int = 5557  # Locust's default
    master_bind_host: str = "127.0.0.1"  # master: where workers reach it (loopback unless named)
    expect_workers_max_wait_s: float = 60.0  # master: give up when the workers do not come


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointStats:
    """Locust's numbers for one request name (or ``Aggregated``)."""

    method: str
    name: str
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSummary:
    """The headline of a run: totals and latency percentiles, and the per-endpoint rows."""

    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    endpoints: tuple[EndpointStats, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)

    def format(self) -> str:
        """Three short lines for a terminal."""
        fail_pct = 100.0 * self.failures / self.requests if self.requests else 0.0
        lines = [
            f"requests {self.requests}, failures {self.failures} ({fail_pct:.1f}%), {self.rps:.1f} req/s",
            f"latency p50 {self.p50_ms:.0f} ms, p95 {self.p95_ms:.0f} ms, p99 {self.p99_ms:.0f} ms, "
            f"max {self.max_ms:.0f} ms",
        ]
        worst = sorted(self.endpoints, key=lambda e: -e.p99_ms)[:3]
        if worst:
            lines.append("slowest p99: " + ", ".join(f"{e.method} {e.name} {e.p99_ms:.0f} ms" for e in worst))
        return "\n".join(lines)


@dataclass(slots=True, kw_only=True)
class LoadTestResult:
    """What a run produced: Locust's exit status, its files, and the summary."""

    returncode: int
    summary: LoadSummary | None
    files: list[Path] = field(default_factory=list)
    output: str = ""


def default_locustfile() -> Path | None:
    """``loadtests/locustfile.py`` of the source checkout conctools runs from, if present."""
    candidate = Path(__file__).resolve().parent.parent / "loadtests" / "locustfile.py"
    return candidate if candidate.is_file() else None


def _is_loopback_url(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    return is_loopback(host)


def validate(options: LoadTestOptions) -> Path:
    """Check the bounds and the target; returns the locustfile. Raises :class:`LoadTestError`."""
    if not 1 <= options.users <= MAX_USERS:
        raise LoadTestError(f"--users must be between 1 and {MAX_USERS}, got {options.users}")
    if not 0 < options.duration_s <= MAX_DURATION_S:
        raise LoadTestError(f"--duration must be in (0, {MAX_DURATION_S:g}] seconds, got {options.duration_s:g}")
    if options.role not in ("standalone", "master", "worker"):
        raise LoadTestError(f"unknown load-test role {options.role!r}")
    if options.role != "standalone" and options.processes != 1:
        raise LoadTestError("--processes is the one-machine shortcut: use it without --master/--worker")
    if options.role == "master" and options.expect_workers < 1:
        raise LoadTestError("--master needs --expect-workers N (N >= 1)")
    if options.role != "master" and options.expect_workers:
        raise LoadTestError("--expect-workers goes with --master")
    if not 0 < options.master_port <= 65535:
        raise LoadTestError(f"--master-port must be a port between 1 and 65535, got {options.master_port}")
    if options.role == "master" and not is_loopback(options.master_bind_host):
        print(
            f"conctools loadtest: warning: the master listens on {options.master_bind_host}:{options.master_port}: "
            "any machine that reaches it can join as a worker",
            file=sys.stderr,
        )
    if options.processes < 1 or options.processes > (os.cpu_count() or 1) * 4:
        raise LoadTestError(f"--processes must be between 1 and {(os.cpu_count() or 1) * 4}, got {options.processes}")
    if options.spawn_rate is not None and options.spawn_rate <= 0:
        raise LoadTestError(f"--spawn-rate must be positive, got {options.spawn_rate:g}")
    parts = urllib.parse.urlsplit(options.host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoadTestError(f"--host must be an http(s) URL like http://127.0.0.1:8080, got {options.host!r}")
    if not _is_loopback_url(options.host):
        if not options.allow_remote:
            raise LoadTestError(f"refusing to load a non-loopback host {options.host!r} unless it is given explicitly")
        print(f"conctools loadtest: warning: loading a non-loopback host {options.host}", file=sys.stderr)
    for name in options.user_classes:
        if not name.isidentifier():
            raise LoadTestError(f"a User class name must be a Python name, got {name!r}")
    locustfile = options.locustfile if options.locustfile is not None else default_locustfile()
    if locustfile is None:
        raise LoadTestError("no locustfile found: pass --locustfile PATH (the users live in loadtests/locustfile.py)")
    if not Path(locustfile).is_file():
        raise LoadTestError(f"locustfile {str(locustfile)!r} not found")
    return Path(locustfile)


def locust_command(options: LoadTestOptions, locustfile: Path) -> list[str]:
    """The ``python -m locust`` command line for one headless, bounded run (or one worker of one)."""
    if options.role == "worker":  # its users, target and run time come from the master
        return [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(locustfile),
            "--worker",
            "--master-host",
            options.master_host,
            "--master-port",
            str(options.master_port),
            "--loglevel",
            "INFO",
        ]
    out = options.out_dir
    spawn_rate = options.spawn_rate if options.spawn_rate is not None else float(options.users)
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(locustfile),
        "--headless",
        "--users",
        str(options.users),
        "--spawn-rate",
        f"{spawn_rate:g}",
        "--run-time",
        f"{max(1, math.ceil(options.duration_s))}s",
        "--host",
        options.host,
        "--csv",
        str(out / "locust"),
        "--csv-full-history",
        "--html",
        str(out / "locust.html"),
        "--json-file",
        str(out / "locust"),
        "--only-summary",
        "--loglevel",
        "INFO",
        "--stop-timeout",
        "2",
    ]
    cmd += list(options.user_classes)
    if options.role == "master":
        cmd += [
            "--master",
            "--expect-workers",
            str(options.expect_workers),
            "--expect-workers-max-wait",
            f"{max(1, math.ceil(options.expect_workers_max_wait_s))}",
            "--master-bind-host",
            options.master_bind_host,
            "--master-bind-port",
            str(options.master_port),
        ]
    elif options.processes > 1:
        port = free_port()
        cmd += [
            "--processes",
            str(options.processes),
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(port),
            "--master-host",
            "127.0.0.1",
            "--master-port",
            str(port),
        ]
    return cmd


def read_summary(stats_csv: Path) -> LoadSummary:
    """Build a :class:`LoadSummary` from Locust's ``*_stats.csv``."""

    def num(row: dict[str, str], key: str) -> float:
        raw = row.get(key) or "0"
        try:
            return float(raw)
        except ValueError:
            return 0.0

    rows = list(csv.DictReader(stats_csv.open(encoding="utf-8", newline="")))
    endpoints = []
    total: dict[str, str] | None = None
    for row in rows:
        stats = EndpointStats(
            method=row.get("Type", ""),
            name=row.get("Name", ""),
            requests=int(num(row, "Request Count")),
            failures=int(num(row, "Failure Count")),
            rps=num(row, "Requests/s"),
            p50_ms=num(row, "50%"),
            p95_ms=num(row, "95%"),
            p99_ms=num(row, "99%"),
            max_ms=num(row, "Max Response Time"),
        )
        if row.get("Name") == "Aggregated":
            total = row
        else:
            endpoints.append(stats)
    if total is None:
        raise LoadTestError(f"{stats_csv} has no Aggregated row")
    return LoadSummary(
        requests=int(num(total, "Request Count")),
        failures=int(num(total, "Failure Count")),
        rps=num(total, "Requests/s"),
        p50_ms=num(total, "50%"),
        p95_ms=num(total, "95%"),
        p99_ms=num(total, "99%"),
        max_ms=num(total, "Max Response Time"),
        endpoints=tuple(endpoints),
    )


def _check_reachable(url: str) -> None:
    """Say "connection refused" before the run when nothing listens at ``url`` (a load of 100%
    failures says nothing about why)."""
    import socket

    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=5):
            pass
    except ConnectionRefusedError:
        raise LoadTestError(f"nothing listens at {url} (connection refused): start the server first") from None
    except OSError as exc:
        raise LoadTestError(f"cannot reach {url}: {exc.strerror or exc}") from None


def run_loadtest(options: LoadTestOptions) -> LoadTestResult:
    """Run Locust headless as a child process; bounded by the run time plus a grace period
    (for a master, plus the time it may wait for its workers)."""
    locustfile = validate(options)
    if options.role != "worker":  # a worker loads what its master names, checked there
        _check_reachable(options.host)
    options.out_dir.mkdir(parents=True, exist_ok=True)
    cmd = locust_command(options, locustfile)
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Workers may share the master's folder on one machine: each keeps a log of its own.
    log_path = options.out_dir / ("locust.log" if options.role != "worker" else f"locust-worker-{os.getpid()}.log")
    with log_path.open("w", encoding="utf-8") as log:
        # A new session: Locust's workers are killed with it if the run must be cut short.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        bound = options.duration_s + GRACE_S
        if options.role == "master":
            bound += options.expect_workers_max_wait_s
        try:
            returncode = proc.wait(timeout=bound)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise LoadTestError(f"locust did not finish within {bound:g} s; see {log_path}")
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    output = log_path.read_text(encoding="utf-8", errors="replace")
    if options.role == "worker":  # the master writes the stats and the report
        return LoadTestResult(returncode=returncode, summary=None, files=[log_path], output=output)
    files = [
        p
        for p in (
            options.out_dir / "locust_stats.csv",
            options.out_dir / "locust_stats_history.csv",
            options.out_dir / "locust_failures.csv",
            options.out_dir / "locust.html",
            options.out_dir / "locust.json",
            log_path,
        )
        if p.exists()
    ]
    stats_csv = options.out_dir / "locust_stats.csv"
    summary = read_summary(stats_csv) if stats_csv.exists() else None
    if summary is not None:
        (options.out_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n", encoding="utf-8")
        files.append(options.out_dir / "summary.json")
    return LoadTestResult(returncode=returncode, summary=summary, files=files, output=output)
