"""What the recorder keeps of recurring kinds: bounded per kind, counts exact, nothing found lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conctools import traced
from conctools.demo import find_findings
from conctools.events import (
    Frame,
    GilSampleEvent,
    MarkEvent,
    PoolExhaustedEvent,
    ResourceSampleEvent,
    SlowCallbackEvent,
    SpanEvent,
)
from conctools.recorder import OTHER_SPAN_NAMES, SPAN_CHUNK, SPAN_NAMES_MAX, Recorder, use_recorder
from conctools.reporting import render_text
from conctools.retention import DEFAULT_KIND_CAPS, EpisodeStore, SampleSeries

WHO = {"thread_id": 1, "thread_name": "t"}


def gil(i: int, wanting: float = 1.0, window_s: float = 0.25) -> GilSampleEvent:
    return GilSampleEvent(
        ts_ns=i, **WHO, window_s=window_s, threads_wanting=wanting, threads_waiting=0.0, cores_used=0.5
    )


def resource(i: int, rss: int = 1000, cpu: float = 10.0) -> ResourceSampleEvent:
    return ResourceSampleEvent(
        ts_ns=i, **WHO, cpu_percent=cpu, rss_bytes=rss, num_threads=3, num_fds=9,
        ctx_switches_voluntary=i, ctx_switches_involuntary=2 * i,
    )  # fmt: skip


def stall(i: int, line: int, duration_s: float = 0.1) -> SlowCallbackEvent:
    culprit = Frame(filename="/srv/app.py", lineno=line, function=f"f{line}")
    return SlowCallbackEvent(
        ts_ns=i, **WHO, loop_id=1, duration_s=duration_s, threshold_s=0.1, callback="Task", culprit=culprit
    )


def exhausted(i: int, duration_s: float = 0.2) -> PoolExhaustedEvent:
    return PoolExhaustedEvent(
        ts_ns=i, **WHO, pool_name="db", pool_kind="aio.Semaphore", items="connections",
        duration_s=duration_s, capacity=5, held=5, waits=3, max_waiters=3,
    )  # fmt: skip


class TestSampleSeries:
    """Periodic samples cover the whole run in at most ``cap`` points, merged, never lost."""

    def test_bounded_and_windows_add_up(self) -> None:
        """10,000 GIL windows in a series of 64: at most 64 points, covering every window's time."""
        series = SampleSeries(64)
        for i in range(10_000):
            series.add(gil(i + 1))
        points = series.events()
        assert len(points) <= 64
        assert sum(p.window_s for p in points) == pytest.approx(10_000 * 0.25)
        assert points[-1].ts_ns == 10_000  # the latest window ends the series
        assert points[0].ts_ns <= 10_000 // 32  # the first point stands for the start of the run

    def test_gil_means_weighted_by_window(self) -> None:
        """Merged windows keep the exact mean of threads wanting the GIL, weighted by length."""
        series = SampleSeries(4)
        for i in range(8):  # alternating 1 and 3 threads wanting, over windows of 0.1 and 0.3 s
            series.add(gil(i, wanting=1.0 if i % 2 else 3.0, window_s=0.1 if i % 2 else 0.3))
        points = series.events()
        assert len(points) < 8
        total = sum(p.window_s for p in points)
        mean = sum(p.threads_wanting * p.window_s for p in points) / total
        assert total == pytest.approx(1.6)
        assert mean == pytest.approx((3.0 * 0.3 + 1.0 * 0.1) / 0.4)

    def test_resource_peaks_and_counters_kept(self) -> None:
        """Merged resource samples keep the RSS peak and the latest cumulative counters."""
        series = SampleSeries(8)
        for i in range(1, 1001):
            series.add(resource(i, rss=5_000 if i == 333 else 1_000))
        points = series.events()
        assert len(points) <= 8
        assert max(p.rss_bytes for p in points) == 5_000
        assert points[-1].ctx_switches_voluntary == 1000 and points[-1].ctx_switches_involuntary == 2000
        assert all(p.cpu_percent == pytest.approx(10.0) for p in points)


