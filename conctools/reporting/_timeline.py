"""The timeline model shared by the Chrome trace and the HTML report: tracks, slices, flows.

A pure function of a snapshot. Every thread gets exactly one track, and every asyncio task one
track of its own (grouped under the thread that ran it). Slices on one track always nest
properly, which Perfetto requires (it drops a slice that overlaps another partially) and the
HTML timeline relies on. Times are whole microseconds since the run started: both ends of a
slice are floored from nanoseconds, so a span nested in another stays nested (rounding can
never make a child stick out of its parent).

Lock holds are not recorded by the locks: they are inferred from the waits. Each acquired wait
(``LockWaitEvent``) of a lock or semaphore is a hand-off (a wait for a notify, a set or a
barrier is not). Who handed it over: for a ``Lock``, ``RLock`` or ``aio.Lock`` (one holder at a
time), the last recorded acquirer of the same lock when that acquisition happened while this
waiter waited (a queue of waiters: the lock goes down the queue); otherwise the one holder the
waiter named when its wait began (JFR's ``previousOwner``; a semaphore's several holders name
no one). The giver held the lock at least from the start of the wait (or from its own
acquisition) until the waiter acquired it: that is its hold slice, on its own track, and the flow
arrow goes from the end of the hold to the end of the wait. The release may have been a little
earlier than the next acquisition (the waiter's wake-up); the slice says so in its args. To record
the real hold (acquire and release times of a hold that had waiters), the locks would have to emit
an event at the release of a contended hold; then this inference can go.

Where an inferred hold would overlap a recorded slice of its track partially, the hold adapts
(its start moves back to the enclosing slice's start, or its end to the next slice's start): the
recorded slices are facts, the hold's bounds are not. Where two recorded slices of one thread
overlap partially (clock noise between two producers), the later one is drawn clipped to its
parent and says so (``clipped_us`` in its args); a task whose name another task on the same
thread reused gets a second track (``"task NAME (2)"``): those are two tasks.

Timestamps: for events with a duration (spans, lock waits, slow callbacks) ``ts_ns`` is when
the thing began, as ``docs/report-schema.md`` documents.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from conctools.events import (
    BlockingCallEvent,
    DeadlockEvent,
    Event,
    FailureEvent,
    GilSampleEvent,
    HangEvent,
    LockOrderEvent,
    LockWaitEvent,
    MarkEvent,
    PoolExhaustedEvent,
    ResourceSampleEvent,
    SlowCallbackEvent,
    SpanEvent,
)
from conctools.recorder import Snapshot
from conctools.reporting._summary import SIGNAL_KINDS, name_pattern, parse_party, what_it_runs

__all__ = [
    "LOCUST_MARK",
    "Counter",
    "Flow",
    "Instant",
    "Slice",
    "Timeline",
    "Track",
    "build_timeline",
    "natural_key",
    "parse_party",
]

# The demo puts Locust's per-second statistics on the server's timeline as marks of this name.
LOCUST_MARK = "locust.latency"

# (thread_id, thread_name, task_name or None, instance): one track. The thread's name is part of
# the key: a thread id is reused by the next thread, which is another thread.
TrackKey = tuple[int, str, "str | None", int]


@dataclass(slots=True, kw_only=True)
class Track:
    """One row of the timeline: a thread, or an asyncio task (which runs on a thread)."""

    tid: int
    name: str
    kind: str  # "thread" | "task"
    thread_name: str
    thread_tid: int = 0  # the thread's own track (itself for a thread)
    task_name: str | None = None
    group: str = ""  # what a task runs: its first traced span, its coroutine, or its name's pattern
    start_us: int = 0  # first and last activity on the track
    end_us: int = 0
    process: int = 0  # which process of the run (the index in its processes section; 0: the main one)


@dataclass(slots=True, kw_only=True)
class Slice:
    """Something that took time on one track; ``cat`` is span, lock_wait, lock_hold, slow_callback,
    blocking_call or pool_exhausted. ``depth`` is its nesting level on the track (0 = outermost)."""

    key: TrackKey
    start_us: int
    dur_us: int
    name: str
    cat: str
    args: dict[str, Any] = field(default_factory=dict)
    tid: int = 0
    depth: int = 0

    @property
    def end_us(self) -> int:
        return self.start_us + self.dur_us


@dataclass(slots=True, kw_only=True)
class Instant:
    """A moment: on a track (``tid``) or for the whole process (``tid is None``)."""

    ts_us: int
    name: str
    cat: str
    args: dict[str, Any] = field(default_factory=dict)
    key: TrackKey | None = None
    tid: int | None = None
    process: int = 0  # which process of the run (0: the main one), for a moment of a whole process


@dataclass(slots=True, kw_only=True)
class Flow:
    """An arrow from the end of one slice (a lock's holder) to the end of another (its next acquirer)."""

    id: int
    name: str
    source: Slice
    target: Slice


@dataclass(slots=True, kw_only=True)
class Counter:
    """Values of one counter track at one moment."""

    ts_us: int
    name: str
    values: dict[str, float]


@dataclass(slots=True, kw_only=True)
class Timeline:
    """Everything a timeline view draws, and what it had to adjust to draw it."""

    tracks: list[Track]
    slices: list[Slice]
    instants: list[Instant]
    flows: list[Flow]
    counters: list[Counter]
    duration_us: int
    handoffs: int = 0  # acquired waits whose giver is known (each has a hold and a flow)
    clipped: int = 0  # recorded slices drawn shorter so that their track nests


_DIGITS = re.compile(r"(\d+)")
_EXCLUSIVE = frozenset({"Lock", "RLock", "aio.Lock"})  # one holder at a time: the lock goes down the queue


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that orders ``Task-2`` before ``Task-10`` (numbers compare as numbers)."""
    return tuple(int(p) if p.isdigit() else p.lower() for p in _DIGITS.split(text))


_CAT_ORDER = {"lock_hold": 0, "span": 1, "slow_callback": 1, "blocking_call": 2, "lock_wait": 3}


def _floor_us(ns: int) -> int:
    return max(0, ns // 1000)


class _Builder:
    def __init__(self, snapshot: Snapshot) -> None:
        self.started_ns = snapshot.started_ns
        self.end_us = _floor_us(snapshot.taken_ns - snapshot.started_ns)
        self.keys: set[TrackKey] = set()
        self.by_who: dict[str, TrackKey] = {}
        self.by_thread_name: dict[str, TrackKey] = {}
        self.by_task_name: dict[str, TrackKey] = {}
        self.slices: list[Slice] = []
        self.instants: list[Instant] = []
        self.counters: list[Counter] = []
        self.prev_sample: ResourceSampleEvent | None = None
        self.waits: list[tuple[LockWaitEvent, Slice]] = []
        self.group_hint: dict[TrackKey, tuple[int, str]] = {}  # (priority, what the task runs)
        self.clipped = 0

    def us(self, ts_ns: int) -> int:
        return _floor_us(ts_ns - self.started_ns)

    def span_of(self, ts_ns: int, duration_s: float) -> tuple[int, int]:
        start = ts_ns - self.started_ns
        end = start + max(0, round(duration_s * 1e9))
        a, b = _floor_us(start), _floor_us(end)
        return a, max(0, b - a)

    def thread_key(self, thread_id: int, thread_name: str) -> TrackKey:
        key: TrackKey = (thread_id, thread_name, None, 0)
        if key not in self.keys:
            self.keys.add(key)
            self.by_thread_name.setdefault(thread_name, key)
        return key

    def key_of(self, e: Event) -> TrackKey:
        thread = self.thread_key(e.thread_id, e.thread_name)
        if e.task_name is None:
            return thread
        key: TrackKey = (e.thread_id, e.thread_name, e.task_name, 0)
        if key not in self.keys:
            self.keys.add(key)
            self.by_who.setdefault(e.who, key)
            self.by_task_name.setdefault(e.task_name, key)
        return key

    def hint(self, key: TrackKey, e: Event) -> None:
        found = what_it_runs(e)
        if found is None or key[2] is None:
            return
        old = self.group_hint.get(key)
        if old is None or found[0] < old[0]:
            self.group_hint[key] = found

    def holder_key(self, holder: str, waiter: LockWaitEvent) -> TrackKey | None:
        """The track of a single holder named in words, or ``None`` (unknown, or several holders).

        A holder that recorded nothing itself gets a track of its own. A task named without its
        thread is looked up by name, else taken to run on the waiter's thread (an asyncio lock's
        holder runs on the same loop as its waiters).
        """
        if holder in self.by_who:
            return self.by_who[holder]
        parsed = parse_party(holder)
        if parsed is None:
            return None
        task, thread, several = parsed
        if several:
            return None
        if task is None:
            assert thread is not None
            known = self.by_thread_name.get(thread)
            return known if known is not None else self.thread_key(0, thread)
        if thread is None:
            known = self.by_task_name.get(task)
            if known is not None:
                return known
            base = (waiter.thread_id, waiter.thread_name)
        else:
            thread_track = self.by_thread_name.get(thread)
            base = (thread_track[0], thread) if thread_track is not None else (0, thread)
        self.thread_key(*base)
        key: TrackKey = (base[0], base[1], task, 0)
        if key not in self.keys:
            self.keys.add(key)
            self.by_task_name.setdefault(task, key)
        return key

    # ---- events ----
    def add(self, e: Event) -> None:
        if isinstance(e, SpanEvent):
            self.span(e)
        elif isinstance(e, LockWaitEvent):
            self.lock_wait(e)
        elif isinstance(e, SlowCallbackEvent):
            self.slow_callback(e)
        elif isinstance(e, BlockingCallEvent):
            self.blocking_call(e)
        elif isinstance(e, ResourceSampleEvent):
            self.resource(e)
        elif isinstance(e, GilSampleEvent):
            self.gil(e)
        elif isinstance(e, MarkEvent):
            self.mark(e)
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
        elif isinstance(e, PoolExhaustedEvent):
            self.pool_exhausted(e)
        elif isinstance(e, LockOrderEvent):
            self.instants.append(
                Instant(
                    ts_us=self.us(e.ts_ns),
                    name="lock-order inversion",
                    cat="lock_order",
                    args={"cycle": " -> ".join(e.cycle)},
                )
            )

    def mark(self, e: MarkEvent) -> None:
        if e.name == LOCUST_MARK:  # Locust's statistics are counters, not a track of their own
            ts = self.us(e.ts_ns)
            d = e.detail
            latency = {k: float(d[k]) for k in ("p50_ms", "p95_ms", "p99_ms") if isinstance(d.get(k), (int, float))}
            rate = {k: float(d[k]) for k in ("rps", "failures_per_s") if isinstance(d.get(k), (int, float))}
            if latency:
                self.counters.append(Counter(ts_us=ts, name="Locust latency (ms)", values=latency))
            if rate:
                self.counters.append(Counter(ts_us=ts, name="Locust requests/s", values=rate))
            return
        self.instants.append(
            Instant(ts_us=self.us(e.ts_ns), name=e.name, cat="mark", args=dict(e.detail), key=self.key_of(e))
        )

    def span(self, e: SpanEvent) -> None:
        args: dict[str, Any] = {"outcome": e.outcome}
        if e.exc_type:
            args["exception"] = e.exc_type
        if e.args:
            args["args"] = e.args
        start, dur = self.span_of(e.ts_ns, e.duration_s)
        key = self.key_of(e)
        self.hint(key, e)
        self.slices.append(Slice(key=key, start_us=start, dur_us=dur, name=e.name, cat="span", args=args))

    def lock_wait(self, e: LockWaitEvent) -> None:
        start, dur = self.span_of(e.ts_ns, e.wait_s)
        key = self.key_of(e)
        self.hint(key, e)
        wait = Slice(
            key=key,
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
        self.waits.append((e, wait))

    def pool_exhausted(self, e: PoolExhaustedEvent) -> None:
        # The whole pool was dry, whoever waited: the slice goes on the first waiter's thread.
        thread_key = self.thread_key(e.thread_id, e.thread_name)
        holders: dict[str, int] = {}
        for h in e.holders:
            where = f"{h.state} {h.call} at {h.site}" if h.call else f"{h.state} at {h.site}"
            holders[where] = holders.get(where, 0) + 1
        start, dur = self.span_of(e.ts_ns, e.duration_s)
        self.slices.append(
            Slice(
                key=thread_key,
                start_us=start,
                dur_us=dur,
                name=f"pool {e.pool_name} exhausted",
                cat="pool_exhausted",
                args={
                    "pool": e.pool_name,
                    "kind": e.pool_kind,
                    "held": f"{e.held} of {e.capacity} {e.items}",
                    "waits": e.waits,
                    "holders": "; ".join(f"{n} {where}" for where, n in sorted(holders.items(), key=lambda kv: -kv[1])),
                },
            )
        )

    def slow_callback(self, e: SlowCallbackEvent) -> None:
        # The whole loop was blocked: the slice goes on the loop's thread, not on a task.
        thread_key = self.thread_key(e.thread_id, e.thread_name)
        if e.task_name is not None:
            self.hint(self.key_of(e), e)
        args: dict[str, Any] = {"callback": e.callback, "duration_s": e.duration_s, "threshold_s": e.threshold_s}
        if e.task_name is not None:
            args["task"] = e.task_name
        if e.culprit is not None:
            args["culprit"] = f"{e.culprit.site} in {e.culprit.function}"
            if e.culprit.line:
                args["line"] = e.culprit.line
        if e.segments > 1:  # one of several callbacks that blocked the loop one after the other
            args["segment"] = f"{e.segment + 1} of {e.segments}"
            args["stall_s"] = e.stall_s
        start, dur = self.span_of(e.ts_ns, e.duration_s)
        self.slices.append(
            Slice(
                key=thread_key,
                start_us=start,
                dur_us=dur,
                name=f"slow callback: {e.callback}",
                cat="slow_callback",
                args=args,
            )
        )

    def blocking_call(self, e: BlockingCallEvent) -> None:
        start, dur = self.span_of(e.ts_ns, e.duration_s)
        self.slices.append(
            Slice(
                key=self.key_of(e),
                start_us=start,
                dur_us=dur,
                name=f"blocking {e.call}",
                cat="blocking_call",
                args={"call": e.call, "site": e.site, "duration_s": e.duration_s},
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

    def gil(self, e: GilSampleEvent) -> None:
        """Counter tracks of the GIL monitor: threads wanting / waiting for the GIL, cores used."""
        ts = self.us(e.ts_ns)
        if e.gil_enabled:
            self.counters.append(
                Counter(
                    ts_us=ts,
                    name="GIL: threads",
                    values={"wanting": e.threads_wanting, "waiting": e.threads_waiting},
                )
            )
        self.counters.append(Counter(ts_us=ts, name="Cores used", values={"cores": e.cores_used}))

    # ---- nesting ----
    def nest_recorded(self) -> dict[TrackKey, list[Slice]]:
        """Place the recorded slices so that every track nests: clip on threads, a new track for a
        reused task name. Returns the slices per track, sorted by start."""
        by_key: dict[TrackKey, list[Slice]] = {}
        for s in self.slices:
            by_key.setdefault(s.key, []).append(s)
        out: dict[TrackKey, list[Slice]] = {}
        clipped = 0
        for key, slices in by_key.items():
            slices.sort(key=lambda s: (s.start_us, -s.end_us, _CAT_ORDER.get(s.cat, 9)))
            if key[2] is None:
                stack: list[Slice] = []
                for s in slices:
                    while stack and stack[-1].end_us <= s.start_us:
                        stack.pop()
                    if stack and s.end_us > stack[-1].end_us:
                        s.args["clipped_us"] = s.end_us - stack[-1].end_us
                        s.dur_us = stack[-1].end_us - s.start_us
                        clipped += 1
                    stack.append(s)
                out[key] = slices
                continue
            lanes: list[list[Slice]] = []
            for s in slices:
                for n, stack in enumerate(lanes):
                    while stack and stack[-1].end_us <= s.start_us:
                        stack.pop()
                    if not stack or stack[-1].end_us >= s.end_us:
                        stack.append(s)
                        lane = n
                        break
                else:
                    lanes.append([s])
                    lane = len(lanes) - 1
                if lane:
                    s.key = (key[0], key[1], key[2], lane)
                    self.keys.add(s.key)
                    if key in self.group_hint:
                        self.group_hint.setdefault(s.key, self.group_hint[key])
                out.setdefault(s.key, []).append(s)
        self.clipped = clipped
        return out

    def handoffs(self, placed: dict[TrackKey, list[Slice]]) -> list[Flow]:
        """Holds and hand-off arrows, inferred from the waits (see the module docstring)."""
        by_lock: dict[tuple[int, str], list[tuple[LockWaitEvent, Slice]]] = {}
        for e, wait in self.waits:
            # A wait for a notify, a set or a barrier is handed nothing by a holder.
            if e.acquired and e.lock_kind not in SIGNAL_KINDS:
                by_lock.setdefault((e.lock_id, e.lock_name), []).append((e, wait))
        index = {key: _TrackIndex(slices) for key, slices in placed.items()}
        holds: dict[tuple[TrackKey, int, int], Slice] = {}
        flows: list[Flow] = []
        for acquisitions in by_lock.values():
            acquisitions.sort(key=lambda p: (p[1].end_us, p[1].start_us))
            for i, (e, wait) in enumerate(acquisitions):
                prev = acquisitions[i - 1] if i else None
                acquired_at = wait.end_us
                exclusive = e.lock_kind in _EXCLUSIVE  # a semaphore's next permit may come from anyone
                if exclusive and prev is not None and prev[1].end_us >= wait.start_us and prev[1].key != wait.key:
                    giver, since, why = prev[1].key, prev[1].end_us, "acquired it while this waiter waited"
                elif e.holder:
                    holder = self.holder_key(e.holder, e)
                    if holder is None or holder == wait.key:
                        continue
                    giver, since, why = holder, wait.start_us, "held it when this waiter began to wait"
                    if exclusive and prev is not None and prev[1].key == holder and prev[1].end_us <= wait.start_us:
                        since = prev[1].end_us  # that hold began with the giver's own contended acquisition
                else:
                    continue
                hold_key = (giver, e.lock_id, acquired_at)
                hold = holds.get(hold_key)
                if hold is not None:
                    if since < hold.start_us:
                        hold.dur_us, hold.start_us = hold.end_us - since, since
                    continue
                hold = holds[hold_key] = Slice(
                    key=giver,
                    start_us=since,
                    dur_us=acquired_at - since,
                    name=f"holds {e.lock_name}",
                    cat="lock_hold",
                    args={
                        "lock": e.lock_name,
                        "next": e.who,
                        "inferred": f"from the waits: it {why}; "
                        "released at the latest when the next waiter acquired it",
                    },
                )
                flows.append(Flow(id=len(flows) + 1, name=f"handoff {e.lock_name}", source=hold, target=wait))
        open_holds: dict[TrackKey, list[Slice]] = {}  # per track, the holds placed that may still overlap
        for hold in sorted(holds.values(), key=lambda h: (h.start_us, -h.end_us)):
            track = index.get(hold.key)
            others = [o for o in open_holds.get(hold.key, ()) if o.end_us > hold.start_us]
            _fit(hold, track, others)
            others.append(hold)
            open_holds[hold.key] = others
            placed.setdefault(hold.key, []).append(hold)
            self.keys.add(hold.key)
        return flows

    def finish(self) -> Timeline:
        placed = self.nest_recorded()
        flows = self.handoffs(placed)
        # Depths; a last guard keeps every track nested whatever the inputs were.
        all_slices: list[Slice] = []
        for slices in placed.values():
            slices.sort(key=lambda s: (s.start_us, -s.end_us, _CAT_ORDER.get(s.cat, 9)))
            stack: list[Slice] = []
            for s in slices:
                while stack and stack[-1].end_us <= s.start_us:
                    stack.pop()
                if stack and s.end_us > stack[-1].end_us:
                    s.args["clipped_us"] = s.end_us - stack[-1].end_us
                    s.dur_us = stack[-1].end_us - s.start_us
                    if s.cat != "lock_hold":
                        self.clipped += 1
                s.depth = len(stack)
                stack.append(s)
            all_slices.extend(slices)

        extent: dict[TrackKey, list[int]] = {}
        for s in all_slices:
            ex = extent.setdefault(s.key, [s.start_us, s.end_us])
            ex[0], ex[1] = min(ex[0], s.start_us), max(ex[1], s.end_us)
        for inst in self.instants:
            if inst.key is not None:
                ex = extent.setdefault(inst.key, [inst.ts_us, inst.ts_us])
                ex[0], ex[1] = min(ex[0], inst.ts_us), max(ex[1], inst.ts_us)

        threads = sorted(
            {(k[0], k[1]) for k in self.keys}, key=lambda t: (t[1] != "MainThread", natural_key(t[1]), t[0])
        )
        seen_names: dict[str, int] = {}
        tracks: list[Track] = []
        tids: dict[TrackKey, int] = {}
        for thread_id, thread_name in threads:
            n = seen_names[thread_name] = seen_names.get(thread_name, 0) + 1
            thread_key: TrackKey = (thread_id, thread_name, None, 0)
            tid = len(tracks) + 1
            tids[thread_key] = tid
            ex = extent.get(thread_key, [0, 0])
            label = thread_name if n == 1 else f"{thread_name} [{n}]"  # another thread of the same name
            tracks.append(
                Track(
                    tid=tid,
                    name=label,
                    kind="thread",
                    thread_name=thread_name,
                    thread_tid=tid,
                    start_us=ex[0],
                    end_us=ex[1],
                )
            )
            tasks = [k for k in self.keys if k[0] == thread_id and k[1] == thread_name and k[2] is not None]
            tasks.sort(key=lambda k: (extent.get(k, [0])[0], natural_key(str(k[2])), k[3]))
            for key in tasks:
                task_name = str(key[2])
                tids[key] = len(tracks) + 1
                ex = extent.get(key, [0, 0])
                hint = self.group_hint.get(key)
                tracks.append(
                    Track(
                        tid=tids[key],
                        name=f"task {task_name}" + (f" ({key[3] + 1})" if key[3] else ""),
                        kind="task",
                        thread_name=thread_name,
                        thread_tid=tid,
                        task_name=task_name,
                        group=hint[1] if hint is not None else name_pattern(task_name),
                        start_us=ex[0],
                        end_us=ex[1],
                    )
                )
        for s in all_slices:
            s.tid = tids[s.key]
        for inst in self.instants:
            if inst.key is not None:
                inst.tid = tids[inst.key]
        all_slices.sort(key=lambda s: (s.start_us, -s.end_us, s.depth))
        self.instants.sort(key=lambda i: i.ts_us)
        self.counters.sort(key=lambda c: c.ts_us)
        last = max(
            [self.end_us]
            + [s.end_us for s in all_slices]
            + [i.ts_us for i in self.instants]
            + [c.ts_us for c in self.counters]
        )
        return Timeline(
            tracks=tracks,
            slices=all_slices,
            instants=self.instants,
            flows=flows,
            counters=self.counters,
            duration_us=last,
            handoffs=len(flows),
            clipped=self.clipped,
        )


class _TrackIndex:
    """The recorded slices of one track (nested, sorted by start), to find what an inferred hold
    would overlap partially."""

    def __init__(self, slices: list[Slice]) -> None:
        self.slices = slices
        self.starts = [s.start_us for s in slices]
        self.parent: list[int] = []
        stack: list[int] = []
        for i, s in enumerate(slices):
            while stack and slices[stack[-1]].end_us <= s.start_us:
                stack.pop()
            self.parent.append(stack[-1] if stack else -1)
            stack.append(i)

    def around(self, t: int) -> list[Slice]:
        """The slices that contain ``t`` strictly (start < t < end), innermost first."""
        i = bisect.bisect_left(self.starts, t) - 1
        while i >= 0 and self.slices[i].end_us <= t:
            i = self.parent[i]
        out = []
        while i >= 0:
            out.append(self.slices[i])
            i = self.parent[i]
        return out


def _fit(hold: Slice, track: _TrackIndex | None, others: list[Slice]) -> None:
    """Move an inferred hold's bounds until it nests with its track's slices and earlier holds.

    A slice that began before the hold and ends inside it: the hold began at the latest when that
    slice did (the holder cannot have been inside it and taken the lock without nesting). A slice
    that begins inside the hold and ends after it: the hold ended before it began.
    """
    for _ in range(64):
        changed = False
        candidates: list[Slice] = []
        if track is not None:
            candidates += track.around(hold.start_us) + track.around(hold.end_us)
        candidates += [o for o in others if o.start_us < hold.end_us and o.end_us > hold.start_us]
        for s in candidates:
            if s.start_us < hold.start_us < s.end_us < hold.end_us:
                hold.dur_us += hold.start_us - s.start_us
                hold.start_us = s.start_us
                changed = True
            elif hold.start_us < s.start_us < hold.end_us < s.end_us:
                hold.dur_us = s.start_us - hold.start_us
                changed = True
        if not changed:
            return


# The last snapshot's timeline, swapped whole: the trace and the page of one run share it.
_last: list[tuple[tuple[Event, ...], int, int, Timeline] | None] = [None]


def build_timeline(snapshot: Snapshot, events: Iterable[Event] | None = None) -> Timeline:
    """The timeline of ``snapshot`` (or of ``events`` measured against its start).

    Treat it as read-only: the reporters of one snapshot share the same one.
    """
    if events is None:
        last = _last[0]
        if last is not None and last[0] is snapshot.events and last[1:3] == (snapshot.started_ns, snapshot.taken_ns):
            return last[3]
    builder = _Builder(snapshot)
    for e in snapshot.events if events is None else events:
        builder.add(e)
    timeline = builder.finish()
    if events is None:
        _last[0] = (snapshot.events, snapshot.started_ns, snapshot.taken_ns, timeline)
    return timeline
