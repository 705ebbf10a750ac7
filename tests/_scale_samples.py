"""Recorded runs at server scale for the reporter tests, built from events (fast and deterministic).

``scale_snapshot`` makes a run with many asyncio tasks (grouped by the handler they run) on the
main thread's loop and many worker threads that hand a few locks to each other: every kind of
thing the report draws, in the numbers a busy server produces.
"""

from __future__ import annotations

import time

from conctools.events import (
    Frame,
    LockOrderEdge,
    LockOrderEvent,
    LockWaitEvent,
    MarkEvent,
    ResourceSampleEvent,
    SlowCallbackEvent,
    SpanEvent,
)
from conctools.recorder import Recorder, Snapshot

HANDLERS = ("GET /io", "GET /cache", "POST /counter", "GET /search", "POST /jobs")
MAIN_ID = 1000


def _frames(*sites: tuple[str, int, str]) -> tuple[Frame, ...]:
    return tuple(Frame(filename=f"/srv/app/{f}", lineno=n, function=fn, line=f"# line {n}") for f, n, fn in sites)


def scale_snapshot(
    *, tasks: int = 10_000, threads: int = 50, duration_s: float = 60.0, locust: bool = True
) -> Snapshot:
    """``tasks`` request tasks and ``threads`` worker threads over ``duration_s`` seconds."""
    rec = Recorder(capacity=max(100_000, 3 * tasks + 40 * threads))
    t0 = rec.started_ns
    span_id = 0
    step_ns = int(duration_s * 1e9 / max(tasks, 1))
    counter_holder: str | None = None
    for n in range(tasks):
        handler = HANDLERS[n % len(HANDLERS)]
        start = t0 + n * step_ns
        dur_s = 0.002 + (n % 17) * 0.003
        task = f"Task-{n + 10}"
        span_id += 1
        if handler == "POST /counter" and n % 3 == 0:
            wait_s = min(dur_s / 2, 0.01)
            rec.record(
                LockWaitEvent(
                    ts_ns=start + 100_000,
                    thread_id=MAIN_ID,
                    thread_name="MainThread",
                    task_name=task,
                    lock_id=7,
                    lock_name="counter",
                    lock_kind="aio.Lock",
                    wait_s=wait_s,
                    acquired=True,
                    holder=counter_holder,
                    site="app.py:220",
                    stack=_frames(("app.py", 220, "counter")) if n % 50 == 0 else (),
                )
            )
            counter_holder = f"task {task!r}"
        rec.record(
            SpanEvent(
                ts_ns=start,
                thread_id=MAIN_ID,
                thread_name="MainThread",
                task_name=task,
                name=handler,
                span_id=span_id,
                parent_id=None,
                duration_s=dur_s,
                outcome="ok" if n % 97 else "raised",
                exc_type=None if n % 97 else "ValueError",
            )
        )
        if handler == "GET /search" and n % 50 == 3:
            rec.record(
                SlowCallbackEvent(
                    ts_ns=start,
                    thread_id=MAIN_ID,
                    thread_name="MainThread",
                    task_name=task,
                    loop_id=1,
                    duration_s=0.15,
                    threshold_s=0.1,
                    callback=f"Task {task!r} (RequestHandler._handle_request)",
                    culprit=_frames(("app.py", 268, "search"))[0],
                    samples=(_frames(("app.py", 268, "search"), ("web.py", 563, "_handle")),),
                )
            )
    # Worker threads: each runs jobs (spans) and hands the pool's locks to the next.
    per_thread = max(4, int(duration_s))
    for w in range(threads):
        name = f"worker-{w}"
        tid = 2000 + w
        for j in range(per_thread):
            start = t0 + int((j * duration_s / per_thread + w * 0.0037) * 1e9)
            span_id += 1
            rec.record(
                SpanEvent(
                    ts_ns=start,
                    thread_id=tid,
                    thread_name=name,
                    name="job",
                    span_id=span_id,
                    parent_id=None,
                    duration_s=0.02,
                    outcome="ok",
                )
            )
            if j % 2 == 0 and w > 0:
                rec.record(
                    LockWaitEvent(
                        ts_ns=start + 1_000_000,
                        thread_id=tid,
                        thread_name=name,
                        lock_id=100 + w % 5,
                        lock_name=f"pool-lock-{w % 5}",
                        lock_kind="Lock",
                        wait_s=0.004,
                        acquired=True,
                        holder=f"thread 'worker-{w - 1}'",
                        site="pool.py:41",
                        stack=_frames(("pool.py", 41, "take"), ("pool.py", 12, "job")) if j % 8 == 0 else (),
                    )
                )
    edge_a = LockOrderEdge(
        from_lock="accounts", to_lock="ledger", from_site="bank.py:9", to_site="bank.py:10", thread_name="worker-1"
    )
    edge_b = LockOrderEdge(
        from_lock="ledger", to_lock="accounts", from_site="bank.py:15", to_site="bank.py:16", thread_name="worker-2"
    )
    rec.record(
        LockOrderEvent(
            ts_ns=t0 + 1_000_000,
            thread_id=2001,
            thread_name="worker-1",
            cycle=("accounts", "ledger"),
            edges=(edge_a, edge_b),
        )
    )
    for s in range(int(duration_s) + 1):
        rec.record(
            ResourceSampleEvent(
                ts_ns=t0 + s * 1_000_000_000,
                thread_id=3,
                thread_name="conctools-resources",
                cpu_percent=20.0 + s % 7,
                rss_bytes=(60 + s % 5) * 2**20,
                num_threads=threads + 2,
                num_fds=40,
                ctx_switches_voluntary=100 * s,
                ctx_switches_involuntary=10 * s,
            )
        )
        if locust:
            rec.record(
                MarkEvent(
                    ts_ns=t0 + s * 1_000_000_000 + 500_000_000,
                    thread_id=0,
                    thread_name="locust",
                    name="locust.latency",
                    detail={
                        "rps": 100.0 + s % 9,
                        "failures_per_s": float(s % 3 == 0),
                        "p50_ms": 11.0,
                        "p95_ms": 150.0 + s % 11,
                    },
                )
            )
    snap = rec.snapshot()
    # A snapshot taken right after the run: its end is the last event's.
    end = t0 + int(duration_s * 1e9) + 200_000_000
    return Snapshot(
        started_ns=snap.started_ns,
        started_wall=time.time() - duration_s,
        taken_ns=end,
        events=snap.events,
        counts=snap.counts,
        dropped=snap.dropped,
        spans=snap.spans,
        sections=snap.sections,
        meta={"command": "scale sample", "pid": 4242},
    )
