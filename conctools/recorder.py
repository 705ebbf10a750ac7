"""The recorder: the spine every producer writes to and every reporter reads from.

A :class:`Recorder` keeps the most recent events in a ring buffer (bounded memory) and
running aggregates whose counts stay exact however many threads record at once. Reporters
never see the live recorder: they read a :class:`Snapshot`, plain frozen data that can be
saved as JSON and loaded back.

Hot path design: ``@traced`` calls are the most frequent records, so
:meth:`Recorder.record_span` appends a tuple (materialised into a
:class:`~conctools.events.SpanEvent` only when a snapshot or a sink asks) and updates a
per-thread shard of aggregates with no lock at all (only its own thread writes a shard).
Rare events (lock waits, stalls, deadlocks) go through :meth:`Recorder.record`, which takes
a plain lock.
"""

from __future__ import annotations

import _thread
import bisect
import itertools
import operator
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager

from conctools._log import get_logger
from conctools._records import field, record
from conctools._typing import Any
from conctools.events import Event, SpanEvent, event_from_dict
from conctools.retention import DEFAULT_KIND_CAPS, Store, make_store

__all__ = [
    "DEFAULT_CAPACITY",
    "SCHEMA",
    "Histogram",
    "Recorder",
    "Snapshot",
    "SpanStats",
    "get_recorder",
    "set_recorder",
    "use_recorder",
]

SCHEMA = "conctools.report/1"
DEFAULT_CAPACITY = 100_000

_log = get_logger("conctools.recorder")

# The optional C extension of the span path (conctools/_tracing.c): tracing.py's fast wrappers and
# the fold below. Not used with CONCTOOLS_PURE_PYTHON=1, nor when it is missing or stale.
_ctracing: Any = None
_CTRACING_API = 2  # _tracing.c's API_VERSION that this code speaks
if not os.environ.get("CONCTOOLS_PURE_PYTHON"):
    try:
        from conctools import _ctracing  # type: ignore[no-redef]
    except ImportError:
        _ctracing = None
    if getattr(_ctracing, "API_VERSION", None) != _CTRACING_API:  # a stale build (source tree): ignore it
        _ctracing = None
_cfold: Callable[..., bool] | None = _ctracing.fold if _ctracing is not None else None
# A chunk of raw spans: a list of tuples, or the C SpanChunk that reads as one (its rows hold the
# times as C integers: no tuple and no ints are made per span on the C path, nor freed on eviction).
_new_chunk: Callable[[], list[tuple[Any, ...]]] = _ctracing.SpanChunk if _ctracing is not None else list

Sink = Callable[[Event], object]
SectionProvider = Callable[[], Any]


# -- histogram ---------------------------------------------------------------------------
# Log-linear buckets over integer nanoseconds: 8 sub-buckets per power of two, so every
# bucket is within 12.5% of its values and the whole range (1 ns .. centuries) fits in
# at most ~500 buckets, stored sparsely.
_SUB_BITS = 3
_SUB = 1 << _SUB_BITS


def bucket_of(value: int) -> int:
    """The bucket index of a non-negative integer ``value``."""
    if value < _SUB:
        return max(value, 0)
    bits = value.bit_length()
    return ((bits - _SUB_BITS) << _SUB_BITS) | ((value >> (bits - _SUB_BITS - 1)) & (_SUB - 1))


def bucket_upper(index: int) -> int:
    """The largest value that falls in bucket ``index``."""
    if index < _SUB:
        return index
    exp = (index >> _SUB_BITS) + _SUB_BITS - 1
    mantissa = _SUB | (index & (_SUB - 1))
    return ((mantissa + 1) << (exp - _SUB_BITS)) - 1


