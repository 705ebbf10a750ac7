"""``report.html``: one self-contained page to look at a run (no CDN, no network).

What a person sees, top to bottom: the findings, ranked, each with its evidence and a link to
its detail (written into the page itself, so they show before any script runs); charts over
time on one shared axis (loop lag, stalls, lock waits, CPU, memory, and Locust's request rate
and latency when the run was a load test); a timeline that scales (one row per thread; tasks
grouped by what they run, with counts and duration percentiles, expandable; zoom and pan;
lock holds and hand-off arrows; a run with child processes groups the rows by process, each
under a header that opens or closes it and says what was found in it); tables that summarise,
sort, filter and take the keyboard (slow callbacks by culprit site with a sparkline each, locks
with where they were created and who waited and held, spans, task groups); flame graphs (profile
per thread and per task group, stacks of stalls and of lock waits); then the detail of deadlocks,
hangs and inversions.

Size stays bounded whatever the run: the timeline draws the :data:`MAX_SLICES` most recent
slices (and the :data:`MAX_LONGEST` longest); older ones are summarised in each row's activity
band, and the page says how many and from when. Names and arguments are stored once each.

Safety: every name in the data came from the program and may be hostile (a task named
``<img src=x onerror=alert(1)>``). The JSON is escaped so it cannot end its script element
(``<``, ``>``, ``&``, U+2028 and U+2029 become ``\\uXXXX``), the findings are HTML-escaped, the
script only ever writes text (``textContent``, canvas ``fillText``; never ``innerHTML``), and a
Content-Security-Policy allows no network and no script but the page's own (pinned by its hash).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
import re
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from conctools._units import format_duration
from conctools.events import DeadlockEvent, HangEvent, LockOrderEvent, SlowCallbackEvent
from conctools.recorder import Snapshot
from conctools.reporting._safe import neutralise, neutralise_data
from conctools.reporting._summary import SIGNAL_KINDS, group_of_tasks, lock_rows, short_site, stall_sites
from conctools.reporting._timeline import Slice, Timeline, Track, build_timeline, natural_key
from conctools.reporting.charts import BINS, chart_series, nice_bin_us
from conctools.reporting.findings import SEVERITIES, Finding, find
from conctools.reporting.flame import flames
from conctools.reporting.gil_text import html_lines as gil_html_lines
from conctools.reporting.processes import offset_ns, processes_of
from conctools.reporting.trace import dumps_finite

__all__ = ["MAX_LONGEST", "MAX_SLICES", "html_data", "render_html", "script_json", "write_html"]

# The timeline draws the most recent slices up to this many (half of them kept for lock waits,
# holds and stalls), plus the longest ones: a page of a 10-minute server run stays a few MB.
MAX_SLICES = 30_000
MAX_LONGEST = 1_000
MAX_TASKS_LISTED = 20_000  # tasks with a row of their own (a group's expansion); the rest are counted
_POOL_AFTER = 90  # report.js's POOL_AFTER: past this many threads, threads named alike share a row

_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_CATS = ("span", "lock_wait", "lock_hold", "slow_callback", "blocking_call")


def script_json(data: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: it cannot close the element."""
    text = dumps_finite(data, ensure_ascii=False)
    for char, escaped in _JSON_ESCAPES.items():
        text = text.replace(char, escaped)
    return text


def _frames(frames: Any) -> list[str]:
    return [f"{f.site} in {f.function}" + (f": {f.line}" if f.line else "") for f in frames]


