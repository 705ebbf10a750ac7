"""Lock-order checking (lockdep): edges, cycles reported once, instance-level classes, rendering."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import json
import os
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest

import conctools
from conctools import aio, lockorder, locks
from conctools.events import LockOrderEvent, event_from_dict
from conctools.recorder import Recorder
from conctools.reporting.locks_text import format_lock_order, lock_order_section

HERE = Path(__file__).name


def in_thread(fn: Callable[[], object], name: str) -> None:
    t = threading.Thread(target=fn, name=name)
    t.start()
    t.join(10)
    assert not t.is_alive()


def inversions(rec: Recorder) -> list[LockOrderEvent]:
    return rec.snapshot().of_kind(LockOrderEvent)


def lineno() -> int:
    return sys._getframe(1).f_lineno


class TestInversions:
    """A cycle in the lock-order graph is a potential deadlock, reported once."""

    def test_inversion_that_never_deadlocks_reported_once(self, ordered: Recorder) -> None:
        """A->B in one thread and B->A in another, repeated: one event with both orders and sites."""
        a = conctools.Lock(name="a")
        b = conctools.Lock(name="b")
        lines: dict[str, int] = {}

        def ab() -> None:
            with a:
                lines["ab"] = lineno() + 1
                with b:
                    pass

        def ba() -> None:
            with b:
                lines["ba"] = lineno() + 1
                with a:
                    pass

        for _ in range(3):
            in_thread(ab, "first")
            in_thread(ba, "second")
        (event,) = inversions(ordered)
        assert set(event.cycle) == {"a", "b"}
        by_to = {e.to_lock: e for e in event.edges}
        assert (by_to["b"].from_lock, by_to["b"].thread_name) == ("a", "first")
        assert by_to["b"].to_site == f"{HERE}:{lines['ab']}"
        assert by_to["b"].from_site == f"{HERE}:{lines['ab'] - 2}"
        assert (by_to["a"].from_lock, by_to["a"].thread_name) == ("b", "second")
        assert by_to["a"].to_site == f"{HERE}:{lines['ba']}"
        assert by_to["a"].stack and by_to["a"].stack[0].function == "ba"
        assert event_from_dict(event.to_dict()) == event

    def test_consistent_order_is_silent(self, ordered: Recorder) -> None:
        """Always A then B: edges, no report."""
        a, b = conctools.Lock(name="a1"), conctools.RLock(name="b1")
        for name in ("x", "y"):

            def run() -> None:
                with a, b:
                    pass

            in_thread(run, name)
        assert lockorder.graph_size() == 1
        assert not inversions(ordered)

    def test_three_lock_cycle(self, ordered: Recorder) -> None:
        """A->B, B->C, C->A across three threads is one cycle of three."""
        a, b, c = (conctools.Lock(name=n) for n in "ABC")
        for first, second in ((a, b), (b, c), (c, a)):

            def run(first: conctools.Lock = first, second: conctools.Lock = second) -> None:
                with first, second:
                    pass

            in_thread(run, "t")
        (event,) = inversions(ordered)
        assert sorted(event.cycle) == ["A", "B", "C"] and len(event.edges) == 3
        assert "CPU2" in format_lock_order(event)

    def test_rlock_reentry_is_not_an_edge(self, ordered: Recorder) -> None:
        """Re-entering an RLock adds no edge and no report."""
        r = conctools.RLock(name="r")
        with r, r, r:
            pass
        assert lockorder.graph_size() == 0
        assert not inversions(ordered)

    def test_many_instances_collapse_into_one_class(self, ordered: Recorder) -> None:
        """Locks made on one line are one class: an inversion between two such classes is found
        even though each order used different instances."""

        def make() -> tuple[conctools.Lock, conctools.Lock]:
            return conctools.Lock(), conctools.Lock()

        pairs = [make() for _ in range(4)]
        firsts = [conctools.Lock() for _ in range(4)]
        # firsts-class -> pair-class in one thread, then pair-class -> firsts-class with other instances.
        with firsts[0], pairs[0][0]:
            pass
        with pairs[1][0], firsts[2]:
            pass
        assert len(inversions(ordered)) == 1

    def test_same_class_ordered_by_instance(self, ordered: Recorder) -> None:
        """Per-account locks of one class: a consistent order is fine, both orders are reported."""
        accounts = [conctools.Lock() for _ in range(3)]
        with accounts[0], accounts[1]:
            pass
        with accounts[1], accounts[2]:
            pass
        assert not inversions(ordered)
        with accounts[1], accounts[0]:
            pass
        (event,) = inversions(ordered)
        assert all("#" in name for name in event.cycle)

    def test_condition_and_semaphore_paths(self, ordered: Recorder) -> None:
        """Locks taken through a Condition feed the graph like any other acquisition."""
        outer = conctools.Lock(name="outer")
        cond = conctools.Condition(name="c")
        with outer, cond:
            pass
        with cond, outer:
            pass
        (event,) = inversions(ordered)
        assert set(event.cycle) == {"outer", "c.lock"}

    def test_tasks_inversion(self, ordered: Recorder) -> None:
        """asyncio tasks that take two aio.Locks in opposite orders are reported, with task names."""

        async def main() -> None:
            a, b = aio.Lock(name="ta"), aio.Lock(name="tb")

            async def ab() -> None:
                async with a, b:
                    await asyncio.sleep(0)

            async def ba() -> None:
                async with b, a:
                    await asyncio.sleep(0)

            await asyncio.create_task(ab(), name="task-ab")
            await asyncio.create_task(ba(), name="task-ba")

        asyncio.run(main())
        (event,) = inversions(ordered)
        assert {e.task_name for e in event.edges} == {"task-ab", "task-ba"}

    def test_task_held_stacks_exact_when_taken_again_and_again(self, ordered: Recorder) -> None:
        """aio.Locks taken alone again and again at one site by fresh tasks (their held-stack push and pop
        then need no Python) are on their task's held stack exactly while held, the stack is forgotten
        once empty, and the inversion the same locks make later is reported with its lines."""
        seen: list[object] = []
        lines: dict[str, int] = {}

        async def main() -> None:
            a, b = aio.Lock(name="fa"), aio.Lock(name="fb")

            async def once(lock: aio.Lock) -> None:
                me = asyncio.current_task()
                async with lock:
                    held = lockorder._task_stacks.get(id(me))
                    seen.append([h[2] for h in held] if held is not None else None)
                seen.append(id(me) in lockorder._task_stacks)

            for _ in range(20):
                await asyncio.create_task(once(a))
                await asyncio.create_task(once(b))

            async def ab() -> None:
                async with a:
                    lines["ab"] = lineno() + 1
                    async with b:
                        await asyncio.sleep(0)

            async def ba() -> None:
                async with b:
                    lines["ba"] = lineno() + 1
                    async with a:
                        await asyncio.sleep(0)

            await asyncio.create_task(ab(), name="task-ab")
            await asyncio.create_task(ba(), name="task-ba")

        asyncio.run(main())
        assert seen == [["fa"], False, ["fb"], False] * 20
        (event,) = inversions(ordered)
        assert {e.task_name for e in event.edges} == {"task-ab", "task-ba"}
        text = format_lock_order(event)
        assert f"{HERE}:{lines['ab']}" in text and f"{HERE}:{lines['ba']}" in text

    def test_task_held_stacks_kept_in_c_after_the_first_acquisition(
        self, ordered: Recorder, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With the C extension, an aio.Lock taken alone again and again at one site goes through the
        Python bookkeeping only the first time (to cache its site); its releases never do."""
        if not locks.SPEEDUPS:
            pytest.skip("the pure-Python path runs the Python methods by design")
        calls: list[str] = []
        took, released = aio.Lock._took_timed, aio.Lock._released_timed

        def counted_took(self: aio.Lock, frame: object, t0: int) -> None:
            calls.append("took")
            took(self, frame, t0)

        def counted_released(self: aio.Lock) -> None:
            calls.append("released")
            released(self)

        monkeypatch.setattr(aio.Lock, "_took_timed", counted_took)
        monkeypatch.setattr(aio.Lock, "_released_timed", counted_released)

        async def main() -> None:
            lock = aio.Lock(name="again")

            async def once() -> None:
                async with lock:
                    pass

            for _ in range(30):
                await asyncio.create_task(once())

        asyncio.run(main())
        assert calls == ["took"]

    def test_same_class_cycle_among_many_futures(self, ordered: Recorder) -> None:
        """``wait()`` holds the conditions of all its futures (one class, kept per instance); taking
        the last one it took, then the first, in another thread is reported as a two-lock cycle whose
        inverting edge names that thread and this line, not the 23 conditions in between."""
        with conctools.trace_locks():
            futures: list[concurrent.futures.Future[int]] = [concurrent.futures.Future() for _ in range(25)]
        wait_line = lineno() + 1
        concurrent.futures.wait(futures, timeout=0)  # takes all their conditions nested, by id
        order = sorted(futures, key=id)  # that order (concurrent.futures' _AcquireFutures)
        assert not inversions(ordered)
        line = 0

        def invert() -> None:
            nonlocal line
            with order[-1]._condition:  # type: ignore[attr-defined]
                line = lineno() + 1
                with order[0]._condition:  # type: ignore[attr-defined]
                    pass

        in_thread(invert, "inverter")
        (event,) = inversions(ordered)
        assert len(event.cycle) == 2 and all("#" in name for name in event.cycle)
        (back,) = [e for e in event.edges if e.thread_name == "inverter"]
        assert back.to_site == f"{HERE}:{line}"
        (forth,) = [e for e in event.edges if e.thread_name != "inverter"]
        assert forth.to_site == f"{HERE}:{wait_line}" and forth.thread_name == threading.current_thread().name

    def test_inversion_through_a_run_of_futures(self, ordered: Recorder) -> None:
        """A thread holding a lock waits on futures (their conditions taken in a run, each while
        holding the ones before); another takes one of those conditions, then that lock: reported
        as an inversion between the lock and the conditions' class, naming both threads."""
        outer = conctools.Lock(name="outer")
        with conctools.trace_locks():
            futures: list[concurrent.futures.Future[int]] = [concurrent.futures.Future() for _ in range(40)]

        def waiter() -> None:
            with outer:
                concurrent.futures.wait(futures, timeout=0)  # the conditions nested, by id
            assert lockorder.held_stack() == []  # (released first-taken-first, as they were taken)

        in_thread(waiter, "waiter")
        assert not inversions(ordered)
        middle = sorted(futures, key=id)[20]

        def invert() -> None:
            with middle._condition:  # type: ignore[attr-defined]
                with outer:
                    pass

        in_thread(invert, "inverter")
        (event,) = inversions(ordered)
        assert len(event.cycle) == 2 and "outer" in event.cycle
        assert {e.thread_name for e in event.edges} == {"waiter", "inverter"}

    def test_run_released_in_order_then_inverted(self, ordered: Recorder) -> None:
        """Locks of one class taken in a run and released first-taken-first leave the held stack
        as it was, and the run's instance edges still catch an inversion of two of its locks."""

        def make() -> conctools.Lock:
            return conctools.Lock()

        outer = conctools.Lock(name="outer")
        chain = [make() for _ in range(30)]
        with outer:
            for lock in chain:
                lock.acquire()
            for lock in chain:
                lock.release()
            assert [h[2] for h in lockorder.held_stack()] == ["outer"]
        assert lockorder.held_stack() == [] and not inversions(ordered)
        with chain[17], chain[3]:
            pass
        (event,) = inversions(ordered)
        assert len(event.cycle) == 2 and all("#" in name for name in event.cycle)

    def test_long_run_released_first_taken_first(self, ordered: Recorder) -> None:
        """A long stack released bottom first (what concurrent.futures does after wait() on many
        futures): the rest is not moved down at every release (with the C extension, a released
        bottom entry is left as None and dropped later), yet every reader of the stack sees exactly
        the locks still held, in order, and the run's edges still catch an inversion."""

        def make() -> conctools.Lock:
            return conctools.Lock()

        chain = [make() for _ in range(200)]
        names = [lock._ct_name for lock in chain]  # type: ignore[attr-defined]
        other = conctools.Lock(name="other")

        def body() -> None:
            for lock in chain:
                lock.acquire()
            raw = lockorder._local.stack  # type: ignore[attr-defined]
            for lock in chain[:60]:
                lock.release()
            if lockorder._stack_type[0] is not None:  # the C type (plain lists delete at once)
                assert list.__len__(raw) == 200 and list.__getitem__(raw, 0) is None
            assert [h[2] for h in lockorder.held_stack()] == names[60:]
            assert list.__len__(raw) == 140
            for lock in chain[60:120]:
                lock.release()
            with other:  # taken with 80 held, then some of them released before it
                for lock in chain[120:170]:
                    lock.release()
                assert [h[2] for h in lockorder.held_stack()] == [*names[170:], "other"]
            for lock in chain[170:]:
                lock.release()
            assert lockorder.held_stack() == []

        in_thread(body, "releaser")
        assert not inversions(ordered)
        with chain[150], chain[120]:
            pass
        (event,) = inversions(ordered)
        assert len(event.cycle) == 2

    def test_instance_edges_stay_bounded(self, ordered: Recorder) -> None:
        """Thousands of short-lived locks of one class taken nested keep a bounded graph: the edges
        of locks the garbage collector took are forgotten, and an inversion is still found after."""
        for _ in range(lockorder.INSTANCE_PRUNE_AT // 10 * 3):
            chain = [conctools.Lock() for _ in range(10)]
            for lock in chain:
                lock.acquire()
            for lock in reversed(chain):
                lock.release()
            del chain, lock
        assert 0 < lockorder.graph_size() < lockorder.INSTANCE_PRUNE_AT * 2
        accounts = [conctools.Lock() for _ in range(2)]
        with accounts[0], accounts[1]:
            pass
        with accounts[1], accounts[0]:
            pass
        (event,) = inversions(ordered)
        assert len(event.cycle) == 2

    def test_fan_out_runs_are_forgotten_soon(self, ordered: Recorder) -> None:
        """A fan-out (each round ``wait()`` on 25 new futures, then drops them) keeps the edges of the
        last few rounds only, long before the graph's prune (``INSTANCE_PRUNE_AT``): each is one run,
        forgotten a few runs after its futures are gone; an inversion is still found after."""
        sizes = []
        with conctools.trace_locks(), concurrent.futures.ThreadPoolExecutor(2) as pool:
            for _ in range(200):
                futures = [pool.submit(int, shard) for shard in range(25)]
                done, _ = concurrent.futures.wait(futures)
                assert len(done) == 25
                del futures, done
                sizes.append(lockorder.graph_size())
            assert lockorder.INSTANCE_PRUNE_AT < 200 * 24  # (a prune alone would keep up to that many)
            assert max(sizes[10:]) <= 4 * 24, sizes
            kept = {id(run) for serial in list(lockorder._inst_in) for run in lockorder._runs_into(serial)}
            assert len(kept) <= 4
            futures = [concurrent.futures.Future() for _ in range(2)]
        concurrent.futures.wait(futures, timeout=0)
        order = sorted(futures, key=id)
        with order[1]._condition, order[0]._condition:  # type: ignore[attr-defined]
            pass
        (event,) = inversions(ordered)
        assert len(event.cycle) == 2 and all("#" in name for name in event.cycle)

    def test_live_lock_between_dead_ones_keeps_the_path(self, ordered: Recorder) -> None:
        """``a -> short-lived -> b`` keeps ``a`` before ``b`` when the lock in between is gone and
        the graph is pruned: taking ``b`` then ``a`` is still reported."""

        def make() -> conctools.Lock:
            return conctools.Lock()

        a, b = make(), make()
        middle = make()
        with a, middle, b:
            pass
        del middle
        for _ in range(lockorder.INSTANCE_PRUNE_AT + 10):  # enough dead pairs to prune the graph
            x, y = make(), make()
            with x, y:
                pass
        del x, y
        with b, a:
            pass
        (event,) = inversions(ordered)
        assert len(event.cycle) == 2

    def test_graph_of_live_locks_passes_its_prunes_and_keeps_every_edge(self, ordered: Recorder) -> None:
        """A ``wait()`` on more futures than ``INSTANCE_PRUNE_AT`` grows the graph by live locks only: the
        prunes it reaches forget nothing (with the C extension they are skipped, after a check that every
        lock is alive), the graph keeps all its edges, and an inversion between the first and the last
        future is still found. Once one of those locks is gone, the check says so (the pass runs)."""
        n = lockorder.INSTANCE_PRUNE_AT * 2
        with conctools.trace_locks():  # (the futures' conditions traced)
            futures: list[concurrent.futures.Future[int]] = [concurrent.futures.Future() for _ in range(n)]
        for i, f in enumerate(futures):
            f.set_result(i)
        done, _ = concurrent.futures.wait(futures)
        assert len(done) == n
        assert lockorder.graph_size() == n - 1
        assert lockorder._inst_prune_at[0] > n  # (a pass was reached, and the next is further)
        order = sorted(futures, key=id)
        with order[-1]._condition, order[0]._condition:  # type: ignore[attr-defined]
            pass
        (event,) = inversions(ordered)
        assert len(event.cycle) == 2 and all("#" in name for name in event.cycle)
        alive = lockorder._graph_alive[0]
        if alive is None:
            pytest.skip("pure-Python mode: the pass always runs")
        with lockorder._mutex:
            assert alive(lockorder._inst_in) is True
        del done, futures, order, f
        gc.collect()
        with lockorder._mutex:
            assert alive(lockorder._inst_in) is False

    def test_held_entries_of_c_locks_refer_to_them_without_a_weak_reference(self, ordered: Recorder) -> None:
        """With the C extension, a lock's held entries refer to it by one small object that is both its weak
        reference and its serial (no weak reference and no int per lock): called, it gives the lock, or None
        once the lock is gone; it hashes and compares as the serial, so the graph's tables take either."""
        speedups = locks._speedups
        if speedups is None:
            pytest.skip("pure-Python mode: entries hold a weak reference and an int")
        a, b = conctools.Lock(), conctools.Lock()
        with a, b:
            held = list(lockorder.held_stack())
        assert [h[0]() for h in held] == [a, b]
        assert weakref.getweakrefcount(a) == 0 and weakref.getweakrefcount(b) == 0
        ref = held[1][0]
        assert type(ref) is speedups.LockRef and held[1][3] is ref
        serial = b._ct_serial  # type: ignore[attr-defined]
        assert ref == serial and hash(ref) == hash(serial) and {serial: 1}[ref] == 1 and f"{ref}" == str(serial)
        assert ref != a._ct_serial  # type: ignore[attr-defined]
        with b, a:  # the inversion is still reported, by the locks' names
            pass
        (event,) = inversions(ordered)
        assert len(event.cycle) == 2
        del a, b, held, event
        gc.collect()
        assert ref() is None

    def test_locks_taken_a_few_times_keep_no_entry_and_runs_no_copy_of_the_stack(self, ordered: Recorder) -> None:
        """With the C extension, a lock caches its held-stack entry only once it is taken often (a Future's
        condition, taken a few times at different sites, keeps none once released: 80 bytes each, which
        40,000 futures held by a wait() kept for their life), and a run over a versioned held stack keeps its
        expected length, not a copy of the stack. Inversions among such locks are still reported."""
        if locks._speedups is None:
            pytest.skip("pure-Python mode: entries are cached per lock, runs keep a copy of the stack")
        with conctools.trace_locks():  # (the futures' conditions traced)
            futures: list[concurrent.futures.Future[int]] = [concurrent.futures.Future() for _ in range(40)]
        for i, f in enumerate(futures):
            f.set_result(i)
        concurrent.futures.wait(futures)
        assert sum(f.result() for f in futures) == sum(range(40))
        conds = [f._condition._lock for f in futures]  # type: ignore[attr-defined]
        assert all(type(c) is conctools.RLock for c in conds)
        assert all(c._ct_n < 8 and c._ct_entry is None for c in conds)
        runs = list(lockorder._runs.values())
        assert runs and all(type(r[0]) is int for r in runs)  # (the stacks are the C HeldStack)
        hot = conctools.Lock()
        seen = []
        for _ in range(12):  # one site, again and again: cached from the 8th, then reused
            with hot:
                seen.append(lockorder.held_stack()[-1])
        assert hot._ct_entry is seen[-1] is seen[-2] is seen[-3]  # type: ignore[attr-defined]
        assert len({id(e) for e in seen[:7]}) == 7
        order = sorted(futures, key=id)
        with order[-1]._condition, order[0]._condition:  # type: ignore[attr-defined]
            pass
        (event,) = inversions(ordered)
        assert len(event.cycle) == 2 and all("#" in name for name in event.cycle)

    def test_dead_runs_go_when_the_next_run_starts(self, ordered: Recorder) -> None:
        """The edges of a ``wait()`` whose futures are gone are dropped as soon as another run starts, even one
        that adds no edge (the same locks nested again), not only when a later run adds one: a fan-out's memory
        no longer waits a round. With the C extension a run's index is the compact RunIndex, which reads as
        the dict it replaces."""
        make = lambda: conctools.Lock()  # noqa: E731 (one class: one creation line)
        x, y = make(), make()
        with x, y:
            pass
        with conctools.trace_locks():  # (the futures' conditions traced)
            futures: list[concurrent.futures.Future[int]] = [concurrent.futures.Future() for _ in range(50)]
        for i, f in enumerate(futures):
            f.set_result(i)
        done, _ = concurrent.futures.wait(futures)
        assert len(done) == 50 and lockorder.graph_size() == 1 + 49
        (wide,) = [r for r in lockorder._run_log if len(r[5]) == 50]
        index = wide[2]
        if locks._speedups is not None:
            assert type(index) is locks._speedups.RunIndex
        serials = [e[3] for e in wide[5]]
        assert len(index) == 50 and [index[s] for s in serials] == list(range(50)) and serials[7] in index
        assert index.get(serials[3]) == 3 and index.get(-1, "none") == "none" and -1 not in index
        with pytest.raises(KeyError):
            index[max(int(s) for s in serials) + 1000]
        del done, futures, f, wide, index, serials
        gc.collect()
        with x, y:  # a run whose edge is known: nothing is added, the dead run goes
            pass
        assert lockorder.graph_size() == 1
        with y, x:
            pass
        (event,) = inversions(ordered)
        assert len(event.cycle) == 2

    def test_mode_off_records_nothing(self, recorder: Recorder) -> None:
        """Locks made outside lock-order mode do not check order."""
        lockorder.reset()
        a, b = conctools.Lock(), conctools.Lock()
        with a, b:
            pass
        with b, a:
            pass
        assert lockorder.graph_size() == 0 and not inversions(recorder)


# A thread's wait() and as_completed() on futures, a lock of another class held, some runs kept alive among
# dead ones, then an inversion: lock order's tables and event, printed as JSON with each lock as (its group,
# its rank by id(): the order wait() takes them in), and how many times lockorder.check ran in that thread.
_RUNS_SCRIPT = """import concurrent.futures as cf
import json
import re
import sys
import threading

import conctools
from conctools import lockorder
from conctools.events import LockOrderEvent
from conctools.recorder import use_recorder

calls = [0]
check_code = lockorder.check.__code__


def count(frame, event, arg):
    if event == "call" and frame.f_code is check_code:
        calls[0] += 1


created = {}  # serial -> (group, rank by id(): the order wait() takes them in)
groups = [0]


def futures(n):
    fs = [cf.Future() for _ in range(n)]  # one creation line: one class
    groups[0] += 1
    for rank, f in enumerate(sorted(fs, key=id)):
        created[int(f._condition._lock._ct_serial)] = (groups[0], rank)
    for i, f in enumerate(fs):
        f.set_result(i)
    return fs


def norm(serial):
    return created.get(int(serial), (-1, -1))


with use_recorder() as rec, conctools.trace_locks(lock_order=True):
    outer = conctools.Lock()
    kept = []
    runs = [0]

    def work():
        sys.setprofile(count)
        for r in range(30):
            fs = futures(4 + r % 3)
            with outer:  # a lock of another class held: its edge known after the first round
                cf.wait(fs)
            if r % 2:
                sum(f.result() for f in cf.as_completed(fs))
            runs[0] += 2 if r % 2 else 1
            if r % 5 == 0:
                kept.append(fs)  # live runs among dead ones
        sys.setprofile(None)

    t = threading.Thread(target=work, name="worker-1")
    t.start()
    t.join()
    a, b = sorted(kept[0], key=id)[:2]
    with b._condition, a._condition:  # against the order the first wait() took them in
        pass
    state = {
        "count": lockorder._inst_count[0],
        "log": len(lockorder._run_log),
        "records": sorted(
            (norm(r[0][3]), norm(r[1][3]), r[2], r[3], r[4] is not None, r[6])
            for to in list(lockorder._inst_in)
            for r in lockorder._records_into(to)
        ),
        "has_out": sorted((norm(s), lockorder._inst_has_out.get(s)) for s in created if s in lockorder._inst_has_out),
        "runs": sorted(
            (run[1][-30:], run[3], sorted(norm(e[3]) for e in run[5]), run[7], run[8], run[6] is None)
            for run in lockorder._runs.values()
        ),
        "events": [
            # (without the instances' ordinals, in an order of their own: the event starts at its least serial)
            (
                sorted(re.sub(r" #\\d+$", "", name) for name in e.cycle),
                sorted((x.from_site, x.to_site, x.thread_name) for x in e.edges),
            )
            for e in rec.snapshot().of_kind(LockOrderEvent)
        ],
    }
print(json.dumps({"state": state, "checks": calls[0], "runs": runs[0]}))
"""


class TestRunsInC:
    """The first lock of a run is added in C (run_start) when it needs no stack, cycle search or pruning."""

    def test_runs_started_in_c_make_the_tables_and_event_python_makes(self, tmp_path: Path) -> None:
        """The same program on the C paths and with ``CONCTOOLS_PURE_PYTHON=1``: the same edges (from, to,
        thread, task, stack kept or not, locks of the class held), out-edge counts, runs, run log and
        inversion; and on the C paths lockorder.check runs for the runs that take a stack only, not for
        every wait() and as_completed()."""
        if locks._speedups is None:
            pytest.skip("no C extension (CONCTOOLS_PURE_PYTHON=1 or no compiler)")
        script = tmp_path / "runs.py"
        script.write_text(_RUNS_SCRIPT)
        out = {}
        for mode, extra in (("c", {}), ("pure", {"CONCTOOLS_PURE_PYTHON": "1"})):
            env = {k: v for k, v in os.environ.items() if k != "CONCTOOLS_PURE_PYTHON"}
            proc = subprocess.run(
                [sys.executable, str(script)], env={**env, **extra}, capture_output=True, text=True, timeout=120
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            out[mode] = json.loads(proc.stdout)
        c, pure = out["c"], out["pure"]
        assert c["state"] == pure["state"]
        state = c["state"]
        assert state["count"] > 20 and state["log"] > 0 and len(state["runs"]) == 2
        assert any(not stack for *_, stack, _n in state["records"])  # (edges added after their site's stacks)
        ((cycle, edges),) = state["events"]
        assert len(cycle) == 2 and sorted(e[2] for e in edges) == ["MainThread", "worker-1"]
        assert pure["checks"] >= c["runs"] == 45
        assert c["checks"] < 20  # (the runs whose edges still took a stack: 8 per site)


class TestRendering:
    """The text section: ThreadSanitizer's shape plus lockdep's scenario."""

    def test_section_text(self, ordered: Recorder) -> None:
        """The section names the cycle, each edge with sites and threads, and CPU0/CPU1."""
        a, b = conctools.Lock(name="left"), conctools.Lock(name="right")

        def ab() -> None:
            with a, b:
                pass

        def ba() -> None:
            with b, a:
                pass

        in_thread(ab, "alpha")
        in_thread(ba, "beta")
        text = lock_order_section(ordered.snapshot(), False) or ""
        assert "Lock-order inversions (1 potential deadlock)" in text
        assert "lock 'right' acquired at" in text and "while holding 'left'" in text
        assert "in thread 'alpha'" in text and "in thread 'beta'" in text
        lines = text.splitlines()
        start = lines.index("  Possible unsafe locking scenario:")
        scenario = [line.strip() for line in lines[start + 2 :] if line.strip()]
        assert scenario[:6] == ["CPU0                      CPU1", "----                      ----"] + [
            f"lock({name});" for name in ("right", "left", "left", "right")
        ] or scenario[2:6] == [f"lock({name});" for name in ("left", "right", "right", "left")]
        assert "*** DEADLOCK ***" in text
