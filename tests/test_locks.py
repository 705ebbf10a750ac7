"""Traced threading primitives, the lock table, the wait registry, trace_locks() and `conctools run`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import conctools
from conctools import aio, lockorder, registry
from conctools.events import LockOrderEvent, LockWaitEvent
from conctools.locks import HOLD_SAMPLE, lock_table, trace_locks
from conctools.recorder import Recorder

HERE = Path(__file__).name


def lineno() -> int:
    """The caller's line number."""
    return sys._getframe(1).f_lineno


def wait_until(predicate: Callable[[], object], timeout_s: float = 10.0) -> None:
    """Poll ``predicate`` until it is true (event-based tests still need to see a blocked thread)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


def state_of(prim: object) -> registry.PrimitiveState:
    """The registry's view of one primitive."""
    for st in registry.primitives():
        if st.prim_id == id(prim):
            return st
    raise AssertionError("primitive not in the registry")


def row(rec: Recorder, name: str) -> dict[str, Any]:
    """The lock table row called ``name``."""
    rows = [r for r in rec.snapshot().sections.get("locks", []) if r["name"] == name]
    assert rows, f"no lock table row {name!r}"
    return rows[0]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def hold_in_thread(lock: Any, name: str = "holder") -> tuple[threading.Thread, threading.Event]:
    """Start a thread that takes ``lock`` and keeps it until the returned event is set."""
    held = threading.Event()
    release = threading.Event()

    def run() -> None:
        with lock:
            held.set()
            release.wait(30)

    t = threading.Thread(target=run, name=name)
    t.start()
    assert held.wait(10)
    return t, release


class TestLockContention:
    """A contended acquisition is recorded with the waiter, the holder, the wait and the site."""

    def test_contended_wait_names_waiter_holder_and_site(self, recorder: Recorder) -> None:
        """The LockWaitEvent names both threads, the wait time and the acquire line."""
        lock = conctools.Lock(name="accounts")
        holder, release = hold_in_thread(lock)
        site_line = 0

        def waiter() -> None:
            nonlocal site_line
            site_line = lineno() + 1
            with lock:
                pass

        w = threading.Thread(target=waiter, name="waiter")
        w.start()
        wait_until(lambda: state_of(lock).waiters)
        time.sleep(0.05)  # the wait must last measurably; no bound is asserted on it
        release.set()
        w.join(10)
        holder.join(10)
        events = recorder.snapshot().of_kind(LockWaitEvent)
        assert len(events) == 1
        e = events[0]
        assert (e.lock_name, e.lock_kind, e.thread_name, e.holder) == ("accounts", "Lock", "waiter", "thread 'holder'")
        assert e.acquired is True
        assert e.wait_s > 0.01
        assert e.site == f"{HERE}:{site_line}"
        assert e.stack and e.stack[0].function == "waiter"

    def test_registry_shows_holder_and_waiter(self, recorder: Recorder) -> None:
        """While one thread holds and another waits, the registry knows both, by name and site."""
        lock = conctools.Lock(name="reg")
        holder, release = hold_in_thread(lock, name="the-holder")

        def waiter() -> None:
            with lock:
                pass

        w = threading.Thread(target=waiter, name="the-waiter")
        w.start()
        wait_until(lambda: state_of(lock).waiters)
        st = state_of(lock)
        assert [h.thread_name for h in st.holders] == ["the-holder"]
        assert [p.thread_name for p in st.waiters] == ["the-waiter"]
        assert st.waiters[0].site.startswith(f"{HERE}:")
        assert registry.waiting_on(w.ident or 0) == st
        release.set()
        w.join(10)
        holder.join(10)
        assert registry.waiting_on(w.ident or 0) is None
        assert not state_of(lock).waiters and not state_of(lock).holders

    def test_uncontended_acquisitions_count_exactly_without_events(self, recorder: Recorder) -> None:
        """1000 uncontended acquisitions: counted exactly, no wait events."""
        name = unique("quiet")
        lock = conctools.Lock(name=name)
        for _ in range(500):
            with lock:
                pass
        for _ in range(500):
            lock.acquire()
            lock.release()
        r = row(recorder, name)
        assert (r["acquisitions"], r["contentions"]) == (1000, 0)
        assert not recorder.snapshot().of_kind(LockWaitEvent)

    def test_timeout_is_a_contention_not_acquired(self, recorder: Recorder) -> None:
        """acquire(timeout=) that gives up returns False and records acquired=False."""
        name = unique("timeout")
        lock = conctools.Lock(name=name)
        holder, release = hold_in_thread(lock)
        assert lock.acquire(timeout=0.05) is False
        assert lock.acquire(blocking=False) is False
        release.set()
        holder.join(10)
        (e,) = recorder.snapshot().of_kind(LockWaitEvent)
        assert e.acquired is False
        r = row(recorder, name)
        assert (r["contentions"], r["timeouts"]) == (1, 1)

    def test_unnamed_lock_is_named_by_its_creation_site(self, recorder: Recorder) -> None:
        """Without name=, a lock is called file.py:LINE of the line that created it."""
        line = lineno() + 1
        lock = conctools.Lock()
        assert f"name='{HERE}:{line}'" in repr(lock)
        assert state_of(lock).name == state_of(lock).created_at == f"{HERE}:{line}"

    def test_lock_table_sorted_by_total_wait(self, recorder: Recorder) -> None:
        """The lock with more total wait comes first; hold times are sampled after a contention."""
        busy, idle = conctools.Lock(name=unique("busy")), conctools.Lock(name=unique("idle"))
        with idle:
            pass
        holder, release = hold_in_thread(busy)
        threading.Timer(0.05, release.set).start()
        with busy:
            pass
        holder.join(10)
        for _ in range(HOLD_SAMPLE):  # holds are sampled: one in HOLD_SAMPLE uncontended ones
            with busy:
                pass
        names = [r["name"] for r in recorder.snapshot().sections["locks"]]
        assert names.index(busy._ct_name) < names.index(idle._ct_name)
        r = row(recorder, busy._ct_name)
        assert r["wait_total_s"] > 0.01 and r["wait_max_s"] >= r["wait_p50_s"] > 0
        assert r["hold_count"] >= 1 and r["hottest_sites"][0]["site"].startswith(f"{HERE}:")

    def test_waits_for_a_signal_are_not_listed_as_lock_contention(self, recorder: Recorder) -> None:
        """A consumer waiting on an empty queue: its Condition waits go to their own table, not the lock table."""
        from conctools.reporting.locks_text import lock_table_section

        with trace_locks():
            q: queue.Queue[int] = queue.Queue()
        consumer = threading.Thread(target=q.get)
        consumer.start()
        wait_until(lambda: registry.waiting_on(consumer.ident or 0) is not None)
        q.put(1)
        consumer.join(10)
        text = lock_table_section(recorder.snapshot(), brief=False) or ""
        locks_part, _, signals_part = text.partition("Waits for a signal")
        assert "(queue.Queue.__init__)  Condition" in signals_part
        assert "Condition" not in locks_part
        assert "(queue.Queue.__init__)  Lock" in locks_part

    def test_invalid_arguments_raise_like_the_stdlib(self) -> None:
        """Bad acquire() arguments raise exactly what threading.Lock raises, and do not take the lock."""
        for make in (threading.Lock, conctools.Lock):
            lock = make()
            with pytest.raises(ValueError):
                lock.acquire(False, 1)
            with pytest.raises(ValueError):
                lock.acquire(timeout=-5)
            with pytest.raises(OverflowError):
                lock.acquire(timeout=1e100)
            assert not lock.locked()


