"""The processes of a run, for every reporter: the ``processes`` section read back.

A run that followed child processes keeps, in ``snapshot.sections["processes"]``, one entry per
process (the main one first), each child with its own whole report. :func:`processes_of`
returns them as :class:`ProcessView` records, the child's report loaded as a
:class:`~conctools.recorder.Snapshot`, and :func:`offset_ns` lines a child's clock up with the
main report's (the same monotonic clock on one machine, the wall clock across machines).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from conctools.events import DeadlockEvent, Event, Frame, HangEvent
from conctools.recorder import Snapshot

__all__ = ["ProcessView", "label_of", "offset_ns", "processes_of"]

SECTION = "processes"


@dataclass(frozen=True, slots=True)
class ProcessView:
    """One process of a run: its entry in the section, and its report (``None`` for the main one)."""

    entry: dict[str, Any]
    snapshot: Snapshot | None

    @property
    def pid(self) -> int:
        return int(self.entry.get("pid") or 0)

    @property
    def name(self) -> str:
        return str(self.entry.get("name") or "?")

    @property
    def is_main(self) -> bool:
        return self.entry.get("state") == "main"


def processes_of(snapshot: Snapshot) -> list[ProcessView]:
    """Every process of the run (main first); an empty list when no child was followed.

    A child whose report cannot be read is still listed, with ``snapshot`` ``None``.
    """
    section = snapshot.sections.get(SECTION)
    if not isinstance(section, dict):
        return []
    entries = section.get("processes")
    if not isinstance(entries, list) or len(entries) < 2:
        return []
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        child: Snapshot | None = None
        report = entry.get("report")
        if isinstance(report, dict):
            try:
                child = Snapshot.from_dict(report)
            except ValueError:
                child = None
        if child is not None and str(entry.get("start_method")) in _FORKED:
            child = _without_inherited_frames(child)
        out.append(ProcessView(entry=entry, snapshot=child))
    return out


_FORKED = frozenset({"fork", "forkserver", "os.fork"})
_LAUNCH = os.path.join("multiprocessing", "popen_fork.py")


def _trim(stack: tuple[Frame, ...]) -> tuple[Frame, ...]:
    """A forked child's stack without the frames it inherited from its parent (below
    ``multiprocessing``'s ``_launch``, where the child began: it never returns to them)."""
    for i, f in enumerate(stack):
        if f.function == "_launch" and f.filename.endswith(_LAUNCH):
            return stack[:i]
    return stack


def _without_inherited_frames(snapshot: Snapshot) -> Snapshot:
    events: list[Event] = []
    for e in snapshot.events:
        if isinstance(e, DeadlockEvent):
            e = dataclasses.replace(
                e, participants=tuple(dataclasses.replace(p, stack=_trim(p.stack)) for p in e.participants)
            )
        elif isinstance(e, HangEvent):
            e = dataclasses.replace(e, waiters=tuple(dataclasses.replace(w, stack=_trim(w.stack)) for w in e.waiters))
        events.append(e)
    return dataclasses.replace(snapshot, events=tuple(events))


def label_of(entry: dict[str, Any]) -> str:
    """``process 4243 'ForkPoolWorker-1'``."""
    return f"process {entry.get('pid')} {str(entry.get('name') or '?')!r}"


def offset_ns(main: Snapshot, child: Snapshot, entry: dict[str, Any], main_host: Any = None) -> int:
    """What to add to a child's ``ts_ns`` to put it on the main report's clock."""
    same_host = main_host is None or entry.get("host") in (None, main_host)
    if same_host and entry.get("source") is None:
        return 0  # one machine, one run: both use the same monotonic clock
    wall_delta_ns = int((child.started_wall - main.started_wall) * 1e9)
    return wall_delta_ns - (child.started_ns - main.started_ns)
