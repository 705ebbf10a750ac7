"""The profile section of the text report (priority 60): top functions, per thread, per task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from conctools._frames import hidden_note, is_own_file
from conctools._units import format_duration
from conctools.recorder import Snapshot
from conctools.reporting._table import table

__all__ = ["functions_table", "profile_section"]


def _short(text: str, width: int) -> str:
    # Names come from the program: escape control characters so they cannot drive the terminal.
    if not text.isprintable():
        text = repr(text)[1:-1]
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _num(row: dict[str, Any], key: str) -> float:
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) else 0.0


def functions_table(functions: Sequence[dict[str, Any]]) -> str:
    """Rows of the profile's ``functions`` (JSON form) as a table: calls, total, own, mean, where."""
    rows = []
    for f in functions:
        calls = int(_num(f, "calls"))
        total = _num(f, "total_s")
        rows.append(
            (
                _short(str(f.get("name", "?")), 40),
                calls,
                format_duration(total),
                format_duration(_num(f, "own_s")),
                format_duration(total / calls if calls else 0.0),
                _short(f"{f.get('filename', '?')}:{f.get('lineno', 0)}", 60),
            )
        )
    return table(("function", "calls", "total", "own", "mean", "where"), rows, right=(1, 2, 3, 4))


def profile_section(snapshot: Snapshot, brief: bool) -> str | None:
    """Top functions by total time, then time per thread and per asyncio task."""
    prof = snapshot.sections.get("profile")
    if not isinstance(prof, dict) or not isinstance(prof.get("functions"), list):
        return None
    limit = 10 if brief else 30
    funcs = [f for f in prof["functions"] if isinstance(f, dict)]
    # conctools' own wrappers and launcher (traced_coro, _execute, runpy) would lead every table.
    own = sum(1 for f in funcs if is_own_file(str(f.get("filename", ""))))
    funcs = [f for f in funcs if not is_own_file(str(f.get("filename", "")))][:limit]
    clock = prof.get("clock", "wall")
    parts = [
        f"Profile ({clock} clock, {format_duration(_num(prof, 'duration_s'))}; "
        f"top {len(funcs)} of {prof.get('function_count', len(funcs))} functions by total time)"
    ]
    if funcs:
        parts.append(functions_table(funcs))
    if own:
        parts.append(f"  {hidden_note(own, 'function')}")
    threads = [t for t in prof.get("threads", []) if isinstance(t, dict)]
    tasks = [t for t in prof.get("tasks", []) if isinstance(t, dict)][: 5 if brief else 20]

    def hottest(row: dict[str, Any]) -> str:
        top = row.get("top") or []
        return _short(str(top[0].get("name", "")), 40) if top and isinstance(top[0], dict) else ""

    if threads:
        parts.append("  per thread:")
        parts.append(
            table(
                ("thread", "time", "switches", "hottest (own time)"),
                [
                    (
                        _short(str(t.get("name")), 40),
                        format_duration(_num(t, "total_s")),
                        int(_num(t, "switches")),
                        hottest(t),
                    )
                    for t in threads
                ],
                right=(1, 2),
            )
        )
    if tasks:
        parts.append("  per asyncio task:")
        parts.append(
            table(
                ("task", "own time", "calls", "hottest (own time)"),
                [
                    (
                        _short(str(t.get("name")), 40),
                        format_duration(_num(t, "own_s")),
                        int(_num(t, "calls")),
                        hottest(t),
                    )
                    for t in tasks
                ],
                right=(1, 2),
            )
        )
    return "\n".join(parts)