class TestRLock:
    """Re-entry, ownership and the private API the stdlib's Condition relies on."""

    def test_reentry_is_not_a_contention(self, recorder: Recorder) -> None:
        """Re-entering an RLock counts acquisitions, records no wait, and tracks the depth."""
        name = unique("rlock")
        r = conctools.RLock(name=name)
        with r:
            with r:
                assert r._recursion_count() == 2 and r._is_owned()
                assert [h.thread_name for h in state_of(r).holders] == [threading.current_thread().name]
        assert r._recursion_count() == 0 and not state_of(r).holders
        assert row(recorder, name)["acquisitions"] == 2
        assert not recorder.snapshot().of_kind(LockWaitEvent)

    def test_release_by_another_thread_fails_and_keeps_state(self) -> None:
        """A thread that does not own the RLock cannot release it; the owner still holds it."""
        r = conctools.RLock()
        r.acquire()
        errors: list[BaseException] = []

        def other() -> None:
            try:
                r.release()
            except RuntimeError as exc:
                errors.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join(10)
        assert len(errors) == 1
        assert r._is_owned() and state_of(r).holders
        r.release()
        assert not state_of(r).holders

    def test_contended_rlock_records_holder(self, recorder: Recorder) -> None:
        """A wait on an RLock held (re-entrantly) by another thread names that thread."""
        r = conctools.RLock(name=unique("rl"))
        held, release = threading.Event(), threading.Event()

        def holder() -> None:
            with r, r:
                held.set()
                release.wait(30)

        t = threading.Thread(target=holder, name="re-entrant")
        t.start()
        assert held.wait(10)
        threading.Timer(0.05, release.set).start()
        with r:
            pass
        t.join(10)
        (e,) = recorder.snapshot().of_kind(LockWaitEvent)
        assert e.holder == "thread 're-entrant'" and e.lock_kind == "RLock"


