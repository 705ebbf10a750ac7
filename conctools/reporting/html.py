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
import hashlib
import html
import json
import time
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
from conctools.reporting._timeline import build_timeline
from conctools.reporting.jsonreport import _clean

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
    text = json.dumps(_clean(data), ensure_ascii=False, separators=(",", ":"), default=str)
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
        raw = [
            {
                "ts_ns": e.ts_ns,
                "cpu_percent": e.cpu_percent,
                "rss_bytes": e.rss_bytes,
                "num_threads": e.num_threads,
                "num_fds": e.num_fds,
                "ctx_switches_voluntary": e.ctx_switches_voluntary,
                "ctx_switches_involuntary": e.ctx_switches_involuntary,
            }
            for e in snapshot.of_kind(ResourceSampleEvent)
        ]
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
    tl = build_timeline(snapshot)
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
        ],
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
        ],
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
        "sections": snapshot.sections,
    }


def render_html(snapshot: Snapshot) -> str:
    """``report.html`` as text: one self-contained page."""
    data = script_json(html_data(snapshot))
    digest = base64.b64encode(hashlib.sha256(_SCRIPT.encode("utf-8")).digest()).decode("ascii")
    csp = f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src data:"
    command = snapshot.meta.get("command")
    title = "conctools report" + (f": {command}" if command else "")
    return (
        _PAGE.replace("@CSP@", csp)  # our own constant: no quotes to escape
        .replace("@TITLE@", html.escape(str(title), quote=True))
        .replace("@STYLE@", _STYLE)
        .replace("@SCRIPT@", _SCRIPT)
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

_STYLE = """
body{font:13px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:10px 18px}header h1{font-size:17px;margin:0 0 4px;word-break:break-all}
#meta{font-size:12px;color:#c8cdd8}main{padding:8px 18px 40px}h2{font-size:15px;margin:18px 0 6px}
section{margin-bottom:10px}.card{background:#fff;border:1px solid #dde1e8;border-left:4px solid #c0392b;padding:8px 12px;margin:6px 0;border-radius:3px}
.card h3{margin:0 0 4px;font-size:14px;color:#c0392b}.card pre{margin:4px 0;white-space:pre-wrap;word-break:break-all}
#timeline-wrap{position:relative;background:#fff;border:1px solid #dde1e8;border-radius:3px}
canvas#timeline{display:block;width:100%;cursor:grab}
#tip{position:absolute;pointer-events:none;background:#1d2330;color:#fff;padding:6px 8px;border-radius:3px;font-size:12px;max-width:480px;white-space:pre-wrap;word-break:break-all;z-index:2}
.legend span{display:inline-block;margin-right:14px}.legend i{display:inline-block;width:12px;height:10px;margin-right:4px;vertical-align:-1px}
.hint{color:#6b7385;font-size:11px;margin:3px 0}
table{border-collapse:collapse;background:#fff;margin:4px 0 10px;font-size:12px;max-width:100%}
th,td{border:1px solid #dde1e8;padding:3px 7px;text-align:left;vertical-align:top;word-break:break-word;max-width:520px}
th{background:#eef0f4;cursor:pointer;user-select:none;white-space:nowrap}th.sorted-asc::after{content:" \\25B2"}th.sorted-desc::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.charts{display:flex;flex-wrap:wrap;gap:10px}.chart{background:#fff;border:1px solid #dde1e8;border-radius:3px;padding:4px 6px}
.chart h4{margin:0;font-size:12px;font-weight:600}.empty{color:#6b7385}
pre.json{background:#fff;border:1px solid #dde1e8;padding:6px;overflow:auto;max-height:300px}
"""

# Every program-provided string reaches the page through text(): textContent or fillText only.
_SCRIPT = """
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("conctools-data").textContent);
  var COLORS = {span: "#4a7fc1", lock_wait: "#d9534f", lock_hold: "#f0ad4e", slow_callback: "#8e44ad",
                mark: "#2c3e50", deadlock: "#c0392b", hang: "#c0392b", lock_order: "#e67e22"};
  var LABELS = {span: "traced span", lock_wait: "lock wait", lock_hold: "lock held (inferred)",
                slow_callback: "slow callback (loop blocked)", deadlock: "deadlock / hang", lock_order: "lock-order inversion"};

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmtS(s) {
    if (s === null || s === undefined || isNaN(s)) return "";
    var a = Math.abs(s);
    if (a >= 100) return s.toFixed(0) + " s";
    if (a >= 1) return s.toFixed(2) + " s";
    if (a >= 1e-3) return (s * 1e3).toPrecision(3) + " ms";
    if (a >= 1e-6) return (s * 1e6).toPrecision(3) + " \\u00b5s";
    return (s * 1e9).toFixed(0) + " ns";
  }
  function fmtCell(key, v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "number" && /_s$/.test(key)) return fmtS(v);
    if (typeof v === "number" && /bytes/.test(key)) return (v / 1048576).toFixed(1) + " MiB";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(3);
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  // ---- sortable tables ----
  function table(rows, columns, title, parent) {
    if (title) parent.appendChild(el("h2", null, title));
    if (!rows || !rows.length) { parent.appendChild(el("p", "empty", "none")); return; }
    columns = columns || Object.keys(rows[0]);
    var t = el("table"), thead = el("thead"), tr = el("tr"), tbody = el("tbody");
    columns.forEach(function (c, i) {
      var th = el("th", null, c.replace(/_s$/, ""));
      th.addEventListener("click", function () { sortBy(t, tbody, i, th); });
      tr.appendChild(th);
    });
    thead.appendChild(tr); t.appendChild(thead);
    rows.forEach(function (r) {
      var row = el("tr");
      columns.forEach(function (c) {
        var v = r[c];
        var td = el("td", typeof v === "number" ? "num" : null, fmtCell(c, v));
        td.dataset.v = typeof v === "number" ? String(v) : "";
        row.appendChild(td);
      });
      tbody.appendChild(row);
    });
    t.appendChild(tbody);
    parent.appendChild(t);
  }
  function sortBy(t, tbody, i, th) {
    var asc = !th.classList.contains("sorted-desc") && th.classList.contains("sorted-asc") ? false : !th.classList.contains("sorted-asc");
    t.querySelectorAll("th").forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
    th.classList.add(asc ? "sorted-asc" : "sorted-desc");
    var rows = Array.prototype.slice.call(tbody.rows);
    rows.sort(function (a, b) {
      var x = a.cells[i], y = b.cells[i], r;
      if (x.dataset.v !== "" && y.dataset.v !== "") r = parseFloat(x.dataset.v) - parseFloat(y.dataset.v);
      else r = x.textContent.localeCompare(y.textContent);
      return asc ? r : -r;
    });
    rows.forEach(function (r) { tbody.appendChild(r); });
  }

  // ---- header and problems ----
  function header() {
    var m = D.meta, parts = [];
    if (m.command) parts.push("program: " + m.command);
    parts.push("started " + m.started + ", ran for " + fmtS(m.duration_s));
    if (m.exit_status !== null && m.exit_status !== undefined) parts.push("exit " + m.exit_status);
    var counts = Object.keys(m.counts || {}).sort().map(function (k) { return k + "=" + m.counts[k]; });
    parts.push("events: " + (counts.join(", ") || "none"));
    if (m.dropped) parts.push(m.dropped + " older events evicted");
    if (m.truncated_slices) parts.push(m.truncated_slices + " short slices not drawn");
    document.getElementById("meta").textContent = parts.join("  \\u00b7  ");
  }
  function card(parent, title, lines) {
    var c = el("div", "card");
    c.appendChild(el("h3", null, title));
    c.appendChild(el("pre", null, lines.join("\\n")));
    parent.appendChild(c);
  }
  function problems() {
    var p = document.getElementById("problems");
    D.deadlocks.forEach(function (parts, n) {
      var lines = [];
      parts.forEach(function (x) {
        lines.push(x.who + " waits for " + x.waits_for + " at " + x.wait_site + ", held by " + x.held_by);
        if (x.holds.length) lines.push("    holds " + x.holds.join(", "));
        x.stack.slice(0, 8).forEach(function (f) { lines.push("      " + f); });
      });
      card(p, "Deadlock #" + (n + 1), lines);
    });
    D.lock_orders.forEach(function (o) {
      var lines = o.edges.map(function (g) {
        return g.to + " taken at " + g.to_site + " while holding " + g.from + " (taken at " + g.from_site + ") in thread " + g.thread;
      });
      card(p, "Potential deadlock: lock-order inversion " + o.cycle.join(" -> "), lines);
    });
    D.hangs.forEach(function (h) {
      var lines = ["stalled " + fmtS(h.stalled_s) + ": " + h.reason];
      h.waiters.forEach(function (w) {
        lines.push(w.who + " (thread " + w.thread + ") " + w.state + (w.waits_on ? " on " + w.waits_on : ""));
        w.stack.slice(0, 6).forEach(function (f) { lines.push("      " + f); });
      });
      card(p, "Hang", lines);
    });
    if (D.slow_callbacks.length) {
      var worst = D.slow_callbacks[0];
      card(p, D.slow_callbacks.length + " slow callback(s); worst blocked the loop " + fmtS(worst.blocked_s),
           [worst.callback + (worst.culprit ? " at " + worst.culprit : ""), worst.line || ""]);
    }
  }

  // ---- timeline ----
  var TL = D.timeline, ROW = 20, LABEL = 230, AXIS = 22;
  var canvas = document.getElementById("timeline"), ctx = canvas.getContext("2d"), tip = document.getElementById("tip");
  var view = {t0: 0, t1: Math.max(TL.duration_us, 1)};
  var rowOf = {}, rows = [];
  function layout() {
    TL.tracks.forEach(function (t, i) { rowOf[t[0]] = i; rows.push({tid: t[0], name: t[1], kind: t[2], slices: []}); });
    TL.slices.forEach(function (s) {
      var r = rows[rowOf[s[0]]];
      if (!r) return;
      var stack = r.stack || (r.stack = []);
      while (stack.length && stack[stack.length - 1] <= s[1]) stack.pop();
      r.slices.push({start: s[1], dur: s[2], name: s[3], cat: s[4], args: s[5], depth: stack.length});
      stack.push(s[1] + s[2]);
    });
  }
  function legend() {
    var lg = document.getElementById("legend");
    Object.keys(LABELS).forEach(function (k) {
      var s = el("span"), i = el("i");
      i.style.background = COLORS[k];
      s.appendChild(i); s.appendChild(document.createTextNode(LABELS[k]));
      lg.appendChild(s);
    });
  }
  function x(t, w) { return LABEL + (t - view.t0) / (view.t1 - view.t0) * (w - LABEL); }
  function draw() {
    var dpr = window.devicePixelRatio || 1, w = canvas.clientWidth || 1000;
    var h = AXIS + Math.max(rows.length, 1) * ROW + 6;
    canvas.style.height = h + "px";
    canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px system-ui, sans-serif"; ctx.textBaseline = "middle";
    // axis
    ctx.fillStyle = "#6b7385";
    var span = view.t1 - view.t0, step = Math.pow(10, Math.floor(Math.log10(span / 6)));
    if (span / step > 12) step *= 5; else if (span / step > 6) step *= 2;
    for (var t = Math.ceil(view.t0 / step) * step; t <= view.t1; t += step) {
      var xx = x(t, w);
      ctx.fillRect(xx, AXIS - 5, 1, 5);
      ctx.fillText(fmtS(t / 1e6), xx + 2, 9);
    }
    rows.forEach(function (r, i) {
      var y = AXIS + i * ROW;
      ctx.fillStyle = i % 2 ? "#fafbfc" : "#f1f3f6"; ctx.fillRect(0, y, w, ROW);
      ctx.save(); ctx.beginPath(); ctx.rect(LABEL, y, w - LABEL, ROW); ctx.clip();
      r.slices.forEach(function (s) {
        if (s.start + s.dur < view.t0 || s.start > view.t1) return;
        var x0 = x(s.start, w), x1 = Math.max(x(s.start + s.dur, w), x0 + 1), inset = Math.min(s.depth, 3) * 3;
        ctx.fillStyle = COLORS[s.cat] || "#7f8c8d";
        ctx.fillRect(x0, y + 2 + inset, x1 - x0, ROW - 4 - 2 * inset);
        if (x1 - x0 > 40) {
          ctx.fillStyle = "#fff"; ctx.fillText(s.name, x0 + 3, y + ROW / 2, x1 - x0 - 6);
        }
      });
      ctx.restore();
      ctx.fillStyle = r.kind === "task" ? "#5b3a8e" : "#1d2330";
      ctx.fillText((r.kind === "task" ? "  " : "") + r.name, 4, y + ROW / 2, LABEL - 8);
    });
    // hand-off arrows: from the holder's release to the waiter's acquisition
    ctx.strokeStyle = "rgba(192,57,43,0.8)"; ctx.lineWidth = 1;
    TL.flows.forEach(function (f) {
      var a = rowOf[f[0]], b = rowOf[f[2]];
      if (a === undefined || b === undefined) return;
      var x0 = x(f[1], w), y0 = AXIS + a * ROW + ROW / 2, x1 = x(f[3], w), y1 = AXIS + b * ROW + ROW / 2;
      if (x0 < LABEL || x1 < LABEL) return;
      ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1); ctx.stroke();
      ctx.beginPath(); ctx.arc(x1, y1, 2.5, 0, 6.3); ctx.fillStyle = "#c0392b"; ctx.fill();
    });
    // instants: global ones are vertical lines across every row
    TL.instants.forEach(function (m) {
      var xx = x(m[1], w);
      if (xx < LABEL || xx > w) return;
      ctx.fillStyle = COLORS[m[3]] || "#2c3e50";
      if (m[0] === null) {
        ctx.fillRect(xx - 1, AXIS, 2, h - AXIS);
        ctx.fillText(m[2], xx + 3, AXIS + 6);
      } else if (rowOf[m[0]] !== undefined) {
        var y = AXIS + rowOf[m[0]] * ROW;
        ctx.beginPath(); ctx.moveTo(xx, y + 2); ctx.lineTo(xx + 4, y + ROW / 2); ctx.lineTo(xx, y + ROW - 2);
        ctx.lineTo(xx - 4, y + ROW / 2); ctx.fill();
      }
    });
  }
  function hit(ev) {
    var rect = canvas.getBoundingClientRect(), px = ev.clientX - rect.left, py = ev.clientY - rect.top;
    var i = Math.floor((py - AXIS) / ROW), w = canvas.clientWidth;
    if (i < 0 || i >= rows.length || px < LABEL) return null;
    var t = view.t0 + (px - LABEL) / (w - LABEL) * (view.t1 - view.t0), tol = (view.t1 - view.t0) / (w - LABEL) * 2;
    var best = null;
    rows[i].slices.forEach(function (s) {
      if (t >= s.start - tol && t <= s.start + s.dur + tol && (!best || s.depth >= best.depth)) best = s;
    });
    return best ? {s: best, row: rows[i], px: px, py: py} : null;
  }
  function setupTimeline() {
    layout(); legend(); draw();
    var drag = null;
    canvas.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      var rect = canvas.getBoundingClientRect(), w = canvas.clientWidth, px = Math.max(ev.clientX - rect.left, LABEL);
      var t = view.t0 + (px - LABEL) / (w - LABEL) * (view.t1 - view.t0), k = ev.deltaY > 0 ? 1.25 : 0.8;
      view.t0 = t - (t - view.t0) * k; view.t1 = t + (view.t1 - t) * k;
      if (view.t1 - view.t0 < 1) view.t1 = view.t0 + 1;
      draw();
    }, {passive: false});
    canvas.addEventListener("mousedown", function (ev) { drag = {x: ev.clientX, t0: view.t0, t1: view.t1}; });
    window.addEventListener("mouseup", function () { drag = null; });
    canvas.addEventListener("dblclick", function () { view.t0 = 0; view.t1 = Math.max(TL.duration_us, 1); draw(); });
    canvas.addEventListener("mousemove", function (ev) {
      if (drag) {
        var dt = (ev.clientX - drag.x) / (canvas.clientWidth - LABEL) * (drag.t1 - drag.t0);
        view.t0 = drag.t0 - dt; view.t1 = drag.t1 - dt; draw(); return;
      }
      var h = hit(ev);
      if (!h) { tip.hidden = true; return; }
      var lines = [h.s.name, h.row.name, LABELS[h.s.cat] || h.s.cat, "start " + fmtS(h.s.start / 1e6) + ", took " + fmtS(h.s.dur / 1e6)];
      Object.keys(h.s.args || {}).forEach(function (k) { lines.push(k + ": " + fmtCell(k, h.s.args[k])); });
      tip.textContent = lines.join("\\n");
      tip.hidden = false;
      tip.style.left = Math.min(h.px + 12, canvas.clientWidth - 300) + "px";
      tip.style.top = (h.py + 14) + "px";
    });
    canvas.addEventListener("mouseleave", function () { tip.hidden = true; });
    window.addEventListener("resize", draw);
    if (!rows.length) document.getElementById("timeline-section").appendChild(el("p", "empty", "No threads or tasks recorded anything on the timeline."));
  }

  // ---- resource charts ----
  function chart(parent, title, key, unit) {
    var pts = D.resources.filter(function (p) { return typeof p[key] === "number"; });
    var box = el("div", "chart"), c = el("canvas");
    box.appendChild(el("h4", null, title));
    c.width = 300; c.height = 110; box.appendChild(c); parent.appendChild(box);
    var g = c.getContext("2d"), maxV = 0, minT = Infinity, maxT = -Infinity;
    pts.forEach(function (p) { maxV = Math.max(maxV, p[key]); minT = Math.min(minT, p.t); maxT = Math.max(maxT, p.t); });
    maxV = maxV || 1;
    var spanT = maxT > minT ? maxT - minT : 1;
    g.font = "10px system-ui, sans-serif"; g.fillStyle = "#6b7385";
    g.fillText("max " + maxV.toFixed(maxV < 10 ? 1 : 0) + " " + unit, 2, 10);
    if (pts.length) { g.fillText(fmtS(minT), 4, 108); g.textAlign = "right"; g.fillText(fmtS(maxT), 296, 108); }
    g.strokeStyle = "#4a7fc1"; g.lineWidth = 1.5; g.beginPath();
    pts.forEach(function (p, i) {
      var px = 4 + (p.t - minT) / spanT * 290, py = 98 - p[key] / maxV * 82;
      if (i) g.lineTo(px, py); else g.moveTo(px, py);
    });
    g.stroke();
  }
  function resources() {
    var s = document.getElementById("resources");
    s.appendChild(el("h2", null, "Resources"));
    if (!D.resources.length) { s.appendChild(el("p", "empty", "No resource samples.")); return; }
    var box = el("div", "charts");
    chart(box, "CPU", "cpu", "%"); chart(box, "RSS", "rss", "MiB"); chart(box, "Threads", "threads", "");
    chart(box, "Open file descriptors", "fds", ""); chart(box, "Context switches", "cs", "/s");
    s.appendChild(box);
  }

  // ---- tables, including producer sections whatever their shape ----
  function isRows(v) { return Array.isArray(v) && v.length > 0 && v.every(function (r) { return r && typeof r === "object" && !Array.isArray(r); }); }
  function flatRows(v) {
    return v.map(function (r) {
      var o = {};
      Object.keys(r).forEach(function (k) { o[k] = r[k]; });
      return o;
    });
  }
  function genericSection(parent, name, value) {
    if (isRows(value)) { table(flatRows(value), null, "Section: " + name, parent); return; }
    if (value && typeof value === "object" && !Array.isArray(value)) {
      var tabs = Object.keys(value).filter(function (k) { return isRows(value[k]); });
      var scalars = Object.keys(value).filter(function (k) { return value[k] === null || typeof value[k] !== "object"; });
      if (tabs.length || scalars.length) {
        parent.appendChild(el("h2", null, "Section: " + name));
        if (scalars.length) table([scalars.reduce(function (o, k) { o[k] = value[k]; return o; }, {})], scalars, null, parent);
        tabs.forEach(function (k) { parent.appendChild(el("h4", null, k)); table(flatRows(value[k]), null, null, parent); });
        return;
      }
    }
    parent.appendChild(el("h2", null, "Section: " + name));
    parent.appendChild(el("pre", "json", JSON.stringify(value, null, 1)));
  }
  function tables() {
    var p = document.getElementById("tables"), S = D.sections || {};
    if (D.lock_waits.length) table(D.lock_waits, ["lock", "kind", "waits", "timeouts", "total_s", "max_s", "site"], "Lock waits (by total wait)", p);
    if (D.slow_callbacks.length) table(D.slow_callbacks, ["callback", "task", "thread", "blocked_s", "culprit", "line"], "Slow callbacks", p);
    if (D.spans.length) table(D.spans, null, "Traced spans", p);
    var prof = S.profile;
    if (prof && typeof prof === "object" && Array.isArray(prof.functions)) {
      var fns = prof.functions.map(function (f) {
        return {"function": f.name, calls: f.calls, total_s: f.total_s, own_s: f.own_s, where: f.filename + ":" + f.lineno};
      });
      table(fns, null, "Profile (" + prof.clock + " clock): top functions", p);
      if (Array.isArray(prof.threads)) table(prof.threads.map(function (t) {
        return {thread: t.name, total_s: t.total_s, switches: t.switches, hottest: (t.top && t.top[0]) ? t.top[0].name : ""};
      }), null, "Profile per thread", p);
      if (Array.isArray(prof.tasks) && prof.tasks.length) table(prof.tasks.map(function (t) {
        return {task: t.name, own_s: t.own_s, calls: t.calls, hottest: (t.top && t.top[0]) ? t.top[0].name : ""};
      }), null, "Profile per asyncio task", p);
    }
    var other = document.getElementById("other");
    Object.keys(S).sort().forEach(function (name) {
      if (name === "profile" && prof && Array.isArray(prof.functions)) return;
      var v = S[name];
      if (name === "resources" && v && typeof v === "object") {
        var copy = {}; Object.keys(v).forEach(function (k) { if (k !== "series") copy[k] = v[k]; });
        v = copy;
      }
      genericSection(other, name, v);
    });
  }

  header(); problems(); setupTimeline(); resources(); tables();
  document.body.setAttribute("data-rendered", "1");
})();
"""
