"""``report.json``: every recorded thing, versioned (schema ``conctools.report/1``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from conctools.recorder import Snapshot
from conctools.reporting._safe import neutralise_json

__all__ = ["load_json", "render_json"]


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: turn them into ``None`` so every parser reads the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def render_json(snapshot: Snapshot) -> str:
    """The snapshot as a JSON document (see ``docs/report-schema.md``).

    One event per line: readable, diffable, and far faster to write than full indentation.
    Values are cleaned of NaN/infinity only when ``json`` finds one (a rare, slow path).
    """
    doc = snapshot.to_dict()
    events = doc.pop("events")
    try:
        head = json.dumps(doc, indent=1, default=str, ensure_ascii=False, allow_nan=False)
        lines = [json.dumps(e, default=str, ensure_ascii=False, allow_nan=False) for e in events]
    except ValueError:
        head = json.dumps(_clean(doc), indent=1, default=str, ensure_ascii=False)
        lines = [json.dumps(_clean(e), default=str, ensure_ascii=False) for e in events]
    body = ",\n  ".join(lines)
    events_json = f"[\n  {body}\n ]" if lines else "[]"
    return neutralise_json(head[:-2] + f',\n "events": {events_json}\n}}')


def load_json(path: str | Path) -> Snapshot:
    """Load a saved ``report.json``; ``ValueError`` with one readable line on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{p}: is a directory, expected a report.json") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: cannot read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # msg may end in "at" ("Unterminated string starting at"): say the position apart.
        raise ValueError(f"{p}: not valid JSON ({exc.msg}; line {exc.lineno}, column {exc.colno})") from None
    try:
        return Snapshot.from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from None
