"""Traced asyncio primitives: holder tasks, waiting tasks, wait events, counts, registry."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import threading
import uuid
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conctools import aio, locks, registry
from conctools.events import LockWaitEvent
from conctools.recorder import Recorder

HERE = Path(__file__).name


def state_of(prim: object) -> registry.PrimitiveState:
    for st in registry.primitives():
        if st.prim_id == id(prim):
            return st
    raise AssertionError("primitive not in the registry")


def row(rec: Recorder, name: str) -> dict[str, Any]:
    rows = [r for r in rec.snapshot().sections.get("locks", []) if r["name"] == name]
    assert rows, f"no lock table row {name!r}"
    return rows[0]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def until(predicate: Any) -> None:
    for _ in range(5000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


def _longest_wait_named(recorder: Recorder, name: str, n: int) -> LockWaitEvent:
    """n tasks fetch-0.. through a three-slot semaphore: every wait counted, and the longest one's event
    (the longest wait of its run) names its task and holder. Reads the table (runs drained)."""
    snap = recorder.snapshot()
    r = row(recorder, name)
    assert (r["acquisitions"], r["contentions"]) == (n, n - 3)
    events = [e for e in snap.of_kind(LockWaitEvent) if e.lock_name == name]
    longest = max(events, key=lambda e: e.wait_s)
    assert longest.wait_s == r["wait_max_s"]
    assert longest.task_name is not None and longest.task_name.startswith("fetch-")
    assert longest.task_name not in ("fetch-0", "fetch-1", "fetch-2")  # (these never wait)
    assert all(e.task_name and e.holder for e in events)
    return longest


class TestAioLock:
    """aio.Lock records the holding task and the waiting task."""

    def test_contended_wait_names_tasks(self, recorder: Recorder) -> None:
        """The wait event names the waiting task and the task holding the lock, with the site."""
        name = unique("db")
        site: list[int] = []

        async def main() -> None:
            lock = aio.Lock(name=name)
            release = asyncio.Event()

            async def holder() -> None:
                async with lock:
                    await release.wait()

            async def waiter() -> None:
                site.append(sys._getframe(0).f_lineno + 1)
                async with lock:
                    pass

            h = asyncio.create_task(holder(), name="holder")
            await until(lock.locked)
            w = asyncio.create_task(waiter(), name="waiter")
            await until(lambda: state_of(lock).waiters)
            st = state_of(lock)
            assert [p.task_name for p in st.holders] == ["holder"]
            assert [p.task_name for p in st.waiters] == ["waiter"]
            assert st.waiters[0].task_id == id(w) and st.holders[0].task_id == id(h)
            assert registry.waiting_on(st.waiters[0].thread_id, id(w)) == st
            await asyncio.sleep(0.02)
            release.set()
            await asyncio.gather(h, w)
            assert not state_of(lock).holders and not state_of(lock).waiters

        asyncio.run(main())
        (e,) = recorder.snapshot().of_kind(LockWaitEvent)
        holder = f"task 'holder' (thread {threading.current_thread().name!r})"  # the schema's form
        assert (e.lock_kind, e.task_name, e.holder, e.acquired) == ("aio.Lock", "waiter", holder, True)
        assert e.site == f"{HERE}:{site[0]}" and e.wait_s > 0.005
        r = row(recorder, name)
        assert (r["acquisitions"], r["contentions"]) == (2, 1)

    def test_uncontended_counts_exact(self, recorder: Recorder) -> None:
        """Uncontended acquisitions are counted exactly, with no wait events."""
        name = unique("quiet")

        async def main() -> None:
            lock = aio.Lock(name=name)
            for _ in range(300):
                async with lock:
                    pass
            for _ in range(200):
                await lock.acquire()
                lock.release()

        asyncio.run(main())
        assert row(recorder, name)["acquisitions"] == 500
        assert not recorder.snapshot().of_kind(LockWaitEvent)

    def test_cancelled_wait_is_not_acquired(self, recorder: Recorder) -> None:
        """A waiter cancelled while waiting records acquired=False and leaves the registry."""

        async def main() -> None:
            lock = aio.Lock()
            await lock.acquire()
            w = asyncio.create_task(lock.acquire(), name="impatient")
            await until(lambda: state_of(lock).waiters)
            w.cancel()
            with pytest.raises(asyncio.CancelledError):
                await w
            assert not state_of(lock).waiters
            lock.release()
            assert not lock.locked()

        asyncio.run(main())
        (e,) = recorder.snapshot().of_kind(LockWaitEvent)
        assert e.acquired is False and e.task_name == "impatient"

    def test_release_unlocked_raises(self) -> None:
        """Releasing an unlocked aio.Lock raises RuntimeError, as asyncio.Lock does."""
        with pytest.raises(RuntimeError, match="Lock is not acquired"):
            aio.Lock().release()

    def test_works_across_event_loops_uncontended(self) -> None:
        """Like asyncio.Lock, an uncontended lock can be used from one asyncio.run() after another."""
        lock = aio.Lock()

        async def use() -> bool:
            async with lock:
                return lock.locked()

        assert asyncio.run(use()) and asyncio.run(use())


class TestAioOthers:
    """Semaphore, Event, Condition and Barrier are traced too."""

    def test_semaphore_holders(self, recorder: Recorder) -> None:
        """Every holding task of a semaphore is in the registry; a waiter names them."""

        async def main() -> None:
            sem = aio.BoundedSemaphore(2, name=unique("sem"))
            release = asyncio.Event()

            async def hold() -> None:
                async with sem:
                    await release.wait()

            holders = [asyncio.create_task(hold(), name=f"h{i}") for i in range(2)]
            await until(sem.locked)
            assert sorted(p.task_name or "" for p in state_of(sem).holders) == ["h0", "h1"]
            waiter = asyncio.create_task(sem.acquire(), name="third")
            await until(lambda: state_of(sem).waiters)
            release.set()
            await asyncio.gather(*holders, waiter)
            sem.release()
            with pytest.raises(ValueError):
                sem.release()

        asyncio.run(main())
        (e,) = recorder.snapshot().of_kind(LockWaitEvent)
        assert e.lock_kind == "aio.BoundedSemaphore" and "h0" in (e.holder or "")

    def test_event_and_condition_waiters(self) -> None:
        """Tasks waiting on an Event or a Condition are in the registry until woken."""

        async def main() -> None:
            ev = aio.Event(name="go")
            cond = aio.Condition()
            t1 = asyncio.create_task(ev.wait(), name="ev-waiter")

            async def cwait() -> bool:
                async with cond:
                    return await cond.wait()

            t2 = asyncio.create_task(cwait(), name="cond-waiter")
            await until(lambda: state_of(ev).waiters and state_of(cond).waiters)
            assert state_of(ev).waiters[0].task_name == "ev-waiter"
            assert state_of(cond).waiters[0].task_name == "cond-waiter"
            ev.set()
            async with cond:
                cond.notify_all()
            assert await t1 is True and await t2 is True
            assert not state_of(ev).waiters and not state_of(cond).waiters

        asyncio.run(main())

    def test_barrier(self) -> None:
        """Barrier.wait gives distinct indexes to its parties."""

        async def main() -> list[int]:
            b = aio.Barrier(3)
            return list(await asyncio.gather(*(b.wait() for _ in range(3))))

        assert sorted(asyncio.run(main())) == [0, 1, 2]

    def test_loop_parameter_rejected(self) -> None:
        """Like asyncio's, the drop-ins reject loop=."""
        for cls in (aio.Lock, aio.Event, aio.Condition, aio.Semaphore, aio.BoundedSemaphore):
            with pytest.raises(TypeError, match=rf"{cls.__name__}\.__init__\(\) got an unexpected keyword"):
                cls(loop=None)  # type: ignore[call-arg]