class TestEpisodeStore:
    """Episodes: the first ones, the latest ones and the worst one per site, at most ``cap``."""

    def test_first_latest_and_worst_per_site(self) -> None:
        """10,000 stalls on 5 lines in a store of 40: the first, the latest and each line's worst."""
        store = EpisodeStore(40)
        for i in range(10_000):
            store.add(stall(i, line=i % 5, duration_s=9.0 if i == 4_321 else 0.1 + (i % 5) / 100))
        kept = store.events()
        assert len(kept) <= 40
        stamps = [e.ts_ns for e in kept]
        assert stamps == sorted(stamps)
        assert stamps[:10] == list(range(10))  # the first quarter: the first episodes
        assert stamps[-20:] == list(range(9_980, 10_000))  # half: the latest
        assert 4_321 in stamps  # the worst one, long gone from the latest
        assert {e.culprit.lineno for e in kept if 10 <= e.ts_ns < 9_980} == {0, 1, 2, 3, 4}


class TestRecorderCaps:
    """The recorder keeps at most each kind's cap; its counts stay exact; the report says so."""

    def test_capped_kind_counts_exact_and_report_says_not_kept(self) -> None:
        """5,000 pool episodes with a cap of 100: the first 25, the latest 50 and the worst (of its one
        pool) kept, 5,000 counted, the other 4,924 reported as not kept."""
        rec = Recorder(kind_caps={"pool_exhausted": 100})
        for i in range(5_000):
            rec.record(exhausted(i + 1, duration_s=3.0 if i == 2_500 else 0.2))
        rec.record(MarkEvent(ts_ns=6_000, **WHO, name="end"))
        snap = rec.snapshot()
        kept = snap.of_kind(PoolExhaustedEvent)
        assert len(kept) == 25 + 50 + 1
        assert max(e.duration_s for e in kept) == 3.0
        assert snap.counts == {"pool_exhausted": 5_000, "mark": 1}
        assert snap.dropped == 4_924
        text = render_text(snap)
        assert "4,924 more not kept as events: pool_exhausted 4,924; the counts are exact" in text

    def test_default_caps_bound_samples_over_a_long_run(self) -> None:
        """An hour of GIL windows (4 a second) and resource samples: each within its default cap,
        the whole hour still covered."""
        rec = Recorder()
        for i in range(1, 14_401):
            rec.record(gil(i * 250_000_000))
            if i % 4 == 0:
                rec.record(resource(i * 250_000_000))
        snap = rec.snapshot()
        gils, samples = snap.of_kind(GilSampleEvent), snap.of_kind(ResourceSampleEvent)
        assert len(gils) <= DEFAULT_KIND_CAPS["gil_sample"]
        assert len(samples) <= DEFAULT_KIND_CAPS["resource_sample"]
        assert sum(g.window_s for g in gils) == pytest.approx(3_600)
        assert samples[0].ts_ns <= 60 * 10**9 and samples[-1].ts_ns == 3_600 * 10**9
        assert snap.counts == {"gil_sample": 14_400, "resource_sample": 3_600}

    def test_caps_never_exceed_capacity(self) -> None:
        """A recorder whose capacity is below a kind's cap keeps that kind's latest, as ever."""
        rec = Recorder(capacity=10)
        for i in range(100):
            rec.record(stall(i, line=1))
        assert [e.ts_ns for e in rec.events()] == list(range(90, 100))
        assert rec.counts() == {"slow_callback": 100}

    def test_recent_events_clear_and_uncapped_kinds(self) -> None:
        """dump's recent_events() reads the stores; clear() empties them; other kinds use the ring."""
        rec = Recorder(capacity=50, kind_caps={"slow_callback": 8})
        for i in range(100):
            rec.record(stall(2 * i, line=1))
            rec.record(MarkEvent(ts_ns=2 * i + 1, **WHO, name="m"))
        recent = rec.recent_events({"slow_callback", "mark"}, limit=3)
        assert [e.ts_ns for e in recent] == [194, 195, 196, 197, 198, 199]  # the latest 3 of each kind
        assert len(rec.events()) == 50  # the capacity still bounds what a snapshot holds
        rec.clear()
        assert rec.events() == [] and rec.counts() == {}


