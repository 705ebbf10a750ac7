"""A structural checker of Chrome trace-event files (what Perfetto's JSON importer relies on).

The rules checked are those of the Trace Event Format document (phases, required fields,
metadata, complete events, flow events v1) plus Perfetto's: slices on one track nest strictly
(Perfetto drops one that overlaps another partially), and a flow event binds to the slice that
encloses it on its own track.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

PHASES = {"M", "X", "i", "s", "f", "C"}
METADATA = {"process_name", "thread_name", "thread_sort_index", "process_sort_index"}


@dataclass
class TraceSummary:
    """What a valid trace holds, for the tests' own assertions."""

    track_names: dict[tuple[int, int], str] = field(default_factory=dict)
    slices: dict[tuple[int, int], list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    flows: dict[Any, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def track_of(self, name: str) -> tuple[int, int]:
        found = [t for t, n in self.track_names.items() if n == name]
        assert len(found) == 1, f"{len(found)} tracks named {name!r}"
        return found[0]

    def of_cat(self, cat: str) -> list[dict[str, Any]]:
        return [s for slices in self.slices.values() for s in slices if s.get("cat") == cat]


def _enclosing(slices: list[dict[str, Any]], ts: float, cat: str) -> dict[str, Any] | None:
    inside = [s for s in slices if s["ts"] <= ts < s["ts"] + s["dur"] or (s["dur"] == 0 and s["ts"] == ts)]
    found = [s for s in inside if s.get("cat") == cat]
    return found[-1] if found else None


def check_trace(doc: Any) -> TraceSummary:
    """Assert that ``doc`` is a well-formed trace; return what it holds."""
    assert isinstance(doc, dict) and isinstance(doc.get("traceEvents"), list)
    out = TraceSummary()
    last_ts: dict[tuple[int, int], float] = defaultdict(lambda: -math.inf)
    flow_parts: dict[Any, dict[str, dict[str, Any]]] = defaultdict(dict)
    for e in doc["traceEvents"]:
        for key in ("ph", "ts", "pid", "tid", "name"):
            assert key in e, f"{key} missing in {e}"
        ph = e["ph"]
        assert ph in PHASES, ph
        assert isinstance(e["ts"], (int, float)) and math.isfinite(e["ts"]) and e["ts"] >= 0, e
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        track = (e["pid"], e["tid"])
        if ph == "M":
            assert e["name"] in METADATA, e
            if e["name"] == "thread_name":
                assert track not in out.track_names, f"track {track} named twice"
                assert isinstance(e["args"]["name"], str)
                out.track_names[track] = e["args"]["name"]
            continue
        if ph == "C":
            assert isinstance(e["args"], dict) and e["args"]
            assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in e["args"].values()), e
            continue
        if ph == "i":
            assert e.get("s") in ("g", "p", "t"), e
            if e["s"] == "g":
                continue
        assert track in out.track_names, f"event on unnamed track {track}: {e}"
        assert e["ts"] >= last_ts[track], f"time goes backwards on {out.track_names[track]!r}: {e}"
        last_ts[track] = e["ts"]
        if ph == "X":
            assert isinstance(e["dur"], (int, float)) and math.isfinite(e["dur"]) and e["dur"] >= 0, e
            out.slices[track].append(e)
        elif ph in ("s", "f"):
            assert "id" in e and "cat" in e, e
            if ph == "f":
                assert e.get("bp") == "e", "a flow end binds to its enclosing slice"
            key = (e["cat"], e["name"], e["id"])
            assert ph not in flow_parts[key], f"flow {key} has two {ph!r} events"
            flow_parts[key][ph] = e
    # Perfetto: slices of one track nest strictly.
    for track, slices in out.slices.items():
        stack: list[float] = []
        for s in slices:
            end = s["ts"] + s["dur"]
            while stack and stack[-1] <= s["ts"]:
                stack.pop()
            assert not stack or end <= stack[-1], f"slices overlap partially on {out.track_names[track]!r}: {s}"
            stack.append(end)
    for key, parts in flow_parts.items():
        assert set(parts) == {"s", "f"}, f"flow {key} is not a pair: {sorted(parts)}"
        assert parts["s"]["ts"] <= parts["f"]["ts"], f"flow {key} goes back in time"
        out.flows[key] = parts
    # One track per thread: a thread's name never comes back as another track (tasks are "task ...").
    threads = [n for n in out.track_names.values() if not n.startswith("task ")]
    assert len(threads) == len(set(threads)), f"a thread has several tracks: {sorted(threads)}"
    return out


def check_handoffs(summary: TraceSummary) -> int:
    """Every flow starts inside a lock-hold slice on its track and ends inside a lock wait on its
    track; every hold is the start of a flow. Returns the number of hand-offs."""
    starts = set()
    for key, parts in summary.flows.items():
        s, f = parts["s"], parts["f"]
        hold = _enclosing(summary.slices[(s["pid"], s["tid"])], s["ts"], "lock_hold")
        assert hold is not None, f"flow {key} does not start in a hold"
        wait = _enclosing(summary.slices[(f["pid"], f["tid"])], f["ts"], "lock_wait")
        assert wait is not None, f"flow {key} does not end in a lock wait"
        assert wait["args"]["lock"] == hold["args"]["lock"], (hold, wait)
        assert wait["args"]["acquired"] is True
        starts.add((s["pid"], s["tid"], hold["ts"]))
    for hold in summary.of_cat("lock_hold"):
        assert (hold["pid"], hold["tid"], hold["ts"]) in starts, f"a hold without a hand-off: {hold}"
    return len(summary.flows)