class TestAioWaitCost:
    """Every contended wait is counted exactly; events are a bounded sample (the JFR rule)."""

    @pytest.fixture
    def no_threshold_events(self) -> Iterator[None]:
        previous = locks.set_wait_threshold(3600.0)  # only the per-site samples and the longest wait
        try:
            yield
        finally:
            locks.set_wait_threshold(previous)

    def test_growing_queue_counts_every_wait_and_keeps_the_longest(
        self, recorder: Recorder, no_threshold_events: None
    ) -> None:
        """600 tasks through a one-slot semaphore: each waits longer than the one before it. The
        table counts all 599 waits at their site, the recorder counts 599 lock waits, a handful are
        kept as events, and the longest one is among them."""
        name = unique("slots")
        n = 600

        async def main() -> None:
            sem = aio.Semaphore(1, name=name)

            async def fetch() -> None:
                async with sem:
                    await asyncio.sleep(0)

            await asyncio.gather(*(fetch() for _ in range(n)))

        asyncio.run(main())
        snap = recorder.snapshot()
        r = row(recorder, name)
        assert (r["acquisitions"], r["contentions"], r["timeouts"]) == (n, n - 1, 0)
        (site,) = r["hottest_sites"]
        assert site["function"] == "fetch" and site["waits"] == n - 1
        events = [e for e in snap.of_kind(LockWaitEvent) if e.lock_name == name]
        assert 1 <= len(events) <= locks.STACKS_PER_SITE + 1
        assert snap.counts["lock_wait"] == n - 1  # kept ones plus those counted as dropped
        assert max(e.wait_s for e in events) == r["wait_max_s"]
        assert sum(1 for e in events if e.stack) == min(len(events), locks.STACKS_PER_SITE)
        assert site["wait_total_s"] == pytest.approx(r["wait_total_s"])

    def test_cancelled_waits_counted_as_timeouts(self, recorder: Recorder, no_threshold_events: None) -> None:
        """Waits cancelled by wait_for count as timeouts, whether or not their event is kept."""
        name = unique("lock")

        async def main() -> None:
            lock = aio.Lock(name=name)
            await lock.acquire()
            for _ in range(20):
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(lock.acquire(), 0.001)
            lock.release()

        asyncio.run(main())
        r = row(recorder, name)
        assert (r["contentions"], r["timeouts"]) == (20, 20)
        events = [e for e in recorder.snapshot().of_kind(LockWaitEvent) if e.lock_name == name]
        assert events and not any(e.acquired for e in events)
        assert len(events) < 20

    @pytest.mark.skipif(not locks.SPEEDUPS, reason="the runs of unsampled waits are the C path's")
    def test_unsampled_waits_counted_in_runs_exactly(self, recorder: Recorder, no_threshold_events: None) -> None:
        """600 tasks through a three-slot semaphore: all but the first waits at the site are counted in
        C runs (issue 12), and the table, its site and the recorder still count every one of them."""
        name = unique("slots")
        n = 600
        before = locks._speedups.aio_run_waits()[0]

        async def main() -> None:
            sem = aio.Semaphore(3, name=name)

            async def fetch() -> None:
                async with sem:
                    await asyncio.sleep(0)

            await asyncio.gather(*(fetch() for _ in range(n)))

        asyncio.run(main())
        in_runs = locks._speedups.aio_run_waits()[0] - before
        # How many: as many as no other thread interrupts (a run ends when a report or a flush reads the table,
        # and when a new longest wait's task name is Python code that lets another thread in): 255 of 597 once
        # on 3.13 under load, all of them when alone. Every wait is counted either way (below).
        assert in_runs >= 1
        snap = recorder.snapshot()
        r = row(recorder, name)
        assert (r["acquisitions"], r["contentions"], r["timeouts"]) == (n, n - 3, 0)
        (site,) = r["hottest_sites"]
        assert site["function"] == "fetch" and site["waits"] == n - 3
        assert site["wait_total_s"] == pytest.approx(r["wait_total_s"])
        assert snap.counts["lock_wait"] == n - 3
        events = [e for e in snap.of_kind(LockWaitEvent) if e.lock_name == name]
        assert max(e.wait_s for e in events) == r["wait_max_s"]
        assert all(e.task_name and e.holder for e in events)

    @pytest.mark.skipif(not locks.SPEEDUPS, reason="the runs of unsampled waits are the C path's")
    def test_longest_wait_of_a_run_is_named_and_keeps_no_task(
        self, recorder: Recorder, no_threshold_events: None
    ) -> None:
        """Tasks queued on a three-slot semaphore each wait about as long as the one before and more, so many
        in turn are their run's longest wait so far: the kept longest wait names its task and holder, and
        once the table is read no task is kept alive by a record."""
        name = unique("slots")
        n = 300
        refs: list[weakref.ref[asyncio.Task[None]]] = []

        async def main() -> None:
            sem = aio.Semaphore(3, name=name)

            async def fetch() -> None:
                async with sem:
                    await asyncio.sleep(0)

            tasks = [asyncio.create_task(fetch(), name=f"fetch-{i}") for i in range(n)]
            refs.extend(weakref.ref(t) for t in tasks)
            await asyncio.gather(*tasks)
            del tasks

        asyncio.run(main())
        longest = _longest_wait_named(recorder, name, n)  # (reads the table: every run drained)
        assert "fetch-" in str(longest.holder)
        gc.collect()
        assert [ref for ref in refs if ref() is not None] == []

    @pytest.mark.skipif(not locks.SPEEDUPS, reason="the runs of unsampled waits are the C path's")
    def test_longest_wait_named_after_its_task_is_dropped(self, recorder: Recorder, no_threshold_events: None) -> None:
        """The run's longest wait is named when the table is read, not when it ends (issue 12): its task
        may have ended and been dropped by the program by then (fire-and-forget tasks), and is still
        named; meanwhile few tasks are kept (the longest, and a bounded few whose last reference a
        record held), and none once the table is read."""
        name = unique("slots")
        n = 300
        refs: list[weakref.ref[asyncio.Task[None]]] = []
        kept_before_read: list[int] = []

        async def main() -> None:
            sem = aio.Semaphore(3, name=name)
            done = asyncio.Event()
            left = [n]

            async def fetch() -> None:
                async with sem:
                    await asyncio.sleep(0)
                left[0] -= 1
                if not left[0]:
                    done.set()

            for i in range(n):  # (no reference kept: the loop drops each task once it is done)
                refs.append(weakref.ref(asyncio.create_task(fetch(), name=f"fetch-{i}")))
            await done.wait()

        asyncio.run(main())
        gc.collect()
        kept_before_read.append(sum(ref() is not None for ref in refs))
        _longest_wait_named(recorder, name, n)  # (reads the table: the run drained)
        assert kept_before_read[0] <= 50, kept_before_read
        gc.collect()
        assert [ref for ref in refs if ref() is not None] == []

    def test_waits_in_progress_are_in_the_table(self, recorder: Recorder) -> None:
        """Tasks still waiting on a semaphore are counted as contentions at their site while they
        wait (the C path counts an asyncio wait when it ends), and the registry names each of them."""
        name = unique("slots")
        seen: dict[str, Any] = {}

        async def main() -> None:
            sem = aio.Semaphore(1, name=name)
            await sem.acquire()

            async def fetch() -> None:
                async with sem:
                    pass

            tasks = [asyncio.create_task(fetch(), name=f"fetch-{i}") for i in range(5)]
            await until(lambda: len(state_of(sem).waiters) == 5)
            seen["row"] = row(recorder, name)
            seen["waiters"] = sorted(p.task_name or "" for p in state_of(sem).waiters)
            sem.release()
            await asyncio.gather(*tasks)

        asyncio.run(main())
        waiting = seen["row"]
        assert waiting["contentions"] == 5
        (site,) = waiting["hottest_sites"]
        assert site["waits"] == 5 and site["site"].startswith(f"{HERE}:")
        assert seen["waiters"] == [f"fetch-{i}" for i in range(5)]
        assert row(recorder, name)["contentions"] == 5


