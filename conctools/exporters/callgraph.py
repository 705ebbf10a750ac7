"""A profile's call graph as plain data, and the stacks pprof and speedscope draw from it.

yappi measures per function and per caller -> callee pair (like gprof and callgrind), not whole
stacks. :func:`stacks` rebuilds stacks from that graph: from each root, a callee's share of its
caller's path is the pair's time over the callee's total time. Each function's own time is
exact over all its stacks; how a function reached from several callers splits below the first
level is proportional (the same assumption every call-graph-to-flame-graph converter makes).

A saved report keeps the profile's top functions only (no pairs): :func:`from_section` gives a
flat graph, one single-frame stack per function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["CallGraph", "Function", "from_section", "from_yappi", "stacks"]

MAX_DEPTH = 64
MAX_STACKS = 20_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Function:
    """One profiled function and what it called: ``callees`` are ``(index, total_s, calls)``."""

    name: str
    filename: str
    lineno: int
    calls: int
    total_s: float
    own_s: float
    callees: tuple[tuple[int, float, int], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CallGraph:
    """Functions by index, the clock (``wall`` or ``cpu``) and the profile's duration."""

    clock: str
    duration_s: float
    functions: tuple[Function, ...] = field(default_factory=tuple)


def from_yappi(stats: Any, clock: str, duration_s: float, *, skip: Any = None) -> CallGraph:
    """The graph of yappi's merged ``YFuncStats`` (``skip(filename)``: functions to leave out, with
    their time moved to their callers' own time)."""
    every = list(stats)
    by_index = {int(s.index): s for s in every}
    entries = [s for s in every if not (skip and skip(str(s.module)))]
    index_of = {int(s.index): i for i, s in enumerate(entries)}
    functions = []
    for s in entries:
        callees: list[tuple[int, float, int]] = []
        own = float(s.tsub)
        # A skipped callee (conctools' wrapper) is spliced out: its callees become the caller's,
        # in proportion to the time the caller spent in it; its own time is the caller's.
        todo = [(child, 1.0, 0) for child in s.children or ()]
        while todo:
            child, share, depth = todo.pop()
            pair_s = float(child.ttot) * share
            target = index_of.get(int(child.index))
            if target is not None:
                callees.append((target, pair_s, int(child.ncall)))
                continue
            skipped = by_index.get(int(child.index))
            if skipped is None or depth > 16 or float(skipped.ttot) <= 0:
                own += pair_s
                continue
            ratio = pair_s / float(skipped.ttot)
            own += float(skipped.tsub) * ratio
            todo.extend((grand, ratio, depth + 1) for grand in skipped.children or ())
        functions.append(
            Function(
                name=str(s.name),
                filename=str(s.module),
                lineno=int(s.lineno),
                calls=int(s.ncall),
                total_s=float(s.ttot),
                own_s=own,
                callees=tuple(callees),
            )
        )
    return CallGraph(clock=clock, duration_s=duration_s, functions=tuple(functions))


def from_section(section: Any) -> CallGraph:
    """A flat graph from a report's ``profile`` section (its top functions, no callers)."""
    if not isinstance(section, dict):
        return CallGraph(clock="wall", duration_s=0.0)
    functions = []
    for f in section.get("functions", []) or []:
        if isinstance(f, dict):
            functions.append(
                Function(
                    name=str(f.get("name", "?")),
                    filename=str(f.get("filename", "?")),
                    lineno=int(f.get("lineno", 0) or 0),
                    calls=int(f.get("calls", 0) or 0),
                    total_s=float(f.get("total_s", 0.0) or 0.0),
                    own_s=float(f.get("own_s", 0.0) or 0.0),
                )
            )
    return CallGraph(
        clock=str(section.get("clock", "wall")),
        duration_s=float(section.get("duration_s", 0.0) or 0.0),
        functions=tuple(functions),
    )


def stacks(graph: CallGraph, *, max_stacks: int = MAX_STACKS) -> list[tuple[tuple[int, ...], float]]:
    """``[(function indices root first, own seconds), ...]``: every function's own time on the
    stacks that reach it (see the module docstring). Paths too deep or too small to matter (under a
    millionth of the profile) end where they are, their callees' time counted as the caller's own;
    a re-entry is not followed (yappi counts it once, on the outer call). A function called through
    conctools' ``@traced`` wrapper therefore shows under the wrapper's first caller."""
    funcs = graph.functions
    # A function is a root for the part of its time no profiled caller accounts for (called from
    # where the profile started, or from a thread's first frame).
    incoming = [0.0] * len(funcs)
    for f in funcs:
        for target, pair_s, _calls in f.callees:
            incoming[target] += pair_s
    roots = []
    for i, f in enumerate(funcs):
        share = (f.total_s - incoming[i]) / f.total_s if f.total_s > 0 else 0.0
        if share > 1e-3:
            roots.append((i, min(1.0, share)))
    total = sum(funcs[i].total_s * share for i, share in roots) or sum(f.own_s for f in funcs)
    floor = total * 1e-6
    out: list[tuple[tuple[int, ...], float]] = []
    # (path, scale): the path's share of its last function's total time.
    todo: list[tuple[tuple[int, ...], float]] = [((i,), share) for i, share in reversed(roots)]
    while todo:
        path, scale = todo.pop()
        f = funcs[path[-1]]
        own = f.own_s * scale
        children = []
        for target, pair_s, _calls in f.callees:
            weight = pair_s * scale
            callee = funcs[target]
            if target in path:
                # Re-entry (recursion, or conctools' wrapper, which yappi sees as one function however
                # many functions it wraps): yappi counts that time once, on the outer call, whose
                # other callees already carry it. Following it would count it twice.
                continue
            deep = len(path) >= MAX_DEPTH or len(out) + len(todo) >= max_stacks
            if deep or weight < floor or callee.total_s <= 0:
                own += weight  # cut here: the callee's time stays on this frame
            else:
                children.append(((*path, target), min(1.0, weight / callee.total_s)))
        if own > 0:
            out.append((path, own))
        todo.extend(reversed(children))
    if not funcs or roots:
        return out
    # A graph without roots (every function called by another: a cycle): flat stacks.
    return [((i,), f.own_s) for i, f in enumerate(funcs) if f.own_s > 0]
