"""conctools: find and explain concurrency problems in Python programs.

>>> import conctools
>>> @conctools.traced
... def work():
...     return 1
>>> work()
1
"""

from __future__ import annotations

from conctools import _lazy, _typing
from conctools.events import Frame, SpanEvent
from conctools.recorder import Recorder, Snapshot, SpanStats, get_recorder, set_recorder, use_recorder

if _typing.TYPE_CHECKING:
    from conctools import aio
    from conctools.agent import enable_dump
    from conctools.deadlock import DeadlockError, DeadlockWatchdog, HangError, watch_deadlocks
    from conctools.gil import GilMonitor, watch_gil
    from conctools.locks import Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore, trace_locks
    from conctools.loopmon import LoopMonitor, monitor_all_loops, watch_loop
    from conctools.pools import name_pool, track_pools
    from conctools.profiling import Profile, ProfileError, profile
    from conctools.reporting.summary import report
    from conctools.resources import ResourceSampler, sample_resources
    from conctools.taskdump import TaskInfo, dump_tasks
    from conctools.tracing import ActiveSpan, ContextFilter, Traced, current_span, traced

# Imported on first use (PEP 562): `import conctools` stays cheap, which matters because the
# pytest plugin imports it in every pytest run, even when the plugin is switched off.
_LAZY = {
    # tracing imports logging: a followed child that never traces a function does without both.
    **dict.fromkeys(("ActiveSpan", "ContextFilter", "Traced", "current_span", "traced"), "conctools.tracing"),
    "aio": "conctools.aio",
    "enable_dump": "conctools.agent",
    **dict.fromkeys(("DeadlockError", "DeadlockWatchdog", "HangError", "watch_deadlocks"), "conctools.deadlock"),
    **dict.fromkeys(("GilMonitor", "watch_gil"), "conctools.gil"),
    **dict.fromkeys(
        ("Barrier", "BoundedSemaphore", "Condition", "Event", "Lock", "RLock", "Semaphore", "trace_locks"),
        "conctools.locks",
    ),
    **dict.fromkeys(("LoopMonitor", "monitor_all_loops", "watch_loop"), "conctools.loopmon"),
    **dict.fromkeys(("name_pool", "track_pools"), "conctools.pools"),
    **dict.fromkeys(("Profile", "ProfileError", "profile"), "conctools.profiling"),
    **dict.fromkeys(("ResourceSampler", "sample_resources"), "conctools.resources"),
    "report": "conctools.reporting.summary",
    **dict.fromkeys(("TaskInfo", "dump_tasks"), "conctools.taskdump"),
}


def __getattr__(name: str) -> _typing.Any:
    return _lazy.load(__name__, globals(), _LAZY, name)


def __dir__() -> list[str]:
    return _lazy.names(globals(), _LAZY)


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
    "GilMonitor",
    "HangError",
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
    "enable_dump",
    "get_recorder",
    "monitor_all_loops",
    "name_pool",
    "profile",
    "report",
    "sample_resources",
    "set_recorder",
    "trace_locks",
    "traced",
    "track_pools",
    "use_recorder",
    "watch_deadlocks",
    "watch_gil",
    "watch_loop",
]