class TestConsumersStayExact:
    """Reporters that summarise a capped kind read the exact sections, not the kept events."""

    def test_demo_findings_count_every_stall(self) -> None:
        """The demo's stall line counts from the loop monitor's section when events were not kept."""
        rec = Recorder(kind_caps={"slow_callback": 4})
        for i in range(50):
            rec.record(stall(i, line=42, duration_s=0.5 if i == 20 else 0.1))
        rec.add_section(
            "slow_callbacks",
            lambda: {
                "sites": [
                    {"key": "/srv/app.py:42 in f42", "site": "/srv/app.py:42", "function": "f42", "count": 50,
                     "total_s": 5.4, "max_s": 0.5},
                ]
            },
        )  # fmt: skip
        lines = find_findings(rec.snapshot())
        assert "event loop blocked 50 times (worst 500 ms)" in lines[0]
        assert "app.py:42 in f42 (50 stalls)" in lines[0]


def _span_run(rec: Recorder, n: int = 20_000) -> dict[str, int]:
    """``n`` spans of four names straight into ``rec``'s hot path, with chosen times: name ``n{k}``'s
    first half lasts 1,000-1,999 us, its second half 10-19 us; each name's longest (5 ms) is early.
    Returns each name's span id of its longest span."""
    longest: dict[str, int] = {}
    t = 1_000_000_000
    for i in range(n):
        name = f"n{i % 4}"
        if i // 4 == 100 + i % 4:
            duration = 5_000_000
            longest[name] = i + 1
        elif i < n // 2:
            duration = 1_000_000 + (i * 7919) % 1_000_000
        else:
            duration = 10_000 + (i * 7919) % 10_000
        rec.record_span(name, i + 1, None, t, t + duration, "ok" if i % 10 else "raised", None, f"Task-{i}")
        t += 100_000
    return longest


