"""Flame graphs (drawn as icicles in ``report.html``): pure functions of recorded data.

Three sources, each said on the graph:

- the profile's call graphs (``profile`` section, ``call_graphs``), one per thread and one per
  task group. yappi records caller -> callee totals, not whole stacks, so a function's time is
  split among its callers in proportion to what each call edge took, and its callees' time in
  turn: exact for a tree of calls, an approximation where a function is called from several
  places (the page says so);
- the stacks sampled *while the event loop was blocked* (slow callbacks): real stacks, each
  sample weighted by its stall's duration over its number of samples;
- the stacks of lock waits, weighted by how long each waited (the locks record a bounded sample
  of stacks per waiting site; the graph says how many waits it covers).

A node is ``[label, value_s, children]``; nodes under :data:`MIN_SHARE` of their graph are
folded into their parent.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from conctools.events import Frame, LockWaitEvent, SlowCallbackEvent
from conctools.recorder import Snapshot
from conctools.reporting._summary import short_path

__all__ = ["MAX_DEPTH", "MIN_SHARE", "PLUMBING", "flame_from_graph", "flame_from_stacks", "flames"]

MIN_SHARE = 0.002  # a node below 0.2% of its graph's total is not drawn (its time stays in its parent)
MAX_DEPTH = 64
MAX_NODES = 3000

Node = list[Any]  # [label, value_s, [children]]


def _label(function: str, filename: str, lineno: int) -> str:
    return f"{function}  {short_path(filename)}:{lineno}" if filename else function


def _prune(node: Node, floor: float, budget: list[int]) -> Node:
    kids = sorted((c for c in node[2] if c[1] >= floor), key=lambda c: -c[1])
    out = []
    for c in kids:
        if budget[0] <= 0:
            break
        budget[0] -= 1
        out.append(_prune(c, floor, budget))
    return [node[0], node[1], out]


# The event loop's, threading's and the interpreter start-up's own frames say nothing about the
# program: a stack keeps them only as its innermost frame (where it waits).
PLUMBING = ("/asyncio/", "/threading.py", "/concurrent/futures/", "/runpy.py", "<frozen runpy>", "/selectors.py")


def _shown(frames: Sequence[Frame]) -> list[Frame]:
    return [f for i, f in enumerate(frames) if i == 0 or not any(p in f.filename for p in PLUMBING)]


def flame_from_stacks(stacks: Iterable[tuple[Sequence[Frame], float]], root: str) -> Node | None:
    """A flame graph of weighted stacks (innermost frame first, as conctools records them),
    without the event loop's and threading's own frames (see :data:`PLUMBING`)."""
    top: Node = [root, 0.0, []]
    index: dict[int, dict[str, Node]] = {}
    for frames, weight in stacks:
        if weight <= 0 or not frames:
            continue
        top[1] += weight
        node = top
        for f in list(reversed(_shown(frames)))[:MAX_DEPTH]:
            children = index.setdefault(id(node), {})
            label = _label(f.function, f.filename, f.lineno)
            child = children.get(label)
            if child is None:
                child = children[label] = [label, 0.0, []]
                node[2].append(child)
            child[1] += weight
            node = child
    if top[1] <= 0:
        return None
    return _prune(top, top[1] * MIN_SHARE, [MAX_NODES])


def flame_from_graph(graph: dict[str, Any]) -> Node | None:
    """A flame graph from one of the profile's call graphs (see the module docstring)."""
    funcs = graph.get("functions")
    edges = graph.get("edges")
    if not isinstance(funcs, list) or not isinstance(edges, list) or not funcs:
        return None
    total_of: list[float] = []
    labels: list[str] = []
    for f in funcs:
        try:
            labels.append(_label(str(f[0]), str(f[1]), int(f[2])))
            total_of.append(max(0.0, float(f[3])))
        except (IndexError, TypeError, ValueError):
            return None
    out_edges: dict[int, list[tuple[int, float]]] = {}
    called: set[int] = set()
    for e in edges:
        try:
            a, b, t = int(e[0]), int(e[1]), float(e[2])
        except (IndexError, TypeError, ValueError):
            continue
        if 0 <= a < len(funcs) and 0 <= b < len(funcs) and t > 0:
            out_edges.setdefault(a, []).append((b, t))
            called.add(b)
    roots = [i for i in range(len(funcs)) if i not in called and total_of[i] > 0]
    if not roots:
        roots = [max(range(len(funcs)), key=lambda i: total_of[i])]
    grand = sum(total_of[i] for i in roots)
    if grand <= 0:
        return None
    floor = grand * MIN_SHARE
    budget = [MAX_NODES]

    def expand(i: int, value: float, path: frozenset[int], depth: int) -> Node:
        node: Node = [labels[i], value, []]
        if depth >= MAX_DEPTH or total_of[i] <= 0:
            return node
        scale = value / total_of[i]
        for child, t in sorted(out_edges.get(i, []), key=lambda ct: -ct[1]):
            share = min(t * scale, value)
            if share < floor or child in path or budget[0] <= 0:
                continue
            budget[0] -= 1
            node[2].append(expand(child, share, path | {child}, depth + 1))
        return node

    top: Node = [str(graph.get("name", "all")), grand, []]
    for i in sorted(roots, key=lambda i: -total_of[i]):
        if total_of[i] >= floor:
            top[2].append(expand(i, total_of[i], frozenset({i}), 1))
    return top


def flames(snapshot: Snapshot) -> list[dict[str, Any]]:
    """Every flame graph of the run: ``title``, ``source``, ``note`` and ``root`` (a node)."""
    out: list[dict[str, Any]] = []
    profile = snapshot.sections.get("profile")
    graphs = profile.get("call_graphs") if isinstance(profile, dict) else None
    if isinstance(graphs, list):
        clock = profile.get("clock", "wall") if isinstance(profile, dict) else "wall"
        for g in graphs:
            if not isinstance(g, dict):
                continue
            root = flame_from_graph(g)
            if root is None:
                continue
            if g.get("kind") == "tasks":
                n = int(g.get("tasks") or 0)
                title = f"Profile: {n} task{'s' if n != 1 else ''} running {g.get('name')}"
            else:
                title = f"Profile: thread {g.get('name')}"
            out.append(
                {
                    "title": title,
                    "source": "profile",
                    "note": f"yappi, {clock} clock; built from caller -> callee totals (a function called from "
                    "several places splits its time among them in proportion)",
                    "root": root,
                }
            )
    stalls = snapshot.of_kind(SlowCallbackEvent)
    sampled = [(s, e.duration_s / len(e.samples)) for e in stalls if e.samples for s in e.samples]
    root = flame_from_stacks(sampled, "event loop blocked")
    if root is not None:
        covered = sum(1 for e in stalls if e.samples)
        out.append(
            {
                "title": "Where the event loop was blocked",
                "source": "stalls",
                "note": f"stacks sampled during {covered} of {len(stalls)} recorded stalls, weighted by blocked time; "
                "asyncio's and threading's own frames hidden",
                "root": root,
            }
        )
    waits = snapshot.of_kind(LockWaitEvent)
    with_stack = [(w.stack, w.wait_s) for w in waits if w.stack]
    root = flame_from_stacks(with_stack, "lock waits")
    if root is not None:
        out.append(
            {
                "title": "Where threads and tasks waited for locks",
                "source": "lock_waits",
                "note": f"stacks of {len(with_stack)} of {len(waits)} recorded waits (the locks keep a sample per "
                "waiting site), weighted by wait time; asyncio's and threading's own frames hidden",
                "root": root,
            }
        )
    return out
