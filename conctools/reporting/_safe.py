"""Names from the program are shown, never obeyed: terminal escapes and bidirectional controls.

A thread named ``"\\u202eevil"`` would read as "live" (a right-to-left override flips what
follows), and ``"\\x1b[2J"`` would clear the terminal. Every output a person reads replaces
them with their visible escape: ``\\u202e``, ``\\x1b``. JSON keeps the exact value, written as
a JSON escape, so a parser reads the name unchanged and a person reading the file sees the code.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["neutralise", "neutralise_data", "neutralise_json"]

# C0 controls but newline and tab, DEL, C1 controls, and the bidirectional marks, embeddings,
# overrides and isolates (U+061C, U+200E/F, U+202A-E, U+2066-9).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")  # json escapes C0 itself


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def neutralise(text: str) -> str:
    """``text`` with every terminal control and bidirectional control shown as its escape."""
    return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text


def neutralise_data(value: Any) -> Any:
    """:func:`neutralise` applied to every string (keys too) of a JSON-like value."""
    if isinstance(value, str):
        return neutralise(value)
    if isinstance(value, dict):
        return {neutralise_data(k): neutralise_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [neutralise_data(v) for v in value]
    return value


def neutralise_json(text: str) -> str:
    """JSON text with the unsafe characters ``json`` leaves raw written as ``\\uXXXX`` (same value)."""
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
