"""An event loop's health now, as its loop monitor knows it: how late its heartbeat is (the lag
now), whether it is stalled, and on which line.

Read from the monitor's heartbeat stamps (plain attributes its loop writes; no lock): a loop no
monitor watches (a program that called ``enable_dump()`` without ``watch_loop``) has no figures,
and says so, rather than a guess.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from conctools._context import current_frames, frames_of
from conctools._imports import later
from conctools.agent.threads import frame_row

if TYPE_CHECKING:
    import asyncio
else:  # asyncio itself once the program imports it; imported by the first use before (never at start-up)
    asyncio = later("asyncio", globals())

__all__ = ["loop_health"]


def _monitor_of(loop: asyncio.AbstractEventLoop) -> Any:
    monitors = sys.modules.get("conctools.loopmon.monitor")  # never imported here: no monitor, no figures
    active = getattr(monitors, "_active", None)
    if not isinstance(active, dict):
        return None
    monitor = active.get(id(loop))
    return monitor if getattr(monitor, "loop", None) is loop else None


def loop_health(loop: asyncio.AbstractEventLoop, thread_id: int | None, now_ns: int) -> dict[str, Any]:
    """``monitored``, ``threshold_s``, ``lag_now_s`` (how late the heartbeat is now), ``stalled_s``
    (that lag, when it passed the threshold) and ``stall_at`` (the culprit frame of the stall)."""
    out: dict[str, Any] = {"monitored": False, "threshold_s": None, "lag_now_s": None, "stalled_s": None}
    out["stall_at"] = None
    monitor = _monitor_of(loop)
    if monitor is None:
        return out
    out["monitored"] = True
    threshold_s = float(getattr(monitor, "threshold_s", 0.0) or 0.0)
    out["threshold_s"] = threshold_s
    due_ns = getattr(monitor, "_due_ns", 0)
    if not getattr(monitor, "_beats", 0) or not isinstance(due_ns, int) or not due_ns:
        return out
    lag_s = max(0.0, (now_ns - due_ns) / 1e9)
    out["lag_now_s"] = lag_s
    if lag_s >= threshold_s > 0 and thread_id is not None:
        from conctools.loopmon import culprit_of

        out["stalled_s"] = lag_s
        frame = current_frames().get(thread_id)
        culprit = culprit_of(frames_of(frame)) if frame is not None else None
        if culprit is not None:
            out["stall_at"] = frame_row(culprit)
    return out
