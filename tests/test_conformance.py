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
from conctools import aio
from conctools.locks import trace_locks

ROOT = Path(__file__).resolve().parent.parent


class TracedLockTests(lock_tests.LockTests):
    locktype = staticmethod(conctools.Lock)


class TracedRLockTests(lock_tests.RLockTests):
    locktype = staticmethod(conctools.RLock)


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


@unittest.skipUnless(os.environ.get("CONCTOOLS_CONFORMANCE_313", "1") == "1", "disabled by the environment")
class TestOtherInterpreter(unittest.TestCase):
    """The same suites on Python 3.13 (its own copies of lock_tests and test_locks)."""

    def test_conformance_on_python_313(self) -> None:
        """Every suite above passes on Python 3.13 too."""
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
