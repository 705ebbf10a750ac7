"""Which frames and profiled functions are conctools' own, so that what a user reads hides them.

conctools runs a program inside its own frames (the ``conctools`` console script, ``runner.py``,
``runpy``) and wraps the program's functions (``@traced``, the loop monitor's patches). Those
frames say nothing about the program: stacks, tracebacks and profiles leave them out and say
how many they left out. The bundled sample server is a user program, never hidden.
"""

from __future__ import annotations

import os
import runpy
from collections.abc import Sequence

from conctools._context import is_conctools_frame
from conctools.events import Frame

__all__ = ["hidden_note", "hide_own_frames", "is_own_file"]

_RUNPY = frozenset({os.path.abspath(runpy.__file__), "<frozen runpy>"})
_LAUNCHERS = frozenset({"conctools", "conctools.exe", "conctools-script.py"})


def is_own_file(filename: str) -> bool:
    """True for conctools' code (not the sample server), ``runpy`` and the ``conctools`` console script."""
    return is_conctools_frame(filename) or filename in _RUNPY or os.path.basename(filename) in _LAUNCHERS


def hide_own_frames(stack: Sequence[Frame]) -> tuple[list[Frame], int]:
    """``stack`` without conctools' frames, and how many were left out."""
    shown = [f for f in stack if not is_own_file(f.filename)]
    return shown, len(stack) - len(shown)


def hidden_note(count: int, what: str = "frame") -> str:
    """``(2 conctools frames not shown)``, or ``""`` for none."""
    if not count:
        return ""
    return f"({count} conctools {what}{'' if count == 1 else 's'} not shown)"
