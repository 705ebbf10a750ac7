"""The metrics every exporter shares: one model, read from recorded data.

A :class:`Family` is one metric (a counter, or a histogram in seconds) with its points, named the
OpenTelemetry way (``conctools.lock.wait``, unit ``s``); :attr:`Family.prometheus_name` is the
same name by the rules OpenTelemetry's own Prometheus exporters apply (``conctools_lock_wait_seconds``,
counters get ``_total`` from prometheus_client). Both exporters therefore show the same numbers
under the names their users expect.

=======================================  =========  =====================================================
OpenTelemetry name (Prometheus name)     kind       what
=======================================  =========  =====================================================
``conctools.lock.wait``                  histogram  contended waits per lock class (labels ``lock``,
(``conctools_lock_wait_seconds``)                   ``kind``)
``conctools.lock.contentions``           counter    contended acquisitions per lock class
``conctools.lock.acquisitions``          counter    acquisitions per lock class
``conctools.loop.lag``                   histogram  how late the loop monitor's heartbeats ran
``conctools.loop.stalls``                counter    blocked-loop stalls per culprit (``site``,
                                                    ``function``)
``conctools.loop.stalled``               counter    seconds the loop was blocked, per culprit
``conctools.loop.blocking_calls``        counter    known blocking calls on a loop's thread (``call``,
                                                    ``site``)
``conctools.gil.wait``                   counter    seconds each thread waited for the GIL (``thread``)
``conctools.deadlocks``                  counter    deadlocks found
``conctools.hangs``                      counter    hangs found
``conctools.lock_order.inversions``      counter    lock-order inversions (potential deadlocks) found
=======================================  =========  =====================================================

:func:`families_from` is a pure function of a snapshot's sections and counts; :func:`live_families`
reads the same data from a running recorder without taking a whole snapshot (a scrape must be
cheap: it may run on the event loop it measures), plus the exact wait histograms of the lock
classes, which a saved report does not keep (from a saved report, a lock's histogram has its count
and sum only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from conctools.recorder import Recorder, bucket_upper

__all__ = [
    "BOUNDS_S",
    "Family",
    "HistogramValue",
    "Point",
    "families_from",
    "histogram_from_dict",
    "live_families",
]

# Bucket bounds of every histogram, in seconds (Prometheus' defaults, widened both ways: lock waits
# and loop lag live between microseconds and seconds).
BOUNDS_S: tuple[float, ...] = (
    0.00001,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class HistogramValue:
    """A histogram point: ``counts[i]`` values fell at or under ``bounds_s[i]`` (and above the bound
    before it); the last count is above every bound. No bounds: count and sum only."""

    bounds_s: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    sum_s: float
    max_s: float | None = None

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, cumulative count), ...]`` ending with ``("+Inf", count)``: Prometheus' buckets."""
        out: list[tuple[str, int]] = []
        seen = 0
        for bound, n in zip(self.bounds_s, self.counts):
            seen += n
            out.append((repr(bound), seen))
        out.append(("+Inf", self.count))
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    """One labelled value of a family."""

    labels: tuple[tuple[str, str], ...]
    value: float | HistogramValue


@dataclass(frozen=True, slots=True, kw_only=True)
class Family:
    """One metric and its points."""

    name: str
    kind: Literal["counter", "histogram"]
    unit: str  # "s" or an annotation such as "{stall}"
    help: str
    label_names: tuple[str, ...]
    points: tuple[Point, ...]

    @property
    def prometheus_name(self) -> str:
        """The Prometheus name: dots become underscores, seconds get ``_seconds`` (prometheus_client
        appends ``_total`` to a counter itself)."""
        base = self.name.replace(".", "_")
        return f"{base}_seconds" if self.unit == "s" else base


