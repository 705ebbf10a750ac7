"""Reading other threads' frames must not keep them (or their locals) alive.

A dict from ``sys._current_frames()`` kept in a local holds the calling thread's own frame, which
links back to the local's frame: a reference cycle. Every frame it sampled, and everything those
frames' locals hold, then lives until a garbage collection frees them all together, and CPython
3.12/3.13 crash on such a collection when it holds a ``BytesIO`` with an exported buffer (what
multiprocessing's pickler makes for every message: CI saw "SystemError: deallocated BytesIO object
has exported buffers" then SIGSEGV, for a ``Pool.map`` program under ``conctools run``).
"""

from __future__ import annotations

import gc
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from conctools import _context
from conctools.children import procfile

PACKAGE = Path(_context.__file__).parent


@pytest.fixture
def no_collector() -> Iterator[None]:
    """Only reference counts free objects while the test runs: a cycle shows as an object kept."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _Canary:
    def __init__(self, freed: threading.Event) -> None:
        self.freed = freed

    def __del__(self) -> None:
        self.freed.set()


def _sampled_while_returning(sample: object) -> threading.Event:
    """A thread whose local is a canary is sampled by ``sample()``; the thread returns while the
    sample is held. The event is set once the canary (and so the thread's frame) is freed."""
    freed = threading.Event()
    inside = threading.Event()
    leave = threading.Event()

    def worker() -> None:
        canary = _Canary(freed)
        inside.set()
        leave.wait(10)
        assert canary.freed is freed  # a local until the frame goes

    thread = threading.Thread(target=worker, name="sampled")
    thread.start()
    assert inside.wait(10)
    assert callable(sample)

    def holder() -> int:
        frames = sample()
        assert thread.ident in frames
        leave.set()
        thread.join(10)  # it returns while `frames` holds its innermost frame
        return len(frames)

    holder()
    return freed


@pytest.mark.usefixtures("no_collector")
class TestNoCycle:
    def test_current_frames(self) -> None:
        freed = _sampled_while_returning(_context.current_frames)
        assert freed.is_set(), "the sampled thread's frame outlived the sample (a reference cycle)"

    def test_with_own_stack(self) -> None:
        """``own_from=2``: the holder's caller, above the frame that keeps the dict."""
        freed = _sampled_while_returning(lambda: _context.current_frames(own_from=2))
        assert freed.is_set(), "the sampled thread's frame outlived the sample (a reference cycle)"

    def test_process_record_stacks(self) -> None:
        """The children's records read every thread, the caller's own included, and keep none."""

        def sample() -> dict[int, dict[str, object]]:
            threads, _ = procfile.thread_states()
            names = {t["thread_name"] for t in threads}
            assert {"sampled", threading.current_thread().name} <= names
            return {int(t["thread_id"]): t for t in threads}

        freed = _sampled_while_returning(sample)
        assert freed.is_set(), "the sampled thread's frame outlived the sample (a reference cycle)"

    def test_the_plain_call_makes_the_cycle(self) -> None:
        """The check above can fail: the raw call does keep the frame."""
        freed = _sampled_while_returning(sys._current_frames)
        assert not freed.is_set()
        gc.collect()
        assert freed.is_set()


def test_own_entry() -> None:
    """Left out by default; ``own_from=1`` is the caller's caller, with its real line."""

    def caller() -> dict[int, FrameType]:
        return _context.current_frames(own_from=1)

    me = threading.get_ident()
    assert me not in _context.current_frames()
    frame = caller()[me]
    assert frame.f_code is test_own_entry.__code__
    assert _context.current_frames(own_from=10_000).get(me) is None


def test_conctools_reads_frames_through_the_helper() -> None:
    """Every reader of other threads' frames goes through ``_context.current_frames``."""
    raw = re.compile(r"sys\._current_frames\(\)")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "_context.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if raw.search(line.split("#")[0]) and "``" not in line
    ]
    assert offenders == []


def test_pipe_traffic_under_conctools_run(tmp_path: Path) -> None:
    """End to end: a thread reads a Pipe that the main thread fills while conctools' samplers (the GIL
    monitor, the watchdog) read frames. Before, every run of this on 3.12 and 3.13 printed the
    BytesIO error (and sometimes died of SIGSEGV); 3.11 never showed it."""
    script = tmp_path / "pipes.py"
    script.write_text(
        "import multiprocessing as mp, threading, time\n"
        "a, b = mp.Pipe()\n"
        "def reader():\n"
        "    while b.recv() is not None:\n"
        "        pass\n"
        "t = threading.Thread(target=reader)\n"
        "t.start()\n"
        "deadline = time.monotonic() + 3\n"
        "while time.monotonic() < deadline:\n"
        "    a.send(('x', 1))\n"
        "a.send(None)\n"
        "t.join()\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "conctools", "run", "--no-report", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr
    assert "BytesIO" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
