"""Cutting a stall into segments: one per task or callback (and culprit) that ran during it.

A stall is one stretch of time in which the loop's heartbeat did not run: one loop iteration
that ran several slow callbacks in a row, or several iterations back to back. The watchdog
samples the loop thread every few milliseconds while it lasts; each sample says who ran
(the task, or the plain callback) and where (the culprit line). :func:`cut_segments` turns the
samples into segments, each with its own name, duration, culprit and stacks, so that the name
printed over a stack is always the name of the code that ran it.

Pure: plain samples in, segments out (the monitor does the sampling).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from conctools._records import compared
from conctools.events import Frame

__all__ = ["Sample", "Segment", "cut_segments", "partition_runs"]


@compared
@dataclass(frozen=True, slots=True, repr=False, eq=False)
class Sample:
    """One look at the loop thread during a stall."""

    t_ns: int
    who: Hashable  # identity of the running task or callback (never its name alone)
    task_name: str | None
    callback: str  # "Task 'name' (coro)" or "callback f(args) at file:line"
    created_at: str | None
    stack: tuple[Frame, ...]  # innermost first
    culprit: Frame | None


@compared
@dataclass(frozen=True, slots=True, repr=False, eq=False)
class Segment:
    """A stretch of a stall during which one task or callback ran at one culprit."""

    start_ns: int
    end_ns: int
    samples: tuple[Sample, ...]

    @property
    def first(self) -> Sample:
        """The first sample of the segment (its name, callback and creation site)."""
        return self.samples[0]

    def culprit(self) -> tuple[Frame | None, tuple[Frame, ...]]:
        """The most frequent culprit site among the segment's samples, and a stack showing it."""
        sites = Counter(s.culprit.site for s in self.samples if s.culprit is not None)
        if not sites:
            return None, self.samples[0].stack
        best = max(sites.items(), key=lambda kv: kv[1])[0]  # the first seen wins a tie (dicts keep order)
        for s in self.samples:
            if s.culprit is not None and s.culprit.site == best:
                return s.culprit, s.stack
        return None, self.samples[0].stack  # pragma: no cover - best always comes from a sample


def partition_runs(labels: Sequence[Hashable]) -> list[tuple[int, int]]:
    """The finest cut of ``labels`` into consecutive parts that share no label, as (first, last).

    A CPU loop's samples alternate between two or three lines of one function: they stay one
    part. A task that sleeps on one line, then on another, makes two parts.

    >>> partition_runs(["a", "b", "a", "b", "c", "c"])
    [(0, 3), (4, 5)]
    """
    last = {label: i for i, label in enumerate(labels)}
    parts = []
    begin = 0
    reach = -1
    for i, label in enumerate(labels):
        reach = max(reach, last[label])
        if i == reach:
            parts.append((begin, i))
            begin = i + 1
    return parts


def cut_segments(samples: Sequence[Sample], start_ns: int, end_ns: int, *, min_part: int = 1) -> list[Segment]:
    """The segments of a stall from ``start_ns`` to ``end_ns``, given its samples in time order.

    Consecutive samples of one task or callback form a run; a run is cut further where its
    culprit line changes for good (:func:`partition_runs`), into parts of ``min_part`` samples
    at least (a shorter part joins its neighbour: the same task, so names stay right; the few
    milliseconds a task runs after its slow call returns are not a segment). A boundary between two segments
    lies halfway between the last sample of one and the first of the next; the first segment
    starts with the stall and the last one ends with it, so the durations add up to the stall.
    """
    if not samples:
        return []
    groups: list[list[Sample]] = []
    run: list[Sample] = []
    for s in samples:
        if run and s.who != run[-1].who:
            groups.extend(_split_run(run, min_part))
            run = []
        run.append(s)
    groups.extend(_split_run(run, min_part))
    # A task or callback seen in one sample only, after the first, is no segment of its own: it
    # ran at that instant for an unknown time (often a trivial callback caught as the stall
    # ended); its instant goes to its neighbours, within the sampling's precision anyway.
    groups = [g for i, g in enumerate(groups) if i == 0 or len(g) > 1]
    merged: list[list[Sample]] = []
    for g in groups:
        if merged and merged[-1][-1].who == g[0].who and _site(merged[-1][-1]) == _site(g[0]):
            merged[-1].extend(g)  # the same party on both sides of what was dropped
        else:
            merged.append(list(g))
    groups = merged
    out = []
    begin = start_ns
    for i, group in enumerate(groups):
        end = (group[-1].t_ns + groups[i + 1][0].t_ns) // 2 if i + 1 < len(groups) else end_ns
        end = min(max(end, begin), max(end_ns, begin))
        out.append(Segment(start_ns=begin, end_ns=end, samples=tuple(group)))
        begin = end
    return out


def _site(sample: Sample) -> str | None:
    return sample.culprit.site if sample.culprit is not None else None


def _split_run(run: list[Sample], min_part: int) -> list[list[Sample]]:
    labels = [s.culprit.site if s.culprit is not None else None for s in run]
    parts: list[list[Sample]] = []
    for a, b in partition_runs(labels):
        part = run[a : b + 1]
        if parts and (len(part) < min_part or len(parts[-1]) < min_part):
            parts[-1].extend(part)
        else:
            parts.append(part)
    return parts
