"""pprof profiles (``*.pb.gz``): pprof's ``profile.proto`` through the protobuf library (extra ``pprof``).

- :func:`cpu_profile`: ``profile.pb.gz``, the yappi profile (sample type ``wall`` or ``cpu``, in
  nanoseconds) on stacks rebuilt from its call graph (:mod:`conctools.exporters.callgraph`).
- :func:`lock_profiles`: ``locks.pb.gz`` and ``locks-holders.pb.gz``, lock contention in Go's
  conventions (sample types ``contentions/count`` and ``delay/nanoseconds``): the first on the
  stacks of the waiters, one sample per lock class and waiting site, whose totals are the lock
  table's; the second by the holder each wait found (Go's mutex profile charges the holder too),
  from the recorded lock-wait events.

Stacks are innermost first, as pprof wants them; the innermost frame of a lock sample names the
lock (``Lock 'accounts' (wait)``), as Go's profiles show ``sync.(*Mutex).Lock``. ``go tool pprof``,
Pyroscope and Grafana read the files.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from conctools.events import Frame, LockWaitEvent
from conctools.exporters import require
from conctools.exporters.callgraph import CallGraph, stacks

__all__ = ["cpu_profile", "lock_profiles"]


@dataclass(frozen=True, slots=True)
class _Sample:
    frames: tuple[Frame, ...]  # innermost first
    values: tuple[int, ...]
    labels: tuple[tuple[str, str], ...] = ()


class _Builder:
    """One ``perftools.profiles.Profile``: interned strings, functions and locations."""

    def __init__(self) -> None:
        require("pprof", "pprof files")
        from conctools.exporters.profile_proto import Profile

        self.profile: Any = Profile()
        self.profile.string_table.append("")
        self._strings: dict[str, int] = {"": 0}
        self._functions: dict[tuple[str, str], int] = {}
        self._locations: dict[tuple[str, str, int], int] = {}

    def string(self, text: str) -> int:
        index = self._strings.get(text)
        if index is None:
            index = self._strings[text] = len(self.profile.string_table)
            self.profile.string_table.append(text)
        return index

    def location(self, frame: Frame) -> int:
        key = (frame.function, frame.filename, frame.lineno)
        loc_id = self._locations.get(key)
        if loc_id is not None:
            return loc_id
        fkey = (frame.function, frame.filename)
        func_id = self._functions.get(fkey)
        if func_id is None:
            func_id = self._functions[fkey] = len(self._functions) + 1
            fn = self.profile.function.add()
            fn.id = func_id
            fn.name = fn.system_name = self.string(frame.function)
            fn.filename = self.string(frame.filename)
        loc_id = self._locations[key] = len(self._locations) + 1
        loc = self.profile.location.add()
        loc.id = loc_id
        line = loc.line.add()
        line.function_id = func_id
        line.line = max(0, frame.lineno)
        return loc_id

    def finish(
        self,
        sample_types: Sequence[tuple[str, str]],
        samples: Iterable[_Sample],
        *,
        duration_ns: int,
        comments: Sequence[str] = (),
        default_type: str | None = None,
    ) -> bytes:
        p = self.profile
        for kind, unit in sample_types:
            vt = p.sample_type.add()
            vt.type, vt.unit = self.string(kind), self.string(unit)
        for s in samples:
            sample = p.sample.add()
            sample.location_id.extend(self.location(f) for f in s.frames)
            sample.value.extend(s.values)
            for key, value in s.labels:
                label = sample.label.add()
                label.key, label.str = self.string(key), self.string(value)
        p.period_type.type, p.period_type.unit = self.string(sample_types[0][0]), self.string(sample_types[0][1])
        p.period = 1
        p.time_nanos = time.time_ns()
        p.duration_nanos = max(0, duration_ns)
        p.comment.extend(self.string(c) for c in comments)
        if default_type is not None:
            p.default_sample_type = self.string(default_type)
        return gzip.compress(p.SerializeToString())


def cpu_profile(graph: CallGraph) -> bytes:
    """``profile.pb.gz`` of a profile's call graph: one sample per rebuilt stack, its own time."""
    builder = _Builder()
    funcs = graph.functions
    samples = [
        _Sample(
            frames=tuple(Frame(funcs[i].filename, funcs[i].lineno, funcs[i].name) for i in reversed(path)),
            values=(round(own_s * 1e9),),
        )
        for path, own_s in stacks(graph)
    ]
    return builder.finish(
        [(graph.clock, "nanoseconds")],
        samples,
        duration_ns=round(graph.duration_s * 1e9),
        comments=[f"conctools: yappi {graph.clock}-clock profile; stacks rebuilt from the call graph"],
    )


