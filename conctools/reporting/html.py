"""``report.html``: one self-contained page to look at a run (no CDN, no network).

The page embeds the run as JSON in ``<script type="application/json">`` and draws it with
inline JavaScript: a zoomable timeline of threads and tasks (spans, lock waits and holds with
hand-off arrows, slow callbacks, deadlock/hang markers), tables that sort, and charts of the
resource samples.

Safety: every name in the data came from the program and may be hostile (a task named
``<img src=x onerror=alert(1)>``). The JSON is escaped so it cannot end its script element
(``<``, ``>``, ``&``, U+2028 and U+2029 become ``\\uXXXX``), the script only ever writes text
(``textContent``, canvas ``fillText``; never ``innerHTML``), and a Content-Security-Policy
allows no network and no script but the page's own (pinned by its hash).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import time
from importlib import resources
from pathlib import Path
from typing import Any

from conctools.events import (
    DeadlockEvent,
    HangEvent,
    LockOrderEvent,
    LockWaitEvent,
    ResourceSampleEvent,
    SlowCallbackEvent,
)
from conctools.recorder import Snapshot
from conctools.reporting._safe import neutralise, neutralise_data
from conctools.reporting._timeline import build_timeline
from conctools.reporting.trace import dumps_finite

__all__ = ["MAX_SLICES", "html_data", "render_html", "script_json", "write_html"]

# The timeline draws at most this many slices (the longest ones): a page must stay openable.
MAX_SLICES = 50_000

_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def script_json(data: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: it cannot close the element."""
    text = dumps_finite(data, ensure_ascii=False)
    for char, escaped in _JSON_ESCAPES.items():
        text = text.replace(char, escaped)
    return text


def _frames(frames: Any) -> list[str]:
    return [f"{f.site} in {f.function}" + (f": {f.line}" if f.line else "") for f in frames]


def _resource_points(snapshot: Snapshot) -> list[dict[str, float]]:
    """Resource samples for the charts: the sampler's whole-run series, else the events kept."""
    section = snapshot.sections.get("resources")
    raw: list[dict[str, Any]] = []
    if isinstance(section, dict) and isinstance(section.get("series"), list):
        raw = [p for p in section["series"] if isinstance(p, dict)]
    if not raw:
        raw = [e.point() for e in snapshot.of_kind(ResourceSampleEvent)]
    points = []
    prev: dict[str, Any] | None = None
    for p in raw:
        try:
            t_s = (int(p["ts_ns"]) - snapshot.started_ns) / 1e9
            point = {
                "t": t_s,
                "cpu": float(p["cpu_percent"]),
                "rss": float(p["rss_bytes"]) / 2**20,
                "threads": float(p["num_threads"]),
                "fds": float(p["num_fds"]),
            }
            if prev is not None and int(p["ts_ns"]) > int(prev["ts_ns"]):
                dt = (int(p["ts_ns"]) - int(prev["ts_ns"])) / 1e9
                point["cs"] = (
                    int(p["ctx_switches_voluntary"])
                    + int(p["ctx_switches_involuntary"])
                    - int(prev["ctx_switches_voluntary"])
                    - int(prev["ctx_switches_involuntary"])
                ) / dt
        except (KeyError, TypeError, ValueError):
            continue
        prev = p
        points.append(point)
    return points