class _Strings:
    """A string table: each distinct name or argument set is stored once."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.index: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        n = self.index.get(text)
        if n is None:
            n = self.index[text] = len(self.items)
            self.items.append(text)
        return n


def _percentile(sorted_values: list[int], q: float) -> int:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] if sorted_values else 0


def _select(slices: list[Slice]) -> tuple[list[Slice], int, int]:
    """The slices to draw one by one: the most recent ones (half of the room for lock waits,
    holds and stalls), and the longest. Returns them, how many were left out, and the time
    before which the left-out ones lie."""
    if len(slices) <= MAX_SLICES:
        return slices, 0, 0
    newest_first = sorted(slices, key=lambda s: -s.end_us)
    important = [s for s in newest_first if s.cat != "span"][: MAX_SLICES // 2]
    spans = [s for s in newest_first if s.cat == "span"][: MAX_SLICES - len(important)]
    keep = {id(s) for s in important} | {id(s) for s in spans}
    keep |= {id(s) for s in sorted(slices, key=lambda s: -s.dur_us)[:MAX_LONGEST]}
    kept = [s for s in slices if id(s) in keep]
    left = [s for s in slices if id(s) not in keep]
    before = max((s.end_us for s in left), default=0)
    return kept, len(left), before


def _band(cols: list[float], start: int, end: int, bin_us: int) -> None:
    i = start // bin_us
    while i < len(cols) and i * bin_us < max(end, start + 1):
        lo, hi = max(start, i * bin_us), min(max(end, start + 1), (i + 1) * bin_us)
        if hi > lo:
            cols[i] += (hi - lo) / bin_us
        i += 1


# Arguments the page shows otherwise (the row is the waiter, the slice's length is the wait).
_SHOWN_ARGS = {
    "lock_wait": frozenset({"waiter", "lock", "wait_s"}),
    "slow_callback": frozenset({"duration_s", "task"}),
    "blocking_call": frozenset({"duration_s"}),
}


def _args(s: Slice, strings: _Strings) -> list[int]:
    """A slice's arguments as string-table indexes ``[key, JSON value, key, JSON value, ...]``:
    values that repeat (a site, a culprit line) are stored once."""
    skip = _SHOWN_ARGS.get(s.cat, frozenset())
    out: list[int] = []
    for k, v in s.args.items():
        if k not in skip and v is not None:
            out += [strings(k), strings(json.dumps(v, default=str))]
    return out


def _timeline_data(tl: Timeline, strings: _Strings) -> dict[str, Any]:
    """The timeline as the page draws it: threads, task groups, the kept slices, flows, marks."""
    kept, left_out, before_us = _select(tl.slices)
    bin_us = nice_bin_us(max(1, tl.duration_us), BINS)
    n_bins = int(max(1, tl.duration_us) // bin_us) + 1
    by_tid = {t.tid: t for t in tl.tracks}
    kept_tids = {s.tid for s in kept} | {i.tid for i in tl.instants if i.tid is not None}
    # Activity bands: how busy each thread was (its outermost slices), how many tasks of a group ran.
    thread_band: dict[int, list[float]] = {}
    for s in tl.slices:
        track = by_tid[s.tid]
        if track.kind == "thread" and s.depth == 0:
            _band(thread_band.setdefault(s.tid, [0.0] * n_bins), s.start_us, s.end_us, bin_us)
    groups: dict[tuple[int, str], dict[str, Any]] = {}
    durations: dict[tuple[int, str], list[int]] = {}
    for t in tl.tracks:
        if t.kind != "task":
            continue
        key = (t.thread_tid, t.group)
        g = groups.get(key)
        if g is None:
            g = groups[key] = {
                "name": t.group,
                "thread": t.thread_tid,
                "count": 0,
                "first_us": t.start_us,
                "band": [0.0] * n_bins,
                "tasks": [],
            }
            durations[key] = []
        g["count"] += 1
        g["first_us"] = min(g["first_us"], t.start_us)
        durations[key].append(t.end_us - t.start_us)
        _band(g["band"], t.start_us, t.end_us, bin_us)
        if t.tid in kept_tids and len(g["tasks"]) < MAX_TASKS_LISTED:
            g["tasks"].append(t.tid)
    group_list = []
    for key, g in groups.items():
        ds = sorted(durations[key])
        g["p50_us"], g["p95_us"], g["max_us"] = _percentile(ds, 0.5), _percentile(ds, 0.95), ds[-1]
        g["band"] = [round(v, 2) for v in g["band"]]
        group_list.append(g)
    group_list.sort(key=lambda g: (g["thread"], natural_key(g["name"])))
    group_of = {tid: n for n, g in enumerate(group_list) for tid in g["tasks"]}
    listed = {t.tid for t in tl.tracks if t.kind == "thread"} | set(group_of)
    tracks = [
        [t.tid, strings(t.name), t.kind, t.thread_tid, group_of.get(t.tid, -1), t.start_us, t.end_us, t.process]
        for t in tl.tracks
        if t.tid in listed
    ]
    slices = [
        [
            s.tid,
            s.start_us,
            s.dur_us,
            strings(s.name),
            _CATS.index(s.cat) if s.cat in _CATS else 0,
            _args(s, strings),
            s.depth,
        ]
        for s in kept
        if s.tid in listed
    ]
    kept_ids = {id(s) for s in kept}
    flows = [
        [f.source.tid, f.source.end_us, f.target.tid, f.target.end_us, strings(str(f.target.args.get("lock", "")))]
        for f in tl.flows
        if id(f.source) in kept_ids and id(f.target) in kept_ids
    ]
    instants = [
        [i.tid, i.ts_us, strings(i.name), i.cat, strings(json.dumps(i.args, default=str, sort_keys=True)), i.process]
        for i in tl.instants
        if i.tid is None or i.tid in listed
    ]
    unlisted = sum(1 for t in tl.tracks if t.kind == "task" and t.tid not in listed)
    return {
        "duration_us": tl.duration_us,
        "bin_us": bin_us,
        "cats": list(_CATS),
        "tracks": tracks,
        "groups": group_list,
        # Drawn where slices were summarised, and for a pool of threads sharing a row (the page's
        # POOL_AFTER): else every slice is on the page and a band would only add weight.
        "thread_bands": {str(k): [round(v, 2) for v in b] for k, b in thread_band.items()}
        if left_out or len(thread_band) > _POOL_AFTER
        else {},
        "slices": slices,
        "flows": flows,
        "instants": instants,
        "handoffs": tl.handoffs,
        "clipped": tl.clipped,
        "summarised": {
            "slices": left_out,
            "of": len(tl.slices),
            "before_us": before_us,
            "tasks": unlisted,
            "flows": len(tl.flows) - len(flows),
        },
    }


def _finding_dict(f: Finding) -> dict[str, Any]:
    return {
        "kind": f.kind,
        "severity": f.severity,
        "title": f.title,
        "evidence": list(f.evidence),
        "where": f.where,
        "anchor": f.anchor,
    }


def _slow_sites(snapshot: Snapshot, bin_us: int, n_bins: int, offset_s: float = 0.0) -> list[dict[str, Any]]:
    """The stalls by culprit site; ``offset_s``: where ``snapshot``'s start is on the page's clock."""
    out = []
    for s in stall_sites(snapshot)[:100]:
        spark = [0] * n_bins
        for start_s, _dur in s.get("times") or []:
            i = int((start_s + offset_s) * 1e6 // bin_us)
            if 0 <= i < n_bins:
                spark[i] += 1
        stack = [
            f"{short_site(str(f.get('filename')) + ':' + str(f.get('lineno')))} in {f.get('function')}"
            + (f": {f['line']}" if f.get("line") else "")
            for f in s.get("stack") or []
            if isinstance(f, dict)
        ]
        out.append(
            {
                "culprit": short_site(str(s.get("site"))),
                "function": s.get("function") or "",
                "stalls": int(s.get("count") or 0),
                "total_s": float(s.get("total_s") or 0.0),
                "max_s": float(s.get("max_s") or 0.0),
                "p99_s": float(s.get("p99_s") or s.get("max_s") or 0.0),
                "tasks": ", ".join(str(t) for t in s.get("tasks") or []),
                "callback": s.get("callback") or "",
                "line": s.get("line") or "",
                "stack": stack,
                "spark": spark,
                "recorded": len(s.get("times") or []),
            }
        )
    return out


def _sites_text(sites: Any) -> str:
    if not isinstance(sites, list):
        return ""
    parts = []
    for s in sites[:3]:
        if isinstance(s, dict):
            fn = f" in {s['function']}" if s.get("function") else ""
            waited = (
                f", {format_duration(float(s['wait_total_s']))}"
                if isinstance(s.get("wait_total_s"), (int, float))
                else ""
            )
            parts.append(f"{s.get('site')}{fn} ({s.get('waits')} waits{waited})")
    return "; ".join(parts)


def _locks(snapshot: Snapshot, groups: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for r in lock_rows(snapshot, groups):
        held = bool(r.get("hold_count"))
        out.append(
            {
                "lock": str(r.get("name", "?")),
                "kind": str(r.get("kind", "")),
                "created_at": str(r.get("created_at") or ""),
                "acquired": r.get("acquisitions"),
                "contended": r.get("contentions"),
                "waited_s": r.get("wait_total_s"),
                "wait_p50_s": r.get("wait_p50_s"),
                "wait_p99_s": r.get("wait_p99_s"),
                "wait_max_s": r.get("wait_max_s"),
                "hold_p99_s": r.get("hold_p99_s") if held else None,
                "hold_max_s": r.get("hold_max_s") if held else None,
                "hottest_waits": _sites_text(r.get("hottest_sites")),
                "held_by": "; ".join(f"{who} ({n})" for who, n in r.get("holders") or []),
                "waiters": "; ".join(f"{who} ({n})" for who, n in r.get("waiters") or []),
            }
        )
    return out


def _spans(snapshot: Snapshot) -> list[dict[str, Any]]:
    return [
        {
            "span": s.name,
            "calls": s.count,
            "errors": s.errors,
            "cancelled": s.cancelled,
            "total_s": s.total_s,
            "mean_s": s.mean_s,
            "p50_s": s.p50_s,
            "p95_s": s.p95_s,
            "p99_s": s.p99_s,
            "max_s": s.max_s,
        }
        for s in snapshot.spans
    ]


def _by_process(
    snapshot: Snapshot, rows_of: Callable[[Snapshot, float], list[dict[str, Any]]], most: str
) -> list[dict[str, Any]]:
    """A table's rows for every process of the run: ``rows_of(report, offset_s)`` of the main process
    and of each followed child whose report was read (``offset_s``: where that report's start is on
    the page's clock), each row labelled with its ``process`` when the run had children, and the
    largest ``most`` first. A run without children: the main process's rows as they are."""
    views = processes_of(snapshot)
    if not views:
        return rows_of(snapshot, 0.0)
    out: list[dict[str, Any]] = []
    for view in views:
        report = snapshot if view.is_main else view.snapshot
        if report is None:
            continue
        offset_s = 0.0
        if report is not snapshot:
            offset_s = (report.started_ns + offset_ns(snapshot, report, view.entry) - snapshot.started_ns) / 1e9
        label = f"pid {view.pid} \u00b7 {view.name}"
        out += [{**row, "process": label} for row in rows_of(report, offset_s)]
    out.sort(key=lambda row: -float(row.get(most) or 0.0))  # stable: each process's own order within ties
    return out


def _signal_waits(snapshot: Snapshot) -> list[dict[str, Any]]:
    rows = snapshot.sections.get("locks")
    if not isinstance(rows, list):
        return []
    return [
        {
            "primitive": str(r.get("name", "?")),
            "kind": str(r.get("kind", "")),
            "created_at": str(r.get("created_at") or ""),
            "waits": r.get("contentions"),
            "timed_out": r.get("timeouts"),
            "waited_s": r.get("wait_total_s"),
            "wait_p50_s": r.get("wait_p50_s"),
            "wait_p99_s": r.get("wait_p99_s"),
            "wait_max_s": r.get("wait_max_s"),
            "hottest_waits": _sites_text(r.get("hottest_sites")),
        }
        for r in rows
        if isinstance(r, dict) and r.get("kind") in SIGNAL_KINDS
    ]


def html_data(snapshot: Snapshot) -> dict[str, Any]:
    """Everything the page shows, as JSON-able data (a pure function of the snapshot)."""
    from conctools.reporting.processes_timeline import (
        html_child_findings,
        html_process_groups,
        html_processes,
        merged_timeline,
    )

    tl = merged_timeline(snapshot, build_timeline(snapshot))  # child processes' tracks too, by process
    extra = html_processes(snapshot)
    strings = _Strings()
    timeline = _timeline_data(tl, strings)
    timeline["processes"] = html_process_groups(snapshot, tl)  # one collapsible group each
    groups = group_of_tasks(snapshot)
    rank = {s: n for n, s in enumerate(SEVERITIES)}
    found = sorted(
        [_finding_dict(f) for f in find(snapshot)]
        + [{**_finding_dict(f), "process": anchor} for f, anchor in html_child_findings(snapshot)],
        key=lambda f: rank.get(str(f["severity"]), len(rank)),
    )
    threads: list[Track] = [t for t in tl.tracks if t.kind == "thread"]
    n_bins = int(max(1, tl.duration_us) // timeline["bin_us"]) + 1
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
            "threads": len(threads),
            "tasks": sum(1 for t in tl.tracks if t.kind == "task"),
        },
        "strings": strings.items,
        "findings": found,
        "charts": chart_series(snapshot, tl),
        "timeline": timeline,
        # The tables: every process's rows (its own column when the run had children).
        "slow_sites": _by_process(
            snapshot, lambda report, offset_s: _slow_sites(report, timeline["bin_us"], n_bins, offset_s), "total_s"
        ),
        "stall_count": snapshot.counts.get("slow_callback", len(snapshot.of_kind(SlowCallbackEvent))),
        "locks": _by_process(
            snapshot,
            lambda report, _offset_s: _locks(report, groups if report is snapshot else group_of_tasks(report)),
            "waited_s",
        ),
        "signal_waits": _by_process(snapshot, lambda report, _offset_s: _signal_waits(report), "waited_s"),
        "spans": _by_process(snapshot, lambda report, _offset_s: _spans(report), "total_s"),
        "flames": flames(snapshot),
        "deadlocks": [
            [
                {
                    "who": p.who,
                    "waits_for": p.waits_for,
                    "held_by": p.held_by,
                    "wait_site": p.wait_site,
                    "holds": list(p.holds),
                    "stack": _frames(p.stack),
                    "summary": e.summary if i == 0 else "",
                    "advice": list(e.advice) if i == 0 else [],
                }
                for i, p in enumerate(e.participants)
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
                "failures": [f"{f.who} ended with {f.exc_type}: {f.message} at {f.site}" for f in e.failures],
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
        "gil": gil_html_lines(snapshot),
        "gil_processes": extra.get("gil", []),  # each child's own, titled with it
        # The processes section as a table (each child's report is drawn above, not as JSON).
        "sections": {
            **_other_sections(snapshot),
            **({"processes": extra["processes"]} if extra.get("processes") else {}),
        },
    }


# Sections the page shows in a shape of its own; any other one (a newer producer's) is shown as
# tables of whatever rows it holds.
_SHOWN = {"locks", "slow_callbacks", "gil"}  # gil: the verdict and section cards


def _other_sections(snapshot: Snapshot) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in snapshot.sections.items():
        if name in _SHOWN:
            continue
        if name == "resources" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != "series"}  # drawn as charts
        if name == "profile" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != "call_graphs"}  # drawn as flame graphs
        out[name] = value
    return out