async def park_three(sem: aio.Semaphore) -> tuple[asyncio.Event, asyncio.Task[None], list[asyncio.Task[None]]]:
    """A task named "holder" holds the one-slot ``sem`` until the returned event is set, and three tasks
    "waiter-0".."waiter-2" are parked on it: (release, holder, waiters)."""
    release = asyncio.Event()

    async def holder() -> None:
        async with sem:
            await release.wait()

    async def waiter() -> None:
        async with sem:
            pass

    h = asyncio.create_task(holder(), name="holder")
    await until(sem.locked)
    return release, h, [asyncio.create_task(waiter(), name=f"waiter-{i}") for i in range(3)]


@pytest.mark.skipif(not locks.SPEEDUPS, reason="the C path's wait records and lock fields")
class TestWaitRecordsCost:
    """Parked tasks leave the garbage collector nothing of conctools' to walk (issue 12)."""

    def test_parked_waits_are_not_collector_objects(self, recorder: Recorder) -> None:
        """A task parked on a traced semaphore has a wait record and a key that the collector does not track,
        and the registry still names the waiting tasks and the holder; a cancelled waiter is collected."""
        name = unique("slots")

        async def main() -> None:
            sem = aio.Semaphore(1, name=name)
            release, h, waiters = await park_three(sem)
            await until(lambda: len(state_of(sem).waiters) == 3)
            records = dict(sem._ct_waiters or {})
            assert len(records) == 3
            assert not any(gc.is_tracked(w) for w in records.values())
            assert not any(gc.is_tracked(k) for k in records)
            st = state_of(sem)
            assert sorted(p.task_name for p in st.waiters) == ["waiter-0", "waiter-1", "waiter-2"]
            assert [p.task_name for p in st.holders] == ["holder"]
            gone = weakref.ref(waiters[0])
            waiters[0].cancel()
            await until(waiters[0].done)
            assert waiters[0].cancelled()
            del waiters[0], records, st
            gc.collect()
            assert gone() is None
            release.set()
            await asyncio.gather(h, *waiters)

        asyncio.run(main())
        r = row(recorder, name)
        assert (r["acquisitions"], r["contentions"]) == (3, 3)

    def test_waits_enter_the_tables_only_when_read(self, recorder: Recorder) -> None:
        """A task's wait on a traced semaphore is not put in the waiters tables when it begins (issue 12): a
        wait that ends unread never enters them, a reader sees every wait in progress (registry.waiting_on,
        the primitive's state), and the watchdog's read leaves out waits younger than its interval."""
        from conctools import _speedups

        name = unique("slots")

        async def main() -> None:
            sem = aio.Semaphore(1, name=name)
            me = threading.get_ident()

            # Short waits, never read: none enters the tables; each is counted.
            async def brief(i: int) -> None:
                async with sem:
                    await asyncio.sleep(0)

            await asyncio.gather(*(brief(i) for i in range(20)))
            assert _speedups.young_waits() == 0
            assert not sem._ct_waiters and not any(k[0] == me for k in registry._waiting)
            # Waits in progress: young until something reads them.
            release, h, waiters = await park_three(sem)
            await until(lambda: _speedups.young_waits() == 3)
            assert not sem._ct_waiters
            registry.promote_waits(3600.0)  # (the watchdog's read: only waits older than its interval)
            assert _speedups.young_waits() == 3 and not sem._ct_waiters
            st = registry.waiting_on(me, id(waiters[1]))
            assert st is not None and st.name == name
            assert _speedups.young_waits() == 0 and len(sem._ct_waiters) == 3
            assert sorted(p.task_name for p in state_of(sem).waiters) == ["waiter-0", "waiter-1", "waiter-2"]
            release.set()
            await asyncio.gather(h, *waiters)
            assert not sem._ct_waiters and not any(k[0] == me for k in registry._waiting)

        asyncio.run(main())
        r = row(recorder, name)
        assert (r["acquisitions"], r["contentions"]) == (24, 19 + 3)

    def test_promoting_from_another_thread_leaves_no_ended_wait(self, recorder: Recorder) -> None:
        """Waits promoted by another thread (the watchdog's, a console's) while they begin and end leave
        nothing in the tables once every wait is over: no phantom waiter for the watchdog to find."""
        name = unique("slots")
        done = threading.Event()
        loop_thread: list[int] = []

        async def main() -> None:
            loop_thread.append(threading.get_ident())
            sem = aio.Semaphore(2, name=name)

            async def brief() -> None:
                async with sem:
                    await asyncio.sleep(0)

            for _ in range(40):
                await asyncio.gather(*(brief() for _ in range(50)))
            assert not sem._ct_waiters

        def promote() -> None:
            while not done.is_set():
                registry.promote_waits()

        t = threading.Thread(target=promote)
        t.start()
        try:
            asyncio.run(main())
        finally:
            done.set()
            t.join()
        registry.promote_waits()
        assert not any(k[0] == loop_thread[0] for k in registry._waiting)
        assert row(recorder, name)["contentions"] == 40 * 48

    def test_lock_fields_are_slots(self, recorder: Recorder) -> None:
        """An aio.Lock keeps its holder and lock-order fields in C slots (read by aio_took and aio_released
        without attribute lookups), not in its instance dict, and they still name the holder."""

        async def main() -> None:
            lock = aio.Lock(name=unique("fields"))
            async with lock:
                assert lock._ct_owner is asyncio.current_task()
                assert not {"_ct_owner", "_ct_since", "_ct_entry", "_ct_holdstack"} & set(vars(lock))
            assert lock._ct_owner is None

        asyncio.run(main())


