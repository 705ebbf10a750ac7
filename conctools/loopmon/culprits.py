"""Culprits: which line of a loop thread's stack to blame, and who runs on the loop now."""

from __future__ import annotations

import asyncio
import os
import sysconfig
from collections import Counter
from typing import Any

from conctools._context import (
    user_frame,
)
from conctools.events import Frame

__all__ = ["callback_frames", "culprit_of"]

_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep
_PATHS = sysconfig.get_paths()
_LIB_DIRS = tuple({os.path.join(_PATHS[k], "") for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in _PATHS})
_STDLIB_DIRS = tuple({os.path.join(_PATHS[k], "") for k in ("stdlib", "platstdlib") if k in _PATHS})

_LOOP_FUNCTIONS = frozenset({"_run", "_run_once", "run_forever", "run_until_complete", "run"})


def callback_frames(stack: tuple[Frame, ...]) -> tuple[Frame, ...]:
    """The part of a loop thread's stack (innermost first) inside the running callback: the
    frames up to the loop's own (``Handle._run``, ``_run_once``, ``run_forever``...)."""
    for i, f in enumerate(stack):
        if f.function in _LOOP_FUNCTIONS and (f.filename.startswith(_ASYNCIO_DIR) or "uvloop" in f.filename):
            return stack[:i]
    return stack


def culprit_of(stack: tuple[Frame, ...]) -> Frame | None:
    """The line to look at in a loop thread's stack (innermost first): inside the running
    callback, the innermost frame of the program's own code, else of third-party code, else
    of anything outside asyncio and conctools; ``None`` when the callback has no Python frame
    (a builtin such as ``time.sleep`` scheduled directly)."""
    stack = callback_frames(stack)
    if not stack:
        return None
    for f in stack:
        if not f.filename.startswith(_LIB_DIRS) and not f.filename.startswith("<"):
            return f
    for f in stack:
        if not f.filename.startswith(_STDLIB_DIRS) and not f.filename.startswith("<"):
            return f
    return user_frame(stack)


def _pick_culprit(samples: list[tuple[Frame, ...]]) -> tuple[Frame | None, tuple[Frame, ...]]:
    """The most frequent culprit site across the samples, and the first sample showing it."""
    culprits = [culprit_of(s) for s in samples]
    sites = Counter(c.site for c in culprits if c is not None)
    if not sites:
        return None, samples[0] if samples else ()
    best = max(sites.items(), key=lambda kv: kv[1])[0]
    for c, s in zip(culprits, samples, strict=True):
        if c is not None and c.site == best:
            return c, s
    return None, ()


def _current_task(loop: asyncio.AbstractEventLoop) -> Any:
    try:
        return asyncio.current_task(loop)
    except Exception:
        return None


def _task_name(task: Any) -> str | None:
    try:
        return str(task.get_name())
    except Exception:
        return None
