"""Reporters: pure functions from a :class:`~conctools.recorder.Snapshot` to text, JSON,
a Chrome/Perfetto trace and HTML. None of them touches a live program."""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from conctools.reporting.jsonreport import load_json, render_json
    from conctools.reporting.text import render_text

# Imported on first use (PEP 562): ``conctools run`` imports ``reporting.summary`` and
# ``reporting.jsonreport`` before the program starts (the dump agent's answers use them), and the
# text reporters only when it reports.
_LAZY = {"load_json": "conctools.reporting.jsonreport", "render_json": "conctools.reporting.jsonreport"}
_LAZY["render_text"] = "conctools.reporting.text"


def __getattr__(name: str) -> _typing.Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'conctools.reporting' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["load_json", "render_json", "render_text"]