def histogram_from_dict(data: Mapping[str, Any], bounds_s: tuple[float, ...] = BOUNDS_S) -> HistogramValue:
    """A conctools histogram (``Histogram.to_dict()``: log-linear buckets over nanoseconds) on
    ``bounds_s``. A conctools bucket is counted under the first bound at or above its upper edge, so
    no value is ever counted under a bound smaller than itself (bucket edges are within 12.5%)."""
    bounds_ns = [b * 1e9 for b in bounds_s]
    counts = [0] * (len(bounds_s) + 1)
    for key, n in dict(data.get("buckets", {})).items():
        upper = bucket_upper(int(key))
        i = 0
        while i < len(bounds_ns) and bounds_ns[i] < upper:
            i += 1
        counts[i] += int(n)
    count = int(data.get("count", sum(counts)))
    max_ns = data.get("max_ns")
    return HistogramValue(
        bounds_s=bounds_s,
        counts=tuple(counts),
        count=count,
        sum_s=int(data.get("total_ns", 0)) / 1e9,
        max_s=None if max_ns is None or not count else int(max_ns) / 1e9,
    )


def _summary_histogram(count: int, sum_s: float, max_s: float | None) -> HistogramValue:
    return HistogramValue(bounds_s=(), counts=(count,), count=count, sum_s=sum_s, max_s=max_s if count else None)


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return 0.0
    return out if math.isfinite(out) else 0.0


