"""Series over time for the report's charts, all on the run's one time axis (µs since its start).

A pure function of the snapshot and its timeline. Event-derived series are binned on one grid
(``bin_us``); sampled ones (CPU, RSS, Locust's per-second statistics) keep their samples' times.
Each series is ``{"id", "title", "unit", "note", "lines": [{"label", "dash", "points": [[t_us, v], ...]}]}``
(``bin_us`` when its points are columns of that width, drawn as bars with ``bars``);
a line's ``dash`` tells it apart from the other lines of its chart without colour.
"""

from __future__ import annotations

from typing import Any

from conctools.events import LockWaitEvent, ResourceSampleEvent, SlowCallbackEvent
from conctools.recorder import Snapshot
from conctools.reporting._timeline import Timeline

__all__ = ["BINS", "chart_series", "nice_bin_us"]

BINS = 300  # columns of the binned series: fine enough for a 10-minute run at 2 s a column

_NICE = (1, 2, 5)


def nice_bin_us(duration_us: float, bins: int = BINS) -> int:
    """The smallest 1-2-5 step (≥ 1 ms) that cuts ``duration_us`` into at most ``bins`` columns."""
    step = 1000
    while True:
        for m in _NICE:
            if duration_us / (step * m) <= bins:
                return step * m
        step *= 10


def _binned(values: list[float], bin_us: int, digits: int = 3) -> list[list[float]]:
    return [[i * bin_us + bin_us / 2, round(v, digits)] for i, v in enumerate(values)]


def _spread(cols: list[float], start_us: float, end_us: float, bin_us: int, weight: float = 1.0) -> None:
    """Add ``weight`` × the overlap of [start, end) with each column (in columns' widths)."""
    n = len(cols)
    a, b = max(0.0, start_us), max(start_us, end_us)
    i = int(a // bin_us)
    while i < n and i * bin_us < b:
        lo, hi = max(a, i * bin_us), min(b, (i + 1) * bin_us)
        if hi > lo:
            cols[i] += weight * (hi - lo) / bin_us
        i += 1


def _resource_points(snapshot: Snapshot) -> list[dict[str, Any]]:
    section = snapshot.sections.get("resources")
    raw = section.get("series") if isinstance(section, dict) else None
    points = [p for p in raw if isinstance(p, dict)] if isinstance(raw, list) else []
    return points or [e.point() for e in snapshot.of_kind(ResourceSampleEvent)]


def chart_series(snapshot: Snapshot, tl: Timeline) -> dict[str, Any]:
    """Every chart of the run on one time grid; charts without data are left out."""
    duration = max(1, tl.duration_us)
    bin_us = nice_bin_us(duration)
    n = int(duration // bin_us) + 1
    # Rates are counted per second at least: a tenth of a second holding one stall is not "10/s".
    rate_us = max(bin_us, 1_000_000)
    n_rate = int(duration // rate_us) + 1
    rate_s = rate_us / 1e6
    series: list[dict[str, Any]] = []

    stalls = snapshot.of_kind(SlowCallbackEvent)
    if stalls:
        lag = [0.0] * n
        count = [0.0] * n_rate
        for e in stalls:
            start = (e.ts_ns - snapshot.started_ns) / 1000
            end = start + e.duration_s * 1e6
            k = int(max(0.0, start) // rate_us)
            if k < n_rate:
                count[k] += 1
            j = int(max(0.0, start) // bin_us)
            while j < n and j * bin_us < end:
                # the lag a timer due in this column saw: how long the stall had lasted by its end
                lag[j] = max(lag[j], min(end, (j + 1) * bin_us) - start)
                j += 1
        series.append(
            {
                "id": "loop-lag",
                "title": "Loop lag",
                "unit": "ms",
                "note": "how long the event loop had been blocked (stalls above the threshold)",
                "lines": [{"label": "blocked for", "dash": "", "points": _binned([v / 1000 for v in lag], bin_us, 1)}],
                "bars": True,
                "bin_us": bin_us,
            }
        )
        series.append(
            {
                "id": "stalls",
                "title": "Stalls",
                "unit": "/s",
                "note": "slow callbacks starting per second",
                "lines": [
                    {"label": "stalls/s", "dash": "", "points": _binned([c / rate_s for c in count], rate_us, 2)}
                ],
                "bars": True,
                "bin_us": rate_us,
            }
        )
    waits = snapshot.of_kind(LockWaitEvent)
    if waits:
        rate = [0.0] * n_rate
        waiting = [0.0] * n
        for w in waits:
            start = (w.ts_ns - snapshot.started_ns) / 1000
            k = int(max(0.0, start) // rate_us)
            if k < n_rate:
                rate[k] += 1
            _spread(waiting, start, start + w.wait_s * 1e6, bin_us)
        series.append(
            {
                "id": "lock-waits",
                "title": "Lock waits",
                "unit": "/s",
                "note": "contended acquisitions starting per second (solid); "
                "threads and tasks waiting, on average (dashed)",
                "lines": [
                    {"label": "waits/s", "dash": "", "points": _binned([r / rate_s for r in rate], rate_us, 2)},
                    {"label": "waiting", "dash": "4 3", "points": _binned(waiting, bin_us, 2)},
                ],
            }
        )
    cpu: list[list[float]] = []
    rss: list[list[float]] = []
    for p in _resource_points(snapshot):
        try:
            t = (int(p["ts_ns"]) - snapshot.started_ns) / 1000
            cpu.append([t, round(float(p["cpu_percent"]), 1)])
            rss.append([t, round(float(p["rss_bytes"]) / 2**20, 1)])
        except (KeyError, TypeError, ValueError):
            continue
    if cpu:
        series.append(
            {
                "id": "cpu",
                "title": "CPU",
                "unit": "%",
                "note": "of one core",
                "lines": [{"label": "CPU", "dash": "", "points": cpu}],
            }
        )
        series.append(
            {
                "id": "rss",
                "title": "Memory",
                "unit": "MiB",
                "note": "resident set size",
                "lines": [{"label": "RSS", "dash": "", "points": rss}],
            }
        )
    locust: dict[str, list[list[float]]] = {}
    for c in tl.counters:
        if c.name.startswith("Locust"):
            for key, v in c.values.items():
                locust.setdefault(key, []).append([c.ts_us, round(v, 2)])
    if locust.get("rps"):
        lines = [{"label": "requests/s", "dash": "", "points": locust["rps"]}]
        if locust.get("failures_per_s"):
            lines.append({"label": "failures/s", "dash": "4 3", "points": locust["failures_per_s"]})
        series.append(
            {
                "id": "locust-rate",
                "title": "Load: requests",
                "unit": "/s",
                "note": "Locust, every second",
                "lines": lines,
            }
        )
    if locust.get("p50_ms") or locust.get("p95_ms"):
        lines = []
        if locust.get("p50_ms"):
            lines.append({"label": "p50", "dash": "", "points": locust["p50_ms"]})
        if locust.get("p95_ms"):
            lines.append({"label": "p95", "dash": "4 3", "points": locust["p95_ms"]})
        series.append(
            {
                "id": "locust-latency",
                "title": "Load: latency",
                "unit": "ms",
                "note": "Locust, every second",
                "lines": lines,
            }
        )
    return {"bin_us": bin_us, "duration_us": duration, "series": series}