class Histogram:
    """A small, mergeable latency histogram over integer nanoseconds.

    >>> h = Histogram()
    >>> for ns in (1_000, 2_000, 3_000): h.add(ns)
    >>> h.count, h.max_ns
    (3, 3000)
    """

    __slots__ = ("buckets", "count", "max_ns", "total_ns")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.total_ns = 0
        self.max_ns = 0

    def add(self, value_ns: int) -> None:
        """Record one value (not thread-safe: callers own a shard or hold a lock)."""
        b = bucket_of(value_ns)
        self.buckets[b] = self.buckets.get(b, 0) + 1
        self.count += 1
        self.total_ns += value_ns
        if value_ns > self.max_ns:
            self.max_ns = value_ns

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts into this histogram."""
        for b, n in list(other.buckets.items()):
            self.buckets[b] = self.buckets.get(b, 0) + n
        self.count += other.count
        self.total_ns += other.total_ns
        self.max_ns = max(self.max_ns, other.max_ns)

    def percentile_ns(self, q: float) -> int:
        """An upper bound of the ``q``-quantile (0..1), never above the true maximum."""
        if self.count == 0:
            return 0
        rank = max(1, int(q * self.count + 0.999999))
        seen = 0
        for b in sorted(self.buckets):
            seen += self.buckets[b]
            if seen >= rank:
                return min(bucket_upper(b), self.max_ns)
        return self.max_ns

    def to_dict(self) -> dict[str, Any]:
        """JSON form: counts, total, max and sparse buckets."""
        return {
            "count": self.count,
            "total_ns": self.total_ns,
            "max_ns": self.max_ns,
            "buckets": {str(k): v for k, v in sorted(self.buckets.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        """Inverse of :meth:`to_dict`."""
        h = cls()
        h.count = int(data["count"])
        h.total_ns = int(data["total_ns"])
        h.max_ns = int(data["max_ns"])
        h.buckets = {int(k): int(v) for k, v in dict(data.get("buckets", {})).items()}
        return h


# Histogram.add for hot paths that serialise their histogram themselves: conctools.locks puts the C
# extension's equal here once it loaded it (same buckets, fields and result: test_speedups compares them).
hist_add: Callable[[Histogram, int], None] = Histogram.add


# -- records -----------------------------------------------------------------------------


@record(kw_only=True)
class SpanStats:
    """Aggregates of every call of one span name (exact counts, approximate percentiles)."""

    name: str
    count: int
    errors: int
    cancelled: int
    total_s: float
    max_s: float
    p50_s: float
    p95_s: float
    p99_s: float

    @property
    def mean_s(self) -> float:
        return self.total_s / self.count if self.count else 0.0


@record(kw_only=True)
class Snapshot:
    """Everything a reporter needs, as plain data: events, aggregates and sections.

    ``sections`` hold the JSON-able summaries that producers register with
    :meth:`Recorder.add_section` (the lock table, the slow-callback table, the profile).
    """

    started_ns: int
    started_wall: float
    taken_ns: int
    events: tuple[Event, ...]
    counts: dict[str, int]
    dropped: int
    spans: tuple[SpanStats, ...]
    sections: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return (self.taken_ns - self.started_ns) / 1e9

    def of_kind(self, kind: type[Event]) -> list[Any]:
        """The recorded events of one class, oldest first."""
        return [e for e in self.events if isinstance(e, kind)]

    def to_dict(self) -> dict[str, Any]:
        """The versioned JSON document (schema ``conctools.report/1``)."""
        return {
            "schema": SCHEMA,
            "started_ns": self.started_ns,
            "started_wall": self.started_wall,
            "taken_ns": self.taken_ns,
            "duration_s": self.duration_s,
            "meta": self.meta,
            "counts": self.counts,
            "dropped": self.dropped,
            "spans": [
                {
                    "name": s.name,
                    "count": s.count,
                    "errors": s.errors,
                    "cancelled": s.cancelled,
                    "total_s": s.total_s,
                    "max_s": s.max_s,
                    "p50_s": s.p50_s,
                    "p95_s": s.p95_s,
                    "p99_s": s.p99_s,
                }
                for s in self.spans
            ],
            "sections": self.sections,
            "events": [e.to_dict() for e in self.events],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Snapshot:
        """Load a saved report; ``ValueError`` with one readable line when it is not one."""
        if not isinstance(data, dict):
            raise ValueError("not a conctools report (expected a JSON object)")
        schema = data.get("schema")
        if schema != SCHEMA:
            raise ValueError(f"not a conctools report (schema {schema!r}, expected {SCHEMA!r})")
        try:
            spans = tuple(
                SpanStats(
                    name=str(s["name"]),
                    count=int(s["count"]),
                    errors=int(s["errors"]),
                    cancelled=int(s.get("cancelled", 0)),
                    total_s=float(s["total_s"]),
                    max_s=float(s["max_s"]),
                    p50_s=float(s["p50_s"]),
                    p95_s=float(s["p95_s"]),
                    p99_s=float(s["p99_s"]),
                )
                for s in data["spans"]
            )
            events = tuple(event_from_dict(e) for e in data["events"])
            return cls(
                started_ns=int(data["started_ns"]),
                started_wall=float(data["started_wall"]),
                taken_ns=int(data["taken_ns"]),
                events=events,
                counts={str(k): int(v) for k, v in dict(data["counts"]).items()},
                dropped=int(data["dropped"]),
                spans=spans,
                sections=dict(data.get("sections", {})),
                meta=dict(data.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"corrupt conctools report: {exc!s}") from None


# -- the recorder ------------------------------------------------------------------------


class _SpanShard:
    """One thread's unsealed chunk of raw spans; only its own thread appends to it."""

    __slots__ = ("chunk", "thread")

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread
        self.chunk: list[tuple[Any, ...]] = _new_chunk()