def families_from(
    sections: Mapping[str, Any],
    counts: Mapping[str, int],
    lock_histograms: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> list[Family]:
    """Every family, from a snapshot's ``sections`` and ``counts``.

    ``lock_histograms`` maps ``(kind, name)`` of a lock class to its wait histogram
    (``Histogram.to_dict()``); without one, a lock's histogram has its count and sum only.
    """
    families: list[Family] = []
    families += _lock_families(sections.get("locks"), lock_histograms or {})
    families += _loop_families(sections.get("slow_callbacks"))
    families += _gil_families(sections.get("gil"))
    for name, kind, unit, text in (
        ("conctools.deadlocks", "deadlock", "{deadlock}", "Deadlocks (wait-for cycles) found."),
        ("conctools.hangs", "hang", "{hang}", "Hangs (no progress without a lock cycle) found."),
        (
            "conctools.lock_order.inversions",
            "lock_order",
            "{inversion}",
            "Lock-order inversions (potential deadlocks) found.",
        ),
    ):
        value = float(counts.get(kind, 0))
        families.append(
            Family(
                name=name, kind="counter", unit=unit, help=text, label_names=(), points=(Point(labels=(), value=value),)
            )
        )
    return families


def _lock_families(rows: Any, histograms: Mapping[tuple[str, str], Mapping[str, Any]]) -> list[Family]:
    if not isinstance(rows, list):
        rows = []
    waits, contentions, acquisitions = [], [], []
    for row in rows:
        if not isinstance(row, dict):
            continue
        name, kind = str(row.get("name", "?")), str(row.get("kind", "?"))
        labels = (("lock", name), ("kind", kind))
        hist = histograms.get((kind, name))
        if hist is not None:
            value = histogram_from_dict(hist)
        else:
            n = int(_num(row.get("contentions")))
            value = _summary_histogram(n, _num(row.get("wait_total_s")), _num(row.get("wait_max_s")))
        waits.append(Point(labels=labels, value=value))
        contentions.append(Point(labels=labels, value=_num(row.get("contentions"))))
        acquisitions.append(Point(labels=labels, value=_num(row.get("acquisitions"))))
    names = ("lock", "kind")
    return [
        Family(
            name="conctools.lock.wait",
            kind="histogram",
            unit="s",
            help="Contended waits for a traced lock class, by lock name (or creation site) and kind.",
            label_names=names,
            points=tuple(waits),
        ),
        Family(
            name="conctools.lock.contentions",
            kind="counter",
            unit="{contention}",
            help="Contended acquisitions of a traced lock class.",
            label_names=names,
            points=tuple(contentions),
        ),
        Family(
            name="conctools.lock.acquisitions",
            kind="counter",
            unit="{acquisition}",
            help="Acquisitions of a traced lock class.",
            label_names=names,
            points=tuple(acquisitions),
        ),
    ]


def _loop_families(section: Any) -> list[Family]:
    if not isinstance(section, dict):
        section = {}
    lag_points: tuple[Point, ...] = ()
    lag = section.get("loop_lag")
    if isinstance(lag, dict):
        hist = lag.get("histogram")
        if isinstance(hist, dict):
            lag_points = (Point(labels=(), value=histogram_from_dict(hist)),)
        else:
            n = int(_num(lag.get("count")))
            lag_points = (Point(labels=(), value=_summary_histogram(n, 0.0, _num(lag.get("max_s")))),)
    stalls, stalled = [], []
    for site in section.get("sites", []) or []:
        if not isinstance(site, dict):
            continue
        labels = (("site", str(site.get("site", "?"))), ("function", str(site.get("function", ""))))
        stalls.append(Point(labels=labels, value=_num(site.get("count"))))
        stalled.append(Point(labels=labels, value=_num(site.get("total_s"))))
    blocking = []
    for call in section.get("blocking_calls", []) or []:
        if isinstance(call, dict):
            labels = (("call", str(call.get("call", "?"))), ("site", str(call.get("site", "?"))))
            blocking.append(Point(labels=labels, value=_num(call.get("count"))))
    return [
        Family(
            name="conctools.loop.lag",
            kind="histogram",
            unit="s",
            help="How late the loop monitor's heartbeat timers ran (event-loop lag).",
            label_names=(),
            points=lag_points,
        ),
        Family(
            name="conctools.loop.stalls",
            kind="counter",
            unit="{stall}",
            help="Times an event loop was blocked longer than the threshold, by culprit line.",
            label_names=("site", "function"),
            points=tuple(stalls),
        ),
        Family(
            name="conctools.loop.stalled",
            kind="counter",
            unit="s",
            help="Time event loops were blocked, by culprit line.",
            label_names=("site", "function"),
            points=tuple(stalled),
        ),
        Family(
            name="conctools.loop.blocking_calls",
            kind="counter",
            unit="{call}",
            help="Known blocking calls (time.sleep, blocking sockets, thread waits) made on a loop's thread.",
            label_names=("call", "site"),
            points=tuple(blocking),
        ),
    ]


def _gil_families(section: Any) -> list[Family]:
    if not isinstance(section, dict) or section.get("gil_enabled") is False:
        return []
    points = []
    for row in section.get("threads", []) or []:
        if isinstance(row, dict):
            points.append(Point(labels=(("thread", str(row.get("name", "?"))),), value=_num(row.get("gil_wait_s"))))
    return [
        Family(
            name="conctools.gil.wait",
            kind="counter",
            unit="s",
            help="Time each thread waited for the GIL while it wanted to run Python code.",
            label_names=("thread",),
            points=tuple(points),
        )
    ]


# -- live ------------------------------------------------------------------------------------

_SECTIONS = ("locks", "slow_callbacks", "gil")


def live_families(recorder: Recorder) -> list[Family]:
    """:func:`families_from` for a running recorder, with the lock classes' exact wait histograms.

    Reads only the sections it needs and the recorder's counts of rare events: no event is
    materialised, so it is cheap enough for a scrape on the event loop being measured.
    """
    flush = _locks_attr("flush_waits")
    if callable(flush):  # waits that ended but are not counted yet (where locks defers them)
        try:
            flush()
        except Exception:
            pass
    sections = {name: recorder.read_section(name) for name in _SECTIONS}
    return families_from(sections, recorder.event_counts(), _lock_histograms())


def _locks_attr(name: str) -> Any:
    import sys

    module = sys.modules.get("conctools.locks")  # never imported for this: no lock, no histogram
    return getattr(module, name, None) if module is not None else None


def _lock_histograms() -> dict[tuple[str, str], dict[str, Any]]:
    """``(kind, name) -> wait histogram`` of every lock class, read under each class's own mutex."""
    stats = _locks_attr("_stats")
    out: dict[tuple[str, str], dict[str, Any]] = {}
    if not isinstance(stats, dict):
        return out
    for st in list(stats.values()):
        try:
            with st.mutex:
                out[(str(st.kind), str(st.name))] = st.wait.to_dict()
        except Exception:  # another version of the lock statistics: count and sum only
            continue
    return out
