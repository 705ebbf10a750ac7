"""CPython's own lock test suites, run against conctools' traced drop-ins.

``test.lock_tests`` is subclassed exactly as ``Lib/test/test_threading.py`` does it, with
conctools' classes; ``test.test_asyncio.test_locks`` runs inside ``trace_locks()``, which
makes ``asyncio.Lock()`` & co. (what those tests call) conctools' traced classes.

This module uses only unittest, so the same classes also run on another interpreter:
``PYENV_VERSION=3.13.0 PYTHONPATH=. python3 -m unittest tests.test_conformance``
(``TestOtherInterpreter`` does that when Python 3.13 is installed).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import unittest
from pathlib import Path
from typing import Any

from test import lock_tests
from test.test_asyncio import test_locks as asyncio_lock_tests

import conctools
from conctools import aio, lockorder
from conctools.locks import trace_locks
from conctools.recorder import Histogram

try:  # this module also runs under plain unittest, on interpreters without pytest
    import pytest

    slow: Any = pytest.mark.slow
except ImportError:  # pragma: no cover

    def slow(cls: Any) -> Any:
        return cls


ROOT = Path(__file__).resolve().parent.parent


class TracedLockTests(lock_tests.LockTests):
    locktype = staticmethod(conctools.Lock)


class TracedRLockTests(lock_tests.RLockTests):
    locktype = staticmethod(conctools.RLock)


def ordered(cls: Any) -> Any:
    """A factory making ``cls`` instances in lock-order mode (what ``conctools run`` creates)."""

    def make(*args: Any, **kwargs: Any) -> Any:
        lockorder.enable()
        try:
            return cls(*args, **kwargs)
        finally:
            lockorder.disable()

    return make


def timed(cls: Any) -> Any:
    """A factory making ``cls`` instances already switched to their timed variant (as after a contention)."""

    def make(*args: Any, **kwargs: Any) -> Any:
        lock = cls(*args, **kwargs)
        lock._ct_hold = Histogram()
        lock.__class__ = {conctools.Lock: conctools.locks._TimedLock, conctools.RLock: conctools.locks._TimedRLock}[cls]
        return lock

    return make


class OrderedLockTests(lock_tests.LockTests):
    locktype = staticmethod(ordered(conctools.Lock))


class OrderedRLockTests(lock_tests.RLockTests):
    locktype = staticmethod(ordered(conctools.RLock))


class OrderedConditionTests(lock_tests.ConditionTests):
    condtype = staticmethod(ordered(conctools.Condition))


class TimedLockTests(lock_tests.LockTests):
    locktype = staticmethod(timed(conctools.Lock))


class TimedRLockTests(lock_tests.RLockTests):
    locktype = staticmethod(timed(conctools.RLock))


class TracedEventTests(lock_tests.EventTests):
    eventtype = staticmethod(conctools.Event)


class TracedConditionAsRLockTests(lock_tests.RLockTests):
    # Condition uses an RLock by default and exports its API.
    locktype = staticmethod(conctools.Condition)

    def test_recursion_count(self) -> None:
        self.skipTest("Condition does not expose _recursion_count() (skipped for the stdlib too)")


class TracedConditionTests(lock_tests.ConditionTests):
    condtype = staticmethod(conctools.Condition)


class TracedSemaphoreTests(lock_tests.SemaphoreTests):
    semtype = staticmethod(conctools.Semaphore)


class TracedBoundedSemaphoreTests(lock_tests.BoundedSemaphoreTests):
    semtype = staticmethod(conctools.BoundedSemaphore)


class TracedBarrierTests(lock_tests.BarrierTests):
    barriertype = staticmethod(conctools.Barrier)


class _UnderTraceLocks:
    """Run each asyncio test with ``asyncio.Lock`` & co. replaced by conctools' traced classes."""

    def run(self, result: Any = None) -> Any:
        with trace_locks():
            assert asyncio.Lock is aio.Lock
            return super().run(result)  # type: ignore[misc]


class TracedAsyncioLockTests(_UnderTraceLocks, asyncio_lock_tests.LockTests):
    pass


class TracedAsyncioEventTests(_UnderTraceLocks, asyncio_lock_tests.EventTests):
    pass


class TracedAsyncioConditionTests(_UnderTraceLocks, asyncio_lock_tests.ConditionTests):
    pass


class TracedAsyncioSemaphoreTests(_UnderTraceLocks, asyncio_lock_tests.SemaphoreTests):
    pass


class TracedAsyncioBarrierTests(_UnderTraceLocks, asyncio_lock_tests.BarrierTests):
    pass


def _python313() -> list[str] | None:
    """How to start Python 3.13 here, or ``None``."""
    if sys.version_info[:2] == (3, 13) or shutil.which("pyenv") is None:
        return None
    env = {**os.environ, "PYENV_VERSION": "3.13.0"}
    try:
        out = subprocess.run(
            ["python3", "-c", "import sys, test.lock_tests; print(sys.version_info[:2])"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return ["python3"] if out.returncode == 0 and "(3, 13)" in out.stdout else None


@slow
@unittest.skipUnless(os.environ.get("CONCTOOLS_CONFORMANCE_313", "1") == "1", "disabled by the environment")
class TestOtherInterpreter(unittest.TestCase):
    """The same suites on Python 3.13 (its own copies of lock_tests and test_locks)."""

    def test_conformance_on_python_313(self) -> None:
        """Every suite above passes on Python 3.13 too."""
        if sys.version_info[:2] == (3, 13):
            self.skipTest("this run is on Python 3.13 already: the suites above ran on it")
        python = _python313()
        if python is None:
            self.skipTest("Python 3.13 is not installed")
        env = {**os.environ, "PYENV_VERSION": "3.13.0", "PYTHONPATH": str(ROOT), "CONCTOOLS_CONFORMANCE_313": "0"}
        proc = subprocess.run(
            [*python, "-m", "unittest", "-q", "tests.test_conformance"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr[-4000:])
        self.assertIn("OK", proc.stderr)
