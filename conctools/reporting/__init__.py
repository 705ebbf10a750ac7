"""Reporters: pure functions from a :class:`~conctools.recorder.Snapshot` to text, JSON,
a Chrome/Perfetto trace and HTML. None of them touches a live program."""

from __future__ import annotations

from conctools.reporting.jsonreport import load_json, render_json
from conctools.reporting.text import render_text

__all__ = ["load_json", "render_json", "render_text"]
