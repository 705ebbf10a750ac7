"""Running aggregates of stalls: by culprit site, the loop lag, and blocking calls."""

from __future__ import annotations

import _thread
from typing import Any

from conctools.events import Frame, SlowCallbackEvent
from conctools.loopmon.culprits import callback_frames
from conctools.recorder import Histogram, Recorder

__all__ = ["StallStats", "stats_for"]

_SECTION = "slow_callbacks"
_MAX_SITES = 200  # distinct culprit sites kept; the rest are counted under "<other>"
_MAX_EVENTS_PER_SITE = 20  # blocking-call events recorded per (call, site); all are counted


class _Site:
    __slots__ = ("callback", "count", "culprit", "hist", "stack", "tasks")

    def __init__(self, culprit: Frame | None, stack: tuple[Frame, ...], callback: str) -> None:
        self.culprit = culprit
        self.stack = stack
        self.callback = callback
        self.count = 0
        self.hist = Histogram()
        self.tasks: list[str] = []


class StallStats:
    """Running aggregates of one recorder: stall segments by culprit site, loop lag, blocking calls.

    Thread-safe (a plain lock); published as the recorder section ``"slow_callbacks"``.
    """

    def __init__(self) -> None:
        self._lock = _thread.RLock()  # reentrant: a finalizer run by GC on this thread may report too
        self.sites: dict[str, _Site] = {}
        self.lag = Histogram()
        self.stalls = 0  # stalls (the loop blocked for the threshold or more)
        self.segments = 0  # their segments: one per task or callback (and culprit) that ran during one
        self.thresholds: set[float] = set()
        self.blocking: dict[tuple[str, str], list[Any]] = {}  # (call, site) -> [count, Histogram, stack]

    def add_stall(self, event: SlowCallbackEvent, stack: tuple[Frame, ...], *, new_stall: bool = True) -> None:
        """Count one segment of a stall under its culprit site (``new_stall``: its stall's first)."""
        c = event.culprit
        key = f"{c.site} in {c.function}" if c is not None else event.callback
        with self._lock:
            if new_stall:
                self.stalls += 1
            self.segments += 1
            self.thresholds.add(event.threshold_s)
            site = self.sites.get(key)
            if site is None:
                if len(self.sites) >= _MAX_SITES:
                    key = "<other>"
                    site = self.sites.get(key)
                if site is None:
                    shown = callback_frames(stack) or stack  # the callback's own frames, not the loop's
                    site = self.sites[key] = _Site(c if key != "<other>" else None, shown, event.callback)
            site.count += 1
            site.hist.add(int(event.duration_s * 1e9))
            if event.task_name and event.task_name not in site.tasks and len(site.tasks) < 5:
                site.tasks.append(event.task_name)

    def add_lag(self, lag_ns: int) -> None:
        """Count one probe's scheduling delay."""
        with self._lock:
            self.lag.add(max(0, lag_ns))

    def add_blocking(self, call: str, site: str, duration_ns: int, stack: tuple[Frame, ...]) -> bool:
        """Count one blocking call; True while its (call, site) still deserves its own event."""
        with self._lock:
            entry = self.blocking.get((call, site))
            if entry is None:
                if len(self.blocking) >= _MAX_SITES:
                    return False
                entry = self.blocking[(call, site)] = [0, Histogram(), stack]
            entry[0] += 1
            entry[1].add(duration_ns)
            return bool(entry[0] <= _MAX_EVENTS_PER_SITE)

    def to_dict(self) -> dict[str, Any]:
        """The section's JSON form: sites ranked by total blocked time."""
        with self._lock:
            sites = []
            for key, s in self.sites.items():
                h = s.hist
                sites.append(
                    {
                        "key": key,
                        "site": s.culprit.site if s.culprit is not None else key,
                        "function": s.culprit.function if s.culprit is not None else "",
                        "line": s.culprit.line if s.culprit is not None else "",
                        "count": s.count,
                        "total_s": h.total_ns / 1e9,
                        "max_s": h.max_ns / 1e9,
                        "p50_s": h.percentile_ns(0.5) / 1e9,
                        "p99_s": h.percentile_ns(0.99) / 1e9,
                        "tasks": list(s.tasks),
                        "callback": s.callback,
                        "stack": [_frame_dict(f) for f in s.stack[:30]],
                    }
                )
            blocking = [
                {
                    "call": call,
                    "site": site,
                    "count": n,
                    "total_s": h.total_ns / 1e9,
                    "max_s": h.max_ns / 1e9,
                    "stack": [_frame_dict(f) for f in stack[:30]],
                }
                for (call, site), (n, h, stack) in self.blocking.items()
            ]
            lag = self.lag
            data: dict[str, Any] = {
                "stalls": self.stalls,
                "segments": self.segments,
                "threshold_s": min(self.thresholds) if self.thresholds else None,
                "total_s": sum(s["total_s"] for s in sites),
                "sites": sorted(sites, key=lambda s: (-s["total_s"], s["key"])),
                "loop_lag": {
                    "count": lag.count,
                    "p50_s": lag.percentile_ns(0.5) / 1e9,
                    "p99_s": lag.percentile_ns(0.99) / 1e9,
                    "max_s": lag.max_ns / 1e9,
                    "histogram": lag.to_dict(),
                },
                "blocking_calls": sorted(blocking, key=lambda b: (-b["total_s"], b["site"])),
            }
        return data


def _frame_dict(f: Frame) -> dict[str, Any]:
    return {"filename": f.filename, "lineno": f.lineno, "function": f.function, "line": f.line}


_stats_lock = _thread.allocate_lock()
_stats_by_recorder: dict[int, tuple[Recorder, StallStats]] = {}


def stats_for(recorder: Recorder) -> StallStats:
    """The :class:`StallStats` of ``recorder``, registering its section on first use."""
    with _stats_lock:
        entry = _stats_by_recorder.get(id(recorder))
        if entry is not None and entry[0] is recorder:
            return entry[1]
        stats = StallStats()
        _stats_by_recorder[id(recorder)] = (recorder, stats)
        if len(_stats_by_recorder) > 64:  # bounded: forget the oldest recorders (tests make many)
            for key in list(_stats_by_recorder)[:-64]:
                del _stats_by_recorder[key]
    recorder.add_section(_SECTION, stats.to_dict)
    return stats