class TestSemaphoreAsyncWith:
    """`async with` a traced semaphore: asyncio's own acquire() does the acquisition and conctools watches it
    (with the C extension, from an awaitable with no Python frame: issue 12); the program sees asyncio's."""

    def test_wait_names_the_task_the_holder_and_the_line(self, recorder: Recorder) -> None:
        """A contended `async with` is one wait event: the waiting task, the holding task, the line of the
        `async with`; the acquisitions and contentions are counted exactly; the value is None."""
        name = unique("slots")
        line: list[int] = []
        values: list[Any] = []

        async def main() -> None:
            sem = aio.Semaphore(1, name=name)
            release = asyncio.Event()

            async def holder() -> None:
                async with sem:
                    await release.wait()

            async def waiter() -> None:
                line.append(sys._getframe(0).f_lineno + 1)
                async with sem as value:
                    values.append(value)

            h = asyncio.create_task(holder(), name="holder")
            await until(sem.locked)
            w = asyncio.create_task(waiter(), name="waiter")
            await until(lambda: state_of(sem).waiters)
            assert [p.task_name for p in state_of(sem).waiters] == ["waiter"]
            assert [p.task_name for p in state_of(sem).holders] == ["holder"]
            await asyncio.sleep(0.01)
            release.set()
            await asyncio.gather(h, w)
            assert not state_of(sem).waiters and not state_of(sem).holders and not sem.locked()

        asyncio.run(main())
        assert values == [None]
        (e,) = recorder.snapshot().of_kind(LockWaitEvent)
        assert (e.lock_kind, e.task_name, e.acquired) == ("aio.Semaphore", "waiter", True)
        assert "holder" in (e.holder or "") and e.site == f"{HERE}:{line[0]}"
        r = row(recorder, name)
        assert (r["acquisitions"], r["contentions"]) == (2, 1)

    def test_cancelled_while_waiting_or_once_woken(self, recorder: Recorder) -> None:
        """A waiter cancelled in its wait, and one cancelled after its wake-up but before it ran (the
        cancellation thrown into asyncio's acquire(), which hands the slot on): neither holds the
        semaphore, both waits end not acquired, and the third waiter gets the slot."""
        name = unique("slots")
        got: list[str] = []

        async def main() -> None:
            sem = aio.Semaphore(1, name=name)
            await sem.acquire()

            async def waiter(label: str) -> None:
                async with sem:
                    got.append(label)

            tasks = [asyncio.create_task(waiter(f"w{i}"), name=f"w{i}") for i in range(3)]
            await until(lambda: len(state_of(sem).waiters) == 3)
            tasks[0].cancel()  # in its wait
            await until(tasks[0].done)
            sem.release()  # wakes w1 ...
            tasks[1].cancel()  # ... which is cancelled before it runs: thrown into acquire()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert [type(r).__name__ for r in results] == ["CancelledError", "CancelledError", "NoneType"]
            assert got == ["w2"] and not sem.locked() and sem._value == 1
            assert not state_of(sem).waiters and not state_of(sem).holders

        asyncio.run(main())
        events = {e.task_name: e for e in recorder.snapshot().of_kind(LockWaitEvent)}
        assert (events["w0"].acquired, events["w1"].acquired, events["w2"].acquired) == (False, False, True)

    def test_a_dropped_wait_leaves_no_wait_behind(self, recorder: Recorder) -> None:
        """An `__aenter__()` dropped in its wait (driven by hand, then let go) ends its wait, not acquired,
        and leaves the semaphore as asyncio's acquire() leaves it."""
        name = unique("slots")

        async def main() -> None:
            sem = aio.Semaphore(1, name=name)
            await sem.acquire()
            enter = sem.__aenter__()
            future = enter.send(None)  # asyncio's acquire() waits on this future
            assert isinstance(future, asyncio.Future) and list(sem._waiters or ()) == [future]
            assert len(state_of(sem).waiters) == 1
            del enter
            gc.collect()
            assert not state_of(sem).waiters and not sem._waiters
            sem.release()
            assert not sem.locked()
            if locks.SPEEDUPS:
                from conctools import _speedups

                assert _speedups.young_waits() == 0

        asyncio.run(main())
        (e,) = recorder.snapshot().of_kind(LockWaitEvent)
        assert e.acquired is False

    def test_driven_by_next_as_await_does_from_312(self) -> None:
        """`await` drives `__aenter__()` through `__next__` from Python 3.12 (3.11: `send`): the acquisition
        yields asyncio's future while it waits, and ends as an exhausted iterator does (StopIteration, the
        value None), whether it waited or not."""

        async def main() -> None:
            sem = aio.Semaphore(1)
            steps = sem.__aenter__().__await__()
            with pytest.raises(StopIteration) as stop:
                next(steps)  # free: acquired at once
            assert stop.value.value is None and sem.locked()
            steps = sem.__aenter__().__await__()
            future = next(steps)  # taken: asyncio's acquire() waits on this future
            assert isinstance(future, asyncio.Future) and list(sem._waiters or ()) == [future]
            sem.release()  # hands the slot to the waiter
            with pytest.raises(StopIteration) as stop:
                next(steps)
            assert stop.value.value is None and sem.locked() and not sem._waiters
            with pytest.raises(RuntimeError, match="already awaited"):
                next(steps)
            sem.release()
            assert not sem.locked()

        asyncio.run(main())

    def test_awaited_once_and_a_warning_when_never_awaited(self) -> None:
        """`__aenter__()` is awaited once, as a coroutine is; one never awaited warns, as asyncio's does."""
        import warnings

        async def main() -> None:
            sem = aio.Semaphore(1)
            enter = sem.__aenter__()
            await enter
            with pytest.raises(RuntimeError, match="already awaited"):
                await enter
            sem.release()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                sem.__aenter__()  # never awaited
                gc.collect()
            assert any("never awaited" in str(w.message) for w in caught), caught
            assert not sem.locked()

        asyncio.run(main())

    def test_a_subclass_that_overrides_acquire_or_release_is_called(self) -> None:
        """A program's subclass of the traced Lock or Semaphore (as `class X(asyncio.Semaphore)` makes under
        trace_locks()) that overrides acquire() or release() has them called by `async with`, as asyncio's
        own __aenter__/__aexit__ do."""
        calls: list[str] = []

        class LoggedSemaphore(aio.Semaphore):
            async def acquire(self) -> Any:
                calls.append("sem.acquire")
                return await super().acquire()

        class LoggedLock(aio.Lock):
            def release(self) -> None:
                calls.append("lock.release")
                super().release()

        class Bounded(aio.BoundedSemaphore):
            pass

        async def main() -> None:
            sem, lock, bounded = LoggedSemaphore(1), LoggedLock(), Bounded(1)
            async with sem, lock, bounded:
                assert sem.locked() and lock.locked() and bounded.locked()
            assert not sem.locked() and not lock.locked() and not bounded.locked()

        asyncio.run(main())
        assert calls == ["sem.acquire", "lock.release"]
        assert Bounded.__aenter__ is aio.BoundedSemaphore.__aenter__  # no override: the traced path stays


