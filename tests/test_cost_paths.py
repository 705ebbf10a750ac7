"""The cheaper paths of issue 12 (threaded programs) keep what they replaced: a Condition over a
traced Lock answers ``_is_owned()`` as the stdlib's probe does, a tracked queue keeps its state as
an attribute (also for a subclass that answers any attribute), and lock-order edge records that the garbage
collector no longer walks still report an inversion. Each runs on the C path and, in a subprocess,
on the pure-Python one.
"""

from __future__ import annotations

import gc
import os
import queue
import subprocess
import sys
import threading
from typing import Any

import pytest

import conctools
from conctools import lockorder, locks
from conctools.events import LockOrderEvent
from conctools.pools import track_pools
from conctools.pools._patch import STATE_KEY
from conctools.pools._state import PoolState
from conctools.recorder import Recorder
from tests.conftest import ROOT


def _acquisitions(name: str) -> int:
    return sum(row["acquisitions"] for row in locks.lock_table() if row["name"] == name)


def _held_in(thread_name: str, lock: Any, then: Any) -> None:
    """Hold ``lock`` in another thread while ``then()`` runs here."""
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            taken.set()
            done.wait(10)

    t = threading.Thread(target=hold, name=thread_name)
    t.start()
    try:
        assert taken.wait(10)
        then()
    finally:
        done.set()
        t.join(10)


class TestConditionOverLock:
    def test_is_owned_answers_like_the_stdlib_probe(self, recorder: Recorder) -> None:
        """Held by anyone (even another thread) is "owned", free is not: the stdlib's answer for a Lock."""
        traced = conctools.Condition(conctools.Lock(name="probe-owned"))
        plain = threading.Condition(threading.Lock())
        for cond in (traced, plain):
            assert cond._is_owned() is False  # type: ignore[attr-defined]
            with cond:
                assert cond._is_owned() is True  # type: ignore[attr-defined]
            answers: list[bool] = []
            _held_in("holder", cond, lambda c=cond, a=answers: a.append(c._is_owned()))
            assert answers == [True]

    def test_free_lock_probe_is_counted_and_errors_stay(self, recorder: Recorder) -> None:
        """A notify() or wait() on a free lock raises as before, and its probe is still an acquisition."""
        lock = conctools.Lock(name="probe-free")
        cond = conctools.Condition(lock)
        with cond:
            cond.notify()  # held: no probe acquisition
        assert _acquisitions("probe-free") == 1
        with pytest.raises(RuntimeError, match="cannot notify on un-acquired lock"):
            cond.notify()
        with pytest.raises(RuntimeError, match="cannot wait on un-acquired lock"):
            cond.wait(0.01)
        assert _acquisitions("probe-free") == 3
        assert not lock.locked()

    def test_notify_wakes_and_counts(self, recorder: Recorder) -> None:
        """notify() wakes exactly n waiters and counts one notification per call."""
        cond = conctools.Condition(conctools.Lock(name="probe-notify"))
        woken: list[str] = []
        ready = threading.Semaphore(0)

        def waiter(name: str) -> None:
            with cond:
                ready.release()
                assert cond.wait(10)
                woken.append(name)

        threads = [threading.Thread(target=waiter, args=(f"w{i}",)) for i in range(3)]
        for t in threads:
            t.start()
        for _ in threads:
            assert ready.acquire(timeout=10)
        with cond:  # every waiter is in wait() once it released its lock
            before = cond._ct_progress
            cond.notify(2)
            assert len(cond._waiters) == 1
            cond.notify_all()
            assert cond._ct_progress == before + 2  # (notify_all is one notify)
        for t in threads:
            t.join(10)
        assert sorted(woken) == ["w0", "w1", "w2"]

    def test_with_goes_through_the_locks_own_methods(self, recorder: Recorder) -> None:
        """``with cond`` calls its lock's ``__enter__``/``__exit__`` (a subclass's override too), passing
        the exception details on and returning what the lock returns."""
        calls: list[tuple[Any, ...]] = []

        class Watched(conctools.RLock):
            def __enter__(self) -> bool:
                calls.append(("enter",))
                return super().__enter__()

            def __exit__(self, *args: Any) -> None:
                calls.append(("exit", args[0]))
                super().__exit__(*args)

        cond = conctools.Condition(Watched(name="watched"))
        with cond as entered:
            assert entered is True and cond._is_owned()  # type: ignore[attr-defined]
        with pytest.raises(KeyError), cond:
            raise KeyError("x")
        assert calls == [("enter",), ("exit", None), ("enter",), ("exit", KeyError)]
        plain = conctools.Condition(conctools.Lock(name="plain-with"))
        with plain:
            assert plain._lock.locked()
        assert not plain._lock.locked() and _acquisitions("plain-with") == 1


class _Odd(queue.Queue):  # type: ignore[type-arg]
    """A queue whose class answers any attribute it lacks."""

    def __getattr__(self, name: str) -> Any:
        return "not a state"


class TestQueueState:
    def test_state_is_an_attribute(self, recorder: Recorder) -> None:
        """A queue made while tracking keeps its state under its own attribute, counted by takes."""
        with track_pools():
            q: queue.Queue[int] = queue.Queue()
            for i in range(5):
                q.put(i)
            for _ in range(5):
                q.get()
        state = getattr(q, STATE_KEY)
        assert type(state) is PoolState and state.takes == 5

    def test_odd_subclass(self, recorder: Recorder) -> None:
        """A subclass's __getattr__ is not taken for a state: the queue gets a real one."""
        with track_pools():
            odd = _Odd()
            odd.put(1)
            assert odd.get() == 1
        state = odd.__dict__[STATE_KEY]
        assert type(state) is PoolState and state.takes == 1


class TestInstanceEdgeRecords:
    def test_records_report_an_inversion(self, ordered: Recorder) -> None:
        """Locks of one class taken both ways are reported; with the C extension their edge records
        are left out of the garbage collector's walks."""
        accounts = [conctools.Lock() for _ in range(3)]
        with accounts[0], accounts[1], accounts[2]:
            pass
        records = [r for rs in lockorder._inst_records.values() for r in rs]
        assert len(records) == 2
        if locks.SPEEDUPS:
            assert not any(gc.is_tracked(r) or gc.is_tracked(r[5]) for r in records)
            assert not any(gc.is_tracked(rs) for rs in lockorder._inst_records.values())
        gc.collect()
        with accounts[2], accounts[0]:
            pass
        events = [e for e in ordered.events() if isinstance(e, LockOrderEvent)]
        assert len(events) == 1 and all("#" in name for name in events[0].cycle)


@pytest.mark.skipif(bool(os.environ.get("CONCTOOLS_PURE_PYTHON")), reason="this is the pure-Python run")
def test_pure_python_path() -> None:
    """The same tests on the pure-Python path."""
    env = {**os.environ, "CONCTOOLS_PURE_PYTHON": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
