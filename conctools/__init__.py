"""conctools: find and explain concurrency problems in Python programs.

>>> import conctools
>>> @conctools.traced
... def work():
...     return 1
>>> work()
1
"""

from __future__ import annotations

from conctools.events import Event, Frame, SpanEvent
from conctools.recorder import Recorder, Snapshot, SpanStats, get_recorder, set_recorder, use_recorder
from conctools.tracing import ActiveSpan, ContextFilter, Traced, current_span, traced

__version__ = "0.1.0"

__all__ = [
    "ActiveSpan",
    "ContextFilter",
    "Event",
    "Frame",
    "Recorder",
    "Snapshot",
    "SpanEvent",
    "SpanStats",
    "Traced",
    "__version__",
    "current_span",
    "get_recorder",
    "set_recorder",
    "traced",
    "use_recorder",
]
