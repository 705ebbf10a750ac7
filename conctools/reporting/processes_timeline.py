"""The processes of a run on one timeline: ``trace.json`` gets one process group per process
(Perfetto shows each with its threads and tasks under it), ``report.html`` gets every
process's tracks, named after their process, one collapsible group per process (a header with
its pid, name, how it ended and a summary: :func:`html_process_groups`), and each child's
problems with the main one's, among the ranked findings too (:func:`html_child_findings`).

Pure functions of a :class:`~conctools.recorder.Snapshot` whose ``processes`` section holds the
children's reports (see :mod:`conctools.reporting.processes`); a run without children gets
nothing extra.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from conctools.events import DeadlockEvent, HangEvent, ProcessStuckEvent, SlowCallbackEvent
from conctools.recorder import Snapshot
from conctools.reporting._timeline import Counter, Flow, Instant, Slice, Timeline, build_timeline
from conctools.reporting.findings import SEVERITIES, Finding, find
from conctools.reporting.processes import ProcessView, label_of, offset_ns, processes_of

__all__ = [
    "COLLAPSE_AFTER",
    "child_trace_events",
    "html_child_findings",
    "html_process_groups",
    "html_processes",
    "merged_timeline",
    "process_anchors",
]

# Past this many child processes, report.html's timeline opens only the main process and the
# children with a problem (at most this many of them): each other child is one header row.
COLLAPSE_AFTER = 4

# A stuck child's verdict, in words ("dead" / "ended": the program waits on what it left behind).
_STATES = {"deadlock": "deadlocked", "dead": "dead", "ended": "ended"}


def _shift_us(main: Snapshot, p: ProcessView) -> float:
    """µs to add to a child's timeline (relative to its own start) to place it on the main one."""
    assert p.snapshot is not None
    offset = offset_ns(main, p.snapshot, p.entry, main_host=_main_host(main))
    return (p.snapshot.started_ns + offset - main.started_ns) / 1000


def _main_host(snapshot: Snapshot) -> Any:
    for p in processes_of(snapshot):
        if p.is_main:
            return p.entry.get("host")
    return None


def _children(snapshot: Snapshot) -> list[ProcessView]:
    return [p for p in processes_of(snapshot) if not p.is_main and p.snapshot is not None]


def _indexed_children(snapshot: Snapshot) -> list[tuple[int, ProcessView]]:
    """The children with a report, each with its index among the run's processes."""
    return [(n, p) for n, p in enumerate(processes_of(snapshot)) if not p.is_main and p.snapshot is not None]


def child_trace_events(snapshot: Snapshot) -> list[dict[str, Any]]:
    """Trace events of every child process, each under its own ``pid`` with its name."""
    from conctools.reporting.trace import trace_events

    out: list[dict[str, Any]] = []
    used = {int(snapshot.meta.get("pid", 1) or 1)}
    for p in _children(snapshot):
        assert p.snapshot is not None
        pid = p.pid or 1
        while pid in used:  # reports merged from other machines may share pids
            pid += 1_000_000
        used.add(pid)
        shift = _shift_us(snapshot, p)
        method = p.entry.get("start_method") or "?"
        for ev in trace_events(p.snapshot):
            ev = {**ev, "pid": pid}
            if ev.get("ph") == "M" and ev.get("name") == "process_name":
                ev["args"] = {"name": f"{label_of(p.entry)} ({method}, parent {p.entry.get('ppid')})"}
            elif ev.get("ph") != "M":
                ev["ts"] = max(0.0, round(float(ev.get("ts", 0.0)) + shift, 3))
            out.append(ev)
        out.append(
            {"ph": "M", "name": "process_sort_index", "ts": 0, "pid": pid, "tid": 0, "args": {"sort_index": len(used)}}
        )
    return out


def merged_timeline(snapshot: Snapshot, timeline: Timeline | None = None) -> Timeline:
    """The main process's timeline with every child's tracks after it, named ``[pid name] thread``."""
    tl = timeline if timeline is not None else build_timeline(snapshot)
    children = _indexed_children(snapshot)
    if not children:
        return tl
    tracks, slices = list(tl.tracks), list(tl.slices)
    instants, flows, counters = list(tl.instants), list(tl.flows), list(tl.counters)
    duration = tl.duration_us
    for index, p in children:
        assert p.snapshot is not None
        child = build_timeline(p.snapshot)
        shift = _shift_us(snapshot, p)
        base = max((t.tid for t in tracks), default=0)
        prefix = f"[{p.pid} {p.name}] "
        for t in child.tracks:
            tracks.append(
                dataclasses.replace(
                    t,
                    tid=t.tid + base,
                    thread_tid=t.thread_tid + base if t.thread_tid else 0,
                    name=prefix + t.name,
                    thread_name=prefix + t.thread_name,
                    start_us=int(t.start_us + shift),
                    end_us=int(t.end_us + shift),
                    process=index,
                )
            )
        moved: dict[int, Slice] = {}
        for s in child.slices:
            new = dataclasses.replace(s, tid=s.tid + base, start_us=int(s.start_us + shift))
            moved[id(s)] = new
            slices.append(new)
        for i in child.instants:
            instants.append(
                Instant(
                    ts_us=int(i.ts_us + shift),
                    name=f"{prefix}{i.name}",
                    cat=i.cat,
                    args=i.args,
                    key=None,
                    tid=i.tid + base if i.tid is not None else None,
                    process=index,
                )
            )
        for f in child.flows:
            source, target = moved.get(id(f.source)), moved.get(id(f.target))
            if source is not None and target is not None:
                flows.append(Flow(id=len(flows) + 1, name=f.name, source=source, target=target))
        for c in child.counters:
            counters.append(Counter(ts_us=int(c.ts_us + shift), name=prefix + c.name, values=c.values))
        duration = max(duration, int(child.duration_us + shift))
    slices.sort(key=lambda s: (s.start_us, -s.dur_us))
    instants.sort(key=lambda i: i.ts_us)
    counters.sort(key=lambda c: c.ts_us)
    return Timeline(
        tracks=tracks, slices=slices, instants=instants, flows=flows, counters=counters, duration_us=duration
    )


