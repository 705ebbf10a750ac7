"""What conctools' recorder found so far in the process, as a small report snapshot: the
deadlocks, hangs, lock-order inversions, stalls, blocking calls and exhausted pools it kept, and
its tables (locks, stalls and loop lag, pools, resources, the GIL when its monitor runs).

A :class:`~conctools.recorder.Snapshot` without the spans: the text reporters render it as they
render a run's report, in the same words, and reading it costs no span materialisation.
"""

from __future__ import annotations

import time
from typing import Any

from conctools.recorder import Recorder, Snapshot

__all__ = ["KINDS", "SECTIONS", "so_far"]

KINDS = frozenset({"deadlock", "hang", "lock_order", "slow_callback", "blocking_call", "pool_exhausted"})
SECTIONS = ("locks", "slow_callbacks", "pools", "resources", "gil")
_PER_KIND = 20  # the latest events kept of each kind


def so_far(recorder: Recorder) -> dict[str, Any]:
    """The snapshot as JSON (schema ``conctools.report/1``)."""
    sections = {}
    for name in SECTIONS:
        data = recorder.read_section(name)
        if data is not None:
            sections[name] = data
    counts = recorder.event_counts()
    events = tuple(recorder.recent_events(KINDS, _PER_KIND))
    snapshot = Snapshot(
        started_ns=recorder.started_ns,
        started_wall=recorder.started_wall,
        taken_ns=time.monotonic_ns(),
        events=events,
        counts=counts,
        dropped=max(0, sum(n for kind, n in counts.items() if kind in KINDS) - len(events)),
        spans=(),
        sections=sections,
        meta=dict(recorder.meta),
    )
    return snapshot.to_dict()
