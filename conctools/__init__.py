"""conctools: find and explain concurrency problems in Python programs.

>>> import conctools
>>> @conctools.traced
... def work():
...     return 1
>>> work()
1
"""

from __future__ import annotations

from conctools.deadlock import DeadlockError, DeadlockWatchdog, watch_deadlocks
from conctools.events import Event, Frame, SpanEvent
from conctools.profiling import Profile, ProfileError, profile
from conctools.recorder import Recorder, Snapshot, SpanStats, get_recorder, set_recorder, use_recorder
from conctools.resources import ResourceSampler, sample_resources
from conctools.tracing import ActiveSpan, ContextFilter, Traced, current_span, traced

__version__ = "0.1.0"

__all__ = [
    "ActiveSpan",
    "ContextFilter",
    "DeadlockError",
    "DeadlockWatchdog",
    "Event",
    "Frame",
    "Profile",
    "ProfileError",
    "Recorder",
    "ResourceSampler",
    "Snapshot",
    "SpanEvent",
    "SpanStats",
    "Traced",
    "__version__",
    "current_span",
    "get_recorder",
    "profile",
    "sample_resources",
    "set_recorder",
    "traced",
    "use_recorder",
    "watch_deadlocks",
]