def _site_frame(site: str, function: str) -> Frame:
    filename, _, line = site.rpartition(":")
    try:
        lineno = int(line)
    except ValueError:
        filename, lineno = site, 0
    return Frame(filename or site, lineno, function or "?")


def lock_profiles(
    rows: Sequence[dict[str, Any]], waits: Sequence[LockWaitEvent], duration_s: float
) -> tuple[bytes, bytes]:
    """``(locks.pb.gz, locks-holders.pb.gz)`` from the lock table's ``rows`` and the recorded waits."""
    # The best stack seen for each (lock, waiting site): the longest.
    best: dict[tuple[str, str], tuple[Frame, ...]] = {}
    for w in waits:
        if w.stack and len(w.stack) > len(best.get((w.lock_name, w.site), ())):
            best[(w.lock_name, w.site)] = w.stack
    samples: list[_Sample] = []
    for row in rows:
        name, kind = str(row.get("name", "?")), str(row.get("kind", "?"))
        lock_frame = _site_frame(str(row.get("created_at", "?")), f"{kind} {name!r} (wait)")
        labels = (("lock", name), ("kind", kind))
        count_left = int(row.get("contentions", 0) or 0)
        delay_left = round(float(row.get("wait_total_s", 0.0) or 0.0) * 1e9)
        for site in row.get("hottest_sites", []) or []:
            n, delay = int(site.get("waits", 0)), round(float(site.get("wait_total_s", 0.0)) * 1e9)
            stack = best.get((name, str(site.get("site"))), ())
            frames = stack or (_site_frame(str(site.get("site", "?")), str(site.get("function", "?"))),)
            samples.append(_Sample(frames=(lock_frame, *frames), values=(n, delay), labels=labels))
            count_left -= n
            delay_left -= delay
        if count_left > 0 or delay_left > 0:  # sites beyond the table's hottest ones
            other = Frame("?", 0, "(other waiting sites)")
            samples.append(
                _Sample(frames=(lock_frame, other), values=(max(0, count_left), max(0, delay_left)), labels=labels)
            )
    types = [("contentions", "count"), ("delay", "nanoseconds")]
    duration_ns = round(duration_s * 1e9)
    waiters = _Builder().finish(
        types,
        samples,
        duration_ns=duration_ns,
        default_type="delay",
        comments=["conctools: lock contention by waiting stack; totals are the lock table's"],
    )
    holders: dict[tuple[str, str, str], list[int]] = {}
    for w in waits:
        entry = holders.setdefault((w.lock_name, w.lock_kind, w.holder or "an unknown holder"), [0, 0])
        entry[0] += 1
        entry[1] += round(w.wait_s * 1e9)
    held = [
        _Sample(
            frames=(Frame("?", 0, f"{kind} {name!r} (held)"), Frame("?", 0, f"held by {holder}")),
            values=(n, delay),
            labels=(("lock", name), ("kind", kind)),
        )
        for (name, kind, holder), (n, delay) in sorted(holders.items())
    ]
    holders_pb = _Builder().finish(
        types,
        held,
        duration_ns=duration_ns,
        default_type="delay",
        comments=["conctools: lock contention by the holder each wait found, from the recorded lock-wait events"],
    )
    return waiters, holders_pb