class TestSpans:
    """Spans of traced calls: the latest ones and the slowest per name kept, every one counted."""

    def test_long_stream_of_traced_calls_stays_bounded(self) -> None:
        """60,000 traced calls of three names with a span cap of 1,000: at most 1,000 + two chunks
        + the three slowest kept at any time after warm-up, every call counted per name, each name's
        longest span among those kept, and the report's header says how many were not kept."""
        rec = Recorder(kind_caps={"span": 1_000})

        @traced("a")
        def a() -> None:
            pass

        @traced("b")
        def b() -> None:
            pass

        @traced("c")
        def c() -> None:
            pass

        kept_over_time = []
        with use_recorder(rec):
            for _ in range(6):
                for _ in range(5_000):
                    a()
                    b()
                for _ in range(10_000):
                    c()
                kept_over_time.append(len(rec.events()))
        assert max(kept_over_time) <= 1_000 + 2 * SPAN_CHUNK + 3, kept_over_time
        snap = rec.snapshot()
        stats = {s.name: s for s in snap.spans}
        assert {n: s.count for n, s in stats.items()} == {"a": 30_000, "b": 30_000, "c": 60_000}
        assert snap.counts == {"span": 120_000}
        kept = snap.of_kind(SpanEvent)
        for name in "abc":  # the longest is either still among the latest or kept as the slowest
            assert max(e.duration_s for e in kept if e.name == name) == stats[name].max_s
        not_kept = 120_000 - len(kept)
        assert f"{not_kept:,} more not kept as events: span {not_kept:,}; the counts are exact" in render_text(snap)

    def test_names_made_at_run_time_stay_bounded(self) -> None:
        """Spans of 3,000 names made at run time (``traced(f"GET /item/{i}")``): once folded away,
        the first ``span_names_max`` names keep their own aggregates and the rest are summed under
        one row, so memory does not grow with the names; every call is still counted."""
        rec = Recorder(kind_caps={"span": 512})
        rec.span_names_max = 50
        with use_recorder(rec):
            for _round in range(4):
                for i in range(3_000):
                    traced(f"GET /item/{i}")(lambda: None)()
        assert len(rec._folded) <= 51 and len(rec._folded_hist) <= 51
        stats = {s.name: s for s in rec.snapshot().spans}
        assert sum(s.count for s in stats.values()) == 12_000
        assert stats["GET /item/0"].count == 4  # among the first names: its own row, exact
        assert stats[OTHER_SPAN_NAMES].count > 10_000
        assert len(stats) <= 51 + 512 + 2 * SPAN_CHUNK  # the folded names, and those of the spans still kept
        assert SPAN_NAMES_MAX >= 1_000  # the default leaves room for every fixed name a program has

    def test_default_cap_applies(self) -> None:
        """A default recorder (capacity 100,000) given 30,000 spans keeps about the default span cap of them."""
        rec = Recorder()
        _span_run(rec, 30_000)
        kept = rec.snapshot().of_kind(SpanEvent)
        assert DEFAULT_KIND_CAPS["span"] < len(kept) + SPAN_CHUNK
        assert len(kept) <= DEFAULT_KIND_CAPS["span"] + SPAN_CHUNK + 4

    def test_slowest_per_name_and_percentiles_over_every_span(self) -> None:
        """20,000 spans, 512 kept: each name's longest (early, long folded away) is kept by its id;
        counts, errors and totals are exact; p50, p95 and p99 are within a bucket above the true ones
        over all 5,000 spans of each name (p95 and p99 in the folded first half, ~2 ms), although
        every kept span but the slowest lasts under 20 us."""
        rec = Recorder(kind_caps={"span": 512})
        longest = _span_run(rec)
        snap = rec.snapshot()
        kept = snap.of_kind(SpanEvent)
        assert len(kept) <= 512 + SPAN_CHUNK + 4
        ids = {e.span_id for e in kept}
        assert set(longest.values()) <= ids
        assert all(e.duration_s < 20e-6 for e in kept if e.span_id not in longest.values())
        stats = {s.name: s for s in snap.spans}
        assert set(stats) == {"n0", "n1", "n2", "n3"}
        for name, s in stats.items():
            k = int(name[1])
            durations = [
                5_000_000 if i // 4 == 100 + k
                else 1_000_000 + (i * 7919) % 1_000_000 if i < 10_000
                else 10_000 + (i * 7919) % 10_000
                for i in range(k, 20_000, 4)
            ]  # fmt: skip
            assert s.count == 5_000 and s.errors == sum(1 for i in range(k, 20_000, 4) if i % 10 == 0)
            assert s.total_s == pytest.approx(sum(durations) / 1e9) and s.max_s == 0.005
            ordered = sorted(durations)
            for q, got in ((0.50, s.p50_s), (0.95, s.p95_s), (0.99, s.p99_s)):
                true = ordered[int(q * len(ordered) + 0.999999) - 1] / 1e9
                assert true <= got <= true * 1.125, (name, q, true, got)
        assert snap.counts == {"span": 20_000}

    def test_pure_python_keeps_the_same(self) -> None:
        """The same spans into a CONCTOOLS_PURE_PYTHON=1 process keep the same spans (ids), counts,
        totals, maxima and percentiles as here (the C fold, where it is built)."""
        script = (
            "import json, sys\n"
            "sys.path.insert(0, sys.argv[1])\n"
            "from test_retention import _span_run, _span_summary\n"
            "from conctools.recorder import Recorder\n"
            "rec = Recorder(kind_caps={'span': 512})\n"
            "_span_run(rec)\n"
            "print(json.dumps(_span_summary(rec)))\n"
        )
        env = {**os.environ, "CONCTOOLS_PURE_PYTHON": "1"}
        proc = subprocess.run(
            [sys.executable, "-c", script, str(Path(__file__).parent)],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        rec = Recorder(kind_caps={"span": 512})
        _span_run(rec)
        assert json.loads(proc.stdout) == json.loads(json.dumps(_span_summary(rec)))

    def test_clear_forgets_kept_slowest(self) -> None:
        """clear() forgets the folded spans' histograms and slowest spans too."""
        rec = Recorder(kind_caps={"span": 512})
        _span_run(rec, 4_000)
        rec.clear()
        assert rec.events() == [] and rec.span_stats() == ()


def _span_summary(rec: Recorder) -> dict[str, Any]:
    snap = rec.snapshot()
    return {
        "kept": sorted(e.span_id for e in snap.of_kind(SpanEvent)),
        "stats": [[s.name, s.count, s.errors, s.total_s, s.max_s, s.p50_s, s.p95_s, s.p99_s] for s in snap.spans],
        "counts": snap.counts,
    }
