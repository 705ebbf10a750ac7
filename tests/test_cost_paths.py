"""The cheaper paths of issue 12 (threaded programs) keep what they replaced: a Condition over a
traced Lock answers ``_is_owned()`` as the stdlib's probe does, a tracked queue keeps its state as
an attribute (also for a subclass that answers any attribute), and lock-order edge records that the garbage
collector no longer walks still report an inversion. Each runs on the C path and, in a subprocess,
on the pure-Python one.
"""

from __future__ import annotations

import concurrent.futures
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
        records = [r for serial in list(lockorder._inst_in) for r in lockorder._records_into(serial)]
        assert len(records) == 2
        if locks.SPEEDUPS:
            runs = {id(run): run for serial in lockorder._inst_in for run in lockorder._runs_into(serial)}
            assert len(runs) == 1  # (one run holds both edges)
            assert not any(
                gc.is_tracked(run) or gc.is_tracked(run[0]) or gc.is_tracked(run[5]) for run in runs.values()
            )
        gc.collect()
        with accounts[2], accounts[0]:
            pass
        events = [e for e in ordered.events() if isinstance(e, LockOrderEvent)]
        assert len(events) == 1 and all("#" in name for name in events[0].cycle)


def _lock() -> conctools.Lock:
    """A lock of one class (its creation site is this line)."""
    return conctools.Lock()


def _in_thread(fn: Any, name: str) -> None:
    t = threading.Thread(target=fn, name=name)
    t.start()
    t.join(10)
    assert not t.is_alive()


def _line() -> int:
    return sys._getframe(1).f_lineno


class TestRuns:
    """Locks of one class taken one after the other, each while holding the ones before (a run, as
    ``concurrent.futures.wait()`` takes its futures' conditions), are checked in O(1) each: in C on
    the C path; the graph and its findings are those of the full walk."""

    def test_inversion_inside_a_long_run(self, ordered: Recorder) -> None:
        """Twelve locks of one class taken nested in one thread, then the last before the third in
        another: one two-lock cycle, whose forward edge names the run's line and thread and the
        third lock as held then (not the eight taken in between). (The first edges of a site take
        stacks, in Python; the last ones are the C path's on a C build.)"""
        chain = [_lock() for _ in range(12)]
        run_line = 0

        def run() -> None:
            nonlocal run_line
            for lock in chain:
                run_line = _line() + 1
                lock.acquire()
            for lock in chain:
                lock.release()

        _in_thread(run, "runner")
        assert not ordered.snapshot().of_kind(LockOrderEvent)
        serials = [lock._ct_serial for lock in chain]  # type: ignore[attr-defined]
        (record,) = lockorder._records_into(serials[11])
        assert [h[3] for h in record[5][: record[6]]] == serials[:11] and record[2] == "runner"
        back_line = 0

        def invert() -> None:
            nonlocal back_line
            with chain[11]:
                back_line = _line() + 1
                with chain[2]:
                    pass

        _in_thread(invert, "inverter")
        (event,) = ordered.snapshot().of_kind(LockOrderEvent)
        assert len(event.cycle) == 2
        (back,) = [e for e in event.edges if e.thread_name == "inverter"]
        (forth,) = [e for e in event.edges if e.thread_name == "runner"]
        assert back.to_site.endswith(f":{back_line}") and forth.to_site.endswith(f":{run_line}")
        assert forth.from_lock == back.to_lock and forth.to_lock == back.from_lock
        assert forth.from_lock.endswith("#3") and forth.to_lock.endswith("#12")

    def test_run_broken_by_a_release(self, ordered: Recorder) -> None:
        """a, b taken, a released, c taken: the edge b -> c was not taken while holding a, so c then a
        elsewhere is the three-lock cycle a -> b -> c -> a, never shortened to a -> c."""
        a, b, c = _lock(), _lock(), _lock()
        a.acquire()
        b.acquire()
        a.release()
        c.acquire()
        c.release()
        b.release()
        with c, a:
            pass
        (event,) = ordered.snapshot().of_kind(LockOrderEvent)
        assert len(event.cycle) == 3

    def test_run_after_a_reentry(self, ordered: Recorder) -> None:
        """A lock of the run taken again (an RLock) is no edge, and the run goes on after it."""
        a, b, c = (conctools.RLock() for _ in range(3))
        with a, b, a, c:
            pass
        assert lockorder.graph_size() == 2
        with c, a:
            pass
        (event,) = ordered.snapshot().of_kind(LockOrderEvent)
        assert len(event.cycle) == 2

    def test_waits_in_threads_no_false_alarm(self, ordered: Recorder) -> None:
        """Threads waiting on overlapping sets of futures (wait() and as_completed() take their
        conditions by id) report no inversion, and waiting on the same ones again adds no edge."""
        with conctools.trace_locks():
            futures: list[concurrent.futures.Future[int]] = [concurrent.futures.Future() for _ in range(30)]
        for i, f in enumerate(futures[::2]):
            f.set_result(i)

        def waiter(k: int) -> None:
            for i in range(20):
                part = futures[(i * k) % 7 :: 1 + (i + k) % 3]
                concurrent.futures.wait(part, timeout=0)
                done = [f for f in part if f.done()]
                assert len(list(concurrent.futures.as_completed(done))) == len(done)

        threads = [threading.Thread(target=waiter, args=(k,), name=f"waiter-{k}") for k in range(1, 5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not ordered.snapshot().of_kind(LockOrderEvent)
        size = lockorder.graph_size()
        assert size > 0
        concurrent.futures.wait(futures, timeout=0)
        concurrent.futures.wait(futures, timeout=0)
        assert lockorder.graph_size() == size

    def test_many_runs_of_dead_locks_are_pruned(self, ordered: Recorder) -> None:
        """Runs of 25 short-lived locks (a fan-out of futures): the graph stays bounded, and an
        inversion between two live locks of that class is still found after."""
        for _ in range(lockorder.INSTANCE_PRUNE_AT // 24 * 3):
            with conctools.trace_locks():
                futures = [concurrent.futures.Future() for _ in range(25)]  # type: ignore[var-annotated]
            concurrent.futures.wait(futures, timeout=0)
            del futures
        assert 0 < lockorder.graph_size() < lockorder.INSTANCE_PRUNE_AT * 2
        with conctools.trace_locks():
            x, y = concurrent.futures.Future(), concurrent.futures.Future()  # type: ignore[var-annotated]
        with x._condition, y._condition:  # type: ignore[attr-defined]
            pass
        with y._condition, x._condition:  # type: ignore[attr-defined]
            pass
        (event,) = ordered.snapshot().of_kind(LockOrderEvent)
        assert len(event.cycle) == 2


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