# Raw span tuples are (start_ns, end_ns, name, span_id, parent_id, outcome, exc_type, task_name, args).
# Threads append them to their own chunk; a full chunk is sealed into the shared ring of chunks,
# and chunks that fall off the ring are folded into the aggregates. Per call that is one tuple
# and one list.append: the cheapest exact scheme that needs no lock on the hot path.
SPAN_CHUNK = 256

# Span names whose aggregates a recorder keeps apart, once their spans are folded away; the spans
# of any further name are summed under OTHER_SPAN_NAMES (counts, totals, maxima and histogram stay
# exact in sum). Names made at run time (``traced(f"GET {path}")``) would otherwise grow memory
# without bound.
SPAN_NAMES_MAX = 2048
OTHER_SPAN_NAMES = "(other span names)"


# How many sinks all recorders have: while it is 0, the C span path skips looking at `_sinks`.
# It may stay above 0 after a recorder with sinks is dropped; that only costs that lookup.
_sinks_anywhere: list[int] = [0]
_sinks_anywhere_lock = _thread.allocate_lock()


def _count_sinks(delta: int) -> None:
    if delta:
        with _sinks_anywhere_lock:
            _sinks_anywhere[0] += delta


_col_start, _col_end, _col_name, _col_outcome = (operator.itemgetter(i) for i in (0, 1, 2, 5))


def _fold(
    aggs: dict[str, list[int]],
    chunk: list[tuple[Any, ...]],
    hists: dict[str, dict[int, int]] | None = None,
    beaten: list[tuple[str, int]] | None = None,
) -> None:
    """Add raw spans to ``aggs`` (name -> [count, errors, cancelled, total_ns, max_ns]) and, given
    ``hists``, their durations to ``hists`` (name -> {bucket: count}, :func:`bucket_of`'s buckets).
    Given ``beaten``, append ``(name, row index)`` for each name whose longest span in ``chunk``
    (the first of that length) is longer than any of that name folded before (or the name is new).

    This runs once per span in steady state (when spans fall off the ring), so it works on
    whole columns with C-level ``zip``/``map``/``sum`` rather than a Python loop per span.
    """
    if not chunk:
        return
    if _cfold is not None and _cfold(aggs, chunk, hists, beaten):  # the same sums in one C pass
        return
    _fold_columns(aggs, chunk, hists, beaten)


