"""Brief contended waits (the C path's first wait in the real lock, before any bookkeeping): still
counted exactly, per lock and per site, with their holder (issue 12, the threads program's convoy)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import conctools
from conctools import locks, registry
from conctools.events import LockWaitEvent
from conctools.recorder import Recorder

pytestmark = pytest.mark.skipif(not locks.SPEEDUPS, reason="the brief wait is the C path's")


def wait_until(predicate: Callable[[], object], timeout_s: float = 10.0) -> None:
    """Poll ``predicate`` until it is true (the waiter must be seen blocked before the holder lets go)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


@pytest.fixture
def long_window() -> Iterator[None]:
    """A brief window long enough that every wait of these tests ends inside it (once its site has
    captured its stacks): which path a wait takes does not depend on timing."""
    previous = locks._speedups.set_brief_wait(30.0)
    try:
        yield
    finally:
        locks._speedups.set_brief_wait(previous)


@pytest.fixture
def threshold() -> Iterator[Callable[[float], None]]:
    previous = locks.wait_threshold_s()
    try:
        yield locks.set_wait_threshold
    finally:
        locks.set_wait_threshold(previous)


def waiting(lock: Any) -> bool:
    """Is a thread blocked on ``lock``: in its brief window, or registered as a waiter?"""
    if locks._speedups.brief_waits()[1]:
        return True
    return any(st.prim_id == id(lock) and st.waiters for st in registry.primitives())


def take(lock: Any) -> None:
    with lock:  # the one waiting site of these tests
        pass


def take_in_task(lock: Any) -> None:
    """``take`` from inside an asyncio task (a threading lock taken in a task names the task)."""

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.set_name("the-waiting-task")
        take(lock)

    asyncio.run(main())


def contend(lock: Any, rounds: int, target: Callable[[Any], None] = take) -> list[str]:
    """``rounds`` contended acquisitions at one site, each while a different thread holds the lock;
    returns the holders' names in order."""
    names = []
    for i in range(rounds):
        held, release = threading.Event(), threading.Event()

        def hold(held: threading.Event, release: threading.Event) -> None:
            with lock:
                held.set()
                release.wait(30)

        name = f"holder-{i}"
        holder = threading.Thread(target=hold, args=(held, release), name=name)
        holder.start()
        assert held.wait(10)
        waiter = threading.Thread(target=target, args=(lock,), name=f"waiter-{i}")
        waiter.start()
        wait_until(lambda: waiting(lock))
        release.set()
        waiter.join(10)
        holder.join(10)
        assert not waiter.is_alive() and not holder.is_alive()
        names.append(name)
    return names


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
class TestBriefWaits:
    """Waits that end in their brief window count as every other wait does."""

    def test_every_wait_counted_with_its_holder(
        self, kind: str, recorder: Recorder, long_window: None, threshold: Callable[[float], None]
    ) -> None:
        """With every wait an event, each names its own holder; the table counts each wait once, at
        its one site, and the waits past the site's stack quota took the brief path."""
        threshold(0.0)
        lock = getattr(conctools, kind)(name=f"brief-{kind}")
        rounds = locks.STACKS_PER_SITE + 6
        before = locks._speedups.brief_waits()[0]
        holders = contend(lock, rounds)
        locks.flush_waits()
        assert locks._speedups.brief_waits()[0] - before == rounds - locks.STACKS_PER_SITE
        stats = lock._ct_stats
        assert stats.contentions == rounds
        assert [s.waits for s in stats.sites.values()] == [rounds]
        assert stats.wait.count == rounds and stats.timeouts == 0
        events = sorted(
            (e for e in recorder.snapshot().of_kind(LockWaitEvent) if e.lock_name == f"brief-{kind}"),
            key=lambda e: e.ts_ns,
        )
        assert [e.holder for e in events] == [f"thread '{h}'" for h in holders]
        assert [e.thread_name for e in events] == [f"waiter-{i}" for i in range(rounds)]
        assert all(
            e.acquired and e.lock_kind == kind and e.site.endswith(f":{take.__code__.co_firstlineno + 1}")
            for e in events
        )
        # the brief ones have no stack (their site captured its quota), the first ones do
        assert [bool(e.stack) for e in events] == [True] * locks.STACKS_PER_SITE + [False] * 6

    def test_unsampled_brief_waits_still_counted(
        self, kind: str, recorder: Recorder, long_window: None, threshold: Callable[[float], None]
    ) -> None:
        """Above a threshold no wait reaches, the brief waits make no event unless one is its site's
        longest so far, and every one is counted in the lock table and the histogram."""
        threshold(3600.0)
        lock = getattr(conctools, kind)(name=f"brief-quiet-{kind}")
        rounds = locks.STACKS_PER_SITE + 6
        contend(lock, rounds)
        rows = [r for r in locks.lock_table() if r["name"] == f"brief-quiet-{kind}"]
        assert len(rows) == 1 and rows[0]["contentions"] == rounds
        assert rows[0]["hottest_sites"][0]["waits"] == rounds
        assert lock._ct_stats.wait.count == rounds
        events = [e for e in recorder.snapshot().of_kind(LockWaitEvent) if e.lock_name == f"brief-quiet-{kind}"]
        assert locks.STACKS_PER_SITE <= len(events) <= rounds
        assert all(e.holder and e.holder.startswith("thread 'holder-") for e in events)