def findings_html(found: list[dict[str, Any]]) -> str:
    """The ranked findings as HTML (escaped): they show before any script runs."""
    if not found:
        return '<p class="none">Nothing found: no deadlock, hang, lock-order inversion, stall or lock contention.</p>'
    items = []
    for n, f in enumerate(found, 1):
        sev = html.escape(str(f["severity"]))
        evidence = "".join(f"<li>{html.escape(str(e))}</li>" for e in f["evidence"])
        link = (
            f' <a class="detail" href="#{html.escape(str(f["anchor"]), quote=True)}">details</a>' if f["anchor"] else ""
        )
        if f.get("process") and f["process"] != f["anchor"]:  # a child's: its group in the timeline too
            link += f' <a class="detail" href="#{html.escape(str(f["process"]), quote=True)}">in the timeline</a>'
        elif f.get("process"):
            link = f' <a class="detail" href="#{html.escape(str(f["process"]), quote=True)}">in the timeline</a>'

        items.append(
            f'<li class="finding sev-{sev}"><span class="rank">{n}</span>'
            f'<span class="sev">{sev.upper()}</span> <span class="title">{html.escape(str(f["title"]))}</span>{link}'
            + (f'<ul class="evidence">{evidence}</ul>' if evidence else "")
            + "</li>"
        )
    return f'<ol class="findings">{"".join(items)}</ol>'


