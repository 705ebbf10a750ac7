"""Names from the program are shown, never obeyed, in every output (issue 18, item 18)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import conctools
from conctools.recorder import Recorder
from conctools.reporting import render_json, render_text
from conctools.reporting.html import render_html
from conctools.reporting.trace import render_trace

EVIL = "\u202eevil\x1b[2J"  # a right-to-left override ("live"), then a clear-screen escape


def test_bidi_and_terminal_controls_are_neutralised_everywhere() -> None:
    """A thread, a task and a span named with a bidi override and an escape: no raw control in the text,
    HTML, trace or JSON; the text shows the escapes; the JSON still holds the exact name."""
    recorder = Recorder()
    with conctools.use_recorder(recorder):

        @conctools.traced(EVIL)
        def step() -> None:
            pass

        worker = threading.Thread(target=step, name=EVIL)
        worker.start()
        worker.join()

        async def main() -> None:
            async with conctools.watch_loop(threshold_s=0.05):
                task = asyncio.create_task(asyncio.sleep(0), name=EVIL)
                await task
                blocked = asyncio.create_task(_block(), name=EVIL)
                await blocked

        asyncio.run(main())
    snapshot = recorder.snapshot()
    outputs = {
        "text": render_text(snapshot),
        "html": render_html(snapshot),
        "trace": render_trace(snapshot),
        "json": render_json(snapshot),
    }
    for name, text in outputs.items():
        for char in ("\u202e", "\x1b"):
            assert char not in text, (name, char)
    assert "\\u202eevil\\x1b[2J" in outputs["text"]
    spans = [e for e in json.loads(outputs["json"])["events"] if e["kind"] == "span"]
    assert spans and spans[0]["name"] == EVIL  # JSON: the exact value, written as an escape


async def _block() -> None:
    time.sleep(0.1)