def html_data(snapshot: Snapshot) -> dict[str, Any]:
    """Everything the page shows, as JSON-able data (a pure function of the snapshot)."""
    from conctools.reporting.processes_timeline import html_processes, merged_timeline

    tl = merged_timeline(snapshot, build_timeline(snapshot))  # child processes' tracks too, by process
    extra = html_processes(snapshot)
    slices = tl.slices
    truncated = 0
    if len(slices) > MAX_SLICES:
        keep = sorted(slices, key=lambda s: -s.dur_us)[:MAX_SLICES]
        truncated = len(slices) - MAX_SLICES
        slices = sorted(keep, key=lambda s: (s.start_us, -s.dur_us))
    waits: dict[str, dict[str, Any]] = {}
    for w in snapshot.of_kind(LockWaitEvent):
        row = waits.setdefault(
            w.lock_name,
            {
                "lock": w.lock_name,
                "kind": w.lock_kind,
                "waits": 0,
                "timeouts": 0,
                "total_s": 0.0,
                "max_s": 0.0,
                "site": w.site,
            },
        )
        row["waits"] += 1
        row["timeouts"] += 0 if w.acquired else 1
        row["total_s"] += w.wait_s
        if w.wait_s >= row["max_s"]:
            row["max_s"], row["site"] = w.wait_s, w.site
    slow = sorted(snapshot.of_kind(SlowCallbackEvent), key=lambda e: -e.duration_s)
    return {
        "meta": {
            "command": snapshot.meta.get("command"),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snapshot.started_wall)),
            "duration_s": snapshot.duration_s,
            "exit_status": snapshot.meta.get("exit_status"),
            "pid": snapshot.meta.get("pid"),
            "python": snapshot.meta.get("python"),
            "counts": snapshot.counts,
            "dropped": snapshot.dropped,
            "truncated_slices": truncated,
        },
        "timeline": {
            "duration_us": tl.duration_us,
            "tracks": [[t.tid, t.name, t.kind] for t in tl.tracks],
            "slices": [[s.tid, s.start_us, s.dur_us, s.name, s.cat, s.args] for s in slices],
            "instants": [[i.tid, i.ts_us, i.name, i.cat, i.args] for i in tl.instants],
            "flows": [
                [f.source.tid, f.source.start_us + f.source.dur_us, f.target.tid, f.target.start_us + f.target.dur_us]
                for f in tl.flows
            ],
        },
        "resources": _resource_points(snapshot),
        "spans": [
            {
                "span": s.name,
                "calls": s.count,
                "errors": s.errors,
                "cancelled": s.cancelled,
                "total_s": s.total_s,
                "mean_s": s.mean_s,
                "p50_s": s.p50_s,
                "p99_s": s.p99_s,
                "max_s": s.max_s,
            }
            for s in snapshot.spans
        ],
        "lock_waits": sorted(waits.values(), key=lambda r: -r["total_s"]),
        "slow_callbacks": [
            {
                "callback": e.callback,
                "task": e.task_name,
                "thread": e.thread_name,
                "blocked_s": e.duration_s,
                "culprit": f"{e.culprit.site} in {e.culprit.function}" if e.culprit else None,
                "line": e.culprit.line if e.culprit else None,
            }
            for e in slow[:200]
        ],
        "deadlocks": [
            [
                {
                    "who": p.who,
                    "waits_for": p.waits_for,
                    "held_by": p.held_by,
                    "wait_site": p.wait_site,
                    "holds": list(p.holds),
                    "stack": _frames(p.stack),
                }
                for p in e.participants
            ]
            for e in snapshot.of_kind(DeadlockEvent)
        ]
        + extra.get("deadlocks", []),
        "hangs": [
            {
                "reason": e.reason,
                "stalled_s": e.stalled_s,
                "waiters": [
                    {
                        "who": w.task_name if w.task_name is not None else w.thread_name,
                        "thread": w.thread_name,
                        "state": w.state,
                        "waits_on": w.waits_on,
                        "stack": _frames(w.stack),
                    }
                    for w in e.waiters
                ],
            }
            for e in snapshot.of_kind(HangEvent)
        ]
        + extra.get("hangs", []),
        "lock_orders": [
            {
                "cycle": list(e.cycle),
                "edges": [
                    {
                        "from": g.from_lock,
                        "to": g.to_lock,
                        "from_site": g.from_site,
                        "to_site": g.to_site,
                        "thread": g.thread_name,
                    }
                    for g in e.edges
                ],
            }
            for e in snapshot.of_kind(LockOrderEvent)
        ],
        # The processes section as a table (each child's report is drawn above, not as JSON).
        "sections": {**snapshot.sections, **({"processes": extra["processes"]} if extra else {})},
    }


@functools.cache
def _asset(name: str) -> str:
    """The page's own script or style, shipped beside this module (inlined into every page)."""
    return resources.files("conctools.reporting").joinpath(name).read_text(encoding="utf-8")


def render_html(snapshot: Snapshot) -> str:
    """``report.html`` as text: one self-contained page."""
    data = script_json(neutralise_data(html_data(snapshot)))  # names are shown, never obeyed
    script = _asset("report.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    csp = f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src data:"
    command = snapshot.meta.get("command")
    title = "conctools report" + (f": {command}" if command else "")
    return (
        _PAGE.replace("@CSP@", csp)  # our own constant: no quotes to escape
        .replace("@TITLE@", html.escape(neutralise(str(title)), quote=True))
        .replace("@STYLE@", _asset("report.css"))
        .replace("@SCRIPT@", script)
        .replace("@DATA@", data)
    )


def write_html(snapshot: Snapshot, path: str | Path) -> Path:
    """Write ``report.html`` to ``path``."""
    p = Path(path)
    p.write_text(render_html(snapshot), encoding="utf-8")
    return p


# @DATA@ is replaced last: whatever the data holds, it cannot contain a placeholder of ours
# that a later replace would touch.
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="@CSP@">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@TITLE@</title>
<style>@STYLE@</style>
</head>
<body>
<header><h1>@TITLE@</h1><div id="meta"></div></header>
<main>
<section id="problems"></section>
<section id="timeline-section"><h2>Timeline</h2>
<div class="legend" id="legend"></div>
<div id="timeline-wrap"><canvas id="timeline" height="200"></canvas><div id="tip" hidden></div></div>
<p class="hint">Wheel to zoom, drag to pan, double-click to reset. Hover a slice for details.</p>
</section>
<section id="resources"></section>
<section id="tables"></section>
<section id="other"></section>
</main>
<noscript>This report draws its timeline and tables with JavaScript.</noscript>
<script type="application/json" id="conctools-data">@DATA@</script>
<script>@SCRIPT@</script>
</body>
</html>
"""
