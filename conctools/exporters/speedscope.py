"""``profile.speedscope.json``: speedscope's file format (https://www.speedscope.app/file-format-schema.json).

Profiles in one file (speedscope shows a list to pick from):

- ``all threads (yappi wall clock)``: the yappi profile on stacks rebuilt from its call graph
  (:mod:`conctools.exporters.callgraph`), when the run was profiled;
- one per thread and one per asyncio task group (tasks named alike: ``handler-1``, ``handler-2``
  -> ``handler-*``): their hottest functions by own time, from the same profile;
- one per thread of traced spans (``@traced`` calls outside tasks) on a timeline (evented), and
  one per task group of traced spans by own time, with the spans that led to them as the stack.

A pure function of recorded data; no dependency.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from conctools import __version__
from conctools.events import SpanEvent
from conctools.exporters.callgraph import CallGraph, stacks

__all__ = ["SCHEMA_URL", "render_speedscope", "task_group"]

SCHEMA_URL = "https://www.speedscope.app/file-format-schema.json"
_NUMBERED = re.compile(r"^(.*?)[-_ #]?\d+$")


def task_group(name: str) -> str:
    """The group of a task name: trailing numbers become ``*`` (``Task-12`` -> ``Task-*``)."""
    m = _NUMBERED.match(name)
    if m is None or not m.group(1):
        return name
    sep = name[len(m.group(1))] if not name[len(m.group(1))].isdigit() else ""
    return f"{m.group(1)}{sep}*"


class _Frames:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self._index: dict[tuple[str, str, int], int] = {}

    def of(self, name: str, file: str = "", line: int = 0) -> int:
        key = (name, file, line)
        i = self._index.get(key)
        if i is None:
            i = self._index[key] = len(self.frames)
            frame: dict[str, Any] = {"name": name}
            if file:
                frame["file"] = file
            if line:
                frame["line"] = line
            self.frames.append(frame)
        return i


def _sampled(name: str, samples: list[list[int]], weights: list[float]) -> dict[str, Any]:
    return {
        "type": "sampled",
        "name": name,
        "unit": "seconds",
        "startValue": 0,
        "endValue": sum(weights),
        "samples": samples,
        "weights": weights,
    }


def render_speedscope(
    graph: CallGraph | None,
    profile_section: dict[str, Any] | None,
    spans: Sequence[SpanEvent],
    *,
    name: str = "conctools",
) -> str:
    """The speedscope JSON document (see the module docstring); ``graph`` and ``profile_section``
    may be ``None`` (not profiled)."""
    frames = _Frames()
    profiles: list[dict[str, Any]] = []
    if graph is not None and graph.functions:
        funcs = graph.functions
        ids = [frames.of(f.name, f.filename, f.lineno) for f in funcs]
        rebuilt = stacks(graph)
        profiles.append(
            _sampled(
                f"all threads (yappi {graph.clock} clock)",
                [[ids[i] for i in path] for path, _ in rebuilt],
                [own for _, own in rebuilt],
            )
        )
    if isinstance(profile_section, dict):
        for thread in profile_section.get("threads", []) or []:
            profiles += _flat(frames, f"thread {thread.get('name')!r} (hottest functions, own time)", [thread])
        groups: dict[str, list[dict[str, Any]]] = {}
        for task in profile_section.get("tasks", []) or []:
            groups.setdefault(task_group(str(task.get("name", "?"))), []).append(task)
        for group, tasks in groups.items():
            profiles += _flat(frames, f"tasks {group!r} (hottest functions, own time)", tasks)
    profiles += _span_profiles(frames, spans)
    doc = {
        "$schema": SCHEMA_URL,
        "name": name,
        "exporter": f"conctools {__version__}",
        "activeProfileIndex": 0,
        "shared": {"frames": frames.frames},
        "profiles": profiles,
    }
    return json.dumps(doc, ensure_ascii=False)


def _flat(frames: _Frames, title: str, contexts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    own: dict[int, float] = {}
    for ctx in contexts:
        for f in ctx.get("top", []) or []:
            i = frames.of(str(f.get("name", "?")), str(f.get("filename", "")), int(f.get("lineno", 0) or 0))
            own[i] = own.get(i, 0.0) + float(f.get("own_s", 0.0) or 0.0)
    if not own:
        return []
    return [_sampled(title, [[i] for i in own], list(own.values()))]


def _span_profiles(frames: _Frames, spans: Sequence[SpanEvent]) -> list[dict[str, Any]]:
    by_id = {s.span_id: s for s in spans}
    child_ns: dict[int, int] = {}
    for s in spans:
        if s.parent_id is not None:
            child_ns[s.parent_id] = child_ns.get(s.parent_id, 0) + round(s.duration_s * 1e9)
    out: list[dict[str, Any]] = []
    # Threads: traced calls outside tasks nest strictly in time, so a timeline shows them.
    threads: dict[tuple[int, str], list[SpanEvent]] = {}
    for s in spans:
        if s.task_name is None:
            threads.setdefault((s.thread_id, s.thread_name), []).append(s)
    for (_tid, tname), mine in sorted(threads.items(), key=lambda kv: kv[0][1]):
        events = _evented(frames, mine)
        if events:
            start, end = events[0]["at"], events[-1]["at"]
            out.append(
                {
                    "type": "evented",
                    "name": f"thread {tname!r} (traced calls)",
                    "unit": "seconds",
                    "startValue": start,
                    "endValue": end,
                    "events": events,
                }
            )
    # Task groups: tasks of a group overlap, so their spans are summed by stack (own time).
    groups: dict[str, dict[tuple[int, ...], float]] = {}
    for s in spans:
        if s.task_name is None:
            continue
        path = [frames.of(s.name)]
        parent, hops = s.parent_id, 0
        while parent is not None and parent in by_id and hops < 64:
            path.append(frames.of(by_id[parent].name))
            parent, hops = by_id[parent].parent_id, hops + 1
        own = max(0, round(s.duration_s * 1e9) - child_ns.get(s.span_id, 0)) / 1e9
        group = groups.setdefault(task_group(s.task_name), {})
        key = tuple(reversed(path))
        group[key] = group.get(key, 0.0) + own
    for group_name, weights in sorted(groups.items()):
        if weights:
            out.append(
                _sampled(
                    f"tasks {group_name!r} (traced calls, own time)", [list(k) for k in weights], list(weights.values())
                )
            )
    return out


def _evented(frames: _Frames, spans: list[SpanEvent]) -> list[dict[str, Any]]:
    """Open/close events of spans that nest (one that straddles an enclosing span is left out)."""
    t0 = min(s.ts_ns for s in spans)
    ordered = sorted(spans, key=lambda s: (s.ts_ns, -s.duration_s))
    events: list[dict[str, Any]] = []
    stack: list[tuple[int, int]] = []  # (frame, end_ns)

    def close_until(ts: int) -> None:
        while stack and stack[-1][1] <= ts:
            frame, end = stack.pop()
            events.append({"type": "C", "frame": frame, "at": (end - t0) / 1e9})

    for s in ordered:
        start, end = s.ts_ns, s.ts_ns + round(s.duration_s * 1e9)
        close_until(start)
        if stack and end > stack[-1][1]:
            continue  # not nested in the open span: a timeline cannot show it
        frame = frames.of(s.name)
        events.append({"type": "O", "frame": frame, "at": (start - t0) / 1e9})
        stack.append((frame, end))
    close_until(max((e for _, e in stack), default=t0))
    return events
