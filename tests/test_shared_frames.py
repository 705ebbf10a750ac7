"""Stacks of a long run share their frames: memory does not grow with every event at a known site.

A server under load records the same sites over and over (its slow callbacks, the holders of an
exhausted pool): before, every event's stack had Frames of its own, each with its own copy of the
source line, and the sample server's memory grew by ~2.7 MiB a minute under Locust.
"""

from __future__ import annotations

import asyncio
import sys
import time

from conctools import events
from conctools._context import frames_of
from conctools.events import Frame, SlowCallbackEvent, frame_at
from conctools.loopmon import watch_loop
from conctools.recorder import Recorder


def _here() -> tuple[Frame, ...]:
    return frames_of(sys._getframe(0), limit=3)


def _block() -> None:
    time.sleep(0.15)  # the blocking line


def test_the_same_site_is_the_same_frame() -> None:
    first, again = _here(), _here()
    assert first[0] is again[0]
    assert first[0].function == "_here" and first[0].line == "return frames_of(sys._getframe(0), limit=3)"
    assert frame_at(__file__, first[0].lineno, "_here") is first[0]
    other = frame_at(__file__, first[0].lineno + 1, "_here")
    assert other is not first[0] and other.lineno == first[0].lineno + 1


def test_the_table_is_bounded(monkeypatch: object) -> None:
    saved = dict(events._SHARED)
    try:
        events._SHARED.clear()
        for n in range(events._SHARED_MAX + 10):
            frame_at("/nowhere/x.py", n + 1, "f")
        assert len(events._SHARED) <= events._SHARED_MAX
        assert frame_at("/nowhere/x.py", 3, "f").lineno == 3  # started over, still right
    finally:
        events._SHARED.clear()
        events._SHARED.update(saved)


def test_slow_callbacks_at_one_line_share_their_frames(recorder: Recorder) -> None:
    """Two stalls at the same line: two events, one set of Frame objects between them."""

    async def main() -> None:
        async with watch_loop(threshold_s=0.1):
            loop = asyncio.get_running_loop()
            for _ in range(2):
                loop.call_soon(_block)
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)

    asyncio.run(main())
    stalls = [e for e in recorder.snapshot().events if isinstance(e, SlowCallbackEvent)]
    assert len(stalls) == 2
    (a, b) = stalls
    assert a.culprit is not None and a.culprit is b.culprit
    assert a.culprit.function == "_block" and a.culprit.line == "time.sleep(0.15)  # the blocking line"
    first, second = a.samples[0], b.samples[0]
    assert [f.site for f in first] == [f.site for f in second]
    assert all(x is y for x, y in zip(first, second, strict=True))
