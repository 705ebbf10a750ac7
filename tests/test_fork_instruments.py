"""A forked child that unwinds through its parent's samplers (``os.fork()`` then ``sys.exit`` under
``conctools run``) must not wait for their locks: the sampler threads stayed in the parent, which
may have held those locks at the fork. A full 3.11 run once hung 90 s in ``GilMonitor.stop`` so.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Each sampler is forked while its lock is held, as when the fork lands mid-sample; the child
# stops its copy (what the runner's exit does), and says whether that returned.
PROGRAM = textwrap.dedent(
    """
    import os, sys, time
    from conctools.gil import GilMonitor
    from conctools.recorder import Recorder
    from conctools.resources import ResourceSampler

    for make in (lambda r: GilMonitor(0.01, recorder=r), lambda r: ResourceSampler(0.01, recorder=r)):
        sampler = make(Recorder())
        sampler.start()
        sampler._state.acquire()  # held, as by the sampler thread in the middle of a sample
        pid = os.fork()
        if pid == 0:
            sampler.stop()
            os._exit(0)
        sampler._state.release()
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not done:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        sampler.stop()
        print(type(sampler).__name__, "returned" if done and status == 0 else "hung in the child")
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="os.fork")
def test_forked_child_stops_its_parents_samplers_without_waiting() -> None:
    proc = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", PROGRAM],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["GilMonitor returned", "ResourceSampler returned"], proc.stdout + proc.stderr


class TestTrackerLock:
    """multiprocessing's resource tracker lock under `conctools run`: no collection inside it (a
    collection there runs dead semaphores' finalizers, which re-enter the tracker and warn)."""

    def test_no_collection_while_held_and_reentry_counted(self) -> None:
        from conctools.children.reaping import TrackerLock

        lock = TrackerLock()
        assert gc.isenabled()
        with lock:
            assert not gc.isenabled() and lock._recursion_count() == 1
            with lock:  # the tracker's own check for re-entry reads the count
                assert lock._recursion_count() == 2 and not gc.isenabled()
            assert not gc.isenabled()
        assert gc.isenabled() and lock._recursion_count() == 0
        gc.disable()  # the program's choice stays the program's
        try:
            with lock:
                pass
            assert not gc.isenabled()
        finally:
            gc.enable()

    def test_the_run_gives_the_tracker_one(self, tmp_path: Path) -> None:
        script = tmp_path / "prog.py"
        script.write_text(
            "import gc, multiprocessing.resource_tracker as rt\n"
            "lock = rt._resource_tracker._lock\n"
            "with lock:\n    inside = gc.isenabled()\n"
            "print(type(lock).__name__, inside, gc.isenabled())\n"
        )
        proc = subprocess.run(
            [sys.executable, "-m", "conctools", "run", "--no-report", str(script)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["TrackerLock", "False", "True"], proc.stdout + proc.stderr
