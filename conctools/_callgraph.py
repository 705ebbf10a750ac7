"""Call graphs from yappi's raw per-(thread, task) entries, as plain data for the report.

yappi records, per thread (context) and per task tag, each function's totals and its callees'
totals *from that function* (``children``): a call graph, not whole stacks. This module merges
those entries into one graph per thread and one per task group (the tasks that run the same
coroutine, named by their root function), bounded in size. The HTML report draws each graph
as a flame graph (:mod:`conctools.reporting.flame`).

A raw entry is the tuple ``(ctx_id, tag, index, name, module, lineno, ttot, tsub, ncall,
children)`` with ``children`` as yappi gives them: ``(index, ncall, nactualcall, ttot, tsub)``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_FUNCTIONS", "MAX_GRAPHS", "call_graphs"]

MAX_FUNCTIONS = 200  # per graph: the ones with the most total time
MAX_GRAPHS = 16  # threads, and as many task groups

RawPit = tuple[int, int, int, str, str, int, float, float, int, tuple[tuple[Any, ...], ...]]
FuncKey = tuple[str, str, int]


def _root_function(pits: list[RawPit], indexes: set[int]) -> str:
    """The name of the function nothing in ``pits`` calls (the task's coroutine), most time first."""
    called = {c[0] for p in pits for c in p[9] if c[0] in indexes}
    roots = [p for p in pits if p[2] not in called] or pits
    return max(roots, key=lambda p: p[6])[3]


def _graph(kind: str, name: str, pits: list[RawPit], by_index: dict[int, RawPit], tasks: int = 0) -> dict[str, Any]:
    funcs: dict[FuncKey, list[float]] = {}
    edges: dict[tuple[FuncKey, FuncKey], list[float]] = {}
    members = {p[2] for p in pits}
    for p in pits:
        key = (p[3], p[4], p[5])
        f = funcs.setdefault(key, [0.0, 0.0, 0.0])
        f[0] += p[6]
        f[1] += p[7]
        f[2] += p[8]
        for child in p[9]:
            c = by_index.get(child[0])
            if c is None or child[0] not in members:
                continue
            e = edges.setdefault((key, (c[3], c[4], c[5])), [0.0, 0.0])
            e[0] += float(child[3])
            e[1] += float(child[1])
    kept = sorted(funcs, key=lambda k: -funcs[k][0])[:MAX_FUNCTIONS]
    number = {k: i for i, k in enumerate(kept)}
    return {
        "kind": kind,
        "name": name,
        "tasks": tasks,
        "total_s": sum(v[1] for v in funcs.values()),  # every function's own time: the graph's time
        "functions": [[k[0], k[1], k[2], funcs[k][0], funcs[k][1], int(funcs[k][2])] for k in kept],
        "edges": [
            [number[a], number[b], v[0], int(v[1])]
            for (a, b), v in edges.items()
            if a in number and b in number and a != b
        ],
    }


def call_graphs(pits: list[RawPit], thread_names: dict[int, str]) -> list[dict[str, Any]]:
    """One graph per thread (``kind`` ``"thread"``, its tasks' work included) and one per task
    group (``kind`` ``"tasks"``: the tasks whose root function is the same), most time first."""
    by_index = {p[2]: p for p in pits}
    by_ctx: dict[int, list[RawPit]] = {}
    by_tag: dict[tuple[int, int], list[RawPit]] = {}
    for p in pits:
        by_ctx.setdefault(p[0], []).append(p)
        if p[1]:
            by_tag.setdefault((p[0], p[1]), []).append(p)
    threads = [_graph("thread", thread_names.get(ctx, f"thread #{ctx}"), ps, by_index) for ctx, ps in by_ctx.items()]
    groups: dict[str, list[RawPit]] = {}
    counts: dict[str, int] = {}
    for ps in by_tag.values():
        root = _root_function(ps, {p[2] for p in ps})
        groups.setdefault(root, []).extend(ps)
        counts[root] = counts.get(root, 0) + 1
    tasks = [_graph("tasks", root, ps, by_index, counts[root]) for root, ps in groups.items()]
    threads.sort(key=lambda g: -float(g["total_s"]))
    tasks.sort(key=lambda g: -float(g["total_s"]))
    return threads[:MAX_GRAPHS] + tasks[:MAX_GRAPHS]