@functools.cache
def _asset(name: str) -> str:
    """The page's own script or style, shipped beside this module (inlined into every page)."""
    return resources.files("conctools.reporting").joinpath(name).read_text(encoding="utf-8")


def render_html(snapshot: Snapshot) -> str:
    """``report.html`` as text: one self-contained page."""
    data = neutralise_data(html_data(snapshot))  # names are shown, never obeyed
    found = data["findings"]
    script = _asset("report.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    csp = f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src data:"
    command = snapshot.meta.get("command")
    title = "conctools report" + (f": {command}" if command else "")
    count = f"{len(found)} finding{'s' if len(found) != 1 else ''}, worst first" if found else "no findings"
    values = {
        "CSP": csp,  # our own constant: no quotes to escape
        "TITLE": html.escape(neutralise(str(title)), quote=True),
        "STYLE": _asset("report.css"),
        "COUNT": count,
        "SCRIPT": script,
        "FINDINGS": findings_html(found),
        "DATA": script_json(data),
    }
    # One pass: what a value holds (a task named "@DATA@") is never read as a placeholder.
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], _PAGE)


def write_html(snapshot: Snapshot, path: str | Path) -> Path:
    """Write ``report.html`` to ``path``."""
    p = Path(path)
    p.write_text(render_html(snapshot), encoding="utf-8")
    return p


