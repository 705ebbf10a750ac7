"""Summaries of a snapshot that several reporters share: stalls by culprit site, locks with their
waiting sites and holders, what each asyncio task runs. Pure functions of recorded data.

Producers publish their own summaries as snapshot sections (``slow_callbacks``, ``locks``); these
functions prefer them (they count every stall and every lock, even after the ring buffer evicted
old events) and fall back on the events when a section is missing (an older report.json).
"""

from __future__ import annotations

import ast
import re
from collections import Counter, defaultdict
from typing import Any

from conctools.events import Event, LockWaitEvent, SlowCallbackEvent, SpanEvent
from conctools.recorder import Snapshot

__all__ = [
    "SIGNAL_KINDS",
    "UNKNOWN_SITE",
    "group_of_tasks",
    "lock_rows",
    "name_pattern",
    "parse_party",
    "short_path",
    "short_site",
    "stall_sites",
    "what_it_runs",
]

# Primitives whose waits are waits for a notify / set / arrival: the program's design, not contention.
SIGNAL_KINDS = frozenset({"Condition", "Event", "Barrier", "aio.Condition", "aio.Event", "aio.Barrier"})
UNKNOWN_SITE = "<unknown: the stall ended before it could be sampled>"

_PLUMBING = ("/asyncio/", "/threading.py", "/concurrent/futures/", "/contextlib.py", "<frozen ", "/runpy.py")
_TASK_CORO = re.compile(r"^Task .* \((?P<coro>[^()]*)\)$")
_DIGITS = re.compile(r"\d+")


def short_path(filename: str) -> str:
    """``server/app.py`` for ``/long/path/server/app.py``: the last two parts of a path."""
    parts = filename.replace("\\", "/").rsplit("/", 2)
    return "/".join(parts[-2:]) if len(parts) > 2 else filename


def short_site(site: str) -> str:
    """``server/app.py:268`` for a ``file:line`` with a long path; anything else unchanged."""
    path, _, line = site.rpartition(":")
    return f"{short_path(path)}:{line}" if path and line.isdigit() else site


_LITERAL = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
_PARTY = re.compile(rf"(?:task (?P<task>{_LITERAL})(?: \(thread (?P<tt>{_LITERAL})\))?|thread (?P<thread>{_LITERAL}))")
_MORE = re.compile(r"^(?:, (?:task|thread) | and \d+ more)")


def _unrepr(text: str) -> str:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text.strip("'\"")
    return str(value)


def parse_party(words: str) -> tuple[str | None, str | None, bool] | None:
    """``(task, thread, several)`` from a holder in words: ``task 'Y' (thread 'X')``,
    ``task 'Y'``, ``thread 'X'`` (optionally followed by more words, such as ``, which has
    finished``); ``several`` when the words list more than one holder (a semaphore's)."""
    m = _PARTY.match(words)
    if m is None:
        return None
    task = _unrepr(m.group("task")) if m.group("task") else None
    raw_thread = m.group("tt") or m.group("thread")
    thread = _unrepr(raw_thread) if raw_thread else None
    return task, thread, bool(_MORE.match(words[m.end() :]))


def what_it_runs(e: Event) -> tuple[int, str] | None:
    """(priority, label) of what the task that produced ``e`` runs, lowest priority first:
    its root traced span (``GET /io``), a traced span, its coroutine as a slow callback named it,
    the outermost function of the program in a recorded stack."""
    if e.task_name is None:
        return None
    if isinstance(e, SpanEvent):
        return (0 if e.parent_id is None else 1, e.name)
    if isinstance(e, SlowCallbackEvent):
        m = _TASK_CORO.match(e.callback)
        return (2, m.group("coro")) if m is not None else None
    if isinstance(e, LockWaitEvent):
        for f in reversed(e.stack):
            if not any(p in f.filename for p in _PLUMBING):
                return (3, f.function)
    return None


def name_pattern(task_name: str) -> str:
    """``Task-N`` for ``Task-123``: the group of a task nothing else names."""
    return _DIGITS.sub("N", task_name)


# (events, groups) of the last call, swapped whole: the reporters of one snapshot ask in turn.
_last_groups: list[tuple[Any, dict[str, str]] | None] = [None]


def group_of_tasks(snapshot: Snapshot) -> dict[str, str]:
    """Task name -> what it runs (see :func:`what_it_runs`), for every task in the events."""
    last = _last_groups[0]
    if last is not None and last[0] is snapshot.events:
        return dict(last[1])
    groups = _group_of_tasks(snapshot)
    _last_groups[0] = (snapshot.events, groups)
    return dict(groups)


def _group_of_tasks(snapshot: Snapshot) -> dict[str, str]:
    best: dict[str, tuple[int, str]] = {}
    for e in snapshot.events:
        hint = what_it_runs(e)
        if hint is None:
            continue
        assert e.task_name is not None
        old = best.get(e.task_name)
        if old is None or hint[0] < old[0]:
            best[e.task_name] = hint
    names = {e.task_name for e in snapshot.events if e.task_name is not None}
    return {n: best[n][1] if n in best else name_pattern(n) for n in names}


