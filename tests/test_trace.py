"""trace.json: the Chrome trace event format, validated structurally on recorded runs."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import pytest
from _report_samples import HOSTILE, HOSTILE_NAMES, LINE_SEP, SCRIPT_END, rich_snapshot
from _trace_check import check_handoffs, check_trace

from conctools.events import LockWaitEvent, SpanEvent
from conctools.recorder import Recorder, Snapshot
from conctools.reporting.trace import render_trace, trace_events
from conctools.retention import DEFAULT_KIND_CAPS

REQUIRED = ("ph", "ts", "pid", "tid", "name")


@pytest.fixture(scope="module")
def rich() -> Snapshot:
    return rich_snapshot()


def validate(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Assert what the format requires; return the events."""
    events = doc["traceEvents"]
    assert isinstance(events, list) and events
    named: set[tuple[int, int]] = set()
    last_ts: dict[tuple[int, int], float] = defaultdict(float)
    flows: dict[int, list[str]] = defaultdict(list)
    for e in events:
        for key in REQUIRED:
            assert key in e, f"{key} missing in {e}"
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
        ph = e["ph"]
        assert ph in {"M", "X", "i", "s", "f", "C"}, ph
        if ph == "M":
            assert e["name"] in {"process_name", "thread_name", "thread_sort_index"}
            if e["name"] == "thread_name":
                assert isinstance(e["args"]["name"], str)
                named.add((e["pid"], e["tid"]))
            continue
        track = (e["pid"], e["tid"])
        if ph == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0
        if ph in ("s", "f"):
            assert isinstance(e["id"], int)
            flows[e["id"]].append(ph)
        if ph == "C":
            assert isinstance(e["args"], dict) and e["args"]
            assert all(isinstance(v, (int, float)) for v in e["args"].values())
            continue
        if ph == "i" and e.get("s") == "g":
            continue
        assert track in named, f"track {track} has no thread_name"
        assert e["ts"] >= last_ts[track], f"time goes backwards on {track}"
        last_ts[track] = e["ts"]
    assert all(sorted(v) == ["f", "s"] for v in flows.values()), flows
    return events  # type: ignore[no-any-return]


def nests(events: list[dict[str, Any]]) -> bool:
    """Slices on one track never overlap partially."""
    stacks: dict[tuple[int, int], list[float]] = defaultdict(list)
    for e in events:
        if e["ph"] != "X":
            continue
        stack = stacks[(e["pid"], e["tid"])]
        while stack and stack[-1] <= e["ts"]:
            stack.pop()
        end = e["ts"] + e["dur"]
        if stack and end > stack[-1] + 1e-6:
            return False
        stack.append(end)
    return True