class TestCondition:
    """Condition wait/notify through a traced RLock."""

    def test_wait_notify_through_traced_rlock(self, recorder: Recorder) -> None:
        """The default lock is a traced RLock; the waiter shows in the registry until notified."""
        cond = conctools.Condition(name=unique("cond"))
        assert isinstance(cond._lock, conctools.RLock)
        items: list[int] = []
        got: list[int] = []

        def consumer() -> None:
            with cond:
                while not items:
                    cond.wait(30)
                got.append(items.pop())

        t = threading.Thread(target=consumer, name="consumer")
        t.start()
        wait_until(lambda: state_of(cond).waiters)
        assert state_of(cond).waiters[0].thread_name == "consumer"
        assert state_of(cond).waiters[0].timeout_s == 30
        with cond:
            items.append(7)
            cond.notify()
        t.join(10)
        assert got == [7]
        assert not state_of(cond).waiters
        assert row(recorder, cond._lock._ct_name)["acquisitions"] >= 2

    def test_wait_for_and_notify_all(self) -> None:
        """wait_for() with a predicate and notify_all() wake every waiter."""
        cond = conctools.Condition()
        flag: list[bool] = []
        done = []

        def waiter() -> None:
            with cond:
                done.append(bool(cond.wait_for(lambda: flag, timeout=30)))

        threads = [threading.Thread(target=waiter) for _ in range(3)]
        for t in threads:
            t.start()
        wait_until(lambda: len(state_of(cond).waiters) == 3)
        with cond:
            flag.append(True)
            cond.notify_all()
        for t in threads:
            t.join(10)
        assert done == [True, True, True]

    @pytest.mark.skipif(sys.version_info >= (3, 14), reason="the stdlib's own __init__ binds them from 3.14 on")
    def test_lock_methods_bound_on_first_use(self) -> None:
        """A default Condition binds its lock's acquire/release/_release_save/_acquire_restore only
        when used (a Future's condition never uses them): then they are the lock's own methods. With
        the C extension, acquire/release are never bound: they are forwarded to the lock's in C."""
        cond = conctools.Condition()
        lazy = ("acquire", "release", "_release_save", "_acquire_restore")
        assert not set(lazy) & set(vars(cond))
        with cond:  # `with` and notify() need none of them
            cond.notify_all()
        assert not set(lazy) & set(vars(cond))
        assert cond.acquire(timeout=1) is True
        assert cond.acquire() is True  # re-entrant, as the stdlib's default RLock
        assert cond._lock._recursion_count() == 2 and cond._is_owned()
        cond.release()
        cond.release()
        assert not cond._is_owned()
        if conctools.locks.SPEEDUPS:
            assert not {"acquire", "release"} & set(vars(cond))  # (forwarded, not bound)
        else:
            assert cond.acquire == cond._lock.acquire and cond.release == cond._lock.release
            assert vars(cond)["acquire"] == cond._lock.acquire
        assert cond.acquire()
        assert cond.wait(0.01) is False  # wait() binds the other two
        cond.release()
        assert vars(cond)["_release_save"] == cond._lock._release_save
        with pytest.raises(RuntimeError):
            cond.release()  # the lock's own error: not held

    def test_subclass_methods_lose_to_the_locks_as_in_the_stdlib(self) -> None:
        """A subclass's own acquire() is shadowed by the lock's, as threading.Condition.__init__ does."""
        calls: list[str] = []

        class Mine(conctools.Condition):
            def acquire(self, *args: Any) -> bool:
                calls.append("mine")
                return True

        cond = Mine()
        assert cond.acquire() is True
        cond.release()
        assert calls == []

    def test_condition_over_plain_lock_waits(self) -> None:
        """Over a lock without _release_save (a traced Lock), wait() uses the stdlib's emulation."""
        cond = conctools.Condition(conctools.Lock())
        with cond:
            assert cond.wait(0.01) is False
            assert cond._lock.locked()
        assert not cond._lock.locked()
        assert "_release_save" not in vars(cond)

    def test_a_futures_condition_keeps_no_instance_dict(self) -> None:
        """With the C extension, a Future's condition keeps its lock, its waiters and its lock's ``_is_owned``
        in slots and makes no instance dict (on 3.13 the dict cost ~340 bytes per Future: issue 12)."""
        import gc

        from conctools import locks

        if not locks.SPEEDUPS:
            pytest.skip("the C extension is not in use (the pure path keeps the stdlib's layout)")
        with trace_locks():
            future: concurrent.futures.Future[int] = concurrent.futures.Future()
        cond = future._condition  # type: ignore[attr-defined]
        threading.Thread(target=future.set_result, args=(1,)).start()  # notify_all() calls _is_owned()
        assert future.result(10) == 1
        assert isinstance(cond, conctools.Condition) and isinstance(cond._lock, conctools.RLock)
        assert not any(type(r) is dict for r in gc.get_referents(cond)), gc.get_referents(cond)
        assert cond._is_owned() is False
        with cond:
            assert cond._is_owned() is True

    def test_with_enters_the_lock_that_attribute_access_finds(self) -> None:
        """A traced Condition's ``with`` reads its ``_lock`` slot in place (C extension) only while the class's
        ``_lock`` is that slot: a class attribute put over it later (here a property) is what ``with`` enters,
        as attribute access would find it, and once the slot is back, the condition's own lock is entered
        again. A subclass's override is always honoured."""
        from conctools import locks

        with trace_locks():
            cond = threading.Condition()
            other = threading.RLock()

            class Sub(threading.Condition):
                @property
                def _lock(self) -> Any:  # type: ignore[override]
                    return other

                @_lock.setter
                def _lock(self, value: Any) -> None:
                    pass

            sub = Sub()
        own = cond._lock
        with cond:
            assert own._is_owned() and not other._is_owned()
        slot = locks.Condition.__dict__.get("_lock")  # (None on the pure path: an instance attribute)
        locks.Condition._lock = property(lambda self: other)  # type: ignore[assignment,method-assign]
        try:
            with cond:
                assert other._is_owned() and not own._is_owned()
        finally:
            if slot is None:
                del locks.Condition._lock
            else:
                locks.Condition._lock = slot  # type: ignore[assignment,method-assign]
        with cond:
            assert own._is_owned() and not other._is_owned()
        with sub:
            assert other._is_owned()
        assert not other._is_owned() and not own._is_owned()

    def test_is_owned_as_the_stdlib_binds_it(self) -> None:
        """``_is_owned`` is the lock's own where it has one, the class's probe where it has not, and a
        subclass's own ``_is_owned`` loses to the lock's, as with ``threading.Condition``."""

        class NoProbeLock:  # a lock of the program's, without _is_owned
            def __init__(self) -> None:
                self.lock = threading.Lock()

            def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
                return self.lock.acquire(blocking, timeout)

            def release(self) -> None:
                self.lock.release()

            def __enter__(self) -> bool:
                return self.lock.__enter__()

            def __exit__(self, *exc: object) -> None:
                self.lock.__exit__(*exc)

        with trace_locks():
            plain = threading.Condition(NoProbeLock())

            class Mine(threading.Condition):
                def _is_owned(self) -> bool:
                    return False

            mine = Mine()
            stdlib_style = threading.Condition(threading.Lock())
        assert plain._is_owned() is False
        with plain:
            assert plain._is_owned() is True
            plain.notify()
        with pytest.raises(RuntimeError, match="un-acquired"):
            plain.notify()
        with mine:
            assert mine._is_owned() is True  # the lock's method, bound by __init__ over the subclass's
        with stdlib_style:
            assert stdlib_style._is_owned() is True
        assert stdlib_style._is_owned() is False


