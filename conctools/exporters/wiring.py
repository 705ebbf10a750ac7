"""The exporters' part of ``conctools run`` and ``conctools report`` (flags, checks, files).

``run --otel``: the program's spans, lock waits and metrics go to OpenTelemetry while it runs.
``report saved.json --otel | --pprof DIR | --speedscope FILE`` converts a saved run. Bad input (a
missing extra, an ``OTEL_*`` value conctools cannot honour) is one line and exit status 2,
before the program starts.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from conctools._typing import Any
from conctools.exporters import MissingExtra, require
from conctools.recorder import Recorder, Snapshot

__all__ = [
    "add_report_options",
    "add_run_options",
    "apply_run_options",
    "check_otel",
    "otel_export",
    "report_exports",
    "shutdown_otel",
]


def add_run_options(run: argparse.ArgumentParser) -> None:
    """``--otel`` on ``conctools run``."""
    run.add_argument(
        "--otel",
        action="store_true",
        help="send spans, lock waits and metrics to OpenTelemetry (OTEL_* variables; needs conctools[otel])",
    )


def check_otel(command: str) -> str | None:
    """The one-line error for ``--otel`` here (a missing extra, a bad ``OTEL_*`` value), or ``None``."""
    try:
        require("otel", f"{command} --otel")
        from conctools.exporters.otel import OtelConfigError, _exporter_choice, _metric_interval_s, _protocol

        try:
            for signal in ("traces", "metrics"):
                if _exporter_choice(signal) == "otlp":
                    _protocol(signal)
            _metric_interval_s()
        except OtelConfigError as exc:
            return f"{command}: error: {exc}"
    except MissingExtra as exc:
        return f"{command}: error: {exc}"
    return None


def apply_run_options(ns: argparse.Namespace, options: Any) -> str | None:
    """Copy ``--otel`` into the run options; the one-line error when it cannot be honoured."""
    options.otel = bool(getattr(ns, "otel", False))
    return check_otel("conctools run") if options.otel else None


@contextlib.contextmanager
def otel_export(recorder: Recorder, service_name: str | None = None) -> Iterator[None]:
    """Export ``recorder`` to OpenTelemetry inside the block; flush and close it on exit (at most a
    few seconds: an unreachable collector never holds the program)."""
    from conctools.exporters.otel import instrument

    export = instrument(recorder, service_name=service_name)
    try:
        yield
    finally:
        if export is not None:
            export.shutdown()


def shutdown_otel() -> None:
    """Flush every running OpenTelemetry export (a run that ends by ``os._exit`` or a deadlock exit)."""
    module = sys.modules.get("conctools.exporters.otel")
    if module is not None:
        module.shutdown_all()


def write_run_files(snapshot: Snapshot, out_dir: Path) -> tuple[list[Path], str | None]:
    """The lock profiles of ``--out``; with the line to print when protobuf is missing."""
    from conctools.exporters.files import write_lock_profiles

    try:
        return write_lock_profiles(snapshot, out_dir), None
    except MissingExtra as exc:
        return [], f"conctools: not writing locks.pb.gz: {exc}"


def add_report_options(report: argparse.ArgumentParser) -> None:
    """``--otel``, ``--pprof DIR`` and ``--speedscope FILE`` on ``conctools report``."""
    report.add_argument("--otel", action="store_true", help="send the saved spans and metrics to OpenTelemetry")
    report.add_argument("--pprof", type=Path, metavar="DIR", help="write locks.pb.gz (and profile.pb.gz) to DIR")
    report.add_argument("--speedscope", type=Path, metavar="FILE", help="write a speedscope profile to FILE")


def wants_exports(ns: argparse.Namespace) -> bool:
    """True when ``conctools report`` was asked for an export (then no text by default)."""
    return bool(getattr(ns, "otel", False) or getattr(ns, "pprof", None) or getattr(ns, "speedscope", None))


def report_exports(ns: argparse.Namespace, snapshot: Snapshot) -> str | None:
    """Do the exports ``conctools report`` was asked for; the one-line error, or ``None``."""
    from conctools.events import SpanEvent
    from conctools.exporters.callgraph import from_section
    from conctools.exporters.files import write_lock_profiles, write_speedscope

    if getattr(ns, "otel", False):
        problem = check_otel("conctools report")
        if problem is not None:
            return problem
    profile = snapshot.sections.get("profile")
    graph = from_section(profile) if isinstance(profile, dict) else None
    try:
        if ns.pprof is not None:
            paths = write_lock_profiles(snapshot, ns.pprof)
            if graph is not None and graph.functions:
                from conctools.exporters.pprof import cpu_profile

                (ns.pprof / "profile.pb.gz").write_bytes(cpu_profile(graph))
                paths.append(ns.pprof / "profile.pb.gz")
            print(f"conctools: wrote {', '.join(map(str, paths)) or 'nothing (no locks, no profile)'}", file=sys.stderr)
        if ns.speedscope is not None:
            write_speedscope(ns.speedscope, graph, profile, snapshot.of_kind(SpanEvent))
            print(f"conctools: wrote {ns.speedscope}", file=sys.stderr)
    except MissingExtra as exc:
        return f"conctools report: error: {exc}"
    except OSError as exc:
        return f"conctools report: error: cannot write: {exc}"
    if getattr(ns, "otel", False):
        from conctools.exporters.otel import send_snapshot

        sent = send_snapshot(snapshot)
        print(f"conctools: sent {sent} spans and the metrics to OpenTelemetry", file=sys.stderr)
    return None
