"""The timeline model shared by the Chrome trace and the HTML report: tracks, slices, flows.

A pure function of a snapshot. Every thread and every asyncio task gets a track; slices on
one track always nest properly (a slice that would overlap another without nesting goes to
an extra lane of the same track, ``"name (2)"``), which both trace viewers and the HTML
timeline rely on. Times are microseconds since the run started.

Timestamps: for events with a duration (spans, lock waits, slow callbacks) ``ts_ns`` is when
the thing began, as ``docs/report-schema.md`` documents.
"""

from __future__ import annotations

import ast
import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from conctools.events import (
    DeadlockEvent,
    Event,
    FailureEvent,
    HangEvent,
    LockOrderEvent,
    LockWaitEvent,
    MarkEvent,
    ResourceSampleEvent,
    SlowCallbackEvent,
    SpanEvent,
)
from conctools.recorder import Snapshot

__all__ = ["Counter", "Flow", "Instant", "Slice", "Timeline", "Track", "build_timeline"]

TrackKey = tuple[str, int, str]  # ("thread", thread_id, "") or ("task", thread_id, task_name)


@dataclass(slots=True, kw_only=True)
class Track:
    """One row group of the timeline: a thread, an asyncio task, or an extra lane of one."""

    tid: int
    name: str
    kind: str  # "thread" | "task"
    thread_name: str
    lane: int = 0


@dataclass(slots=True, kw_only=True)
class Slice:
    """Something that took time on one track; ``cat`` is span, lock_wait, lock_hold or slow_callback."""

    key: TrackKey
    start_us: float
    dur_us: float
    name: str
    cat: str
    args: dict[str, Any] = field(default_factory=dict)
    tid: int = 0


@dataclass(slots=True, kw_only=True)
class Instant:
    """A moment: on a track (``tid``) or for the whole process (``tid is None``)."""

    ts_us: float
    name: str
    cat: str
    args: dict[str, Any] = field(default_factory=dict)
    key: TrackKey | None = None
    tid: int | None = None


@dataclass(slots=True, kw_only=True)
class Flow:
    """An arrow from the end of one slice (a lock's holder) to another (its next acquirer)."""

    id: int
    name: str
    source: Slice
    target: Slice


@dataclass(slots=True, kw_only=True)
class Counter:
    """Values of one counter track at one moment."""

    ts_us: float
    name: str
    values: dict[str, float]


@dataclass(slots=True, kw_only=True)
class Timeline:
    """Everything a timeline view draws."""

    tracks: list[Track]
    slices: list[Slice]
    instants: list[Instant]
    flows: list[Flow]
    counters: list[Counter]
    duration_us: float


_WHO = re.compile(r"^(?:task (?P<task>'.*?'|\".*?\") \(thread (?P<tt>'.*'|\".*\")\)|thread (?P<thread>'.*'|\".*\"))")


def _unrepr(text: str) -> str:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text.strip("'\"")
    return str(value)