def _fold_columns(
    aggs: dict[str, list[int]],
    chunk: list[tuple[Any, ...]],
    hists: dict[str, dict[int, int]] | None = None,
    beaten: list[tuple[str, int]] | None = None,
) -> None:
    """The pure-Python fold (the C one hands back anything unusual to it)."""
    # Only the columns needed, each pulled out at C speed.
    names = list(map(_col_name, chunk))
    durations = list(map(operator.sub, map(_col_end, chunk), map(_col_start, chunk)))
    outcomes = list(map(_col_outcome, chunk))
    if len(set(names)) == 1:
        groups: dict[str, tuple[list[int], Any, Any]] = {names[0]: (durations, outcomes, None)}
    else:
        groups = {}
        for i, (name, d, outcome) in enumerate(zip(names, durations, outcomes)):
            group = groups.get(name)
            if group is None:
                group = groups[name] = ([], [], [])
            group[0].append(d)
            group[1].append(outcome)
            group[2].append(i)
    for name, (ds, outs, rows) in groups.items():
        agg = aggs.get(name)
        fresh = agg is None
        if agg is None:
            agg = aggs[name] = [0, 0, 0, 0, 0]
        agg[0] += len(ds)
        ok = outs.count("ok")
        if ok != len(outs):
            cancelled = outs.count("cancelled")
            agg[1] += len(outs) - ok - cancelled
            agg[2] += cancelled
        agg[3] += sum(ds)
        longest = max(ds)
        new_longest = longest > agg[4]
        if new_longest:
            agg[4] = longest
        if beaten is not None and (new_longest or fresh):
            at = ds.index(longest)
            beaten.append((name, at if rows is None else rows[at]))
        if hists is not None:
            _add_buckets(hists.setdefault(name, {}), ds)


def _add_buckets(hist: dict[int, int], durations: list[int]) -> None:
    """``hist[bucket_of(d)] += 1`` for each duration (``int(d)`` for a float), by bucket rather than by
    value: sorted once at C speed, then each bucket's values counted with one bisection. Sorts
    ``durations`` in place."""
    durations.sort()
    n = len(durations)
    i = 0
    get = hist.get
    while i < n:
        v = int(durations[i])
        if v >= _SUB:  # bucket_of(v) and bucket_upper() of it, inline: v's top 4 bits (8..15) and its shift
            shift = v.bit_length() - _SUB_BITS - 1
            top = v >> shift
            b = (shift << _SUB_BITS) + top
            j = bisect.bisect_right(durations, ((top + 1) << shift) - 1, i)
        else:
            b = max(v, 0)
            j = bisect.bisect_right(durations, b, i)
        if j <= i:  # a float just above its integer's bucket
            j = i + 1
        hist[b] = get(b, 0) + j - i
        i = j