class TestAsyncWithStepsInC:
    """With the C extension, `async with` on a traced Lock or Semaphore runs no coroutine of conctools' own
    (issue 12): their __aenter__()/__aexit__() return a small awaitable that does the common case in C and
    otherwise runs the Python method as its coroutine. It must behave as asyncio's coroutines do."""

    pytestmark = pytest.mark.skipif(
        aio._C_STEPS is None, reason="the C extension's awaitables (CONCTOOLS_PURE_PYTHON=1 or no compiler)"
    )

    def test_lock_enter_and_exit_count_and_name_the_holder(self, recorder: Recorder) -> None:
        """A free lock taken by the C step: held by the task, counted; the exit releases it."""
        name = unique("steps")

        async def main() -> None:
            lock = aio.Lock(name=name)
            assert type(lock.__aenter__()).__name__ == "AwaitStep"  # (never awaited: warns, collected below)
            async with lock:
                assert lock.locked()
                assert [p.task_name for p in state_of(lock).holders] == ["holder"]
            assert not lock.locked() and not state_of(lock).holders

        with pytest.warns(RuntimeWarning, match="never awaited"):
            asyncio.run(_named(main))
            gc.collect()
        assert row(recorder, name)["acquisitions"] == 1

    @pytest.mark.parametrize("kind", ["Lock", "Semaphore", "BoundedSemaphore"])
    def test_methods_read_on_the_object_are_the_steps(self, kind: str) -> None:
        """`__aenter__`/`__aexit__` read on the object (as `async with` reads them) are the step itself, which
        stands for the bound method (issue 12: no method object per `async with` half): reading them warns of
        nothing; each call gives an awaitable of its own; the uncalled one cannot be awaited, as a bound
        method cannot; bad arguments raise; on the class they are one descriptor each, callable with the
        object first; a subclass's `super().__aenter__()` and an exception in the block work as before."""
        cls = getattr(aio, kind)

        class Sub(cls):  # type: ignore[misc,valid-type]
            entered = False

            async def __aenter__(self) -> None:
                await super().__aenter__()
                self.entered = True

        async def main() -> None:
            prim = cls()
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                enter, exit_ = prim.__aenter__, prim.__aexit__
                assert callable(enter) and callable(exit_)
                del enter, exit_
                gc.collect()  # (never called: no "never awaited" warning)
                with pytest.raises(TypeError, match="can't be used in 'await' expression"):
                    await prim.__aenter__  # type: ignore[misc]
                gc.collect()
                bound = prim.__aenter__
                first = bound()
                await first
                assert prim.locked()
                await prim.__aexit__(None, None, None)
                second = bound()
                assert second is not first
                await second
                await cls.__aexit__(prim, None, None, None)
                await cls.__aenter__(prim)
                await prim.__aexit__(None, None, None)
                assert not prim.locked()
                with pytest.raises(TypeError):
                    prim.__aexit__(None)
                with pytest.raises(TypeError):
                    prim.__aenter__(1)
                assert cls.__aenter__ is cls.__aenter__ and type(cls.__aenter__).__name__ == "StepDescr"
                assert (cls.__aenter__.__name__, cls.__aexit__.__name__) == ("__aenter__", "__aexit__")
                sub = Sub()
                async with sub:
                    assert sub.entered and sub.locked()
                assert not sub.locked()
                with pytest.raises(KeyError):
                    async with prim:
                        raise KeyError("in the block")
                assert not prim.locked()
                async with contextlib.AsyncExitStack() as stack:  # (reads them on the class, binds by hand)
                    await stack.enter_async_context(prim)
                    assert prim.locked()
                assert not prim.locked()

        asyncio.run(main())

    def test_lock_wait_through_the_step(self, recorder: Recorder) -> None:
        """A taken lock: the step runs the Python method, which waits on asyncio's future; the await chain
        goes through it (cr_await) to asyncio's acquire(); a cancellation thrown in ends the wait, not
        acquired, and leaves no waiter behind."""

        async def main() -> None:
            lock = aio.Lock()
            await lock.acquire()
            enter = lock.__aenter__()
            future = enter.send(None)  # asyncio's acquire() waits on this future
            assert isinstance(future, asyncio.Future) and list(lock._waiters or ()) == [future]
            assert enter.cr_frame is not None and enter.cr_await is not None
            assert enter.cr_await.cr_code.co_name == "acquire"
            with pytest.raises(asyncio.CancelledError):
                enter.throw(asyncio.CancelledError())
            assert enter.cr_frame is None and not lock._waiters and not state_of(lock).waiters
            with pytest.raises(RuntimeError, match="already awaited"):
                enter.send(None)
            lock.release()
            assert not lock.locked()

        asyncio.run(main())
        (e,) = recorder.snapshot().of_kind(LockWaitEvent)
        assert e.acquired is False

    def test_driven_by_next_and_awaited_once(self) -> None:
        """`await` drives the steps with `__next__` from 3.12: a free lock is taken at once (StopIteration,
        value None); a taken one yields asyncio's future, then ends with the lock held; a step awaited
        twice raises as a coroutine does; an exit of a lock not held raises asyncio's RuntimeError."""

        async def main() -> None:
            lock = aio.Lock()
            steps = lock.__aenter__().__await__()
            with pytest.raises(StopIteration) as stop:
                next(steps)
            assert stop.value.value is None and lock.locked()
            with pytest.raises(RuntimeError, match="already awaited"):
                next(steps)
            waiting = lock.__aenter__().__await__()
            future = next(waiting)
            assert isinstance(future, asyncio.Future)
            exit_ = lock.__aexit__(None, None, None)
            await exit_  # hands the lock to the waiter
            with pytest.raises(RuntimeError, match="already awaited"):
                await exit_
            with pytest.raises(StopIteration):
                next(waiting)
            assert lock.locked() and not lock._waiters
            await lock.__aexit__(None, None, None)
            with pytest.raises(RuntimeError, match="Lock is not acquired"):
                await lock.__aexit__(None, None, None)
            with pytest.raises(TypeError):
                lock.__aexit__(None)  # type: ignore[call-arg]

        asyncio.run(main())

    def test_a_free_semaphore_slot_is_taken_in_c_with_its_holder(self, recorder: Recorder) -> None:
        """A free slot of a Semaphore or BoundedSemaphore is taken without asyncio's coroutine (the step
        ends at its first send), counted, its task among the holders; the exit's release in C hands the
        slot back and forgets the holder; a BoundedSemaphore still refuses a release too many."""
        name = unique("slots")

        async def main() -> None:
            sem, bounded = aio.Semaphore(2, name=name), aio.BoundedSemaphore(1)
            steps = sem.__aenter__().__await__()
            with pytest.raises(StopIteration):
                next(steps)  # taken at the first step: nothing to wait for
            assert sem._value == 1 and [p.task_name for p in state_of(sem).holders] == ["holder"]
            async with sem:
                assert sem._value == 0 and sem.locked() and len(state_of(sem).holders) == 2
            assert sem._value == 1 and len(state_of(sem).holders) == 1
            await sem.__aexit__(None, None, None)
            assert sem._value == 2 and not state_of(sem).holders and not sem.locked()
            async with bounded:
                assert bounded.locked()
            with pytest.raises(ValueError):
                await bounded.__aexit__(None, None, None)

        asyncio.run(_named(main))
        assert row(recorder, name)["acquisitions"] == 2
        assert not recorder.snapshot().of_kind(LockWaitEvent)

    def test_a_semaphore_release_wakes_the_next_waiter(self, recorder: Recorder) -> None:
        """The C release wakes a waiting task (asyncio's _wake_up_next()), which then holds the slot; the
        release by another task than the holder forgets the oldest holder, as the Python release does."""

        async def main() -> None:
            sem = aio.Semaphore(1)
            order: list[str] = []

            async def user(label: str) -> None:
                async with sem:
                    order.append(label)
                    await asyncio.sleep(0)

            tasks = [asyncio.create_task(user(f"u{i}"), name=f"u{i}") for i in range(3)]
            await asyncio.gather(*tasks)
            assert order == ["u0", "u1", "u2"] and sem._value == 1 and not state_of(sem).holders
            await sem.acquire()
            other = asyncio.create_task(sem.__aexit__(None, None, None), name="other")
            await other  # a release by a task that holds nothing
            assert sem._value == 1 and not state_of(sem).holders

        asyncio.run(main())
        assert len(recorder.snapshot().of_kind(LockWaitEvent)) == 2