class _Builder:
    def __init__(self, snapshot: Snapshot) -> None:
        self.started_ns = snapshot.started_ns
        self.end_us = max(0.0, (snapshot.taken_ns - snapshot.started_ns) / 1000)
        self.keys: dict[TrackKey, str] = {}  # key -> thread name
        self.by_who: dict[str, TrackKey] = {}
        self.by_thread_name: dict[str, TrackKey] = {}
        self.slices: list[Slice] = []
        self.instants: list[Instant] = []
        self.flows: list[Flow] = []
        self.counters: list[Counter] = []
        self.prev_sample: ResourceSampleEvent | None = None
        self.acquired: list[tuple[LockWaitEvent, Slice]] = []
        self.key_cache: dict[tuple[int, str, str | None], TrackKey] = {}

    def us(self, ts_ns: int) -> float:
        return max(0.0, round((ts_ns - self.started_ns) / 1000, 3))

    def key_of(self, e: Event) -> TrackKey:
        cached = self.key_cache.get((e.thread_id, e.thread_name, e.task_name))
        if cached is not None:
            return cached
        thread_key: TrackKey = ("thread", e.thread_id, "")
        self.keys.setdefault(thread_key, e.thread_name)
        self.by_thread_name.setdefault(e.thread_name, thread_key)
        key = thread_key if e.task_name is None else ("task", e.thread_id, e.task_name)
        self.keys.setdefault(key, e.thread_name)
        self.by_who.setdefault(e.who, key)
        self.key_cache[(e.thread_id, e.thread_name, e.task_name)] = key
        return key

    def holder_key(self, holder: str) -> TrackKey | None:
        """The track of a lock holder given in words (``thread 'X'`` / ``task 'Y' (thread 'X')``).

        A holder that recorded nothing itself gets a track of its own, keyed by its name.
        """
        if holder in self.by_who:
            return self.by_who[holder]
        m = _WHO.match(holder)
        if m is None:
            return self.by_thread_name.get(holder)
        thread = _unrepr(m.group("thread") or m.group("tt"))
        base = self.by_thread_name.get(thread)
        if base is None:
            base = ("thread", 0, thread)
            self.keys.setdefault(base, thread)
            self.by_thread_name[thread] = base
        if m.group("thread"):
            return base
        key: TrackKey = ("task", base[1], _unrepr(m.group("task")))
        self.keys.setdefault(key, thread)
        return key

    def add(self, e: Event) -> None:
        if isinstance(e, SpanEvent):
            self.span(e)
        elif isinstance(e, LockWaitEvent):
            self.lock_wait(e)
        elif isinstance(e, SlowCallbackEvent):
            self.slow_callback(e)
        elif isinstance(e, ResourceSampleEvent):
            self.resource(e)
        elif isinstance(e, MarkEvent):
            self.instants.append(
                Instant(ts_us=self.us(e.ts_ns), name=e.name, cat="mark", args=dict(e.detail), key=self.key_of(e))
            )
        elif isinstance(e, DeadlockEvent):
            names = ", ".join(p.who for p in e.participants)
            args: dict[str, Any] = {"participants": names}
            if e.summary:
                args["summary"] = e.summary
            if e.advice:
                args["advice"] = " ".join(e.advice)
            for i, p in enumerate(e.participants):
                args[f"{i + 1}. {p.who}"] = f"waits at {p.wait_site} for {p.waits_for}; {p.held_by}"
            self.instants.append(Instant(ts_us=self.us(e.ts_ns), name="DEADLOCK", cat="deadlock", args=args))
        elif isinstance(e, HangEvent):
            hang_args: dict[str, Any] = {"reason": e.reason, "stalled_s": e.stalled_s}
            for w in e.waiters:
                if w.waits_on:
                    who = f"task {w.task_name!r}" if w.task_name is not None else f"thread {w.thread_name!r}"
                    hang_args[who] = w.waits_on
            for f in e.failures:
                hang_args[f"ended: {f.who}"] = f"{f.exc_type}: {f.message} at {f.site}"
            self.instants.append(Instant(ts_us=self.us(e.ts_ns), name="HANG", cat="hang", args=hang_args))
        elif isinstance(e, FailureEvent):
            self.instants.append(
                Instant(
                    ts_us=self.us(e.ts_ns),
                    name=f"{e.exc_type} ended {e.who}",
                    cat="failure",
                    args={"exception": f"{e.exc_type}: {e.message}", "site": e.site},
                    key=self.key_of(e),
                )
            )
        elif isinstance(e, LockOrderEvent):
            self.instants.append(
                Instant(
                    ts_us=self.us(e.ts_ns),
                    name="lock-order inversion",
                    cat="lock_order",
                    args={"cycle": " -> ".join(e.cycle)},
                )
            )

    def span(self, e: SpanEvent) -> None:
        args: dict[str, Any] = {"outcome": e.outcome}
        if e.exc_type:
            args["exception"] = e.exc_type
        if e.args:
            args["args"] = e.args
        self.slices.append(
            Slice(
                key=self.key_of(e),
                start_us=self.us(e.ts_ns),
                dur_us=max(0.0, round(e.duration_s * 1e6, 3)),
                name=e.name,
                cat="span",
                args=args,
            )
        )

    def lock_wait(self, e: LockWaitEvent) -> None:
        start = self.us(e.ts_ns)
        dur = max(0.0, round(e.wait_s * 1e6, 3))
        wait = Slice(
            key=self.key_of(e),
            start_us=start,
            dur_us=dur,
            name=f"wait {e.lock_name}",
            cat="lock_wait",
            args={
                "waiter": e.who,
                "lock": e.lock_name,
                "kind": e.lock_kind,
                "wait_s": e.wait_s,
                "acquired": e.acquired,
                "holder": e.holder,
                "site": e.site,
            },
        )
        self.slices.append(wait)
        if e.acquired:
            self.acquired.append((e, wait))

    def handoffs(self) -> None:
        """Holds and hand-off arrows, inferred from the waits (after every event is in, so tracks are known).

        A waiter names the holder it found when its wait began. That holder kept the lock until
        the next acquisition of the same lock (this waiter's, or an earlier one's): that is its
        hold, and the arrow goes from its release to whoever acquired then.
        """
        acquired_at: dict[int, dict[float, Slice]] = {}
        for e, wait in self.acquired:
            acquired_at.setdefault(e.lock_id, {})[wait.start_us + wait.dur_us] = wait
        ends = {lock: sorted(by_end) for lock, by_end in acquired_at.items()}
        holds: dict[tuple[TrackKey, int, float], Slice] = {}
        for e, wait in self.acquired:
            if not e.holder:
                continue
            holder = self.holder_key(e.holder)
            lock_ends = ends[e.lock_id]
            release = lock_ends[bisect.bisect_right(lock_ends, wait.start_us)]
            target = acquired_at[e.lock_id][release]
            if holder is None or holder == target.key:
                continue
            key = (holder, e.lock_id, release)
            hold = holds.get(key)
            if hold is not None:
                if wait.start_us < hold.start_us:  # an earlier waiter saw the same hold begin earlier
                    hold.dur_us, hold.start_us = round(release - wait.start_us, 3), wait.start_us
                continue
            hold = holds[key] = Slice(
                key=holder,
                start_us=wait.start_us,
                dur_us=round(release - wait.start_us, 3),
                name=f"holds {e.lock_name}",
                cat="lock_hold",
                args={"lock": e.lock_name, "next": target.args.get("waiter")},
            )
            self.slices.append(hold)
            self.flows.append(Flow(id=len(self.flows) + 1, name=f"handoff {e.lock_name}", source=hold, target=target))

    def slow_callback(self, e: SlowCallbackEvent) -> None:
        # The whole loop was blocked: the slice goes on the loop's thread, not on a task.
        thread_key: TrackKey = ("thread", e.thread_id, "")
        self.keys.setdefault(thread_key, e.thread_name)
        self.by_thread_name.setdefault(e.thread_name, thread_key)
        args: dict[str, Any] = {
            "callback": e.callback,
            "duration_s": e.duration_s,
            "threshold_s": e.threshold_s,
        }
        if e.task_name is not None:
            args["task"] = e.task_name
        if e.culprit is not None:
            args["culprit"] = f"{e.culprit.site} in {e.culprit.function}"
            if e.culprit.line:
                args["line"] = e.culprit.line
        if e.segments > 1:  # one of several callbacks that blocked the loop one after the other
            args["segment"] = f"{e.segment + 1} of {e.segments}"
            args["stall_s"] = e.stall_s
        self.slices.append(
            Slice(
                key=thread_key,
                start_us=self.us(e.ts_ns),
                dur_us=max(0.0, round(e.duration_s * 1e6, 3)),
                name=f"slow callback: {e.callback}",
                cat="slow_callback",
                args=args,
            )
        )

    def resource(self, e: ResourceSampleEvent) -> None:
        ts = self.us(e.ts_ns)
        self.counters.append(Counter(ts_us=ts, name="CPU %", values={"cpu": e.cpu_percent}))
        self.counters.append(Counter(ts_us=ts, name="RSS MiB", values={"rss": round(e.rss_bytes / 2**20, 3)}))
        self.counters.append(Counter(ts_us=ts, name="Threads", values={"threads": e.num_threads}))
        self.counters.append(Counter(ts_us=ts, name="Open fds", values={"fds": e.num_fds}))
        prev, self.prev_sample = self.prev_sample, e
        if prev is not None and e.ts_ns > prev.ts_ns:
            # Counters are cumulative since the process started: a rate is what a person reads.
            dt_s = (e.ts_ns - prev.ts_ns) / 1e9
            voluntary = (e.ctx_switches_voluntary - prev.ctx_switches_voluntary) / dt_s
            involuntary = (e.ctx_switches_involuntary - prev.ctx_switches_involuntary) / dt_s
            self.counters.append(
                Counter(
                    ts_us=ts,
                    name="Context switches/s",
                    values={"voluntary": round(voluntary, 1), "involuntary": round(involuntary, 1)},
                )
            )

    def finish(self) -> Timeline:
        self.handoffs()
        # Lanes: place slices (earliest first, longest first on ties) into the first lane of
        # their track where they nest, so no lane ever holds two partially overlapping slices.
        lanes: dict[TrackKey, list[list[float]]] = {}
        placed: dict[int, int] = {}
        order = sorted(range(len(self.slices)), key=lambda i: (self.slices[i].start_us, -self.slices[i].dur_us))
        for i in order:
            s = self.slices[i]
            end = s.start_us + s.dur_us
            stacks = lanes.setdefault(s.key, [])
            for n, stack in enumerate(stacks):
                while stack and stack[-1] <= s.start_us:
                    stack.pop()
                if not stack or stack[-1] >= end:
                    stack.append(end)
                    placed[i] = n
                    break
            else:
                stacks.append([end])
                placed[i] = len(stacks) - 1

        # Threads first (by name), each followed by its tasks; tids are small and stable.
        def sort_key(k: TrackKey) -> tuple[str, int, int, str]:
            return (self.keys[k], k[1], 0 if k[0] == "thread" else 1, k[2])

        tracks: list[Track] = []
        tids: dict[tuple[TrackKey, int], int] = {}
        for key in sorted(self.keys, key=sort_key):
            thread_name = self.keys[key]
            base = thread_name if key[0] == "thread" else f"task {key[2]}"
            for lane in range(max(1, len(lanes.get(key, [])))):
                tid = len(tracks) + 1
                tids[(key, lane)] = tid
                name = base if lane == 0 else f"{base} ({lane + 1})"
                tracks.append(Track(tid=tid, name=name, kind=key[0], thread_name=thread_name, lane=lane))
        for i, s in enumerate(self.slices):
            s.tid = tids[(s.key, placed[i])]
        for inst in self.instants:
            if inst.key is not None:
                inst.tid = tids[(inst.key, 0)]
        self.slices.sort(key=lambda s: (s.start_us, -s.dur_us))
        self.instants.sort(key=lambda i: i.ts_us)
        self.counters.sort(key=lambda c: c.ts_us)
        last = max(
            [self.end_us]
            + [s.start_us + s.dur_us for s in self.slices]
            + [i.ts_us for i in self.instants]
            + [c.ts_us for c in self.counters]
        )
        return Timeline(
            tracks=tracks,
            slices=self.slices,
            instants=self.instants,
            flows=self.flows,
            counters=self.counters,
            duration_us=last,
        )


def build_timeline(snapshot: Snapshot, events: Iterable[Event] | None = None) -> Timeline:
    """The timeline of ``snapshot`` (or of ``events`` measured against its start)."""
    builder = _Builder(snapshot)
    for e in snapshot.events if events is None else events:
        builder.add(e)
    return builder.finish()