def _p(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def stall_sites(snapshot: Snapshot) -> list[dict[str, Any]]:
    """Stalls grouped by culprit site, most total blocked time first: ``site``, ``function``,
    ``line``, ``count``, ``total_s``, ``max_s``, ``p99_s``, ``tasks``, ``callback``, ``stack`` and
    ``times`` (start and duration in seconds since the run started, of the stalls still recorded)."""
    events = snapshot.of_kind(SlowCallbackEvent)
    times: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for e in events:
        key = f"{e.culprit.site} in {e.culprit.function}" if e.culprit is not None else e.callback
        times[key].append(((e.ts_ns - snapshot.started_ns) / 1e9, e.duration_s))
    section = snapshot.sections.get("slow_callbacks")
    sites: list[dict[str, Any]] = []
    if isinstance(section, dict) and isinstance(section.get("sites"), list):
        for s in section["sites"]:
            if isinstance(s, dict) and "site" in s and "count" in s:
                row = dict(s)
                row["times"] = times.get(str(s.get("key", "")), [])
                sites.append(row)
    if not sites and events:
        groups: dict[str, dict[str, Any]] = {}
        for e in events:
            c = e.culprit
            key = f"{c.site} in {c.function}" if c is not None else e.callback
            g = groups.get(key)
            if g is None:
                stack = next((s for s in e.samples if c is None or any(f.site == c.site for f in s)), ())
                g = groups[key] = {
                    "key": key,
                    "site": c.site if c is not None else key,
                    "function": c.function if c is not None else "",
                    "line": c.line if c is not None else "",
                    "count": 0,
                    "total_s": 0.0,
                    "max_s": 0.0,
                    "durations": [],
                    "tasks": [],
                    "callback": e.callback,
                    "stack": [
                        {"filename": f.filename, "lineno": f.lineno, "function": f.function, "line": f.line}
                        for f in stack
                    ],
                    "times": times[key],
                }
            g["count"] += 1
            g["total_s"] += e.duration_s
            g["max_s"] = max(g["max_s"], e.duration_s)
            g["durations"].append(e.duration_s)
            if e.task_name and e.task_name not in g["tasks"] and len(g["tasks"]) < 5:
                g["tasks"].append(e.task_name)
        for g in groups.values():
            g["p99_s"] = _p(g.pop("durations"), 0.99)
            sites.append(g)
    sites.sort(key=lambda g: (-float(g.get("total_s") or 0.0), str(g.get("site"))))
    return sites


def lock_rows(snapshot: Snapshot, groups: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every lock (not the waits for a signal), most total wait first, with what the waits recorded:
    ``holders`` (who made others wait, by thread or by what a task runs, with counts) and
    ``waiters`` (the same for who waited). From the ``locks`` section, or from the waits alone."""
    groups = groups if groups is not None else group_of_tasks(snapshot)
    holders: dict[str, Counter[str]] = defaultdict(Counter)
    waiters: dict[str, Counter[str]] = defaultdict(Counter)
    from_events: dict[str, dict[str, Any]] = {}
    for w in snapshot.of_kind(LockWaitEvent):
        if w.lock_kind in SIGNAL_KINDS:
            continue
        waiters[w.lock_name][_party_label(w.task_name, w.thread_name, groups)] += 1
        if w.holder:
            holders[w.lock_name][_holder_label(w.holder, groups)] += 1
        row = from_events.setdefault(
            w.lock_name,
            {
                "name": w.lock_name,
                "kind": w.lock_kind,
                "created_at": None,
                "contentions": 0,
                "timeouts": 0,
                "wait_total_s": 0.0,
                "wait_max_s": 0.0,
                "sites": Counter(),
                "site_wait": defaultdict(float),
            },
        )
        row["contentions"] += 1
        row["timeouts"] += 0 if w.acquired else 1
        row["wait_total_s"] += w.wait_s
        row["wait_max_s"] = max(row["wait_max_s"], w.wait_s)
        row["sites"][w.site] += 1
        row["site_wait"][w.site] += w.wait_s
    section = snapshot.sections.get("locks")
    rows: list[dict[str, Any]] = []
    if isinstance(section, list) and section:
        rows = [dict(r) for r in section if isinstance(r, dict) and r.get("kind") not in SIGNAL_KINDS]
    else:
        for r in from_events.values():
            sites = r.pop("sites")
            site_wait = r.pop("site_wait")
            r["hottest_sites"] = [
                {"site": s, "waits": n, "wait_total_s": site_wait[s]} for s, n in sites.most_common(3)
            ]
            rows.append(r)
    for r in rows:
        name = str(r.get("name", "?"))
        r["holders"] = holders[name].most_common(3)
        r["waiters"] = waiters[name].most_common(3)
    rows.sort(key=lambda r: (-float(r.get("wait_total_s") or 0.0), -int(r.get("contentions") or 0), str(r.get("name"))))
    return rows


def _party_label(task: str | None, thread: str, groups: dict[str, str]) -> str:
    if task is None:
        return f"thread {thread!r}"
    return f"tasks running {groups.get(task, name_pattern(task))}"


def _holder_label(holder: str, groups: dict[str, str]) -> str:
    parsed = parse_party(holder)
    if parsed is None:
        return holder
    task, thread, several = parsed
    if several:
        return "several holders (a semaphore's)"
    if task is None:
        return f"thread {thread!r}"
    return f"tasks running {groups.get(task, name_pattern(task))}"
