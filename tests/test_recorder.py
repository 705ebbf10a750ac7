"""The recorder: bounded memory, exact counts under concurrency, sinks, sections, snapshots."""

from __future__ import annotations

import json
import threading
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conctools import traced
from conctools.events import (
    DeadlockEvent,
    Frame,
    HangEvent,
    LockOrderEdge,
    LockOrderEvent,
    LockWaitEvent,
    MarkEvent,
    Participant,
    ResourceSampleEvent,
    SlowCallbackEvent,
    SpanEvent,
    WaiterInfo,
    event_from_dict,
)
from conctools.recorder import Histogram, Recorder, Snapshot, bucket_of, bucket_upper, use_recorder
from conctools.reporting import load_json, render_json, render_text

FRAME = Frame(filename="app.py", lineno=12, function="main", line="x = 1")
BASE = {"ts_ns": 1, "thread_id": 7, "thread_name": "MainThread", "task_name": None}


def mark(i: int) -> MarkEvent:
    return MarkEvent(ts_ns=i, thread_id=1, thread_name="t", name=f"m{i}")


class TestStress:
    """Counts stay exact and memory stays bounded under heavy concurrency."""

    def test_sixteen_threads_exact_span_counts(self) -> None:
        """16 threads x 20,000 traced calls give exactly 320,000 spans, per name and in total."""
        with use_recorder(Recorder(capacity=1000)) as rec:

            @traced("hot")
            def hot() -> None:
                pass

            @traced("fails")
            def fails() -> None:
                raise ValueError

            start = threading.Barrier(16)

            def worker(n: int) -> None:
                start.wait()
                for i in range(20_000):
                    if n == 0 and i % 100 == 0:
                        try:
                            fails()
                        except ValueError:
                            pass
                    else:
                        hot()

            threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            snap = rec.snapshot()
        stats = {s.name: s for s in snap.spans}
        assert stats["hot"].count == 16 * 20_000 - 200
        assert stats["fails"].count == stats["fails"].errors == 200
        assert snap.counts["span"] == 320_000
        assert len(snap.events) == 1000
        assert snap.dropped == 320_000 - 1000

    def test_exact_counts_for_general_events(self) -> None:
        """record() from many threads keeps exact per-kind counts past the ring size."""
        rec = Recorder(capacity=50)

        def worker() -> None:
            for i in range(5_000):
                rec.record(mark(i))

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert rec.counts()["mark"] == 40_000
        assert len(rec.events()) == 50

    def test_memory_bounded_when_ring_is_full(self) -> None:
        """Once the ring is full, recording more spans does not grow memory."""
        with use_recorder(Recorder(capacity=2_000)) as rec:

            @traced("bounded")
            def f() -> None:
                pass

            tracemalloc.start()
            for _ in range(10_000):
                f()
            before, _ = tracemalloc.get_traced_memory()
            for _ in range(50_000):
                f()
            after, _ = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert after - before < 100_000  # 50k more spans would need several MB if kept
        assert rec.snapshot().counts["span"] == 60_000

    def test_dead_threads_are_folded(self) -> None:
        """Spans from hundreds of finished threads stay counted after their shards are retired."""
        with use_recorder(Recorder()) as rec:

            @traced("short_lived")
            def f() -> None:
                pass

            for _ in range(600):
                t = threading.Thread(target=f)
                t.start()
                t.join()
            assert len(rec._shards) <= 513
            assert {s.name: s.count for s in rec.span_stats()}["short_lived"] == 600


class TestSinksAndSections:
    """Sinks see events; sections appear in snapshots; failures never propagate."""

    def test_sink_receives_events_and_spans(self) -> None:
        """Both general events and spans reach a sink, spans materialized."""
        rec = Recorder()
        seen: list[object] = []
        rec.add_sink(seen.append)
        rec.record(mark(1))
        with use_recorder(rec):
            traced("s")(lambda: None)()
        assert isinstance(seen[0], MarkEvent) and isinstance(seen[1], SpanEvent)
        rec.remove_sink(seen.append)

    def test_section_provider_and_failure(self) -> None:
        """A section provider's data is in the snapshot; a raising one is skipped."""
        rec = Recorder()
        rec.add_section("good", lambda: {"rows": [1, 2]})
        rec.add_section("bad", lambda: 1 / 0)
        snap = rec.snapshot()
        assert snap.sections == {"good": {"rows": [1, 2]}}
        rec.remove_section("good")
        assert rec.snapshot().sections == {}

    def test_record_never_raises(self) -> None:
        """Recording garbage is logged, not raised."""
        rec = Recorder()
        rec.record(object())  # type: ignore[arg-type]

    def test_bad_capacity(self) -> None:
        """A non-positive capacity is refused."""
        with pytest.raises(ValueError):
            Recorder(capacity=0)

    def test_clear(self) -> None:
        """clear() forgets events and aggregates."""
        with use_recorder(Recorder()) as rec:
            traced("c")(lambda: None)()
            rec.record(mark(1))
            rec.clear()
            assert rec.counts() == {} and rec.events() == []


