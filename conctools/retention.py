"""What the recorder keeps of the event kinds that recur all run long: bounded per kind.

A server under load records a few events every second for hours: GIL and resource samples,
slow callbacks, pool exhaustion episodes, lock waits. Keeping each one (up to ``--capacity``,
100,000 events) made memory grow with the run. Like JFR's and Go pprof's recordings, the
recorder keeps a bounded, representative part of each such kind, while its counters stay exact
(``Snapshot.counts``) and the producers' own sections keep their exact aggregates (the lock
table, the slow-callback sites, the pool statistics, the resource peaks):

- periodic samples (:class:`SampleSeries`: ``gil_sample``, ``resource_sample``) cover the whole
  run at a resolution that coarsens as it grows: when the series is full, neighbouring samples
  are merged pairwise (a GIL window's means weighted by its length, a resource sample's peaks
  kept) and each new point then stands for twice as many samples, as ``ResourceSampler``'s own
  series does. The timeline still spans the whole run; no sample is lost, only resolution.
- episodes (:class:`EpisodeStore`: ``slow_callback``, ``pool_exhausted``, ``blocking_call``)
  keep the first ones, the most recent ones and, of those in between, the worst
  (longest) one per site: every site that ever showed up keeps an example.
- spans of traced calls (``span``, the most frequent by far) stay in the recorder's own chunks,
  the latest ones, and of those folded away (into exact counts, totals, maxima and a duration
  histogram per name) the slowest one per name: see :class:`~conctools.recorder.Recorder`.

>>> from conctools.events import GilSampleEvent
>>> series = SampleSeries(4)
>>> for i in range(10):
...     series.add(GilSampleEvent(ts_ns=i, thread_id=1, thread_name="t", window_s=0.25,
...                               threads_wanting=1.0, threads_waiting=0.0, cores_used=1.0))
>>> [e.window_s for e in series.events()], series.stride  # 2.5 s of windows in three points
([1.0, 1.0, 0.5], 4)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping

from conctools._records import replace
from conctools._typing import Any
from conctools.events import (
    BlockingCallEvent,
    Event,
    GilSampleEvent,
    LockWaitEvent,
    PoolExhaustedEvent,
    ResourceSampleEvent,
    SlowCallbackEvent,
)

__all__ = ["DEFAULT_KIND_CAPS", "EpisodeStore", "SampleSeries", "make_store"]

# Events kept per kind at most (a cap at or above the recorder's capacity is ignored). Other kinds
# stay in the recorder's ring, bounded by its capacity: deadlocks, hangs, lock-order inversions,
# failures and marks are rare; lock waits are sampled by their producer already (the first per
# site, those above the threshold, the longest per site), and reports without the lock table (a
# hand-made snapshot) sum their kept waits. Spans of traced calls (a server makes dozens a second)
# are kept in the recorder's own chunks: the latest "span" ones and, of those folded into the exact
# aggregates and histograms, the slowest per name (see Recorder); a SpanEvent given to record()
# stays in the ring.
DEFAULT_KIND_CAPS: Mapping[str, int] = {
    "gil_sample": 512,
    "resource_sample": 512,
    "slow_callback": 256,
    "pool_exhausted": 256,
    "blocking_call": 256,
    "span": 4096,
}


# -- periodic samples --------------------------------------------------------------------


def _merge_gil(a: GilSampleEvent, na: int, b: GilSampleEvent, nb: int) -> GilSampleEvent:
    """One window covering ``a`` then ``b``: its means weighted by each window's length."""
    window = a.window_s + b.window_s
    wa, wb = (a.window_s / window, b.window_s / window) if window > 0 else (na / (na + nb), nb / (na + nb))
    return replace(
        b,
        window_s=window,
        threads_wanting=a.threads_wanting * wa + b.threads_wanting * wb,
        threads_waiting=a.threads_waiting * wa + b.threads_waiting * wb,
        cores_used=a.cores_used * wa + b.cores_used * wb,
    )


def _merge_resource(a: ResourceSampleEvent, na: int, b: ResourceSampleEvent, nb: int) -> ResourceSampleEvent:
    """One point for ``a`` then ``b``: the mean CPU, the peaks of memory, threads and fds, and the
    later cumulative counters (a rate between two points stays right)."""
    return replace(
        b,
        cpu_percent=(a.cpu_percent * na + b.cpu_percent * nb) / (na + nb),
        rss_bytes=max(a.rss_bytes, b.rss_bytes),
        num_threads=max(a.num_threads, b.num_threads),
        num_fds=max(a.num_fds, b.num_fds),
    )


