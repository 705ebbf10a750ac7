"""conctools: find and explain concurrency problems in Python programs.

>>> import conctools
>>> @conctools.traced
... def work():
...     return 1
>>> work()
1
"""

from __future__ import annotations

from conctools import aio
from conctools.deadlock import DeadlockError, DeadlockWatchdog, watch_deadlocks
from conctools.events import Frame, SpanEvent
from conctools.locks import Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore, trace_locks
from conctools.loopmon import LoopMonitor, monitor_all_loops, watch_loop
from conctools.profiling import Profile, ProfileError, profile
from conctools.recorder import Recorder, Snapshot, SpanStats, get_recorder, set_recorder, use_recorder
from conctools.resources import ResourceSampler, sample_resources
from conctools.taskdump import TaskInfo, dump_tasks
from conctools.tracing import ActiveSpan, ContextFilter, Traced, current_span, traced

__version__ = "0.1.0"

__all__ = [
    "ActiveSpan",
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "ContextFilter",
    "DeadlockError",
    "DeadlockWatchdog",
    "Event",
    "Frame",
    "Lock",
    "LoopMonitor",
    "Profile",
    "ProfileError",
    "RLock",
    "Recorder",
    "ResourceSampler",
    "Semaphore",
    "Snapshot",
    "SpanEvent",
    "SpanStats",
    "TaskInfo",
    "Traced",
    "__version__",
    "aio",
    "current_span",
    "dump_tasks",
    "get_recorder",
    "monitor_all_loops",
    "profile",
    "sample_resources",
    "set_recorder",
    "trace_locks",
    "traced",
    "use_recorder",
    "watch_deadlocks",
    "watch_loop",
]