def _named(main: Any) -> Any:
    """main() run as a task named 'holder'."""

    async def run() -> None:
        await asyncio.create_task(main(), name="holder")

    return run()


# -- 3.13+: attribute access on traced primitives is specialized ------------------------------------------


def _load_attr_ops(expr: str, obj: Any) -> list[str]:
    """The LOAD_ATTR instructions of a fresh ``lambda o: <expr>`` after 200 calls on ``obj``, as the
    specializing interpreter left them (``LOAD_ATTR``: generic; ``LOAD_ATTR_...``: specialized)."""
    import dis

    reader = eval(compile(f"lambda o: {expr}", f"<{expr}>", "eval"))
    for _ in range(200):
        reader(obj)
    return [i.opname for i in dis.get_instructions(reader, adaptive=True) if i.opname.startswith("LOAD_ATTR")]


@pytest.mark.skipif(
    sys.version_info < (3, 13) or not locks.SPEEDUPS,
    reason="3.13+ with the C extension only: 3.11 and 3.12 specialize the split dicts of classes with a C base",
)
def test_attribute_access_to_traced_primitives_is_specialized_from_313() -> None:
    """On 3.13, a class whose base has C fields (every Python-level traced primitive, and pool blame's
    PoolState) gets no inline values, and a split attribute dict, which the interpreter does not
    specialize: each access took the generic lookup (asyncio's own ``self._value`` in acquire()).
    conctools gives each such instance a dict of its own, which it does; asyncio's Lock and Semaphore
    keep every attribute in slots, with no dict at all, so that method calls are specialized too."""

    class Plain:
        def __init__(self) -> None:
            self._value = 1

        def locked(self) -> bool:
            return False

    if _load_attr_ops("o._value", Plain()) == ["LOAD_ATTR"]:
        pytest.skip("this interpreter specializes no attribute access (a tracer or coverage is on)")
    from conctools.pools._state import PoolState

    async def make() -> list[tuple[Any, str]]:
        with locks.trace_locks():
            made = [
                (asyncio.Semaphore(2), "o._value"),
                (asyncio.Semaphore(2), "o.locked()"),
                (asyncio.BoundedSemaphore(2), "o._bound_value"),
                (asyncio.Lock(), "o._locked"),
                (asyncio.Lock(), "o.locked()"),
                (asyncio.Event(), "o._value"),
                (threading.Semaphore(2), "o._value"),
                (threading.BoundedSemaphore(2), "o._initial_value"),
                (threading.Event(), "o.is_set()"),
                (threading.Barrier(2), "o._parties"),
            ]
            for prim, _ in made[:5]:  # (used: asyncio binds a loop, a waiter deque)
                async with prim:
                    pass
        for prim, _ in made[6:8]:
            with prim:
                pass
        return made

    made = asyncio.run(make())
    assert type(made[0][0]) is aio.Semaphore and type(made[3][0]) is aio.Lock and type(made[6][0]) is locks.Semaphore
    made.append((PoolState("asyncio.Queue", "items", None, "here.py:1", object()), "o.wait_hist"))
    for obj, expr in made:
        ops = _load_attr_ops(expr, obj)
        assert ops and "LOAD_ATTR" not in ops, (type(obj).__qualname__, expr, ops)
    for prim, _ in made[:5] + made[6:9]:  # no attribute dict made (asyncio's Event and the Barrier have one)
        assert not any(type(r) is dict for r in gc.get_referents(prim)), type(prim).__qualname__
    # Attributes read and stored as ever; a new one goes to a dict
    sem = made[0][0]
    sem.extra = 5
    assert vars(sem) == {"extra": 5} and sem._value == 2 and sem._loop is None and sem.locked() is False