_MERGES: dict[type, Callable[[Any, int, Any, int], Any]] = {
    GilSampleEvent: _merge_gil,
    ResourceSampleEvent: _merge_resource,
}


class SampleSeries:
    """At most ``cap`` points of a periodic sample kind over the whole run (not thread-safe: the
    recorder holds its lock). Each point stands for ``stride`` samples (the last one for fewer),
    merged by the kind's merge function; a kind without one is thinned (every stride-th kept)."""

    __slots__ = ("_cap", "_pending", "_points", "stride")

    def __init__(self, cap: int) -> None:
        self._cap = max(4, cap)
        self._points: list[tuple[Event, int]] = []  # (point, samples it stands for), oldest first
        self._pending: tuple[Event, int] | None = None  # the newest point, still filling up to stride
        self.stride = 1

    def __len__(self) -> int:
        return len(self._points) + (self._pending is not None)

    def add(self, event: Event) -> None:
        """Add one sample."""
        pending = self._pending
        merged = (event, 1) if pending is None else _merge(pending, (event, 1))
        if merged[1] < self.stride:
            self._pending = merged
            return
        self._pending = None
        self._points.append(merged)
        if len(self._points) >= self._cap:
            points = self._points
            halved = [_merge(points[i], points[i + 1]) for i in range(0, len(points) - 1, 2)]
            if len(points) % 2:
                halved.append(points[-1])
            self._points = halved
            self.stride *= 2

    def events(self) -> list[Event]:
        """The points, oldest first."""
        out = [e for e, _ in self._points]
        if self._pending is not None:
            out.append(self._pending[0])
        return out


def _merge(a: tuple[Event, int], b: tuple[Event, int]) -> tuple[Event, int]:
    merge = _MERGES.get(type(b[0]))
    if merge is None or type(a[0]) is not type(b[0]):
        return b[0], a[1] + b[1]  # thinned: the later sample stands for both
    return merge(a[0], a[1], b[0], b[1]), a[1] + b[1]


# -- episodes ----------------------------------------------------------------------------


def _episode_site(e: Event) -> Any:
    """Where an episode happened, for keeping the worst one per site."""
    if isinstance(e, SlowCallbackEvent):
        c = e.culprit
        return f"{c.site} in {c.function}" if c is not None else e.callback
    if isinstance(e, PoolExhaustedEvent):
        return e.pool_name
    if isinstance(e, BlockingCallEvent):
        return (e.call, e.site)
    if isinstance(e, LockWaitEvent):
        return (e.lock_name, e.site)
    return type(e).__name__


def _episode_weight(e: Event) -> float:
    """How bad an episode was: its duration (0 for a kind without one)."""
    for attr in ("duration_s", "wait_s"):
        value = getattr(e, attr, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0


class EpisodeStore:
    """At most ``cap`` events of one episodic kind (not thread-safe: the recorder holds its lock):
    the first ``cap // 4``, the latest ``cap // 2`` and, of those that left the latest, the worst
    one per site for up to ``cap // 4`` sites (a new site past that keeps none of its old ones)."""

    __slots__ = ("_first", "_first_max", "_recent", "_sites_max", "_worst")

    def __init__(self, cap: int) -> None:
        cap = max(4, cap)
        self._first_max = cap // 4
        self._sites_max = cap // 4
        self._first: list[Event] = []
        self._recent: deque[Event] = deque(maxlen=cap - 2 * (cap // 4))
        self._worst: dict[Any, Event] = {}

    def __len__(self) -> int:
        return len(self._first) + len(self._recent) + len(self._worst)

    def add(self, event: Event) -> None:
        """Add one episode."""
        if len(self._first) < self._first_max:
            self._first.append(event)
            return
        recent = self._recent
        if len(recent) == recent.maxlen:
            self._offer(recent[0])
        recent.append(event)

    def _offer(self, old: Event) -> None:
        site = _episode_site(old)
        kept = self._worst.get(site)
        if kept is None:
            if len(self._worst) < self._sites_max:
                self._worst[site] = old
        elif _episode_weight(old) > _episode_weight(kept):
            self._worst[site] = old

    def events(self) -> list[Event]:
        """The kept episodes, oldest first."""
        out = [*self._first, *self._worst.values(), *self._recent]
        out.sort(key=lambda e: e.ts_ns)
        return out


Store = SampleSeries | EpisodeStore

_SAMPLE_KINDS = frozenset({"gil_sample", "resource_sample"})


def make_store(kind: str, cap: int) -> Store:
    """The store for ``kind``: a :class:`SampleSeries` for periodic samples, else an :class:`EpisodeStore`."""
    return SampleSeries(cap) if kind in _SAMPLE_KINDS else EpisodeStore(cap)
