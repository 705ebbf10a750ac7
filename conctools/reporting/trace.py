"""``trace.json``: the Chrome trace event format, opened by ui.perfetto.dev and chrome://tracing.

One track per thread (always one: its spans, lock waits, inferred lock holds and slow callbacks
nest on it) and one per asyncio task, named with ``M`` metadata events and ordered threads
first (``MainThread`` first), each thread's tasks after the threads in order of their start.
``@traced`` spans, lock waits and holds, blocking calls and slow callbacks are ``X`` slices (slow
callbacks in a warning colour); every contended hand-off of a lock is a hold slice on the
giver's track and an ``s``/``f`` flow arrow from the end of that hold to the end of the
receiver's wait (both bound to their enclosing slice); deadlocks, hangs and lock-order
inversions are global instants; resource samples and Locust's statistics are ``C`` counter
tracks. Timestamps are whole microseconds since the run started and never go backwards on a
track; slices on one track always nest (see :mod:`conctools.reporting._timeline`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conctools.recorder import Snapshot
from conctools.reporting._safe import neutralise_data
from conctools.reporting._timeline import Timeline, build_timeline
from conctools.reporting.jsonreport import _clean

__all__ = ["dumps_finite", "render_trace", "trace_events", "write_trace"]

# Chrome's reserved colour names (cname): slow callbacks and problems stand out.
_COLORS = {
    "slow_callback": "terrible",
    "lock_wait": "bad",
    "lock_hold": "yellow",
    "deadlock": "terrible",
    "hang": "terrible",
    "lock_order": "bad",
    "failure": "bad",
}
_INSIDE_US = 1  # a flow event sits 1 µs before its slice's end: inside the slice it binds to


def trace_events(snapshot: Snapshot, timeline: Timeline | None = None) -> list[dict[str, Any]]:
    """The list of trace events (``traceEvents``) for ``snapshot`` (or its already built ``timeline``)."""
    tl = timeline if timeline is not None else build_timeline(snapshot)
    pid = int(snapshot.meta.get("pid", 1) or 1)
    command = str(snapshot.meta.get("command") or "python")
    out: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "ts": 0, "pid": pid, "tid": 0, "args": {"name": f"conctools: {command}"}}
    ]
    # Threads first, then the tasks (each thread's in order of start): a server's thousands of
    # request tasks sort below the threads instead of between them.
    order = sorted(tl.tracks, key=lambda t: (t.kind != "thread", t.tid))
    for n, t in enumerate(order):
        out.append({"ph": "M", "name": "thread_name", "ts": 0, "pid": pid, "tid": t.tid, "args": {"name": t.name}})
        out.append(
            {"ph": "M", "name": "thread_sort_index", "ts": 0, "pid": pid, "tid": t.tid, "args": {"sort_index": n}}
        )
    timed: list[dict[str, Any]] = []
    for s in tl.slices:
        ev: dict[str, Any] = {
            "ph": "X",
            "name": s.name,
            "cat": s.cat,
            "ts": s.start_us,
            "dur": s.dur_us,
            "pid": pid,
            "tid": s.tid,
            "args": s.args,
        }
        if s.cat in _COLORS:
            ev["cname"] = _COLORS[s.cat]
        timed.append(ev)
    for f in tl.flows:
        src, dst = f.source, f.target
        common = {"name": f.name, "cat": "lock_flow", "id": f.id, "pid": pid}
        timed.append({**common, "ph": "s", "ts": max(src.start_us, src.end_us - _INSIDE_US), "tid": src.tid})
        timed.append({**common, "ph": "f", "bp": "e", "ts": max(dst.start_us, dst.end_us - _INSIDE_US), "tid": dst.tid})
    for i in tl.instants:
        ev = {"ph": "i", "name": i.name, "cat": i.cat, "ts": i.ts_us, "pid": pid, "args": i.args}
        if i.tid is None:
            ev.update(s="g", tid=0)
        else:
            ev.update(s="t", tid=i.tid)
        if i.cat in _COLORS:
            ev["cname"] = _COLORS[i.cat]
        timed.append(ev)
    for c in tl.counters:
        timed.append({"ph": "C", "name": c.name, "ts": c.ts_us, "pid": pid, "tid": 0, "args": c.values})
    # A stable sort by time keeps every track monotonic; on ties, longer slices (parents) first.
    timed.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
    from conctools.reporting.processes_timeline import child_trace_events

    return out + timed + child_trace_events(snapshot)  # a process group per child process


def render_trace(snapshot: Snapshot) -> str:
    """``trace.json`` as text (a JSON object with ``traceEvents``)."""
    tl = build_timeline(snapshot)
    doc = {
        "traceEvents": neutralise_data(trace_events(snapshot, tl)),  # Perfetto shows names: never obey them
        "displayTimeUnit": "ms",
        "otherData": {
            "generator": "conctools",
            "started_wall": snapshot.started_wall,
            "duration_s": snapshot.duration_s,
            "lock_handoffs": tl.handoffs,  # each: a hold slice and a flow arrow to the next acquirer
            "clipped_slices": tl.clipped,  # recorded slices drawn shorter so that their track nests
        },
    }
    # ensure_ascii keeps U+2028/2029 and every odd character escaped: safe for any consumer.
    return dumps_finite(doc, ensure_ascii=True)


def dumps_finite(doc: Any, *, ensure_ascii: bool) -> str:
    """Compact JSON without NaN/Infinity (which JSON.parse rejects), cleaning only when needed."""
    try:
        return json.dumps(doc, ensure_ascii=ensure_ascii, separators=(",", ":"), default=str, allow_nan=False)
    except ValueError:  # a non-finite number somewhere (e.g. from a hand-edited report.json)
        return json.dumps(_clean(doc), ensure_ascii=ensure_ascii, separators=(",", ":"), default=str)


def write_trace(snapshot: Snapshot, path: str | Path) -> Path:
    """Write ``trace.json`` to ``path``."""
    p = Path(path)
    p.write_text(render_trace(snapshot), encoding="utf-8")
    return p
