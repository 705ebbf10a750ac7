"""Shared fixtures and the autouse guard: no test may leak conctools threads, patched lock
factories, loop hooks, profilers or a replaced recorder into the next test."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import conctools.recorder as recorder_module
from conctools import lockorder
from conctools.loopmon import patched_names as loopmon_patched_names
from conctools.pools import patched_names as pools_patched_names

ROOT = Path(__file__).resolve().parent.parent

# What the stdlib looks like untouched; trace_locks() and friends must always restore it.
_PATCHABLE = {
    (threading, "Lock"): threading.Lock,
    (threading, "RLock"): threading.RLock,
    (threading, "Condition"): threading.Condition,
    (threading, "Semaphore"): threading.Semaphore,
    (threading, "BoundedSemaphore"): threading.BoundedSemaphore,
    (threading, "Event"): threading.Event,
    (threading, "Barrier"): threading.Barrier,
    (asyncio, "Lock"): asyncio.Lock,
    (asyncio, "Condition"): asyncio.Condition,
    (asyncio, "Semaphore"): asyncio.Semaphore,
    (asyncio, "BoundedSemaphore"): asyncio.BoundedSemaphore,
    (asyncio, "Event"): asyncio.Event,
    (asyncio.events, "_set_running_loop"): asyncio.events._set_running_loop,  # monitor_all_loops()
}
# The loop monitor's blocking-call detection (time.sleep, socket methods, thread waits) and its uvloop hook.
_PATCHABLE.update({(owner, name): getattr(owner, name) for owner, name in loopmon_patched_names()})
# Pool tracking (conctools.pools.track_pools) wraps the stdlib queues' methods on their classes.
_PATCHABLE.update({(owner, name): owner.__dict__[name] for owner, name in pools_patched_names()})
try:
    import uvloop

    _PATCHABLE[(uvloop.Loop, "run_forever")] = uvloop.Loop.run_forever
except ImportError:
    pass


def pytest_configure(config: pytest.Config) -> None:
    """The programs a session starts find each other's consoles and agents in a folder of the
    session's own (short: it holds Unix sockets), never the user's, nor those of another suite
    running at the same time (``make test`` runs 3.11, 3.12 and 3.13 side by side)."""
    if "CONCTOOLS_CONSOLE_DIR" not in os.environ and not hasattr(config, "workerinput"):
        path = tempfile.mkdtemp(prefix="ct-")
        os.chmod(path, 0o700)
        os.environ["CONCTOOLS_CONSOLE_DIR"] = path
        config.add_cleanup(lambda: shutil.rmtree(path, ignore_errors=True))


def _conctools_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("conctools-") and t.is_alive()}


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves conctools threads, patched primitives or hooks behind."""
    threads_before = _conctools_threads()
    recorder_before = recorder_module.get_recorder()
    profile_before, trace_before = sys.getprofile(), sys.gettrace()
    yield
    deadline = time.monotonic() + 5.0
    leaked = _conctools_threads() - threads_before
    while leaked and time.monotonic() < deadline:
        time.sleep(0.02)
        leaked = _conctools_threads() - threads_before
    problems = []
    if leaked:
        problems.append(f"conctools threads still running: {sorted(t.name for t in leaked)}")
    for (module, name), original in _PATCHABLE.items():
        if getattr(module, name) is not original:
            setattr(module, name, original)
            problems.append(f"{module.__name__}.{name} left patched")
    from conctools import registry

    if registry.wait_hooks:
        registry.wait_hooks.clear()
        problems.append("a wait hook was left in the registry")
    if registry.semaphore_hooks:
        registry.semaphore_hooks.clear()
        problems.append("a semaphore hook was left in the registry")
    if getattr(threading.excepthook, "_conctools", False):  # the watchdog notes threads that die (casualties)
        threading.excepthook = threading.__excepthook__
        problems.append("threading.excepthook left patched by conctools")
    if recorder_module.get_recorder() is not recorder_before:
        recorder_module.set_recorder(recorder_before)
        problems.append("the current recorder was replaced and not restored")
    if sys.getprofile() is not profile_before:
        sys.setprofile(profile_before)
        problems.append("a profile hook was left installed")
    if sys.gettrace() is not trace_before:
        sys.settrace(trace_before)
        problems.append("a trace hook was left installed")
    try:
        import yappi

        if yappi.is_running():
            yappi.stop()
            yappi.clear_stats()
            problems.append("yappi was left running")
    except ImportError:
        pass
    if problems:
        pytest.fail("leak guard: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def recorder() -> Iterator[recorder_module.Recorder]:
    """A fresh recorder made current for the test."""
    with recorder_module.use_recorder() as rec:
        yield rec


@pytest.fixture
def ordered(recorder: recorder_module.Recorder) -> Iterator[recorder_module.Recorder]:
    """Lock-order mode on, with a fresh graph, an empty held stack and a fresh recorder."""
    lockorder.reset()
    lockorder.enable()
    lockorder.held_stack().clear()
    try:
        yield recorder
    finally:
        lockorder.held_stack().clear()  # a test that corrupts a lock's field leaves its entry behind
        lockorder.disable()
        lockorder.reset()