class TestWindowThenFullWait:
    """A wait still blocked when its window ends is recorded in full, dated from the window's start."""

    def test_timed_out_wait_dated_from_its_window(self, recorder: Recorder) -> None:
        """A timed acquire that times out after its window: one contention, one timeout, waited its
        whole timeout, and named its holder."""
        previous = locks._speedups.set_brief_wait(0.02)
        try:
            lock = conctools.Lock(name="brief-timeout")
            held, release = threading.Event(), threading.Event()

            def hold() -> None:
                with lock:
                    held.set()
                    release.wait(30)

            holder = threading.Thread(target=hold, name="slow-holder")
            holder.start()
            assert held.wait(10)
            for _ in range(locks.STACKS_PER_SITE + 1):  # past the site's stack quota: the window is tried
                assert lock.acquire(timeout=0.05) is False
            release.set()
            holder.join(10)
        finally:
            locks._speedups.set_brief_wait(previous)
        locks.flush_waits()
        stats = lock._ct_stats
        rounds = locks.STACKS_PER_SITE + 1
        assert stats.contentions == rounds and stats.timeouts == rounds and stats.wait.count == rounds
        events = [e for e in recorder.snapshot().of_kind(LockWaitEvent) if e.lock_name == "brief-timeout"]
        assert events and all(not e.acquired and e.holder == "thread 'slow-holder'" for e in events)
        # the last one went through the window first: its wait covers the whole timeout, window included
        assert max(events, key=lambda e: e.ts_ns).wait_s >= 0.049


class TestLockHandedToAThreadWithoutTheGil:
    """A waiter that finds the lock taken in the real lock by a thread not yet back with the GIL (released
    by its traced holder, its new owner's bookkeeping not yet run) lets that thread run first: the wait is
    still counted once, exactly, with the thread the lock passed through last as its holder."""

    def test_counted_once_with_the_previous_owner(self, recorder: Recorder, threshold: Callable[[float], None]) -> None:
        """The state is made by taking the real lock directly after a traced release; the waiter yields,
        then waits in the real lock, and gets it when the real lock is released."""
        threshold(0.0)
        lock = conctools.Lock(name="brief-handed")
        rounds = locks.STACKS_PER_SITE + 1  # past the site's stack quota: the brief path is taken
        contend(lock, rounds)
        locks.flush_waits()
        yields_before = locks._speedups.brief_waits()[3]
        assert lock._ct_stats.contentions == rounds
        lock._lock.acquire()  # taken in the real lock; the traced state still says "released"
        try:
            waiter = threading.Thread(target=take, args=(lock,), name="late-waiter")
            waiter.start()
            wait_until(lambda: waiting(lock))
        finally:
            lock._lock.release()
        waiter.join(10)
        assert not waiter.is_alive()
        locks.flush_waits()
        if sys.platform.startswith("linux"):  # (where the C path yields: it needs clock_gettime without the GIL)
            assert locks._speedups.brief_waits()[3] > yields_before
        stats = lock._ct_stats
        assert stats.contentions == rounds + 1 and stats.wait.count == rounds + 1
        assert [s.waits for s in stats.sites.values()] == [rounds + 1]
        events = [e for e in recorder.snapshot().of_kind(LockWaitEvent) if e.lock_name == "brief-handed"]
        assert len(events) == rounds + 1
        last = max(events, key=lambda e: e.ts_ns)
        assert last.thread_name == "late-waiter" and last.acquired
        assert last.holder == f"thread 'waiter-{rounds - 1}'"  # the thread the lock passed through last


class TestBriefWaitInATask:
    """A threading lock waited on inside an asyncio task: the brief wait names the task."""

    def test_task_named(self, recorder: Recorder, long_window: None, threshold: Callable[[float], None]) -> None:
        """Every wait, brief or not, is counted and its event names the waiting task."""
        threshold(0.0)
        lock = conctools.Lock(name="brief-task")
        rounds = locks.STACKS_PER_SITE + 3
        before = locks._speedups.brief_waits()[0]
        contend(lock, rounds, take_in_task)
        locks.flush_waits()
        assert locks._speedups.brief_waits()[0] - before == 3
        assert lock._ct_stats.contentions == rounds
        events = [e for e in recorder.snapshot().of_kind(LockWaitEvent) if e.lock_name == "brief-task"]
        assert len(events) == rounds
        assert [e.task_name for e in events] == ["the-waiting-task"] * rounds