def _frames(frames: Any) -> list[str]:
    return [f"{f.site} in {f.function}" + (f": {f.line}" if f.line else "") for f in frames]


def html_processes(snapshot: Snapshot) -> dict[str, Any]:
    """What ``report.html`` adds for the processes of a run: a table of them (a section the page
    draws as a table), every child's deadlocks and hangs, each stuck child's chain of waits
    (drawn as a hang: who waits on what, with stacks), and each child's bottleneck verdict and
    CPU-bound threads (``gil``: titled with the child, never shown as the main process's)."""
    processes = processes_of(snapshot)
    if not processes:
        return {}
    rows = [
        {
            "pid": p.pid,
            "parent": p.entry.get("ppid"),
            "name": p.name,
            "started by": p.entry.get("start_method"),
            "ended": p.entry.get("exit_text"),
            "cpu_s": p.entry.get("cpu_s"),
            "peak_rss_bytes": p.entry.get("peak_rss_bytes"),
            "program": p.entry.get("target") or " ".join(str(a) for a in p.entry.get("argv") or []),
        }
        for p in processes
    ]
    deadlocks = []
    hangs = []
    for event in snapshot.of_kind(ProcessStuckEvent):
        hangs.append(
            {
                "reason": f"child process {event.pid} {event.process_name!r} is "
                f"{_STATES.get(event.verdict, 'hung')}: {event.reason}",
                "stalled_s": 0.0,
                "waiters": [
                    {
                        "who": f"process {link.pid} {link.process_name!r}: thread {link.thread_name!r}",
                        "thread": link.thread_name,
                        "state": "waiting on another process",
                        "waits_on": link.waits_on,
                        "stack": _frames(link.stack),
                    }
                    for link in event.chain
                ],
            }
        )
    for p in processes:
        if p.is_main or p.snapshot is None:
            continue
        where = f"process {p.pid} {p.name!r}: "
        for e in p.snapshot.of_kind(DeadlockEvent):
            deadlocks.append(
                [
                    {
                        "who": where + q.who,
                        "waits_for": q.waits_for,
                        "held_by": q.held_by,
                        "wait_site": q.wait_site,
                        "holds": list(q.holds),
                        "stack": _frames(q.stack),
                    }
                    for q in e.participants
                ]
            )
        for h in p.snapshot.of_kind(HangEvent):
            hangs.append(
                {
                    "reason": where + h.reason,
                    "stalled_s": h.stalled_s,
                    "waiters": [
                        {
                            "who": where + (w.task_name if w.task_name is not None else w.thread_name),
                            "thread": w.thread_name,
                            "state": w.state,
                            "waits_on": w.waits_on,
                            "stack": _frames(w.stack),
                        }
                        for w in h.waiters
                    ],
                }
            )
    return {"processes": rows, "deadlocks": deadlocks, "hangs": hangs, "gil": _children_gil(processes)}


def process_anchors(processes: list[ProcessView]) -> list[str]:
    """Each process's element id in ``report.html`` (its header in the timeline): ``process-PID``,
    made unique where reports merged from several machines share a pid."""
    out: list[str] = []
    for p in processes:
        anchor = base = f"process-{p.pid}"
        n = 1
        while anchor in out:
            n += 1
            anchor = f"{base}-{n}"
        out.append(anchor)
    return out


def _problems(snapshot: Snapshot, p: ProcessView) -> dict[str, Any]:
    """What went wrong in one process, counted (what its collapsed header says)."""
    own = snapshot if p.is_main else p.snapshot
    stuck = next((e.verdict for e in snapshot.of_kind(ProcessStuckEvent) if e.pid == p.pid), None)
    if stuck is None and not p.is_main and isinstance(p.entry.get("stuck"), dict):
        stuck = p.entry["stuck"].get("verdict")
    if own is None:
        return {"deadlocks": 0, "hangs": 0, "stalls": 0, "stuck": stuck}
    return {
        "deadlocks": len(own.of_kind(DeadlockEvent)),
        "hangs": len(own.of_kind(HangEvent)),
        "stalls": int(own.counts.get("slow_callback", len(own.of_kind(SlowCallbackEvent)))),
        "stuck": stuck,
    }


