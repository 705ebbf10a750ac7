"""Reporters: pure functions from a :class:`~conctools.recorder.Snapshot` to text, JSON,
a Chrome/Perfetto trace and HTML. None of them touches a live program."""

from __future__ import annotations

import typing as _typing

from conctools import _lazy

if _typing.TYPE_CHECKING:
    from conctools.reporting.jsonreport import load_json, render_json
    from conctools.reporting.text import render_text

# Imported on first use (PEP 562): ``conctools run`` imports ``reporting.summary`` and
# ``reporting.jsonreport`` before the program starts (the dump agent's answers use them), and the
# text reporters only when it reports.
_LAZY = {"load_json": "conctools.reporting.jsonreport", "render_json": "conctools.reporting.jsonreport"}
_LAZY["render_text"] = "conctools.reporting.text"


def __getattr__(name: str) -> _typing.Any:
    return _lazy.load(__name__, globals(), _LAZY, name)


def __dir__() -> list[str]:
    return _lazy.names(globals(), _LAZY)


__all__ = ["load_json", "render_json", "render_text"]
