"""Span bookkeeping for the OpenTelemetry export: trace identities and lock waits for spans that
arrive when they END.

A conctools span reaches a recorder sink when it ends, children before their parents, and knows
only its parent's id. An OpenTelemetry span needs its trace id, which a child cannot know before
its root is known. :class:`SpanTree` therefore holds a finished span until its parent's trace is
known, and gives every span a place (:class:`Placed`): its trace, its OpenTelemetry span id and its
parent's. Span ids are a bijection of conctools' process-unique ids, so a parent's id is known
before the parent ends.

- A root (no parent) starts a trace, and places every held descendant in it.
- A span whose parent was placed, or whose parent's trace was reserved, is placed at once (a task
  that outlives the call that created it still joins that call's trace).
- Spans held longer than ``max_wait_s`` (a long-lived parent such as a traced ``main``), or more
  than ``max_held`` spans in all, reserve a trace for their still-running parent and are placed in
  it; the parent joins that trace when it ends. When two such reservations meet under a common
  ancestor, the later subtree keeps its own trace and links to its real parent (an OpenTelemetry
  link), rather than pointing at a parent of another trace.

:class:`WaitIndex` attaches lock waits to the span that waited: the innermost span of the same
thread (and asyncio task) whose time covers the wait. A wait no span covers is left out.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from conctools.events import LockWaitEvent, SpanEvent

__all__ = ["Placed", "SpanTree", "Trace", "WaitIndex", "otel_span_id"]

_MASK64 = (1 << 64) - 1
_MIX = 0x9E3779B97F4A7C15  # odd: multiplication by it is a bijection modulo 2**64


@dataclass(frozen=True, slots=True)
class Trace:
    """A trace: its 128-bit id and whether it is sampled."""

    trace_id: int
    sampled: bool = True


@dataclass(frozen=True, slots=True)
class Placed:
    """A span ready to export: its trace, its OpenTelemetry parent (``None``: a root), and the
    parent it links to instead when its subtree had to keep a trace of its own."""

    span: SpanEvent
    trace: Trace
    parent_span_id: int | None  # OpenTelemetry id
    linked_parent: tuple[Trace, int] | None = None  # (trace, OpenTelemetry span id)


def otel_span_id(span_id: int, salt: int) -> int:
    """A non-zero 64-bit OpenTelemetry span id for conctools' ``span_id`` (distinct ids stay distinct)."""
    value = ((span_id + salt) * _MIX) & _MASK64
    return value or 1