def _exit_text(entry: dict[str, Any]) -> str:
    text = str(entry.get("exit_text") or "")
    return f"exit {text}" if text.lstrip("-").isdigit() else text


def html_process_groups(snapshot: Snapshot, timeline: Timeline) -> list[dict[str, Any]]:
    """One group per process for ``report.html``'s timeline (main first; empty without children):
    its header (pid, name, how it ended), the prefix of its tracks' names, how many threads and
    tasks it has on ``timeline`` (a :func:`merged_timeline`), its problems, its element id, and
    whether it starts open: the main process always; the children when there are at most
    :data:`COLLAPSE_AFTER` of them, else only those with a deadlock, a hang or stuck (the first few).
    """
    processes = processes_of(snapshot)
    if not processes:
        return []
    threads = [0] * len(processes)
    tasks = [0] * len(processes)
    for t in timeline.tracks:
        if 0 <= t.process < len(processes):
            if t.kind == "thread":
                threads[t.process] += 1
            else:
                tasks[t.process] += 1
    many = sum(1 for p in processes if not p.is_main) > COLLAPSE_AFTER
    opened_for_problems = 0
    out = []
    for n, (p, anchor) in enumerate(zip(processes, process_anchors(processes), strict=True)):
        problems = _problems(snapshot, p)
        critical = bool(problems["deadlocks"] or problems["hangs"] or problems["stuck"])
        is_open = n == 0 or p.is_main or not many
        if not is_open and critical and opened_for_problems < COLLAPSE_AFTER:
            is_open = True
            opened_for_problems += 1
        out.append(
            {
                "pid": p.pid,
                "name": p.name,
                "main": p.is_main or n == 0,
                "exit": _exit_text(p.entry),
                "started_by": str(p.entry.get("start_method") or ""),
                "prefix": "" if n == 0 else f"[{p.pid} {p.name}] ",
                "threads": threads[n],
                "tasks": tasks[n],
                "report": n == 0 or p.snapshot is not None,
                "problems": problems,
                "anchor": anchor,
                "open": is_open,
            }
        )
    return out


def html_child_findings(snapshot: Snapshot) -> list[tuple[Finding, str]]:
    """The children's findings for ``report.html``'s ranked list (the main process's own come from
    :func:`~conctools.reporting.findings.find`): each stuck child, then each child's own findings,
    titled by their process, worst first. Each comes with its process's element id: the page links
    it to the process's group in the timeline, and opens the group."""
    processes = processes_of(snapshot)
    if not processes:
        return []
    anchors = {id(p): a for p, a in zip(processes, process_anchors(processes), strict=True)}
    by_pid = {p.pid: anchors[id(p)] for p in reversed(processes)}  # the first process of a pid
    out: list[tuple[Finding, str]] = []
    for e in snapshot.of_kind(ProcessStuckEvent):
        state = {"deadlock": "deadlocked", "dead": "dead"}.get(e.verdict, "hung")
        waits = ", and the program waits on it" if e.chain else ""
        evidence = [
            f"process {link.pid} {link.process_name!r}, thread {link.thread_name!r} waits on {link.waits_on}, "
            f"at {link.site}"
            for link in e.chain
        ]
        evidence.append(f"process {e.pid} {e.process_name!r}: {e.reason}")
        finding = Finding(
            kind="process_stuck",
            severity="critical",
            title=f"Child process {e.pid} {e.process_name!r} is {state}{waits}",
            evidence=tuple(evidence),
            where=e.chain[-1].site if e.chain else None,
            anchor="hangs",  # drawn as a hang: who waits on what
        )
        out.append((finding, by_pid.get(e.pid, "")))
    for p in processes:
        if p.is_main or p.snapshot is None:
            continue
        anchor = anchors[id(p)]
        for f in find(p.snapshot):
            # Its deadlocks and hangs have their cards in the page; the rest is in its group.
            own = f.anchor if f.anchor in ("deadlocks", "hangs") else anchor
            out.append((dataclasses.replace(f, title=f"{label_of(p.entry)}: {f.title}", anchor=own), anchor))
    rank = {s: n for n, s in enumerate(SEVERITIES)}
    out.sort(key=lambda pair: rank.get(pair[0].severity, len(rank)))
    return out


def _children_gil(processes: list[ProcessView]) -> list[dict[str, Any]]:
    """Each child's verdict and "CPU-bound threads" lines (as the main one's), titled with the child."""
    from conctools.reporting.gil_text import html_lines

    out = []
    for p in processes:
        if p.is_main or p.snapshot is None:
            continue
        lines = html_lines(p.snapshot)
        if lines is None or not (lines["verdict"] or lines["section"]):
            continue
        where = f"In {label_of(p.entry)}: "
        verdict, section = lines["verdict"], lines["section"]
        out.append(
            {
                "verdict_title": where + verdict[0] if verdict else "",
                "verdict": verdict[1:],
                "section_title": where + section[0].split(":", 1)[0] if section else "",
                "section": section,
            }
        )
    return out
