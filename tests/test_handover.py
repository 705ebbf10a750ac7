"""The GIL hand-over of conctools' own threads (issue 12).

A conctools thread that wakes up (a GIL sample, a follower's poll, a pool look) takes the GIL back by
asking the main thread to let go of it at its next check between bytecodes, instead of racing for it:
a busy event loop releases the GIL at every ``select(0)`` and takes it back before a woken waiter runs,
so each wake-up cost the program's thread hundreds of futex wake-ups. The threads sleep on
``_context.wait_lock()`` (the C extension's ``WaitLock``), which behaves as ``_thread.allocate_lock()``.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from conctools import _context, locks
from conctools import gil as gil_module
from conctools.recorder import Recorder

speedups = locks._speedups
needs_c = pytest.mark.skipif(
    speedups is None or not hasattr(speedups, "WaitLock"),
    reason="needs the C extension (the pure path has no hand-over)",
)


def test_wait_lock_is_a_lock() -> None:
    lock = _context.wait_lock()
    assert not lock.locked()
    assert lock.acquire()
    assert lock.locked()
    assert not lock.acquire(False)
    assert not lock.acquire(timeout=0.01)
    lock.release()
    assert not lock.locked()
    with lock:
        assert lock.locked()
    assert not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()
    with pytest.raises(ValueError):
        lock.acquire(False, 1.0)
    with pytest.raises(ValueError):
        lock.acquire(timeout=-2)


def test_wait_lock_wakes_a_waiter_released_elsewhere() -> None:
    lock = _context.wait_lock()
    lock.acquire()
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(lock.acquire(timeout=30)))
    waiter.start()
    time.sleep(0.05)
    lock.release()
    waiter.join(30)
    assert got == [True]
    assert lock.locked()


@needs_c
def test_wait_lock_is_the_c_one() -> None:
    assert type(_context.wait_lock()) is speedups.WaitLock


@needs_c
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_wait_lock_after_fork_reinit() -> None:
    lock = _context.wait_lock()
    lock.acquire()
    lock._at_fork_reinit()
    assert not lock.locked()
    assert lock.acquire(timeout=1)


@needs_c
def test_a_waking_thread_is_handed_the_gil_by_the_busy_main_thread() -> None:
    """The main thread runs bytecode without releasing the GIL; a thread whose wait on a WaitLock times out
    asks for the GIL, and the main thread yields it at its next check and waits until the asker has it
    (without the hand-over, the asker would wait for the switch interval's forced switch). The main thread
    waits a few hundred microseconds at most: on a busy machine the asker may be slower to run, and that
    yield is not a hand-over, so the test waits for a few hand-overs among up to 200 wake-ups."""
    assert threading.current_thread() is threading.main_thread()
    lock = _context.wait_lock()
    lock.acquire()
    done = threading.Event()
    asked0, yielded0, handed0 = speedups.handover()
    wakes = [0]

    def sleeper() -> None:
        while wakes[0] < 200 and speedups.handover()[2] < handed0 + 3:
            lock.acquire(timeout=0.002)  # (times out: the GIL is taken back by the hand-over)
            wakes[0] += 1
        done.set()

    thread = threading.Thread(target=sleeper)
    thread.start()
    deadline = time.monotonic() + 60
    n = 0
    while not done.is_set():  # busy in Python: the GIL is let go of only at a forced switch or a hand-over
        n += 1
        if n % 100_000 == 0:
            assert time.monotonic() < deadline, "the sleeper never finished"
    thread.join(30)
    asked, yielded, handed = (b - a for a, b in zip((asked0, yielded0, handed0), speedups.handover()))
    assert wakes[0] >= 3 and asked >= 3  # (another conctools thread's ask in flight makes a wake-up ask nobody)
    assert handed >= 3
    assert yielded >= handed
    lock.release()


@needs_c
def test_the_hand_over_can_be_turned_off() -> None:
    lock = _context.wait_lock()
    lock.acquire()
    before = speedups.handover(False)
    try:
        thread = threading.Thread(target=lambda: lock.acquire(timeout=0.005))
        thread.start()
        thread.join(30)
        assert speedups.handover() == before
    finally:
        speedups.handover(True)
    lock.release()


@needs_c
def test_a_main_thread_waiting_on_a_wait_lock_is_not_stuck() -> None:
    """The main thread's own wait asks too: it finds the GIL free (it let go of it itself), and the pending
    call it queued, when it runs, finds nobody asking (the main thread never waits for itself)."""
    lock = _context.wait_lock()
    lock.acquire()
    asked0 = speedups.handover()[0]
    for _ in range(3):
        assert not lock.acquire(timeout=0.01)
        for _ in range(1000):  # bytecode: the queued pending call runs
            pass
    assert speedups.handover()[0] >= asked0 + 1
    assert not _context.main_yields_gil()
    lock.release()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread states from /proc (Linux)")
@pytest.mark.parametrize("yielding", [True, False])
def test_a_main_thread_yielding_the_gil_wants_it_and_waits_on_no_lock(
    yielding: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the main thread has let go of the GIL for a conctools thread it sleeps on the hand-over's
    futex, not the GIL's: the GIL monitor counts it as wanting the GIL (Python), never as a lock wait that
    could make the verdict "waiting on locks". A lock wait of the main thread's own stays one."""
    monkeypatch.setattr(gil_module, "main_yields_gil", lambda: yielding)
    blocker = threading.Lock()
    blocker.acquire()
    monitor = gil_module.GilMonitor(0.01, recorder=Recorder())
    monitor.start()
    try:
        releaser = threading.Timer(0.5, blocker.release)
        releaser.start()
        assert blocker.acquire(timeout=30)  # the main thread blocked in a lock, sampled meanwhile
        releaser.join(30)
    finally:
        monitor.stop()
    main = next(t for t in monitor.threads() if t.name == threading.main_thread().name)
    assert main.samples >= 3
    if yielding:
        assert main.sync_s == 0
        assert main.python_s > 0
    else:
        assert main.sync_s > 0