def _percentile(sorted_values: list[int], q: float) -> int:
    """The nearest-rank ``q``-quantile of an ascending list (0 when empty)."""
    if not sorted_values:
        return 0
    rank = max(1, -(-int(q * len(sorted_values) * 1_000_000) // 1_000_000))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _merged_percentile(sorted_values: list[int], hist: Mapping[int, int], hist_max: int, q: float) -> int:
    """The nearest-rank ``q``-quantile of ``sorted_values`` (exact) together with the values counted
    in ``hist`` (buckets of :func:`bucket_of`, largest value ``hist_max``), each of which stands at its
    bucket's upper bound (at most ``hist_max``): exact when the rank falls on a kept value, else at
    most one bucket (12.5%) above the true value, and never above the largest one."""
    if not hist:
        return _percentile(sorted_values, q)
    points = sorted((min(bucket_upper(b), hist_max), n) for b, n in hist.items() if n > 0)
    total = len(sorted_values) + sum(n for _, n in points)
    if total == 0:
        return 0
    rank = min(total, max(1, -(-int(q * total * 1_000_000) // 1_000_000)))
    seen = 0  # values of the histogram below the current point
    for value, n in points:
        if seen + bisect.bisect_left(sorted_values, value) >= rank:
            return sorted_values[rank - seen - 1]
        seen += n
        if seen + bisect.bisect_right(sorted_values, value) >= rank:
            return value
    return sorted_values[rank - seen - 1]


class Recorder:
    """Bounded, thread-safe store of events and aggregates.

    ``capacity`` bounds the events kept (the most recent ones); aggregates (counts per
    kind, span statistics) cover every event ever recorded, evicted or not. The kinds that
    recur all run long (``kind_caps``, by default :data:`~conctools.retention.DEFAULT_KIND_CAPS`)
    are kept apart, at most that many each (when that is below ``capacity``): periodic samples merged
    into coarser ones as the run grows, episodes as the first, the latest and the worst per site
    (see :mod:`conctools.retention`), so that a long run's memory stays flat. The spans of traced
    calls (``kind_caps["span"]``) are kept as the latest that many and, of the older ones, the
    slowest of each name (for up to a quarter as many names); their counts, totals, maxima and
    duration histograms cover every span.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, kind_caps: Mapping[str, int] | None = None) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        # A cap at or above the capacity changes nothing: such a kind stays in the ring.
        self.kind_caps: dict[str, int] = {
            kind: cap for kind, cap in (DEFAULT_KIND_CAPS if kind_caps is None else kind_caps).items() if cap < capacity
        }
        self._stores: dict[str, Store] = {}
        self.started_ns = time.monotonic_ns()
        self.started_wall = time.time()
        self.meta: dict[str, Any] = {"pid": os.getpid(), "python": sys.version.split()[0]}
        self._ring: deque[Event] = deque(maxlen=capacity)
        self._lock = _thread.allocate_lock()  # a plain lock: never a traced one
        self._counts: dict[str, int] = {}
        self._sinks: list[Sink] = []
        self._sections: dict[str, SectionProvider] = {}
        self._local = threading.local()
        self._shards: list[_SpanShard] = []
        # Sealed chunks of spans: (thread, chunk), oldest first, bounded by the span window below.
        self._chunks: deque[tuple[threading.Thread, list[tuple[Any, ...]]]] = deque()
        self._kept = 0  # spans in sealed chunks; at most the span window + one chunk
        self._folded: dict[str, list[int]] = {}  # aggregates of spans no longer kept
        self._folded_hist: dict[str, dict[int, int]] = {}  # their durations' histogram per name
        # Spans kept in chunks (the latest ones) before they are folded, and of the folded ones the
        # slowest per name (thread, raw span), for up to a quarter as many names.
        self._span_window = self.kind_caps.get("span", capacity)
        self._slowest_names = self._span_window // 4
        self._slowest: dict[str, tuple[threading.Thread, tuple[Any, ...]]] = {}
        self.span_names_max = SPAN_NAMES_MAX

    # ---- sinks and sections ----
    def add_sink(self, sink: Sink) -> None:
        """Call ``sink(event)`` for every event from now on; a sink that raises is removed."""
        with self._lock:
            self._sinks = [*self._sinks, sink]
            _count_sinks(1)

    def remove_sink(self, sink: Sink) -> None:
        """Stop calling ``sink``; unknown sinks are ignored."""
        with self._lock:
            before = len(self._sinks)
            self._sinks = [s for s in self._sinks if s is not sink]
            _count_sinks(len(self._sinks) - before)

    def add_section(self, name: str, provider: SectionProvider) -> None:
        """Register ``provider() -> JSON-able data`` to appear as ``snapshot.sections[name]``."""
        with self._lock:
            self._sections[name] = provider

    def remove_section(self, name: str) -> None:
        """Forget a section provider (its data is no longer in later snapshots)."""
        with self._lock:
            self._sections.pop(name, None)

    # ---- recording ----
    def count(self, kind: str, n: int = 1) -> None:
        """Count ``n`` events of ``kind`` that a producer sampled out (not kept as objects): the
        counts stay exact, and snapshots show them as dropped. Never raises."""
        try:
            with self._lock:
                self._counts[kind] = self._counts.get(kind, 0) + n
        except Exception:  # observation must never break the program
            _log.exception("conctools: failed to count %s", kind)

    def record(self, event: Event) -> None:
        """Record one event. Never raises."""
        try:
            kind = event.kind
            with self._lock:
                store = self._stores.get(kind)
                if store is not None:
                    store.add(event)
                elif kind in self.kind_caps and kind != "span":  # (spans are capped in their chunks)
                    store = self._stores[kind] = make_store(kind, self.kind_caps[kind])
                    store.add(event)
                else:
                    self._ring.append(event)
                self._counts[kind] = self._counts.get(kind, 0) + 1
            if self._sinks:
                self._emit(event)
        except Exception:  # observation must never break the program
            _log.exception("conctools: failed to record %s", type(event).__name__)

    def record_span(
        self,
        name: str,
        span_id: int,
        parent_id: int | None,
        start_ns: int,
        end_ns: int,
        outcome: str,
        exc_type: str | None,
        task_name: str | None,
        args: str | None = None,
    ) -> None:
        """Record one finished span: the ``@traced`` hot path (no lock, no event object)."""
        try:
            shard = self._local.shard
        except AttributeError:
            shard = self._new_shard()
        chunk = shard.chunk
        chunk.append((start_ns, end_ns, name, span_id, parent_id, outcome, exc_type, task_name, args))
        if len(chunk) >= SPAN_CHUNK or self._sinks:
            self._after_span(shard)

    def _after_span(self, shard: _SpanShard) -> None:
        """The rare part of recording a span: seal a full chunk, feed the sinks.

        ``tracing`` inlines the common part of :meth:`record_span` (its success path cannot
        afford a second Python-level call) and calls this when the chunk is full or sinks exist.
        """
        chunk = shard.chunk
        last = chunk[-1]
        if len(chunk) >= SPAN_CHUNK:
            self._seal(shard)
        if self._sinks:
            self._emit(self._materialize(shard.thread, last))

    def _new_shard(self) -> _SpanShard:
        shard = _SpanShard(threading.current_thread())
        self._local.shard = shard
        with self._lock:
            self._shards.append(shard)
            if len(self._shards) > 256:
                self._retire_dead_shards()
        return shard

    def _seal(self, shard: _SpanShard) -> None:
        """Move a full chunk into the ring of chunks (called by the shard's own thread)."""
        chunk, shard.chunk = shard.chunk, _new_chunk()
        with self._lock:
            self._push_chunk(shard.thread, chunk)

    def _push_chunk(self, thread: threading.Thread, chunk: list[tuple[Any, ...]]) -> None:
        """Append a sealed chunk; fold the oldest ones out past the span window, keeping the slowest
        span of each name among them (caller holds the lock). Once per chunk: O(1) per span."""
        if not chunk:
            return
        self._chunks.append((thread, chunk))
        self._kept += len(chunk)
        while self._kept - len(self._chunks[0][1]) >= self._span_window:
            owner, old = self._chunks.popleft()
            self._kept -= len(old)
            beaten: list[tuple[str, int]] = []
            _fold(self._folded, old, self._folded_hist, beaten)
            if len(self._folded) > self.span_names_max:
                self._sum_names_over_cap()
            slowest = self._slowest
            for name, row in beaten:  # rare after warm-up: a new name, or a new longest span of one
                if name in slowest or len(slowest) < self._slowest_names:
                    slowest[name] = (owner, old[row])

    def _sum_names_over_cap(self) -> None:
        """Sum the aggregates of the names folded last, past ``span_names_max``, under
        :data:`OTHER_SPAN_NAMES` (caller holds the lock): the first names keep theirs."""
        folded, hists = self._folded, self._folded_hist
        over = [name for name in itertools.islice(folded, self.span_names_max, None) if name != OTHER_SPAN_NAMES]
        other = folded.get(OTHER_SPAN_NAMES)
        if other is None:
            other = folded[OTHER_SPAN_NAMES] = [0, 0, 0, 0, 0]
        other_hist = hists.setdefault(OTHER_SPAN_NAMES, {})
        for name in over:
            count, errors, cancelled, total_ns, max_ns = folded.pop(name)
            other[0] += count
            other[1] += errors
            other[2] += cancelled
            other[3] += total_ns
            other[4] = max(other[4], max_ns)
            for bucket, n in hists.pop(name, {}).items():
                other_hist[bucket] = other_hist.get(bucket, 0) + n
            self._slowest.pop(name, None)

    def _retire_dead_shards(self) -> None:
        """Seal the chunks of finished threads and forget their shards (caller holds the lock)."""
        alive = []
        for shard in self._shards:
            if shard.thread.is_alive():
                alive.append(shard)
            else:
                chunk, shard.chunk = shard.chunk, _new_chunk()
                self._push_chunk(shard.thread, chunk)
        self._shards = alive

    def _emit(self, event: Event) -> None:
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:
                _log.exception("conctools: sink %r raised; removing it", sink)
                self.remove_sink(sink)

    # ---- reading ----
    @staticmethod
    def _materialize(thread: threading.Thread, raw: tuple[Any, ...]) -> SpanEvent:
        start_ns, end_ns, name, span_id, parent_id, outcome, exc_type, task_name, args = raw
        return SpanEvent(
            ts_ns=start_ns,
            thread_id=thread.ident or 0,
            thread_name=thread.name,
            task_name=task_name,
            name=name,
            span_id=span_id,
            parent_id=parent_id,
            duration_s=(end_ns - start_ns) / 1e9,
            outcome=outcome,
            exc_type=exc_type,
            args=args,
        )

    def _span_chunks(self) -> list[tuple[threading.Thread, list[tuple[Any, ...]]]]:
        """Every kept chunk of raw spans: sealed ones and live threads' current ones (copies)."""
        with self._lock:
            self._retire_dead_shards()
            chunks = list(self._chunks)
            live = [(shard.thread, shard.chunk[:]) for shard in self._shards]
        return chunks + [c for c in live if c[1]]

    def span_stats(self) -> tuple[SpanStats, ...]:
        """Aggregates per span name, slowest total first.

        Counts, errors, totals, maxima and percentiles cover every span ever recorded. Percentiles
        are exact over the spans still kept (the latest ones: every span of most runs); a span
        folded away counts in its name's histogram, at its bucket's upper bound (at most 12.5%
        above it, never above the longest one).
        """
        with self._lock:
            merged = {name: list(agg) for name, agg in self._folded.items()}
            hists = {name: dict(hist) for name, hist in self._folded_hist.items()}
        folded_max = {name: agg[4] for name, agg in merged.items()}
        window: dict[str, list[int]] = {}
        for _thread_obj, chunk in self._span_chunks():
            _fold(merged, chunk)
            for start_ns, end_ns, name, *_rest in chunk:
                window.setdefault(name, []).append(end_ns - start_ns)
        out = []
        for name, (count, errors, cancelled, total_ns, max_ns) in merged.items():
            recent = sorted(window.get(name, ()))
            hist = hists.get(name, {})
            fmax = folded_max.get(name, 0)
            p50, p95, p99 = (_merged_percentile(recent, hist, fmax, q) for q in (0.50, 0.95, 0.99))
            out.append(
                SpanStats(
                    name=name,
                    count=count,
                    errors=errors,
                    cancelled=cancelled,
                    total_s=total_ns / 1e9,
                    max_s=max_ns / 1e9,
                    p50_s=p50 / 1e9,
                    p95_s=p95 / 1e9,
                    p99_s=p99 / 1e9,
                )
            )
        out.sort(key=lambda s: (-s.total_s, s.name))
        return tuple(out)

    def events(self) -> list[Event]:
        """The kept events (spans materialised), oldest first: at most ``capacity``, the most recent
        ones and the slowest span of each name among those folded away."""
        _run_before_read()
        events = self._kept_events()
        for thread, chunk in self._span_chunks():
            events.extend(self._materialize(thread, raw) for raw in chunk)
        with self._lock:
            slowest = list(self._slowest.values())
        events.sort(key=lambda e: e.ts_ns)
        room = self.capacity - len(slowest)  # at least 3/4 of it: at most capacity // 4 names
        if len(events) > room:
            events = events[len(events) - room :]
        if slowest:
            events += [self._materialize(thread, raw) for thread, raw in slowest]
            events.sort(key=lambda e: e.ts_ns)
        return events

    def _kept_events(self) -> list[Event]:
        """The ring's events and the per-kind stores' (spans left out), in no particular order."""
        with self._lock:
            events: list[Event] = list(self._ring)
            for store in self._stores.values():
                events += store.events()
        return events

    def counts(self) -> dict[str, int]:
        """Exact number of events recorded per kind (including evicted ones)."""
        _run_before_read()
        with self._lock:
            counts = dict(self._counts)
        spans = sum(s.count for s in self.span_stats())
        if spans:
            counts["span"] = spans
        return counts

    def snapshot(self) -> Snapshot:
        """A consistent-enough copy of everything recorded, for reporters."""
        events = tuple(self.events())
        with self._lock:
            providers = dict(self._sections)
            counts = dict(self._counts)
        spans = self.span_stats()
        span_count = sum(s.count for s in spans)
        if span_count:
            counts["span"] = span_count
        sections: dict[str, Any] = {}
        for name, provider in providers.items():
            try:
                sections[name] = provider()
            except Exception:
                _log.exception("conctools: section provider %r raised; skipping it", name)
        total = sum(counts.values())
        return Snapshot(
            started_ns=self.started_ns,
            started_wall=self.started_wall,
            taken_ns=time.monotonic_ns(),
            events=events,
            counts=counts,
            dropped=max(0, total - len(events)),
            spans=spans,
            sections=sections,
            meta=dict(self.meta),
        )

    def reset_after_fork(self) -> None:
        """In a forked child: become this process's own, empty recorder (sinks and sections stay).

        The child inherits its parent's events and a lock that a parent thread may have held at
        the fork (that thread does not exist in the child): both are replaced, never waited on.
        """
        self._lock = _thread.allocate_lock()
        self._ring = deque(maxlen=self.capacity)
        self._stores = {}
        self._counts = {}
        self._local = threading.local()
        self._shards = []
        self._chunks = deque()
        self._kept = 0
        self._folded = {}
        self._folded_hist = {}
        self._slowest = {}
        self.started_ns = time.monotonic_ns()
        self.started_wall = time.time()
        self.meta = {"pid": os.getpid(), "python": sys.version.split()[0]}

    def clear(self) -> None:
        """Forget every event and aggregate (sinks and sections stay).

        Spans a thread is recording at this very moment may survive the clear.
        """
        with self._lock:
            self._ring.clear()
            self._stores.clear()
            self._counts.clear()
            self._chunks.clear()
            self._kept = 0
            self._folded.clear()
            self._folded_hist.clear()
            self._slowest.clear()
            for shard in self._shards:
                shard.chunk.clear()
            self.started_ns = time.monotonic_ns()
            self.started_wall = time.time()

    # ---- cheap reads for exporters that poll (``/metrics``): no snapshot, no span fold ----
    def read_section(self, name: str) -> Any:
        """The data of section ``name`` now; ``None`` when none is registered or its provider raises."""
        with self._lock:
            provider = self._sections.get(name)
        if provider is None:
            return None
        try:
            return provider()
        except Exception:
            _log.exception("conctools: section provider %r raised; skipping it", name)
            return None

    def event_counts(self) -> dict[str, int]:
        """Exact counts of the events recorded per kind, spans left out (:meth:`counts` folds those)."""
        with self._lock:
            return dict(self._counts)

    def recent_events(self, kinds: Collection[str], limit: int = 100) -> list[Event]:
        """The latest ``limit`` kept events of each kind in ``kinds`` (spans are not among them),
        oldest first: what ``conctools dump`` reads, without materialising every span."""
        kept = self._kept_events()
        kept.sort(key=lambda e: e.ts_ns)
        per_kind: dict[str, int] = {}
        out: list[Event] = []
        for event in reversed(kept):
            if event.kind in kinds and per_kind.get(event.kind, 0) < limit:
                per_kind[event.kind] = per_kind.get(event.kind, 0) + 1
                out.append(event)
        out.reverse()
        return out


# Producers that record some events later than they happen (the traced locks record a wait's
# statistics and event outside the program's critical sections): readers let them catch up first.
_before_read: list[Callable[[], None]] = []


def _run_before_read() -> None:
    for flush in list(_before_read):
        try:
            flush()
        except Exception:  # observation must never break the program
            _log.exception("conctools: flushing %r before a read failed", flush)


_default = Recorder()
_current: list[Recorder] = [_default]


def get_recorder() -> Recorder:
    """The recorder that producers write to (a process-wide default unless replaced)."""
    return _current[0]


def set_recorder(recorder: Recorder) -> Recorder:
    """Make ``recorder`` the current one; returns the previous one."""
    previous = _current[0]
    _current[0] = recorder
    return previous


@contextmanager
def use_recorder(recorder: Recorder | None = None) -> Iterator[Recorder]:
    """Record into ``recorder`` (a fresh one by default) inside the block.

    >>> with use_recorder() as rec:
    ...     pass
    >>> rec.snapshot().counts
    {}
    """
    rec = recorder if recorder is not None else Recorder()
    previous = set_recorder(rec)
    try:
        yield rec
    finally:
        set_recorder(previous)
