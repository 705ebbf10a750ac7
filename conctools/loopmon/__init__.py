"""The event-loop monitor: which callback blocked the loop, for how long, and on which line.

How a stall is found, cheaply: each watched loop runs a heartbeat, a ``call_later`` timer
every ``probe_interval_s`` (20 ms by default) that notes when it ran; how late it runs is the
loop's lag (its scheduling delay). A watchdog thread (``conctools-loopmon``) sleeps until
``threshold_s`` after the last heartbeat; if no newer one ran by then, the loop is stuck
inside a callback, so the watchdog samples the loop thread's stack (``sys._current_frames()``)
right then, and again every ``sample_interval_s`` (min(threshold/4, 10 ms)) while the stall
lasts, noting each time which task or callback runs. When the next heartbeat runs, the stall is
over; it is cut into segments, one per task or callback (and culprit line) that ran during it
(:mod:`conctools.loopmon.segments`), and each segment is one
:class:`~conctools.events.SlowCallbackEvent` with its own name, duration, samples and culprit:
the innermost frame of user code, e.g. the ``time.sleep`` line or the line of a CPU loop in a
plain function. On asyncio's own loops the
stall's start is read from the running ``_run_once`` frame (when its batch of callbacks
began), so the duration is exact and the stall is confirmed exactly ``threshold_s`` after it
began; on other loops (uvloop) it is timed from the last heartbeat, within one interval.

Nothing wraps the loop's handles or its selector: the loop runs unmodified. The cost is one
timer handle per interval on the loop and about one wake-up of the watchdog per threshold
(measured against a cross-thread probe and a ``select()`` hook in
``benchmarks/bench_loopmon.py``). Segments are grouped by culprit site (count, total, max, p99)
in the recorder section ``"slow_callbacks"``, together with the loop-lag distribution and,
when asked for, the blocking calls seen on loop threads.

Three ways in::

    async with conctools.watch_loop(threshold_s=0.1):   # inside a running loop
        ...
    monitor = LoopMonitor(loop, threshold_s=0.1); monitor.start(); ...; monitor.stop()
    with monitor_all_loops(threshold_s=0.1): ...         # every loop that starts (conctools run)
"""

from __future__ import annotations

from conctools import _lazy
from conctools._typing import TYPE_CHECKING, Any
from conctools.loopmon.hooks import _original_set_running_loop as _original_set_running_loop
from conctools.loopmon.hooks import monitor_all_loops

if TYPE_CHECKING:
    from conctools.loopmon.blocking import patched_names
    from conctools.loopmon.culprits import callback_frames, culprit_of
    from conctools.loopmon.monitor import LoopMonitor, watch_loop
    from conctools.loopmon.stats import StallStats, stats_for

# Imported on first use (PEP 562): ``conctools run`` hooks every loop's start at once, and imports
# the monitor itself when the program's first loop starts (issue 12's start-up target).
_LAZY = {
    "patched_names": "conctools.loopmon.blocking",
    **dict.fromkeys(("callback_frames", "culprit_of"), "conctools.loopmon.culprits"),
    **dict.fromkeys(("LoopMonitor", "watch_loop"), "conctools.loopmon.monitor"),
    **dict.fromkeys(("StallStats", "stats_for"), "conctools.loopmon.stats"),
}


def __getattr__(name: str) -> Any:
    return _lazy.load(__name__, globals(), _LAZY, name)


def __dir__() -> list[str]:
    return _lazy.names(globals(), _LAZY)


__all__ = [
    "LoopMonitor",
    "StallStats",
    "callback_frames",
    "culprit_of",
    "monitor_all_loops",
    "patched_names",
    "stats_for",
    "watch_loop",
]
