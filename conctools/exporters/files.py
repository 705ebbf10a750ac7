"""The export files of ``conctools run --out DIR`` and ``conctools report``: pprof and speedscope.

- ``locks.pb.gz`` and ``locks-holders.pb.gz`` (pprof, lock contention) with every ``--out``;
- ``profile.pb.gz`` (pprof) and ``profile.speedscope.json`` with ``--profile --out``.

pprof files need the ``protobuf`` package (``conctools[pprof]``): without it they are skipped with
one line saying so. A wiring module: it reads a live profile or a snapshot and calls the writers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conctools.events import LockWaitEvent, SpanEvent
from conctools.exporters import MissingExtra
from conctools.exporters.callgraph import CallGraph, from_section, from_yappi
from conctools.recorder import Snapshot

__all__ = ["profile_graph", "write_lock_profiles", "write_profile_files", "write_speedscope"]


def _lock_rows(snapshot: Snapshot) -> list[dict[str, Any]]:
    rows = snapshot.sections.get("locks")
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def write_lock_profiles(snapshot: Snapshot, out_dir: Path) -> list[Path]:
    """``locks.pb.gz`` and ``locks-holders.pb.gz`` in ``out_dir`` (nothing without traced locks).

    Raises :class:`~conctools.exporters.MissingExtra` without protobuf."""
    rows = _lock_rows(snapshot)
    if not rows:
        return []
    from conctools.exporters.pprof import lock_profiles

    waiters, holders = lock_profiles(rows, snapshot.of_kind(LockWaitEvent), snapshot.duration_s)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "locks.pb.gz", out_dir / "locks-holders.pb.gz"]
    paths[0].write_bytes(waiters)
    paths[1].write_bytes(holders)
    return paths


def profile_graph(profile: Any) -> CallGraph:
    """The call graph of a stopped :class:`~conctools.profiling.Profile`. conctools' own wrappers
    stay in it: one wrapper serves every traced function, so splicing it out would mix their callers."""
    stats = getattr(profile, "_yappi_stats", None)
    if stats is None:
        return from_section(profile.summary())
    return from_yappi(stats, profile.clock, profile.duration_s)


def write_speedscope(
    path: Path, graph: CallGraph | None, profile_section: dict[str, Any] | None, spans: list[SpanEvent]
) -> Path:
    """Write ``profile.speedscope.json`` (see :mod:`conctools.exporters.speedscope`)."""
    from conctools.exporters.speedscope import render_speedscope

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_speedscope(graph, profile_section, spans), encoding="utf-8")
    return path


def write_profile_files(profile: Any, spans: list[SpanEvent], out_dir: Path) -> tuple[list[Path], str | None]:
    """``profile.pb.gz`` and ``profile.speedscope.json`` of a stopped profile; also returns the line
    to print when the pprof file could not be written (no protobuf), else ``None``."""
    graph = profile_graph(profile)
    section = profile.summary()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    note = None
    try:
        from conctools.exporters.pprof import cpu_profile

        pb = cpu_profile(graph)
    except MissingExtra as exc:
        note = f"conctools: not writing profile.pb.gz: {exc}"
    else:
        (out_dir / "profile.pb.gz").write_bytes(pb)
        paths.append(out_dir / "profile.pb.gz")
    paths.append(write_speedscope(out_dir / "profile.speedscope.json", graph, section, spans))
    return paths, note