_PLACEHOLDER = re.compile(r"@(CSP|TITLE|STYLE|COUNT|SCRIPT|FINDINGS|DATA)@")
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
<nav id="toc" aria-label="Sections"><a href="#findings">Findings</a> <a href="#charts">Over time</a>
<a href="#timeline-section">Timeline</a> <a href="#slow-callbacks">Stalls</a> <a href="#locks">Locks</a>
<a href="#flames">Flame graphs</a> <a href="#details">Details</a></nav>
<main>
<section id="findings" aria-labelledby="findings-h"><h2 id="findings-h">Findings <small>(@COUNT@)</small></h2>
@FINDINGS@</section>
<section id="charts" aria-label="Over time"></section>
<section id="timeline-section"><h2>Timeline</h2>
<div class="toolbar" id="tl-toolbar"></div>
<div class="legend" id="legend"></div>
<p class="note" id="tl-note"></p>
<div id="timeline-wrap"><div id="tl-axis"><canvas id="axis" height="22"></canvas></div>
<div id="tl-body"><div id="tl-rows" role="tree" aria-label="Threads and task groups"></div>
<canvas id="timeline" tabindex="0" aria-label="Timeline: + and - zoom, arrow keys pan, 0 resets"></canvas></div>
<div id="tip" hidden></div></div>
</section>
<section id="tables"></section>
<section id="flames"></section>
<section id="details"></section>
<section id="other"></section>
</main>
<noscript>The findings above are the report's summary; the charts, timeline and tables need JavaScript.</noscript>
<script type="application/json" id="conctools-data">@DATA@</script>
<script>@SCRIPT@</script>
</body>
</html>
"""