class TestOtherPrimitives:
    """Semaphores, events and barriers are traced too."""

    def test_semaphore_holders_and_waiters(self, recorder: Recorder) -> None:
        """Every holder of a semaphore is known; a waiter records who held it."""
        sem = conctools.BoundedSemaphore(2, name=unique("sem"))
        release = threading.Event()
        ready = threading.Barrier(3)

        def hold() -> None:
            with sem:
                ready.wait(10)
                release.wait(30)

        holders = [threading.Thread(target=hold, name=f"h{i}") for i in range(2)]
        for t in holders:
            t.start()
        ready.wait(10)
        assert sorted(h.thread_name for h in state_of(sem).holders) == ["h0", "h1"]
        threading.Timer(0.05, release.set).start()
        with sem:
            pass
        for t in holders:
            t.join(10)
        (e,) = recorder.snapshot().of_kind(LockWaitEvent)
        assert e.lock_kind == "BoundedSemaphore" and "h0" in (e.holder or "") and "h1" in (e.holder or "")
        with pytest.raises(ValueError):
            sem.release()
        assert not state_of(sem).holders

    def test_event_waiters_visible_until_set(self) -> None:
        """A thread waiting on an Event is in the registry until the Event is set."""
        ev = conctools.Event(name="ready")
        t = threading.Thread(target=ev.wait, name="sleeper")
        t.start()
        wait_until(lambda: state_of(ev).waiters)
        assert state_of(ev).waiters[0].thread_name == "sleeper" and state_of(ev).kind == "Event"
        before = registry.last_progress_ns()
        ev.set()
        t.join(10)
        assert not state_of(ev).waiters
        assert registry.last_progress_ns() >= before

    def test_zero_timeouts_are_polls_not_waits(self, recorder: Recorder) -> None:
        """acquire(timeout=0) / wait(0) that find nothing are polls: no contention, no event."""
        sem = conctools.Semaphore(0, name=unique("poll"))
        ev = conctools.Event(name=unique("poll-ev"))
        cond = conctools.Condition(name=unique("poll-cond"))
        assert sem.acquire(timeout=0) is False and ev.wait(0) is False
        with cond:
            assert cond.wait(0) is False
        assert not recorder.snapshot().of_kind(LockWaitEvent)
        assert all(r["contentions"] == 0 for r in recorder.snapshot().sections.get("locks", []))

    def test_barrier_parties(self) -> None:
        """Barrier.wait returns distinct indexes and the waiters leave the registry."""
        b = conctools.Barrier(3)
        indexes: list[int] = []
        threads = [threading.Thread(target=lambda: indexes.append(b.wait(10))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(indexes) == [0, 1, 2] and not state_of(b).waiters


class TestStress:
    """Counts stay exact under heavy contention."""

    def test_16_threads_50k_acquisitions_exact(self, recorder: Recorder) -> None:
        """16 threads x 50k acquisitions: the table says 800k, and contentions equal wait events."""
        name = unique("stress")
        lock = conctools.Lock(name=name)
        counter = [0]
        start = threading.Barrier(16)

        def work() -> None:
            start.wait(30)
            for _ in range(50_000):
                with lock:
                    counter[0] += 1

        threads = [threading.Thread(target=work, name=f"stress-{i}") for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert counter[0] == 800_000
        snap = recorder.snapshot()
        r = next(r for r in snap.sections["locks"] if r["name"] == name)
        assert r["acquisitions"] == 800_000
        waits = [e for e in snap.of_kind(LockWaitEvent) if e.lock_name == name]
        assert r["contentions"] == snap.counts.get("lock_wait", 0) == len(waits) + snap.dropped
        assert all(e.acquired for e in waits)

    def test_short_lived_locks_keep_exact_counts_in_bounded_memory(self, recorder: Recorder) -> None:
        """30k locks of one class, each used twice and dropped: counts exact, the dead-instance backlog bounded."""
        from conctools.locks import RETIRED_BACKLOG

        name = unique("short-lived")
        stats = None
        longest = 0
        for _ in range(30_000):
            lock = conctools.Lock(name=name)
            with lock:
                pass
            with lock:
                pass
            stats = lock._ct_stats
            del lock
            longest = max(longest, len(stats.retired))
        assert longest <= RETIRED_BACKLOG
        assert row(recorder, name)["acquisitions"] == 60_000
        for _ in range(1_000):  # locks never acquired leave nothing behind
            conctools.Lock(name=name)
        assert stats is not None and not stats.retired

    def test_folding_dead_instances_loses_none_that_die_meanwhile(self) -> None:
        """A class folds its dead instances' counters and hold histograms by batches: an instance that
        dies during the fold (here: while a hold histogram is merged) is folded too, and none twice."""
        from conctools.locks import LockStats
        from conctools.recorder import Histogram

        stats = LockStats("k", "k", "Lock", "here.py:1")
        late = [(7, None), (11, None)]

        class DyingWhileMerged(Histogram):
            """A dead instance's hold histogram whose merge sees two more instances die."""

            @property  # type: ignore[override]
            def buckets(self) -> dict[int, int]:
                while late:
                    stats.retired.append(late.pop())
                return {3: 2}

            @buckets.setter
            def buckets(self, value: dict[int, int]) -> None:
                pass

        dying = DyingWhileMerged()
        dying.count, dying.total_ns, dying.max_ns = 2, 20, 15
        stats.retired.extend([(1, None)] * 1_000 + [(5, dying)] + [(2, None)] * 10)
        stats.fold_retired()
        assert not stats.retired and not late
        assert stats.retired_acquisitions == 1_000 + 5 + 20 + 7 + 11
        assert stats.retired_instances == 1_013
        assert stats.hold.count == 2 and stats.hold.buckets == {3: 2}


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "app.py"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


class TestTraceLocks:
    """trace_locks() swaps the factories, catches stdlib-made locks and restores everything."""

    def test_queue_and_condition_locks_are_traced_and_named_by_user_site(self, recorder: Recorder) -> None:
        """queue.Queue's mutex and conditions are traced, named after the user line that made the queue."""
        with trace_locks():
            line = lineno() + 1
            q: queue.Queue[int] = queue.Queue()
            cond = threading.Condition()
            ev = threading.Event()
        assert isinstance(q.mutex, conctools.Lock) and isinstance(q.not_empty, conctools.Condition)
        assert q.not_empty._lock is q.mutex
        assert state_of(q.mutex).name == f"{HERE}:{line} (queue.Queue.__init__)"
        assert isinstance(cond._lock, conctools.RLock) and isinstance(ev, conctools.Event)
        assert threading.Lock is not conctools.Lock and threading.Condition is not conctools.Condition
        q.put(1)
        assert q.get() == 1

    def test_stdlib_made_locks_are_named_per_user_line_on_every_creation(self, recorder: Recorder) -> None:
        """Creation sites are cached; a queue made on another line (the same stdlib code) still gets its own name."""

        def make_queue() -> queue.Queue[int]:
            return queue.Queue()  # a helper in user code: its line is the site

        names: dict[str, set[str]] = {"a": set(), "b": set(), "helper": set()}
        with trace_locks():
            for _ in range(3):
                line_a = lineno() + 1
                qa: queue.Queue[int] = queue.Queue()
                line_b = lineno() + 1
                qb: queue.Queue[int] = queue.Queue()
                names["a"].add(state_of(qa.mutex).name)
                names["b"].add(state_of(qb.mutex).name)
                names["helper"].add(state_of(make_queue().mutex).name)
        assert names["a"] == {f"{HERE}:{line_a} (queue.Queue.__init__)"}
        assert names["b"] == {f"{HERE}:{line_b} (queue.Queue.__init__)"}
        (helper,) = names["helper"]
        assert helper.endswith("(queue.Queue.__init__)") and helper not in names["a"] | names["b"]

    def test_conctools_own_threads_started_inside_keep_plain_primitives(self, recorder: Recorder) -> None:
        """The loop monitor's and the sampler's threads, started under trace_locks(), wait on no traced primitive."""
        from conctools.loopmon import monitor_all_loops
        from conctools.resources import sample_resources

        plain_event, plain_condition = threading.Event, threading.Condition
        plain_lock = type(threading.Lock())
        seen: list[threading.Thread] = []

        async def main() -> None:
            await asyncio.sleep(0.05)
            seen.extend(t for t in threading.enumerate() if t.name.startswith("conctools-"))

        with trace_locks(lock_order=True), sample_resources(0.02), monitor_all_loops(0.5):
            user_thread = threading.Thread(target=lambda: None)
            asyncio.run(main())
        assert {t.name for t in seen} >= {"conctools-loopmon", "conctools-resources"}
        for t in seen:
            started = t._started  # type: ignore[attr-defined]
            assert type(started) is plain_event, t.name
            assert type(started._cond) is plain_condition and type(started._cond._lock) is plain_lock, t.name
        assert isinstance(user_thread._started, conctools.Event)  # type: ignore[attr-defined] # the program's are traced

    def test_concurrent_futures_is_traced(self, recorder: Recorder) -> None:
        """A ThreadPoolExecutor created inside uses traced locks and still works."""
        with trace_locks():
            pool = concurrent.futures.ThreadPoolExecutor(2)
            fut = pool.submit(pow, 2, 10)
        try:
            assert fut.result(10) == 1024
            assert isinstance(pool._shutdown_lock, conctools.Lock)
            assert isinstance(fut._condition, conctools.Condition)
        finally:
            pool.shutdown(wait=True)

    def test_asyncio_primitives_are_traced(self, recorder: Recorder) -> None:
        """asyncio.Lock() & co. and asyncio.Queue's internals are conctools.aio classes inside."""

        async def main() -> list[Any]:
            with trace_locks():
                made = [asyncio.Lock(), asyncio.Semaphore(2), asyncio.Event(), asyncio.Condition(), asyncio.Queue()]
            async with made[0]:
                pass
            return made

        lock, sem, ev, cond, q = asyncio.run(main())
        assert isinstance(lock, aio.Lock) and isinstance(sem, aio.Semaphore) and isinstance(ev, aio.Event)
        assert isinstance(cond, aio.Condition) and isinstance(cond._lock, aio.Lock)
        assert isinstance(q._finished, aio.Event)
        assert asyncio.Lock is not aio.Lock

    def test_nested_and_restored(self) -> None:
        """Nested blocks keep the patch until the outermost one ends; _thread users are untouched."""
        originals = (threading.Lock, threading.RLock, asyncio.Lock, asyncio.locks.Event)
        with trace_locks():
            with trace_locks():
                assert threading.Lock is conctools.Lock
            assert threading.RLock is conctools.RLock
            import _thread

            assert type(_thread.allocate_lock()) is not conctools.Lock
        assert (threading.Lock, threading.RLock, asyncio.Lock, asyncio.locks.Event) == originals

    def test_restored_after_an_exception(self) -> None:
        """An exception inside the block still restores every factory."""
        with pytest.raises(KeyError), trace_locks():
            raise KeyError("boom")
        assert threading.Lock is not conctools.Lock and asyncio.Event is not aio.Event

    def test_lock_order_mode_reports_inversion(self, recorder: Recorder) -> None:
        """trace_locks(lock_order=True) makes created locks check their order."""
        with trace_locks(lock_order=True):
            a = threading.Lock()
            b = threading.Lock()
            with a, b:
                pass
            with b, a:
                pass
        assert len(recorder.snapshot().of_kind(LockOrderEvent)) == 1
        assert not lockorder.is_enabled()

    def test_table_only_covers_this_recorder(self, recorder: Recorder) -> None:
        """lock_table() of an earlier epoch includes the locks created since."""
        lock = conctools.Lock(name=unique("epoch"))
        with lock:
            pass
        assert any(r["name"] == lock._ct_name for r in lock_table())


def conctools_run(tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conctools", "run", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


APP = """\
import threading, time

accounts = threading.Lock()
ledger = threading.Lock()
hot = threading.Lock()


def transfer():
    with accounts:
        with ledger:
            pass


def audit():
    with ledger:
        with accounts:
            pass


def worker():
    for _ in range(10):
        with hot:
            time.sleep(0.005)


for target in (transfer, audit):
    t = threading.Thread(target=target, name=target.__name__)
    t.start()
    t.join()
workers = [threading.Thread(target=worker, name=f"worker-{i}") for i in range(3)]
for w in workers:
    w.start()
for w in workers:
    w.join()
print("finished")
"""


class TestConctoolsRun:
    """`conctools run` traces locks and checks their order by default; both can be switched off."""

    def test_report_shows_inversion_and_contended_lock(self, tmp_path: Path) -> None:
        """A program with an inversion that never deadlocks and a contended lock: both in the report."""
        script(tmp_path, APP)
        proc = conctools_run(tmp_path, "--deadlock-timeout", "0", "app.py")
        assert proc.returncode == 0, proc.stderr
        assert "finished" in proc.stdout
        err = proc.stderr
        assert "Lock-order inversions (1 potential deadlock)" in err
        assert "lock 'app.py:4' acquired at app.py:10 while holding 'app.py:3' (acquired at app.py:9)" in err
        assert "in thread 'transfer'" in err and "in thread 'audit'" in err
        assert "lock 'app.py:3' acquired at app.py:16 while holding 'app.py:4' (acquired at app.py:15)" in err
        assert "CPU0" in err and "CPU1" in err and "*** DEADLOCK ***" in err
        table = err[err.index("Locks (") :]
        first_row = table.splitlines()[3]
        assert first_row.split()[0] == "app.py:5" and "app.py:22" in first_row

    def test_switches(self, tmp_path: Path) -> None:
        """--no-lock-order keeps the table but drops inversions; --no-trace-locks drops both."""
        script(tmp_path, APP)
        no_order = conctools_run(tmp_path, "--deadlock-timeout", "0", "--no-lock-order", "app.py")
        assert no_order.returncode == 0, no_order.stderr
        assert "Lock-order inversions" not in no_order.stderr and "Locks (" in no_order.stderr
        no_trace = conctools_run(tmp_path, "--deadlock-timeout", "0", "--no-trace-locks", "app.py")
        assert no_trace.returncode == 0, no_trace.stderr
        assert "Lock-order inversions" not in no_trace.stderr and "Locks (" not in no_trace.stderr


def leave_held(prim: Any, name: str) -> None:
    """A thread called ``name`` takes ``prim`` and ends without releasing it."""
    t = threading.Thread(target=prim.acquire, name=name)
    t.start()
    t.join(10)
    assert not t.is_alive()


class TestHolderIdentity:
    """Holders are named by an identity never reused: an ended holder is called exited, by its own name."""

    @pytest.mark.parametrize("kind", ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition"])
    def test_a_holder_that_ended_is_exited_by_its_own_name(self, kind: str, recorder: Recorder) -> None:
        """Every primitive kind: the holder of a primitive left held by an ended thread is that thread,
        exited, with its own name and its own identity, never the live thread now waiting."""
        prim = getattr(conctools, kind)(name=unique(kind))
        target = prim._lock if kind == "Condition" else prim
        go, looked = threading.Event(), threading.Event()

        def waiter() -> None:
            go.wait(10)
            if kind in ("RLock", "Condition"):
                # Only the owner can release an RLock: its waiter waits in short turns until the test
                # has looked (one long timed wait made each of these tests last 5 s).
                while not looked.is_set() and not target.acquire(timeout=0.1):
                    pass
            else:
                target.acquire(timeout=30)

        def seen_waiting() -> bool:
            state = state_of(target)
            if state.waiters:
                seen.append(state)
            return bool(seen)

        # The waiter exists before the holder starts, so it cannot get the ended holder's thread id
        # (an RLock would take that for a re-entry, as CPython's own does).
        w = threading.Thread(target=waiter, name="request-1")
        w.start()
        leave_held(target, "request-0")
        seen: list[registry.PrimitiveState] = []
        go.set()
        wait_until(seen_waiting)  # the state read while it waits (between two turns nobody waits)
        st = seen[0]
        (holder,) = st.holders
        (waiting_party,) = st.waiters
        assert (holder.thread_name, holder.exited, holder.thread_id) == ("request-0", True, 0)
        assert holder.thread_key and waiting_party.thread_key and holder.thread_key != waiting_party.thread_key
        assert (waiting_party.thread_name, waiting_party.exited) == ("request-1", False)
        looked.set()
        if kind not in ("RLock", "Condition"):
            target.release()  # any thread may release a Lock or a Semaphore
        w.join(10)
        assert not w.is_alive()

    def test_a_semaphore_leaked_by_two_requests(self, recorder: Recorder) -> None:
        """Issue 11's leak: two threads take permits of a Semaphore(2) and end; four more wait. The holders
        are the two exited requests by name, the table counts the four waits while they wait."""
        name = unique("permits")
        sem = conctools.Semaphore(2, name=name)
        leave_held(sem, "request-0")
        leave_held(sem, "request-2")
        waiters = [threading.Thread(target=lambda: sem.acquire(timeout=30), name=f"late-{i}") for i in range(4)]
        for t in waiters:
            t.start()
        wait_until(lambda: len(state_of(sem).waiters) == 4)
        st = state_of(sem)
        assert sorted((h.thread_name, h.exited) for h in st.holders) == [("request-0", True), ("request-2", True)]
        assert sorted(p.thread_name for p in st.waiters) == [f"late-{i}" for i in range(4)]
        r = row(recorder, name)
        assert r["contentions"] == 4 and r["wait_total_s"] > 0  # waits in progress count in their row
        sem.release(4)
        for t in waiters:
            t.join(10)
        r = row(recorder, name)
        assert (r["contentions"], r["acquisitions"]) == (4, 6)

    @pytest.mark.parametrize("kind", ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Condition"])
    def test_a_threading_primitive_taken_inside_a_task_names_the_task(self, kind: str) -> None:
        """A threading primitive acquired inside a running asyncio task: its holder is that task (and the
        loop's thread), as long as it holds it across an await."""
        prim = getattr(conctools, kind)()
        target = prim._lock if kind == "Condition" else prim
        seen: list[registry.Party] = []

        async def writer() -> None:
            with prim:
                await asyncio.sleep(0)
                seen.extend(state_of(target).holders)

        async def main() -> None:
            await asyncio.create_task(writer(), name="writer")

        asyncio.run(main())
        (holder,) = seen
        assert (holder.task_name, holder.thread_name) == ("writer", threading.current_thread().name)
        assert holder.task is not None and holder.task_id == id(holder.task)
        assert not state_of(target).holders

    def test_a_task_waiting_on_a_threading_lock_is_named(self, recorder: Recorder) -> None:
        """A task that blocks its loop's thread on a threading lock: the waiter is that task, and the
        holder, a plain thread, is named as the thread."""
        lock = conctools.Lock(name=unique("state"))
        holder, release = hold_in_thread(lock, name="cache-worker")
        seen: list[registry.PrimitiveState] = []

        async def reader() -> None:
            with lock:  # blocks the loop's thread until the worker releases
                pass

        async def main() -> None:
            await asyncio.create_task(reader(), name="reader")

        def watch() -> None:
            wait_until(lambda: state_of(lock).waiters)
            seen.append(state_of(lock))
            release.set()

        watcher = threading.Thread(target=watch)
        watcher.start()
        asyncio.run(main())
        watcher.join(10)
        holder.join(10)
        (st,) = seen
        assert [(p.task_name, p.thread_name) for p in st.waiters] == [("reader", threading.current_thread().name)]
        assert [(h.task_name, h.thread_name) for h in st.holders] == [(None, "cache-worker")]
        (e,) = recorder.snapshot().of_kind(LockWaitEvent)
        assert (e.task_name, e.holder) == ("reader", "thread 'cache-worker'")


class TestEveryWaitCounts:
    """Every contended wait names its holder and counts in its lock's row."""

    def test_every_recorded_wait_in_a_tight_loop_names_its_holder(self, recorder: Recorder) -> None:
        """Four threads hammering `with counter:` (giving up the GIL inside: every other acquisition
        waits): every wait event names the thread that held the lock when the wait began (never null,
        never the waiter), and the table counts every wait."""
        name = unique("counter")
        counter = conctools.Lock(name=name)
        total = [0]
        start = threading.Barrier(4)

        def work() -> None:
            start.wait(30)
            for _ in range(2_000):
                with counter:
                    total[0] += 1
                    time.sleep(0)

        threads = [threading.Thread(target=work, name=f"hammer-{i}") for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        snap = recorder.snapshot()
        waits = [e for e in snap.of_kind(LockWaitEvent) if e.lock_name == name]
        r = next(r for r in snap.sections["locks"] if r["name"] == name)
        assert total[0] == 8_000 and r["acquisitions"] == 8_000
        assert r["contentions"] >= len(waits) > 0
        for e in waits:
            assert e.holder is not None and e.holder.startswith("thread 'hammer-"), e
            assert e.holder != f"thread {e.thread_name!r}"

    def test_both_locks_of_a_deadlock_count_their_waits(self, tmp_path: Path) -> None:
        """An ABBA deadlock under `conctools run`: the report's lock table shows both locks contended,
        with the time their waiters have waited so far."""
        import json

        scripts = Path(__file__).parent / "scripts"
        out = tmp_path / "out"
        command = ["conctools", "run", "--deadlock-timeout", "1", "--out", str(out), str(scripts / "abba_threads.py")]
        done = subprocess.run(
            [sys.executable, "-m", *command[:1], *command[1:]],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 86, done.stderr
        rows = {r["name"]: r for r in json.loads((out / "report.json").read_text())["sections"]["locks"]}
        for name in ("abba_threads.py:5", "abba_threads.py:6"):
            assert rows[name]["contentions"] == 1, rows[name]
            assert rows[name]["wait_total_s"] >= 0.5, rows[name]  # waited until the watchdog stopped it


class TestLockWaitThreshold:
    """`--lock-wait-threshold` decides which waits become events; every wait is counted anyway."""

    def test_the_threshold_reaches_the_program_and_zero_records_every_wait(self, tmp_path: Path) -> None:
        """`conctools run --lock-wait-threshold 0`: every wait is an event (as many as the table's contentions);
        the default leaves the threshold at 1 ms."""
        import json

        script(
            tmp_path,
            """
            import threading
            import conctools.locks

            lock = threading.Lock()
            go = threading.Event()


            def hold():
                for _ in range(30):
                    with lock:
                        go.set()
                        threading.Event().wait(0.002)


            t = threading.Thread(target=hold)
            t.start()
            go.wait()
            for _ in range(30):
                with lock:
                    pass
            t.join()
            print(conctools.locks.wait_threshold_s())
            """,
        )
        runs = {}
        for threshold in ("0", None):
            out = tmp_path / f"out-{threshold}"
            args = ["--lock-wait-threshold", threshold] if threshold else []
            proc = conctools_run(tmp_path, "--deadlock-timeout", "0", *args, "--out", str(out), "app.py")
            assert proc.returncode == 0, proc.stderr
            report = json.loads((out / "report.json").read_text())
            row_ = next(r for r in report["sections"]["locks"] if r["name"] == "app.py:5")
            events = [e for e in report["events"] if e["kind"] == "lock_wait" and e["lock_name"] == "app.py:5"]
            runs[threshold] = (proc.stdout.strip(), row_["contentions"], len(events))
        assert runs["0"][0] == "0.0" and runs[None][0] == "0.001"
        _, contentions, events = runs["0"]
        assert contentions >= 1 and events == contentions
