"""Text for what in-code APIs hand back: ``str()`` of result objects and ``conctools.report()``.

A person using conctools from code gets objects (a :class:`~conctools.loopmon.LoopMonitor`, a
:class:`~conctools.profiling.Profile`, a :class:`~conctools.resources.ResourceSampler`, the
events ``watch_deadlocks`` hands to ``on_deadlock``/``on_hang``): ``print()`` of any of them is
the matching part of the text report, and ``print(conctools.report())`` is the whole report of
the current recorder. Pure functions of recorded data, like every reporter::

    async with conctools.watch_loop(threshold_s=0.1) as monitor:
        ...
    print(monitor)                      # its slow callbacks, with the stacks
    print(conctools.report())           # everything recorded so far
"""

from __future__ import annotations

import dataclasses
from typing import Any

from conctools.events import DeadlockEvent, HangEvent, LockOrderEvent, SlowCallbackEvent
from conctools.recorder import Recorder, Snapshot, get_recorder

__all__ = ["describe", "report"]


def report(source: Recorder | Snapshot | None = None, *, brief: bool = False) -> str:
    """The text report of ``source`` (the current recorder by default), as ``conctools run`` prints it.

    >>> import conctools
    >>> with conctools.use_recorder():
    ...     conctools.traced("step")(lambda: None)()
    ...     text = conctools.report()
    >>> "step" in text
    True
    """
    from conctools.reporting.text import render_text

    if source is None:
        source = get_recorder()
    snapshot = source.snapshot() if isinstance(source, Recorder) else source
    return render_text(snapshot, brief=brief)


def _snapshot_of(events: tuple[Any, ...], sections: dict[str, Any] | None = None) -> Snapshot:
    empty = Recorder(capacity=1).snapshot()
    return dataclasses.replace(empty, events=events, sections=sections or {})


def describe(obj: Any) -> str:
    """The part of the text report that ``obj`` stands for (``str()`` of the result objects)."""
    from conctools.reporting.deadlock_text import format_deadlock, format_hang
    from conctools.reporting.locks_text import format_lock_order
    from conctools.reporting.loop_text import slow_callbacks_section
    from conctools.reporting.resources_text import resources_section

    if isinstance(obj, (Recorder, Snapshot)):
        return report(obj)
    if isinstance(obj, DeadlockEvent):
        return format_deadlock(obj)
    if isinstance(obj, HangEvent):
        return format_hang(obj)
    if isinstance(obj, LockOrderEvent):
        return format_lock_order(obj)
    if isinstance(obj, SlowCallbackEvent):
        return slow_callbacks_section(_snapshot_of((obj,)), False) or ""
    kind = type(obj).__name__
    if kind == "LoopMonitor":
        return _describe_monitor(obj)
    if kind == "ResourceSampler":
        text = resources_section(_snapshot_of((), {"resources": obj.summary()}), False)
        return text or f"Resources: {obj.count} samples"
    if kind == "Profile":
        return str(obj.top())
    return repr(obj)


def _describe_monitor(monitor: Any) -> str:
    """A loop monitor's stalls (its loop's slow callbacks and blocking calls), with their stacks."""
    from conctools.events import BlockingCallEvent
    from conctools.reporting.loop_text import slow_callbacks_section

    loop_id = id(monitor.loop) if monitor.loop is not None else None
    recorder = monitor.recorder if monitor.recorder is not None else get_recorder()
    mine = tuple(
        e
        for e in recorder.snapshot().events
        if isinstance(e, (SlowCallbackEvent, BlockingCallEvent)) and (loop_id is None or e.loop_id == loop_id)
    )
    stalls = int(monitor.stalls)
    head = (
        f"Loop monitor (threshold {monitor.threshold_s * 1000:g} ms): "
        f"{stalls} stall{'' if stalls == 1 else 's'}, {monitor.probes} heartbeat{'' if monitor.probes == 1 else 's'}"
    )
    body = slow_callbacks_section(_snapshot_of(mine), False)
    return f"{head}\n{body}" if body else head