class SpanTree:
    """Places finished spans in traces (see the module docstring). Not thread-safe: one exporter
    thread owns it.

    ``new_trace(name)`` makes a trace for a root span named ``name`` (it decides sampling).
    """

    def __init__(
        self,
        new_trace: Callable[[str], Trace],
        *,
        salt: int | None = None,
        max_wait_s: float = 10.0,
        max_held: int = 20_000,
        max_known: int = 200_000,
    ) -> None:
        self._new_trace = new_trace
        self.salt = salt if salt is not None else random.getrandbits(64)
        self.max_wait_s = max_wait_s
        self.max_held = max_held
        self.max_known = max_known
        self._held: dict[int, list[SpanEvent]] = {}  # parent id -> its finished children
        self._held_since: dict[int, float] = {}  # parent id -> when its first child was held
        self._held_count = 0
        self._known: OrderedDict[int, Trace] = OrderedDict()  # span id -> trace (placed or reserved)
        self.split = 0  # subtrees that kept a trace of their own (linked to their parent)

    @property
    def held(self) -> int:
        """Spans waiting for their parent's trace."""
        return self._held_count

    def span_id(self, conctools_id: int) -> int:
        """The OpenTelemetry span id of a conctools span id."""
        return otel_span_id(conctools_id, self.salt)

    def add(self, span: SpanEvent, now_s: float) -> list[Placed]:
        """Take one finished span; returns the spans that can be exported now."""
        own = self._known.get(span.span_id)
        parent = span.parent_id
        parent_trace = self._known.get(parent) if parent is not None else None
        if own is not None and parent_trace is not None and own != parent_trace:
            # Its subtree was placed in a trace of its own while a sibling's fixed the parent's.
            self.split += 1
            link = (parent_trace, self.span_id(parent)) if parent is not None else None
            return self._place(span, own, as_root=True, link=link)
        trace = own or parent_trace
        if trace is None and parent is None:
            trace = self._new_trace(span.name)
        if trace is None:
            assert parent is not None
            self._held.setdefault(parent, []).append(span)
            self._held_since.setdefault(parent, now_s)
            self._held_count += 1
            return []
        return self._place(span, trace)

    def expire(self, now_s: float, *, everything: bool = False) -> list[Placed]:
        """Place the spans held too long (or all of them, ``everything``: at shutdown) in traces
        reserved for their running parents."""
        out: list[Placed] = []
        for parent, since in list(self._held_since.items()):
            if everything or self._held_count > self.max_held or now_s - since >= self.max_wait_s:
                children = self._held.get(parent)
                if not children:
                    continue
                trace = self._new_trace(children[0].name)
                self._remember(parent, trace)
                out += self._release(parent, trace)
        return out

    def _place(
        self, span: SpanEvent, trace: Trace, *, as_root: bool = False, link: tuple[Trace, int] | None = None
    ) -> list[Placed]:
        parent = span.parent_id
        out = [
            Placed(
                span=span,
                trace=trace,
                parent_span_id=None if as_root or parent is None else self.span_id(parent),
                linked_parent=link,
            )
        ]
        self._remember(span.span_id, trace)
        if parent is not None and not as_root and parent not in self._known:
            self._remember(parent, trace)  # reserved: the parent and its other children join it
        out += self._release(span.span_id, trace)
        return out

    def _release(self, parent: int, trace: Trace) -> list[Placed]:
        """Place the held descendants of ``parent`` in ``trace``."""
        out: list[Placed] = []
        stack = [parent]
        while stack:
            pid = stack.pop()
            children = self._held.pop(pid, None)
            self._held_since.pop(pid, None)
            if not children:
                continue
            self._held_count -= len(children)
            for child in children:
                out.append(Placed(span=child, trace=trace, parent_span_id=self.span_id(pid)))
                self._remember(child.span_id, trace)
                stack.append(child.span_id)
        return out

    def _remember(self, span_id: int, trace: Trace) -> None:
        self._known[span_id] = trace
        self._known.move_to_end(span_id)
        while len(self._known) > self.max_known:
            self._known.popitem(last=False)


class WaitIndex:
    """Lock waits by thread, until the span that waited is exported (bounded per thread)."""

    def __init__(self, per_thread: int = 1024, max_threads: int = 4096) -> None:
        self.per_thread = per_thread
        self.max_threads = max_threads
        self._waits: OrderedDict[int, deque[LockWaitEvent]] = OrderedDict()
        self.attached = 0

    def add(self, wait: LockWaitEvent) -> None:
        """Remember one wait."""
        waits = self._waits.get(wait.thread_id)
        if waits is None:
            waits = self._waits[wait.thread_id] = deque(maxlen=self.per_thread)
            while len(self._waits) > self.max_threads:
                self._waits.popitem(last=False)
        waits.append(wait)

    def attach(self, placed: list[Placed]) -> dict[int, list[LockWaitEvent]]:
        """``span_id -> waits`` for the spans in ``placed``: each wait goes to the innermost span of
        its thread and task that covers it (inner spans end first, so they choose first)."""
        out: dict[int, list[LockWaitEvent]] = {}
        for p in sorted(placed, key=lambda p: p.span.ts_ns + int(p.span.duration_s * 1e9)):
            span = p.span
            waits = self._waits.get(span.thread_id)
            if not waits:
                continue
            start = span.ts_ns
            end = start + int(span.duration_s * 1e9)
            mine = [
                w
                for w in waits
                if w.task_name == span.task_name and w.ts_ns >= start and w.ts_ns + int(w.wait_s * 1e9) <= end
            ]
            if not mine:
                continue
            taken = set(map(id, mine))
            kept = deque((w for w in waits if id(w) not in taken), maxlen=self.per_thread)
            self._waits[span.thread_id] = kept
            out[span.span_id] = mine
            self.attached += len(mine)
        return out

    def forget_before(self, ts_ns: int) -> None:
        """Drop waits that started before ``ts_ns`` (no span still to come can cover them)."""
        for tid in list(self._waits):
            waits = self._waits[tid]
            while waits and waits[0].ts_ns < ts_ns:
                waits.popleft()
            if not waits:
                del self._waits[tid]