class TestStructure:
    def test_every_kind_renders_valid(self, rich: Snapshot) -> None:
        """A run with every event kind gives a valid trace: fields, named tracks, monotonic time."""
        events = validate(json.loads(render_trace(rich)))
        assert nests(events)
        phases = {e["ph"] for e in events}
        assert phases == {"M", "X", "i", "s", "f", "C"}
        cats = {e.get("cat") for e in events if e["ph"] == "X"}
        assert cats == {"span", "lock_wait", "lock_hold", "slow_callback"}
        slow = next(e for e in events if e.get("cat") == "slow_callback")
        assert slow["cname"] == "terrible" and slow["args"]["culprit"].startswith("/app/prog.py:33")
        globals_ = {e["name"] for e in events if e["ph"] == "i" and e.get("s") == "g"}
        assert globals_ == {"DEADLOCK", "HANG", "lock-order inversion"}
        counters = {e["name"] for e in events if e["ph"] == "C"}
        assert {"CPU %", "RSS MiB", "Threads", "Open fds", "Context switches/s"} <= counters
        assert check_handoffs(check_trace(json.loads(render_trace(rich)))) == 1

    def test_track_per_thread_and_task(self, rich: Snapshot) -> None:
        """Threads and asyncio tasks get their own named tracks."""
        events = trace_events(rich)
        names = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
        assert SCRIPT_END in names and "MainThread" in names
        assert f"task {HOSTILE}" in names and f"task {LINE_SEP}" in names

    def test_flow_from_holder_to_waiter(self, rich: Snapshot) -> None:
        """A lock hand-off draws an arrow from the holder's track to the waiter's track."""
        events = trace_events(rich)
        tid_name = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
        start = next(e for e in events if e["ph"] == "s")
        finish = next(e for e in events if e["ph"] == "f" and e["id"] == start["id"])
        assert tid_name[start["tid"]] == SCRIPT_END
        assert tid_name[finish["tid"]] == f"task {HOSTILE}"
        wait = next(e for e in events if e.get("cat") == "lock_wait" and e["tid"] == finish["tid"])
        assert wait["ts"] <= finish["ts"] <= wait["ts"] + wait["dur"]
        hold = next(e for e in events if e.get("cat") == "lock_hold")
        assert hold["tid"] == start["tid"] and hold["ts"] <= start["ts"] <= hold["ts"] + hold["dur"]

    def test_two_tasks_of_one_name_get_two_tracks(self, recorder: Recorder) -> None:
        """Two tasks named alike whose waits overlap partially are two tasks: a second track."""
        for start in (0, 5_000_000):
            recorder.record(
                LockWaitEvent(
                    ts_ns=recorder.started_ns + start,
                    thread_id=1,
                    thread_name="T",
                    task_name="worker",
                    lock_id=1,
                    lock_name="L",
                    lock_kind="aio.Lock",
                    wait_s=0.01,
                    acquired=True,
                    holder=None,
                    site="x.py:1",
                )
            )
        events = validate({"traceEvents": trace_events(recorder.snapshot())})
        assert nests(events)
        names = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
        assert {"task worker", "task worker (2)"} <= names

    def test_a_thread_is_one_track_whatever_overlaps_on_it(self, recorder: Recorder) -> None:
        """Thread w0 waits for B while holding A, and w1's wait for A began in the middle of that:
        w0's inferred hold of A overlaps its own wait partially. The hold adapts (it began no later
        than the wait, since w0 held A while blocked) and w0 stays one track, with the arrow to w1."""

        def wait(who: str, tid: int, lock: int, start_ms: int, wait_ms: int, holder: str | None) -> LockWaitEvent:
            return LockWaitEvent(
                ts_ns=recorder.started_ns + start_ms * 1_000_000,
                thread_id=tid,
                thread_name=who,
                lock_id=lock,
                lock_name=f"L{lock}",
                lock_kind="Lock",
                wait_s=wait_ms / 1000,
                acquired=True,
                holder=holder,
                site="x.py:1",
            )

        recorder.record(wait("w0", 10, 2, 0, 10, "thread 'w2'"))  # w0 waits for L2 from 0 to 10 ms
        recorder.record(wait("w1", 11, 1, 5, 15, "thread 'w0'"))  # w1 waits for L1 (held by w0) from 5 to 20 ms
        summary = check_trace({"traceEvents": trace_events(recorder.snapshot())})
        assert sorted(summary.track_names.values()) == ["w0", "w1", "w2"]
        assert check_handoffs(summary) == 2
        w0 = summary.track_of("w0")
        hold = next(s for s in summary.slices[w0] if s.get("cat") == "lock_hold")
        assert (hold["ts"], hold["dur"], hold["args"]["lock"]) == (0, 20_000, "L1")

    def test_no_handoff_without_one_holder(self, recorder: Recorder) -> None:
        """A semaphore's permits do not go down a queue, and an Event hands nothing over: only the
        one holder a semaphore waiter named gives it a hold and an arrow."""

        def wait(who: str, kind: str, start_ms: int, holder: str | None) -> LockWaitEvent:
            return LockWaitEvent(
                ts_ns=recorder.started_ns + start_ms * 1_000_000,
                thread_id=hash(who) & 0xFFFF,
                thread_name=who,
                lock_id=hash(kind) & 0xFFFF,
                lock_name=kind.lower(),
                lock_kind=kind,
                wait_s=0.010,
                acquired=True,
                holder=holder,
                site="x.py:1",
            )

        recorder.record(wait("A", "Semaphore", 0, "thread 'H1', thread 'H2'"))  # two holders: no one to name
        recorder.record(wait("B", "Semaphore", 5, None))  # A acquired while B waited: not a hand-off
        recorder.record(wait("C", "Semaphore", 20, "thread 'H3'"))
        recorder.record(wait("D", "Event", 40, "thread 'E'"))
        summary = check_trace({"traceEvents": trace_events(recorder.snapshot())})
        assert check_handoffs(summary) == 1
        hold = summary.of_cat("lock_hold")[0]
        assert summary.track_names[(hold["pid"], hold["tid"])] == "H3"

    def test_nested_spans_never_open_a_lane(self, recorder: Recorder) -> None:
        """Real nested @traced calls, thousands of them: one track for the thread, every slice nested."""
        import threading

        from conctools.tracing import traced

        @traced("inner")
        def inner() -> int:
            return sum(range(20))

        @traced("outer")
        def outer() -> None:
            for _ in range(3):
                inner()

        t = threading.Thread(target=lambda: [outer() for _ in range(2000)], name="nester")
        t.start()
        t.join()
        snapshot = recorder.snapshot()
        summary = check_trace({"traceEvents": trace_events(snapshot)})
        assert list(summary.track_names.values()) == ["nester"]
        # Of the 8,000 spans a default recorder keeps the latest 4,096 and the slowest of each name (its
        # span cap): every kept one is a slice of the one track.
        kept = snapshot.of_kind(SpanEvent)
        assert snapshot.counts["span"] == 8000 and len(kept) >= DEFAULT_KIND_CAPS["span"]
        assert len(summary.slices[summary.track_of("nester")]) == len(kept)

    def test_timestamps_relative_microseconds(self, recorder: Recorder) -> None:
        """Span timestamps are µs since the run start and durations are µs."""
        recorder.record(
            SpanEvent(
                ts_ns=recorder.started_ns + 2_000_000,
                thread_id=1,
                thread_name="T",
                name="s",
                span_id=1,
                parent_id=None,
                duration_s=0.003,
                outcome="ok",
            )
        )
        x = next(e for e in trace_events(recorder.snapshot()) if e["ph"] == "X")
        assert x["ts"] == 2000 and x["dur"] == 3000

    def test_empty_snapshot(self, recorder: Recorder) -> None:
        """A run that recorded nothing is still a valid trace (process metadata only)."""
        events = validate(json.loads(render_trace(recorder.snapshot())))
        assert [e["name"] for e in events] == ["process_name"]