class TestHistogram:
    """Log-linear histogram: bounded error, mergeable, serialisable."""

    @settings(max_examples=200, deadline=None)
    @given(st.integers(min_value=0, max_value=10**13))
    def test_bucket_contains_value_within_12_5_percent(self, value: int) -> None:
        """Every value falls in a bucket whose upper bound is within 12.5% above it."""
        b = bucket_of(value)
        upper = bucket_upper(b)
        assert upper >= value
        assert upper <= max(value * 1.125 + 1, 8)
        if b > 0:
            assert bucket_upper(b - 1) < value

    def test_percentiles_merge_and_roundtrip(self) -> None:
        """Percentiles are close to the truth; merge and JSON round trip keep them."""
        h = Histogram()
        for v in range(1, 10_001):
            h.add(v * 1000)
        assert h.count == 10_000 and h.max_ns == 10_000_000
        assert 5_000_000 <= h.percentile_ns(0.5) <= 5_000_000 * 1.125
        assert 9_900_000 <= h.percentile_ns(0.99) <= 10_000_000
        other = Histogram.from_dict(json.loads(json.dumps(h.to_dict())))
        assert other.percentile_ns(0.5) == h.percentile_ns(0.5)
        other.merge(h)
        assert other.count == 20_000 and other.total_ns == 2 * h.total_ns
        assert Histogram().percentile_ns(0.5) == 0


class TestEventsAndSnapshots:
    """Every event kind and whole snapshots survive a JSON round trip."""

    @pytest.mark.parametrize(
        "event",
        [
            SpanEvent(**BASE, name="s", span_id=1, parent_id=None, duration_s=0.5, outcome="ok"),
            LockWaitEvent(
                **BASE,
                lock_id=3,
                lock_name="db",
                lock_kind="Lock",
                wait_s=0.2,
                acquired=True,
                holder="thread 'w'",
                site="app.py:3",
                stack=(FRAME,),
            ),
            LockOrderEvent(
                **BASE,
                cycle=("a", "b"),
                edges=(LockOrderEdge(from_lock="a", to_lock="b", from_site="x:1", to_site="x:2", thread_name="T"),),
            ),
            DeadlockEvent(
                **BASE,
                participants=(
                    Participant(
                        thread_id=1,
                        thread_name="T1",
                        task_name=None,
                        waits_for="b",
                        waits_for_id=2,
                        wait_site="x:3",
                        held_by="thread 'T2'",
                        holds=("a",),
                        holds_sites=("x:1",),
                        stack=(FRAME,),
                    ),
                ),
            ),
            HangEvent(
                **BASE,
                stalled_s=3.0,
                reason="no progress",
                waiters=(
                    WaiterInfo(thread_id=1, thread_name="T", task_name=None, state="waiting", waits_on="Event 'e'"),
                ),
            ),
            SlowCallbackEvent(
                **BASE,
                loop_id=1,
                duration_s=0.3,
                threshold_s=0.1,
                callback="Task 'x'",
                culprit=FRAME,
                samples=((FRAME, FRAME),),
            ),
            ResourceSampleEvent(
                **BASE,
                cpu_percent=12.5,
                rss_bytes=1 << 20,
                num_threads=3,
                num_fds=9,
                ctx_switches_voluntary=1,
                ctx_switches_involuntary=2,
            ),
            MarkEvent(**BASE, name="start", detail={"a": 1}),
        ],
    )
    def test_event_roundtrip(self, event: object) -> None:
        """event_from_dict(to_dict(e)) == e, through real JSON text."""
        data = json.loads(json.dumps(event.to_dict()))  # type: ignore[attr-defined]
        assert event_from_dict(data) == event

    def test_unknown_kind(self) -> None:
        """An unknown or malformed event is a ValueError."""
        with pytest.raises(ValueError, match="unknown event kind"):
            event_from_dict({"kind": "nope"})
        with pytest.raises(ValueError, match="malformed"):
            event_from_dict({"kind": "span"})

    def test_snapshot_saved_and_loaded(self, tmp_path: object) -> None:
        """A rendered report.json loads back into an equal snapshot and renders the same text."""
        from pathlib import Path

        with use_recorder(Recorder()) as rec:
            traced("saved")(lambda: None)()
            rec.record(mark(5))
            snap = rec.snapshot()
        path = Path(str(tmp_path)) / "report.json"
        path.write_text(render_json(snap))
        loaded = load_json(path)
        assert loaded.events == snap.events and loaded.spans == snap.spans
        assert render_text(loaded) == render_text(snap)

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            ("{not json", "not valid JSON"),
            ("[1, 2]", "not a conctools report"),
            ('{"schema": "other/1"}', "schema 'other/1'"),
            ('{"schema": "conctools.report/1"}', "corrupt conctools report"),
        ],
    )
    def test_corrupt_reports(self, tmp_path: object, content: str, message: str) -> None:
        """A corrupt or foreign file is a one-line ValueError naming the problem."""
        from pathlib import Path

        path = Path(str(tmp_path)) / "r.json"
        path.write_text(content)
        with pytest.raises(ValueError, match=message) as info:
            load_json(path)
        assert "\n" not in str(info.value)

    def test_missing_report(self, tmp_path: object) -> None:
        """A missing file is a ValueError too."""
        with pytest.raises(ValueError, match="no such file"):
            load_json(f"{tmp_path}/absent.json")

    def test_from_dict_rejects_non_objects(self) -> None:
        """Snapshot.from_dict refuses anything but a report object."""
        with pytest.raises(ValueError):
            Snapshot.from_dict("text")