class TestHostileNames:
    def test_names_survive_as_data(self, rich: Snapshot) -> None:
        """Hostile names round-trip exactly through the JSON, and the file is pure ASCII."""
        text = render_trace(rich)
        assert text.isascii()
        assert "\u2028" not in text
        doc = json.loads(text)
        strings = json.dumps(doc, ensure_ascii=False)
        for name in HOSTILE_NAMES:
            assert json.dumps(name, ensure_ascii=False)[1:-1] in strings


class TestRealLocks:
    def test_contended_traced_lock_draws_a_handoff(self, recorder: Recorder) -> None:
        """A real contended conctools.Lock gives a wait slice, a hold slice and a flow between threads."""
        import threading

        import conctools

        lock = conctools.Lock(name="<b>shared</b>")
        holding = threading.Lock()
        holding.acquire()

        def holder() -> None:
            with lock:
                holding.release()  # the waiter may start now
                waited_for.wait(timeout=10)

        waited_for = threading.Event()
        t = threading.Thread(target=holder, name="holder-thread")
        t.start()
        assert holding.acquire(timeout=10)

        def waiter() -> None:
            threading.Timer(0.05, waited_for.set).start()
            with lock:
                pass

        w = threading.Thread(target=waiter, name="waiter-thread")
        w.start()
        w.join(timeout=10)
        t.join(timeout=10)
        events = validate({"traceEvents": trace_events(recorder.snapshot())})
        assert nests(events)
        tid_name = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
        wait = next(e for e in events if e.get("cat") == "lock_wait")
        hold = next(e for e in events if e.get("cat") == "lock_hold")
        assert tid_name[wait["tid"]] == "waiter-thread" and tid_name[hold["tid"]] == "holder-thread"
        assert wait["args"]["lock"] == "<b>shared</b>" and wait["dur"] >= 20_000
        flow = {e["ph"]: e for e in events if e["ph"] in ("s", "f")}
        assert tid_name[flow["s"]["tid"]] == "holder-thread" and tid_name[flow["f"]["tid"]] == "waiter-thread"

    def test_hold_ends_at_the_next_acquisition(self, recorder: Recorder) -> None:
        """Two waiters saw the same holder: its hold ends when the first got the lock; the first then
        holds it until the second, still waiting, gets it (the lock goes down the queue): two arrows."""

        def wait(name: str, start_ms: int, wait_ms: int) -> LockWaitEvent:
            return LockWaitEvent(
                ts_ns=recorder.started_ns + start_ms * 1_000_000,
                thread_id=hash(name) & 0xFFFF,
                thread_name=name,
                lock_id=9,
                lock_name="L",
                lock_kind="Lock",
                wait_s=wait_ms / 1000,
                acquired=True,
                holder="thread 'H'",
                site="x.py:1",
            )

        recorder.record(wait("W1", 0, 10))
        recorder.record(wait("W2", 2, 18))
        events = validate({"traceEvents": trace_events(recorder.snapshot())})
        tid_name = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
        holds = [e for e in events if e.get("cat") == "lock_hold"]
        assert [(tid_name[h["tid"]], h["ts"], h["dur"]) for h in holds] == [("H", 0, 10_000), ("W1", 10_000, 10_000)]
        flows = sorted((e["id"], e["ph"], tid_name[e["tid"]]) for e in events if e["ph"] in ("s", "f"))
        assert [f[1:] for f in flows] == [("f", "W1"), ("s", "H"), ("f", "W2"), ("s", "W1")]
